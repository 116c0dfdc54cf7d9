import itertools

import numpy as np
import pytest
import tensorflow as tf

from keras_minmax_mtl import project_to_simplex


def brute_force_projection(v):
    """Exact projection by enumerating every support set (small K only).

    On a support S the KKT conditions give w_S = v_S - t with t = (sum v_S - 1)/|S|;
    the projection is the feasible candidate closest to v.
    """
    v = np.asarray(v, np.float64)
    best, best_distance = None, np.inf
    for size in range(1, len(v) + 1):
        for support in itertools.combinations(range(len(v)), size):
            support = list(support)
            t = (v[support].sum() - 1.0) / size
            w = np.zeros_like(v)
            w[support] = v[support] - t
            if (w[support] >= 0).all():
                distance = np.sum((w - v) ** 2)
                if distance < best_distance:
                    best, best_distance = w, distance
    return best


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7])
def test_matches_brute_force_on_seeded_random_vectors(k):
    rng = np.random.default_rng(k)
    for scale in (0.1, 1.0, 10.0):
        v = rng.normal(scale=scale, size=(20, k))
        got = project_to_simplex(tf.constant(v, tf.float64)).numpy()
        want = np.stack([brute_force_projection(row) for row in v])
        np.testing.assert_allclose(got, want, atol=1e-12)


def test_rows_sum_to_one_and_are_non_negative():
    v = np.random.default_rng(0).normal(scale=3.0, size=(100, 6)).astype(np.float32)
    w = project_to_simplex(v).numpy()
    assert (w >= 0).all()
    np.testing.assert_allclose(w.sum(axis=-1), 1.0, atol=1e-6)


def test_is_idempotent():
    v = np.random.default_rng(1).normal(size=(50, 4))
    once = project_to_simplex(v)
    np.testing.assert_allclose(project_to_simplex(once).numpy(), once.numpy(), atol=1e-12)


def test_point_on_simplex_is_unchanged():
    w = np.random.default_rng(2).dirichlet(np.ones(5), size=30)
    np.testing.assert_allclose(project_to_simplex(w).numpy(), w, atol=1e-12)


def test_single_task_projects_to_one():
    for value in (-1e30, -3.0, 0.0, 0.25, 1e30):
        assert project_to_simplex([value]).numpy().tolist() == [1.0]


def test_ties_are_split_equally():
    np.testing.assert_allclose(project_to_simplex([2.0, 2.0, 2.0, -5.0]).numpy(),
                               [1 / 3, 1 / 3, 1 / 3, 0.0], atol=1e-7)
    np.testing.assert_allclose(project_to_simplex([0.0, 0.0]).numpy(), [0.5, 0.5])


def test_huge_values_do_not_overflow():
    w = project_to_simplex(tf.constant([3e38, 3e38, -3e38], tf.float32)).numpy()
    np.testing.assert_allclose(w, [0.5, 0.5, 0.0])
    w = project_to_simplex(tf.constant([1e300, 1e300 + 1e285, 0.0], tf.float64)).numpy()
    assert np.isfinite(w).all() and abs(w.sum() - 1) < 1e-12


def test_tiny_differences_are_kept():
    v = np.array([1e-30, 0.0, -1e-30])
    np.testing.assert_allclose(project_to_simplex(v).numpy(), [1 / 3] * 3, rtol=1e-12)
    w = project_to_simplex(tf.constant([1e-7, 0.0], tf.float64)).numpy()
    np.testing.assert_allclose(w, [0.5 + 5e-8, 0.5 - 5e-8], rtol=1e-12)


def test_nan_input_is_not_turned_into_valid_weights():
    assert np.isnan(project_to_simplex([1.0, float("nan"), 0.0]).numpy()).all()


def test_works_inside_tf_function_with_unknown_k():
    projected = tf.function(project_to_simplex,
                            input_signature=[tf.TensorSpec([None], tf.float32)])
    for v in ([0.5, 0.9, -1.0], [4.0], [0.1, 0.2, 0.3, 0.4, 0.5]):
        np.testing.assert_allclose(projected(tf.constant(v)).numpy(),
                                   brute_force_projection(v), atol=1e-6)


def test_integer_input_becomes_float():
    w = project_to_simplex([3, 1])
    assert w.dtype == tf.float32
    np.testing.assert_allclose(w.numpy(), [1.0, 0.0])


def test_scalar_and_empty_inputs_are_refused():
    with pytest.raises(ValueError, match="`v`"):
        project_to_simplex(1.0)
    with pytest.raises(ValueError, match="K >= 1"):
        project_to_simplex(tf.zeros([0]))
