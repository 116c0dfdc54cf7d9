"""The Keras 3 path (`keras_minmax_mtl.keras3`) on the TensorFlow and JAX back-ends.

The back-end of Keras 3 is fixed per process, so `tests/keras3_run.py` trains
the tiny models once per back-end in a fresh process (both at once) and writes
what it saw; the tests here assert on it, against the tf_keras path's own
ascent rules (the same maths) and against plain Keras 3 models.
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import keras_minmax_mtl as kmm
from keras_minmax_mtl.core.loss_balance import AUTO_NORMALIZE_RATIO, starvation_message

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tests", "keras3_run.py")
HAVE_JAX = importlib.util.find_spec("jax") is not None
BACKENDS = ["tensorflow", pytest.param("jax", marks=pytest.mark.skipif(
    not HAVE_JAX, reason="jax is not installed: pip install '.[keras3]' to test the JAX back-end"))]


#: JAX compiles every eager op of keras3_run.py with XLA (about 200 compilations, most of its
#: time); without LLVM's optimisation passes they compile faster (34 CPU s instead of 43) and
#: differ from the default only by float rounding, which the checks here allow. Not used for
#: keras3_pruning_run.py, which checks that a stripped model computes exactly the masked one
#: (true with the default passes, 1 ulp apart without them).
XLA_QUICK_COMPILE = "--xla_backend_optimization_level=0"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`{backend: what keras3_run.py wrote}`, both back-ends run side by side."""
    folder = tmp_path_factory.mktemp("keras3")
    started = {}
    for backend in ["tensorflow"] + (["jax"] if HAVE_JAX else []):
        path = os.pathsep.join(p for p in [REPO, os.environ.get("PYTHONPATH", "")] if p)
        env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=path, TF_CPP_MIN_LOG_LEVEL="2")
        if backend == "jax":  # two CPU devices for `keras.distribution.DataParallel`
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count=2 {XLA_QUICK_COMPILE}"
        env.pop("TF_USE_LEGACY_KERAS", None)  # the run imports tfmot itself, last
        out = folder / f"{backend}.json"
        started[backend] = (out, subprocess.Popen([sys.executable, SCRIPT, str(out)], env=env,
                                                  cwd=REPO, stdout=subprocess.PIPE,
                                                  stderr=subprocess.STDOUT, text=True))
    results = {}
    for backend, (out, process) in started.items():
        log, _ = process.communicate(timeout=600)
        assert process.returncode == 0, f"{backend}:\n{log[-4000:]}"
        results[backend] = json.loads(out.read_text())
    return results


def brute_force_projection(v):
    """Π_Δ(v) by trying every support (independent of the sort-based algorithm)."""
    v = np.asarray(v, np.float64)
    best = None
    for mask in range(1, 2 ** len(v)):
        support = [i for i in range(len(v)) if mask >> i & 1]
        theta = (v[support].sum() - 1) / len(support)
        w = np.maximum(v - theta, 0)
        if abs(w.sum() - 1) < 1e-9 and (best is None or np.sum((w - v) ** 2) < np.sum((best - v) ** 2)):
            best = w
    return best


