import numpy as np
import pytest
import tensorflow as tf

import keras_minmax_mtl as kmm
from keras_minmax_mtl import ExponentiatedGradientAscent, ProjectedGradientAscent, closed_form_weights, project_to_simplex
from keras_minmax_mtl.core.backend import keras


def test_projected_ascent_step_is_the_paper_update():
    rule = ProjectedGradientAscent(step_size=0.02, gamma=5.0)
    w = tf.constant([0.2, 0.3, 0.5])
    losses = tf.constant([2.0, 0.5, 1.0])
    want = project_to_simplex(w + 0.02 * (losses - 5.0 * (w - 1 / 3)))
    np.testing.assert_allclose(rule(w, losses).numpy(), want.numpy(), atol=1e-7)


@pytest.mark.parametrize("losses", [[1.0, 2.0, 3.0], [0.1, 0.1, 5.0], [2.3, 0.01, 0.7, 1.9]])
def test_ascent_converges_to_closed_form(losses):
    rule = ProjectedGradientAscent(step_size=0.02, gamma=5.0)
    losses = tf.constant(losses)
    w = tf.fill([len(losses)], 1.0 / len(losses))
    for _ in range(400):
        w = rule(w, losses)
    np.testing.assert_allclose(w.numpy(), closed_form_weights(losses, 5.0).numpy(), atol=1e-6)


def test_closed_form_known_values():
    # 1/3 + L/5 = [0.5333, 0.7333, 0.9333]: all positive after the shift by 0.4.
    np.testing.assert_allclose(closed_form_weights([1.0, 2.0, 3.0], 5.0).numpy(),
                               [2 / 15, 5 / 15, 8 / 15], atol=1e-6)
    # A large gap puts all the weight on the worst task.
    np.testing.assert_allclose(closed_form_weights([0.0, 10.0], 1.0).numpy(), [0.0, 1.0])


def test_exponentiated_gradient_is_group_dro_update_when_gamma_is_zero():
    rule = ExponentiatedGradientAscent(step_size=0.5, gamma=0.0)
    q = np.array([0.2, 0.3, 0.5])
    losses = np.array([1.0, 3.0, 0.2])
    want = q * np.exp(0.5 * losses)
    want /= want.sum()
    np.testing.assert_allclose(rule(tf.constant(q), tf.constant(losses)).numpy(), want, rtol=1e-12)


def test_exponentiated_gradient_survives_huge_losses_and_reaches_closed_form():
    rule = ExponentiatedGradientAscent(step_size=1.0, gamma=0.0)
    w = rule(tf.constant([0.5, 0.5]), tf.constant([1e6, 0.0]))
    np.testing.assert_allclose(w.numpy(), [1.0, 0.0])
    rule = ExponentiatedGradientAscent(step_size=0.05, gamma=5.0)
    losses = tf.constant([1.0, 2.0, 3.0])
    w = tf.fill([3], 1 / 3)
    for _ in range(2000):
        w = rule(w, losses)
    # An interior optimum: the multiplicative rule has the same fixed point.
    np.testing.assert_allclose(w.numpy(), closed_form_weights(losses, 5.0).numpy(), atol=1e-5)


@pytest.mark.parametrize("cls", [ProjectedGradientAscent, ExponentiatedGradientAscent])
def test_rules_round_trip_through_keras_serialization(cls):
    rule = cls(step_size=0.1, gamma=2.0)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(rule))
    assert type(restored) is cls and restored.get_config() == rule.get_config()


@pytest.mark.parametrize("kwargs, match", [
    ({"step_size": 0.0}, r"`step_size` must be > 0. Received: step_size=0.0"),
    ({"step_size": -1.0}, r"`step_size` must be > 0"),
    ({"gamma": -0.5}, r"`gamma` must be >= 0. Received: gamma=-0.5"),
])
def test_bad_hyper_parameters_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProjectedGradientAscent(**kwargs)


@pytest.mark.parametrize("cls", [ProjectedGradientAscent, ExponentiatedGradientAscent])
@pytest.mark.parametrize("kwargs, match", [
    ({"step_size": float("inf")}, r"`step_size` must be a finite number. Received: step_size=inf"),
    ({"step_size": float("nan")}, r"`step_size` must be a finite number. Received: step_size=nan"),
    ({"gamma": float("inf")}, r"`gamma` must be a finite number. Received: gamma=inf"),
    ({"gamma": float("nan")}, r"`gamma` must be a finite number. Received: gamma=nan"),
    ({"step_size": "0.1"}, r"`step_size` must be a finite number. Received: step_size='0.1'"),
    ({"step_size": True}, r"`step_size` must be a finite number. Received: step_size=True"),
    ({"gamma": False}, r"`gamma` must be a finite number. Received: gamma=False"),
    ({"gamma": None}, r"`gamma` must be a finite number. Received: gamma=None"),
])
def test_non_finite_or_non_numeric_hyper_parameters_are_refused(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_numpy_hyper_parameters_are_accepted_as_floats():
    rule = ProjectedGradientAscent(step_size=np.float32(0.5), gamma=np.int64(2))
    assert rule.get_config() == {"step_size": 0.5, "gamma": 2.0}


@pytest.mark.parametrize("gamma", [float("inf"), float("nan"), "5", True])
def test_closed_form_refuses_a_non_finite_gamma(gamma):
    with pytest.raises(ValueError, match=r"`gamma` must be a finite number"):
        closed_form_weights([1.0, 2.0], gamma)


def test_closed_form_needs_positive_gamma():
    with pytest.raises(ValueError, match="`gamma` must be > 0"):
        closed_form_weights([1.0, 2.0], 0.0)


def test_public_api_is_listed():
    for name in kmm.__all__:
        assert hasattr(kmm, name), name
