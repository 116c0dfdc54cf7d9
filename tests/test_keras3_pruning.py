"""Pruning, DST, strip and LiteRT export of the Keras 3 path (`keras_minmax_mtl.keras3`) without tfmot.

`tests/keras3_pruning_run.py` prunes tiny models: here in this process on the
TensorFlow back-end (Keras 3 runs beside tf_keras; TensorFlow is already
imported, so this costs no second import), and in a fresh process on JAX when
jax is installed (started first, so both run at once). The tests assert on
what it saw, against tfmot's own schedules and against the plain (stripped)
Keras 3 models.
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

from keras_minmax_mtl.sparsity import maths

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tests", "keras3_pruning_run.py")
HAVE_JAX = importlib.util.find_spec("jax") is not None
BACKENDS = ["tensorflow", pytest.param("jax", marks=pytest.mark.skipif(
    not HAVE_JAX, reason="jax is not installed: pip install '.[keras3]' to test the JAX back-end"))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keras3_pruning")
    process = None
    if HAVE_JAX:
        env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2",
                   PYTHONPATH=os.pathsep.join([REPO] + [p for p in os.environ.get(
                       "PYTHONPATH", "").split(os.pathsep) if p]))
        process = subprocess.Popen([sys.executable, SCRIPT, str(folder / "jax.json")], env=env,
                                   cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
    sys.path.insert(0, os.path.join(REPO, "tests"))
    try:
        import keras3_pruning_run as run  # noqa: E402  (imports Keras 3 in this process)
    finally:
        sys.path.pop(0)
    if run.BACKEND != "tensorflow":
        pytest.skip(f"this process's Keras 3 back-end is {run.BACKEND!r}, not tensorflow")
    run.main(str(folder / "tensorflow.json"))
    results = {"tensorflow": json.loads((folder / "tensorflow.json").read_text())}
    if process is not None:
        log, _ = process.communicate(timeout=600)
        assert process.returncode == 0, log[-4000:]
        results["jax"] = json.loads((folder / "jax.json").read_text())
    for backend, result in results.items():
        crashed = {k: v["crashed"] for k, v in result.items() if isinstance(v, dict) and "crashed" in v}
        assert not crashed, f"{backend}: {crashed}"
    return results


def test_the_polynomial_schedule_is_tfmots_polynomial_decay():
    steps = [0, 1, 2, 3, 7, 10, 11, 50, 99, 100, 101, 150]
    for begin, end, power, frequency in [(0, 100, 3, 10), (5, 55, 2, 5), (1, 101, 3, 1)]:
        theirs = tfmot.sparsity.keras.PolynomialDecay(0.1, 0.9, begin, end, power, frequency)
        for step in steps:
            prune, sparsity = theirs(step)
            assert maths.should_prune_at(step, begin, end, frequency) == bool(prune), (step, begin)
            # tfmot computes in float32, this in float64: equal to float32 rounding.
            assert maths.polynomial_sparsity(step, 0.1, 0.9, begin, end, power) == pytest.approx(
                float(sparsity), rel=1e-6)
    constant = tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=2, end_step=6, frequency=2)
    assert [maths.should_prune_at(t, 2, 6, 2) for t in range(9)] == [bool(constant(t)[0]) for t in range(9)]


def test_the_magnitude_mask_is_tfmots_on_distinct_magnitudes_and_exact_on_ties():
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_impl import Pruning

    values = np.random.default_rng(0).normal(size=(6, 7)).astype("float32")
    for sparsity in (0.0, 0.3, 0.5, 0.9, 0.999):
        schedule = tfmot.sparsity.keras.ConstantSparsity(sparsity, begin_step=0)
        _, theirs = Pruning(lambda: 0, [], schedule, (1, 1), "AVG")._update_mask(values)
        np.testing.assert_array_equal(maths.magnitude_mask(values, sparsity), theirs.numpy())
    assert maths.magnitude_mask(values, 0.999).sum() == 1  # tfmot keeps at least one weight too
    tied = np.array([0.0, 0.0, 0.0, 1.0, 2.0])
    np.testing.assert_array_equal(maths.magnitude_mask(tied, 0.4), [1, 0, 0, 1, 1])  # exactly 3


def test_the_shared_maths_keeps_exact_counts_and_states_its_examples():
    rng = np.random.default_rng(0)
    mask = maths.random_mask((5, 6), 12, np.random.default_rng(1))
    assert mask.shape == (5, 6) and mask.sum() == 12
    weights, gradients = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
    for n in (0, 3, 12):
        new = maths.prune_and_grow(mask, np.abs(weights * mask), np.abs(gradients), n, n)
        assert new.sum() == 12 and new.dtype == mask.dtype
    # n_drop is capped at the 12 active, n_grow at the 30 free after the drop.
    assert maths.prune_and_grow(mask, np.abs(weights), np.abs(gradients), 20, 20).sum() == 20
    assert maths.prune_and_grow(mask, np.abs(weights), np.abs(gradients), 0, 40).sum() == 30
    assert maths.refresh_points(501, 1001, 2) == (668, 834)
    assert maths.drop_fraction_at(0, 0.3, 10) == 0.3 and maths.drop_fraction_at(11, 0.3, 10) == 0.0
    assert maths.drop_fraction_at(5, 0.3, 10) == pytest.approx(0.15)
    np.testing.assert_allclose(maths.reweighted_factors(np.array([0.0, 1.0]), 0.5), [2.0, 2 / 3])
    assert maths.polynomial_sparsity(50, 0.0, 0.9, 0, 100, 3) == pytest.approx(0.7875)
    np.testing.assert_array_equal(maths.magnitude_mask(np.array([0.3, -2.0, 0.1, 1.0]), 0.5),
                                  [0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"Argument `sparsity` must be in \[0, 1\). Received: sparsity=1.5"):
        maths.magnitude_mask(weights, 1.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_wrapped_layer_computes_the_plain_layer_with_the_masked_kernel(runs, backend):
    for name, entry in runs[backend]["wrapper"].items():
        assert entry["ones"], name                       # all-ones mask: bitwise the plain layer
        assert entry["masked_max_difference"] == 0.0, name
        assert entry["weights"] == ["mask", "kernel", "bias"], name


@pytest.mark.parametrize("backend", BACKENDS)
def test_update_masks_prunes_at_tfmots_polynomial_steps_with_exact_counts(runs, backend):
    run = runs[backend]["polynomial"]
    theirs = tfmot.sparsity.keras.PolynomialDecay(0.0, 0.8, 0, 6, 3, 2)
    want = [[t, float(theirs(t)[1])] for t in range(1, 9) if bool(theirs(t)[0])]
    assert [t for t, _ in run["history"]] == [2, 4, 6]
    np.testing.assert_allclose(run["history"], want, rtol=1e-6)  # tfmot: float32
    for t, (prune, sparsity) in enumerate(run["schedule_values"]):
        assert prune == bool(theirs(t)[0]) and sparsity == pytest.approx(float(theirs(t)[1]), rel=1e-6)
    constant = tfmot.sparsity.keras.ConstantSparsity(0.5, 2, 6, 2)
    assert [p for p, _ in run["constant_values"]] == [bool(constant(t)[0]) for t in range(9)]
    # Before step k (1-based) the zeros are those of the last update at or before k.
    sizes, current = run["sizes"], {name: 0 for name in run["sizes"]}
    updates = dict((t, s) for t, s in run["history"])
    for k, record in enumerate(run["steps"], start=1):
        if k in updates:
            current = {n: size - int(round(size * (1 - updates[k]))) for n, size in sizes.items()}
        assert record["zeros"] == current, k


@pytest.mark.parametrize("backend", BACKENDS)
def test_masks_survive_keras_save_load_and_strip_gives_a_plain_equal_model(runs, backend):
    run = runs[backend]["save_load"]
    assert run["class"] == "MinMaxMultiTask"
    assert run["wrappers"] == ["masked_h1", "masked_h2"]
    assert run["masks_equal"] and run["weights_equal"] and run["predictions_equal"]
    assert run["task_weights_equal"]
    assert run["sparsity"] == {"size": 128, "zeros": 64, "sparsity": 0.5}
    assert run["stripped_layers"] == ["InputLayer", "Dense", "Dense", "Dense", "Dense"]
    assert run["functional_strip_layers"] == run["stripped_layers"]
    assert run["stripped_sparsity"] == run["sparsity"]
    # Stripped computes w where the wrapper computes w * mask: the same values, through kernels
    # that some CPUs fuse differently (1.2e-7 with oneDNN on AVX-512), so not always bit-equal.
    assert run["stripped_max_difference"] <= 1e-6 and run["stripped_task_weights_equal"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_reweighted_stages_dense_then_penalty_with_refreshes_then_one_prune(runs, backend):
    run = runs[backend]["reweighted"]
    assert run["refresh_steps"] == [5] == list(maths.refresh_points(3, 7, 1))
    coefficients = [round(s["coefficient"], 6) for s in run["steps"]]
    assert coefficients == [0, 0, 0.01, 0.01, 0.01, 0.01] + [0] * 6
    # w_ref is taken at begin_step (3) and at the refresh (5): factors = 1/(|W*M| + eps) then.
    assert [k for k, s in enumerate(run["steps"], start=1) if s["factors_match"]] == [3, 5]
    assert run["history"] == [[7, 0.5]]
    held = {n: size // 2 for n, size in run["sizes"].items()}
    assert [s["zeros"] for s in run["steps"]] == [{n: 0 for n in held}] * 6 + [held] * 6
    assert run["penalty"] == pytest.approx(run["penalty_by_hand"], rel=1e-6)
    assert run["config"]["rho"] == 0.01 and run["config"]["epsilon"] == 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_rigl_keeps_exact_counts_grows_the_largest_gradients_and_resets_adam(runs, backend):
    run = runs[backend]["dst"]
    assert run["initial_counts"] == [24, 40]
    assert [u["step"] for u in run["updates"]] == [2, 4, 6]
    for update in run["updates"]:
        assert update["zero_weights_outside_mask"]
        # Adam's m and v of each kernel, reset where a weight was grown; grown weights start at 0.
        assert update["slots"] == [2, 2]
        assert update["slots_zero_where_grown"] and update["grown_weights_zero"]
        for old, values, gradient, reference, new in zip(
                update["old_masks"], update["values"], update["gradients"],
                update["reference_gradients"], update["new_masks"]):
            old, values, new = np.array(old), np.abs(np.array(values)), np.array(new)
            gradient = np.abs(np.array(gradient))
            # The gradient at every position is the stripped model's (masked ones included).
            np.testing.assert_allclose(gradient, np.abs(np.array(reference)), rtol=1e-5, atol=1e-7)
            n_active = int(old.sum())
            assert int(new.sum()) == n_active
            n_drop = int(round(update["fraction"] * n_active))
            # An independent oracle: keep the largest |W*M| of the active, grow the largest |g|.
            active = np.flatnonzero(old.ravel())
            kept = active[np.argsort(-values.ravel()[active], kind="stable")[:n_active - n_drop]]
            off = np.setdiff1d(np.arange(old.size), kept)
            grown = off[np.argsort(-gradient.ravel()[off], kind="stable")[:n_drop]]
            want = np.zeros(old.size)
            want[np.concatenate([kept, grown])] = 1
            np.testing.assert_array_equal(new.ravel(), want)
    assert sum(r["grown"] for r in run["history"][0]["layers"].values()) > 0
    assert run["set"]["active"] == [run["set"]["initial"]] * 3
    assert run["set"]["grown"][0] > 0


def test_litert_files_are_verified_and_a_failed_export_leaves_the_users_file(runs):
    import ast

    run = runs["tensorflow"]["export"]
    report = run["int8"]
    assert report["quantization"] == "int8" and report["bytes"] > 0
    assert report["tasks"] == ["a", "b"]
    assert report["sparsity"]["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert set(report["verification"]["tasks"]) == {"a", "b"}
    assert all(r["top1_agreement"] >= 0.9 for r in report["verification"]["tasks"].values())
    prefix = "The float LiteRT file disagrees with the Keras model beyond 1e-12·(1+|y|) on tasks "
    assert run["tight"].startswith(prefix) and run["tight"].endswith(". Nothing was written.")
    errors = ast.literal_eval(run["tight"][len(prefix):-len(". Nothing was written.")])
    assert set(errors) == {"a", "b"} and max(errors.values()) < 1e-6  # the float file: ~1e-7
    assert run["nan"].startswith("The Keras model computes NaN or ±inf for tasks ['a', 'b']")
    assert run["existing_content"] == "the user's file"
    assert run["folder"] == ["int8.tflite", "kept.tflite"]  # no temporary file left


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments_are_refused_with_their_names(runs, backend):
    errors = runs[backend]["errors"]
    expected = {
        "polynomial_end": "ValueError: Argument `end_step` must be > begin_step=5 for a decay. Received: end_step=5",
        "sparsity": "ValueError: Argument `target_sparsity` must be in [0, 1). Received: target_sparsity=1.0",
        "frequency": "ValueError: Argument `frequency` must be an integer > 0. Received: frequency=0",
        "refresh": "Argument `refresh_steps` must hold integers in (begin_step, prune_step) = (2, 5)",
        "schedule": "TypeError: Argument `schedule` must be a `keras_minmax_mtl.keras3.schedules.PruningSchedule`",
        "layer": "Received: layer 'batch_normalization' of class BatchNormalization",
        "layer_names": "Received unknown or unprunable names: ['nope']",
        "no_wrappers": "`UpdateMasks` was given a model without `PruneMasked` wrappers",
        "rigl_data": "Argument `gradient_data` must be a batch `(x, y)`",
        "method": "Argument `method` must be one of ['rigl', 'set']. Received: method='snip'",
        # The schedule rules are the tf_keras path's (`sparsity.maths.check_dst_schedule`).
        "dst_end_step": "ValueError: Argument `end_step` must be an integer >= update_every (10): "
                        "the first update happens at step `update_every`. Received: end_step=5",
        "dst_decay": "ValueError: Argument `decay` must be one of ['cosine', 'constant']. "
                     "Received: decay='linear'",
    }
    if backend == "jax":
        expected["export_backend"] = "export_litert needs the TensorFlow back-end"
    for name, message in expected.items():
        assert message in errors[name], (name, errors[name])
    assert errors["round_trip"] == [True] * 3 and errors["callback_round_trip"]