def iterate(rule, losses, steps):
    """`steps` ascent steps of the tf_keras path's `rule` from uniform weights with fixed `losses`."""
    losses = tf.constant(losses, tf.float32)
    w = tf.fill([len(losses)], 1.0 / len(losses))
    for _ in range(steps):
        w = rule(w, losses)
    return w.numpy()


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_network_weights_reach_the_closed_form(runs, backend):
    run = runs[backend]["frozen_projected"]
    assert run["tasks"] == ["alpha", "zeta"]  # dict outputs: the keys
    assert run["steps"] == 40
    want = brute_force_projection(0.5 + np.array(run["losses"]) / 2.0)
    np.testing.assert_allclose(run["weights"], want, atol=1e-6)
    np.testing.assert_allclose(run["closed_form"], want, atol=1e-6)
    np.testing.assert_allclose(run["weights"], kmm.closed_form_weights(run["losses"], 2.0).numpy(),
                               atol=1e-6)
    # The same 40 steps of the tf_keras path's rule from the same losses.
    np.testing.assert_allclose(
        run["weights"], iterate(kmm.ProjectedGradientAscent(0.2, 2.0), run["losses"], 40), atol=1e-6)
    assert run["logged_weights"] == run["weights"]
    assert run["evaluate_keys"] == ["alpha_loss", "alpha_weight", "loss", "zeta_loss", "zeta_weight"]
    assert abs(sum(run["weights"]) - 1) < 1e-6 and min(run["weights"]) >= 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_exponentiated_steps_equal_the_tf_keras_rule(runs, backend):
    run = runs[backend]["frozen_exponentiated"]
    assert run["steps"] == 3
    want = iterate(kmm.ExponentiatedGradientAscent(0.5, 5.0), run["losses"], 3)
    np.testing.assert_allclose(run["weights"], want, atol=1e-6)
    # and by hand: w <- w exp(ηG) / Σ w exp(ηG)
    w, losses = np.full(2, 0.5), np.array(run["losses"])
    for _ in range(3):
        w = w * np.exp(0.5 * (losses - 5.0 * (w - 0.5)))
        w = w / w.sum()
    np.testing.assert_allclose(run["weights"], w, atol=1e-6)
    assert run["weights"] != [0.5, 0.5]


@pytest.mark.parametrize("backend", BACKENDS)
def test_list_outputs_losses_and_an_equal_weighting_step_equal_plain_keras(runs, backend):
    run = runs[backend]["list"]
    assert run["tasks"] == ["out_a", "out_b"]  # list outputs: the output layers' names
    for key in ("loss", "out_a_loss", "out_b_loss"):
        assert run["ours"][key] == run["plain"][key], key
        assert run["weighted_ours"][key] == run["weighted_plain"][key], key
    assert run["weighted_ours"]["out_a_loss"] != run["ours"]["out_a_loss"]  # the weights mattered
    assert run["ours"]["out_a_weight"] == run["ours"]["out_b_weight"] == 0.5
    # EW with scale="num_tasks" is the plain sum: four SGD steps give the same network.
    assert run["max_weight_difference"] == 0.0
    assert run["history_keys"] == ["loss", "out_a_loss", "out_a_weight", "out_b_accuracy",
                                   "out_b_loss", "out_b_weight"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_save_load_continue_equals_not_saving(runs, backend):
    run = runs[backend]["save_load"]
    assert run["class"] == "MinMaxMultiTask"
    assert run["config"] == "exponentiated" and run["update_every"] == 2
    assert run["same_at_load"]
    assert run["optimizer_iterations"] == [8, 8] and run["steps"] == [8, 8]
    assert run["task_weights"][0] == run["task_weights"][1]
    assert run["balance"] == [True, {"zeta": 2.0}]  # normalize_losses and loss_scales
    assert run["initial_losses"][0] == run["initial_losses"][1] and min(run["initial_losses"][0]) > 0
    assert run["task_weights"][0] != [0.5, 0.5]
    assert run["weights_equal"] and run["max_weight_difference"] == 0.0
    assert run["history"][0] == run["history"][1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments_are_refused_with_their_names(runs, backend):
    errors = runs[backend]["errors"]
    expected = {
        "step_size": "ValueError: Argument `step_size` must be > 0. Received: step_size=0.0",
        "gamma": "ValueError: Argument `gamma` must be a finite number. Received: gamma=nan",
        "update_every": "Argument `update_every` must be an integer >= 1. Received: update_every=0",
        "ascent": "Argument `ascent` must be one of ['exponentiated', 'projected']. Received: ascent='mirror'",
        "scale": "Argument `scale` must be a finite number > 0 or 'num_tasks'. Received: scale=-1",
        "weighting": "TypeError: Argument `weighting` must be a `keras_minmax_mtl.keras3.TaskWeighting`",
        "sequential": "TypeError: Argument `base_model` must be a Functional Keras 3 model",
        "not_a_model": "Received: base_model=3 of type int.",
        "loss_weights": "Argument `loss_weights` must be None",
        "loss_missing": "Argument `loss` must name every task ['alpha', 'zeta'] and nothing else. "
                        "Received: missing ['alpha'], unknown []",
        "loss_unknown_name": "Argument `loss` for task 'alpha': Could not interpret loss identifier: msee",
        "loss_list_length": "Argument `loss` as a list must hold one loss per task ['alpha', 'zeta']",
        "not_compiled": "RuntimeError: The model must be compiled (with a loss per task)",
        "targets": "ValueError: Argument `y` must hold the targets of exactly the tasks ['alpha', 'zeta'] "
                   "(a dict by task, or a list in task order). Received: ['beta', 'zeta']",
        "normalize_losses": "ValueError: Argument `normalize_losses` must be True, False or 'auto'. "
                            "Received: normalize_losses='yes'",
        "loss_scales": "ValueError: Argument `loss_scales` names tasks the model does not have: "
                       "['depth']; its tasks are ['out_a', 'out_b']. Received: loss_scales={'depth': 2.0}",
        "loss_scales_value": "ValueError: Argument `loss_scales` must hold finite numbers > 0. "
                             "Received: loss_scales={'out_a': 0.0}",
        "temperature": "ValueError: Argument `temperature` must be > 0. Received: temperature=0.0",
        "initial_log_variance": "ValueError: Argument `initial_log_variance` must be a finite number. "
                                "Received: initial_log_variance=inf",
    }
    for name, message in expected.items():
        assert message in errors[name], (name, errors[name])
    assert errors["round_trip"] == [True] * 4
    assert errors["model_round_trip"] == ["MinMaxWeighting", "exponentiated", 3, "num_tasks",
                                          ["out_a", "out_b"]]
    assert errors["other_round_trips"] == ["EqualWeighting", "a_weight", -0.5, 3.0]
    # MinMaxMultiTask defaults to "auto", as on the tf_keras path
    assert errors["balance_round_trip"] == ["auto", {"out_b": 1.5}, "auto"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_uncertainty_weighting_step_is_the_gradient_of_its_objective(runs, backend):
    run = runs[backend]["uw_dwa"]
    losses = np.array([run["uw_logs"]["out_a_loss"][0], run["uw_logs"]["out_b_loss"][0]])
    # the list model's losses on the batch, as plain Keras computes them (`test_list_outputs...`)
    np.testing.assert_allclose(losses, [runs[backend]["list"]["plain"]["out_a_loss"],
                                        runs[backend]["list"]["plain"]["out_b_loss"]], rtol=1e-6)
    # SGD(0.1) on s from 0: s <- 0 - 0.1 · d/ds (1/K) Σ (e^-s L + s) = 0.1 (L - 1)/2
    np.testing.assert_allclose(run["uw_log_variances"], 0.1 * (losses - 1) / 2, atol=1e-7)
    np.testing.assert_allclose(run["uw_weights"], np.exp(-np.array(run["uw_log_variances"])) / 2,
                               rtol=1e-6)
    # the objective at s = 0: (L_a + L_b)/2
    assert run["uw_logs"]["loss"][0] == pytest.approx(losses.sum() / 2, rel=1e-6)
    # the logged weights are those the step used (the optimizer updates s after the loss)
    assert run["uw_logs"]["out_a_weight"] == run["uw_logs"]["out_b_weight"] == [0.5]


@pytest.mark.parametrize("backend", BACKENDS)
def test_dwa_weights_are_the_softmax_of_the_epoch_loss_ratios(runs, backend):
    run = runs[backend]["uw_dwa"]
    history = run["dwa_history"]
    means = np.array([history["out_a_loss"], history["out_b_loss"]]).T  # (epochs, K)
    weights = np.array([history["out_a_weight"], history["out_b_weight"]]).T
    np.testing.assert_array_equal(weights[:2], 0.5)  # 1/K for the first two epochs
    for epoch in (2, 3):
        ratio = means[epoch - 1] / means[epoch - 2]
        want = np.exp(ratio / 2.0) / np.exp(ratio / 2.0).sum()
        np.testing.assert_allclose(weights[epoch], want, atol=1e-6)
    assert run["dwa_weights"] == weights[3].tolist() and run["dwa_epochs_done"] == 3
    assert not np.allclose(weights[2], 0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_normalized_and_scaled_losses_step_equals_plain_keras_loss_weights(runs, backend):
    run = runs[backend]["balance"]
    ours, plain = run["ours"], run["plain"]
    # s_t L_t / L_t^(0) with EW and scale K: plain Keras with loss_weights s_t / L_t^(0)
    assert run["max_weight_difference"] < 1e-6
    for key in ("loss", "out_a_loss", "out_b_loss"):
        assert ours[key][0] == pytest.approx(plain[key][0], rel=1e-6), key
    np.testing.assert_allclose(run["initial_losses"], run["first_losses"], rtol=1e-6)
    assert ours["loss"][0] == pytest.approx(3.0 + 0.5, rel=1e-6)  # Σ s_t · 1 on the first step


@pytest.mark.parametrize("backend", BACKENDS)
def test_auto_normalises_losses_of_different_scales_and_raw_ones_starve_with_a_warning(runs, backend):
    run = runs[backend]["balance"]
    auto, raw = run["auto"], run["raw"]
    first = np.array(auto["initial_losses"])
    assert first[1] / first[0] > AUTO_NORMALIZE_RATIO and auto["normalizes"]
    np.testing.assert_allclose(auto["weights"], [0.5, 0.5], atol=1e-6)  # L/L0 = 1 for both
    assert auto["warnings"] == []
    # raw losses 10^4 apart: the weights go to a vertex; the tf_keras path's warning, once
    assert raw["weights"] == [0.0, 1.0] and not raw["normalizes"]
    assert raw["warnings"] == [starvation_message(["alpha", "zeta"], [0.0, 1.0], [0.0, 0.0],
                                                  ["alpha"])]
    # losses of one scale stay raw under "auto" (the default): the frozen run's weights are
    # the closed form of its raw losses (`test_frozen_network_weights_reach_the_closed_form`)
    losses = runs[backend]["frozen_projected"]["losses"]
    assert max(losses) / min(losses) < AUTO_NORMALIZE_RATIO


@pytest.mark.skipif(not HAVE_JAX, reason="jax is not installed: pip install '.[keras3]'")
def test_jax_data_parallel_on_two_cpu_devices_trains_as_one_device(runs):
    run = runs["jax"]["data_parallel"]
    assert run["devices"] == 2 and "'batch': 2" in run["sharding"]
    assert run["steps"] == 4
    assert run["max_weight_difference"] < 1e-6
    np.testing.assert_allclose(run["task_weights"][1], run["task_weights"][0], atol=1e-6)
    assert run["task_weights"][0] != [0.5, 0.5] and min(run["task_weights"][0]) > 0
    for key, values in run["history"][0].items():
        np.testing.assert_allclose(run["history"][1][key], values, rtol=1e-5, err_msg=key)


def test_the_path_imports_neither_tf_keras_nor_tfmot_and_jax_runs_without_tensorflow(runs):
    assert runs["tensorflow"]["modules"] == ["tensorflow"]
    if HAVE_JAX:
        assert runs["jax"]["modules"] == []


def test_it_trains_after_tfmot_set_legacy_keras_and_refuses_tf_keras_models_naming_the_cause(runs):
    legacy = runs["tensorflow"]["legacy"]
    assert legacy["env"] == "1" and legacy["tf_keras_class"].startswith("tf_keras.")
    assert legacy["steps"] == 2 and legacy["weights"] != [0.5, 0.5]
    message = runs["tensorflow"]["errors"]["legacy_error"]
    assert "Received a tf_keras (Keras 2) model" in message
    assert "TF_USE_LEGACY_KERAS=1 (tensorflow_model_optimization sets it" in message
    assert "`keras_minmax_mtl.MinMaxMultiTask`" in message


def test_training_under_tf_distribute_is_refused_not_silently_wrong(runs):
    errors = runs["tensorflow"]["errors"]
    assert errors["mirrored"].startswith(
        "keras_minmax_mtl.keras3 does not support `tf.distribute` yet: this model trains under "
        "MirroredStrategy with 2 replicas")
    assert errors["mirrored_steps"] == 0  # refused before any step
