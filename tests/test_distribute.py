"""Training under `tf.distribute`: `MirroredStrategy` on two logical CPU devices (min-max and
the baselines, and dynamic sparse training) and `MultiWorkerMirroredStrategy` with two local
worker processes.

Both need TensorFlow configured before it initialises (logical devices, a
collective server per worker), so the runs happen in fresh processes
(`tests/distributed_run.py`) that write their results as JSON.
"""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import keras_minmax_mtl as kmm
from tests.distributed_run import MIRRORED_CASES, TASKS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tests", "distributed_run.py")
# The mirrored script trains 11 tiny models: it took over 240 s on 2 cores shared with other jobs.
TIMEOUT_S = 420

# Distributed and single-device runs differ only by float rounding: a replica
# sums its half of the batch, then the halves' gradients and losses are summed,
# instead of one sum over the batch. Measured over 12 steps of the tiny model
# (SGD, lr 0.1): at most 1.2e-7 on the network weights, 6e-8 on the task
# weights (the final ones were bitwise equal) and 2.4e-7 on the logged losses,
# for MirroredStrategy and MultiWorkerMirroredStrategy alike. ATOL is about 4x
# the largest of these.
ATOL = 1e-6
# The variable holding each weighting's state that sets the task weights.
WEIGHT_VARIABLE = {"minmax": "task_weights:0", "minmax_dict": "task_weights:0",
                   "dwa": "task_weights:0",
                   "uncertainty": "log_variances:0"}


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU replicas only, also on a machine with GPUs
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _tail(path, lines=40):
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])


def _free_ports(count):
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs the MirroredStrategy script and the two workers of a MultiWorkerMirroredStrategy
    cluster on 127.0.0.1 side by side (most of their time is importing TensorFlow).

    Returns `{name: (output JSON path, log path, failure message or None)}`.
    """
    folder = tmp_path_factory.mktemp("distribute")
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    commands = {"mirrored": ("mirrored", _env())}
    for i in range(2):
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        commands[f"worker{i}"] = ("worker", _env(TF_CONFIG=config))
    paths = {name: (folder / f"{name}.json", folder / f"{name}.log") for name in commands}
    processes, errors = {}, {}
    try:
        for name, (mode, env) in commands.items():
            out, log = paths[name]
            with open(log, "w") as f:
                processes[name] = subprocess.Popen([sys.executable, SCRIPT, mode, str(out)],
                                                   cwd=REPO, env=env, stdout=f,
                                                   stderr=subprocess.STDOUT)
        deadline = time.monotonic() + TIMEOUT_S
        while any(p.poll() is None for p in processes.values()):
            for name, p in processes.items():
                if p.poll() not in (None, 0) and name not in errors:
                    errors[name] = f"{name} exited with {p.returncode}"
                    if name.startswith("worker"):  # the other would wait for it in vain
                        for other in ("worker0", "worker1"):
                            if processes[other].poll() is None:
                                processes[other].kill()
                                errors[other] = f"{other} killed: {name} failed"
            if time.monotonic() > deadline:
                for name, p in processes.items():
                    if p.poll() is None:
                        p.kill()
                        errors[name] = f"{name} killed after {TIMEOUT_S} s"
            time.sleep(0.2)
        for name, p in processes.items():
            if p.returncode != 0 and name not in errors:
                errors[name] = f"{name} exited with {p.returncode}"
    finally:
        for p in processes.values():
            if p.poll() is None:
                p.kill()
            p.wait()
    return {name: (out, log, errors.get(name)) for name, (out, log) in paths.items()}


def _result(runs, name):
    out, log, error = runs[name]
    if error:
        pytest.fail(f"{error}:\n{_tail(log)}")
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def mirrored(runs):
    """`distributed_run.py mirrored`: single-device and MirroredStrategy runs."""
    return _result(runs, "mirrored")


@pytest.fixture(scope="module")
def workers(runs):
    """The results of the two MultiWorkerMirroredStrategy workers."""
    return [_result(runs, f"worker{i}") for i in range(2)]


def _assert_networks_close(got, want, atol):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=atol)


def _assert_logs_close(got, want, atol):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        np.testing.assert_allclose([g[k] for k in sorted(g)], [w[k] for k in sorted(w)],
                                   rtol=0, atol=atol)


# ---------------------------------------------------------------- MirroredStrategy
@pytest.mark.parametrize("case", MIRRORED_CASES)
def test_mirrored_task_weights_and_state_are_bitwise_identical_on_every_replica(mirrored, case):
    run = mirrored[case]["mirrored"]
    assert run["num_replicas"] == 2
    assert WEIGHT_VARIABLE[case] in run["replicas"]
    # Every variable: network, weighting state, step and epoch counters.
    assert run["replicas"].keys() == run["variables"].keys()
    for name, copies in run["replicas"].items():
        assert len(copies) == 2, name
        np.testing.assert_array_equal(copies[0], copies[1], err_msg=name)


@pytest.mark.parametrize("case", MIRRORED_CASES)
def test_mirrored_run_matches_single_device_run_within_tolerance(mirrored, case):
    single, run = mirrored[case]["single"], mirrored[case]["mirrored"]
    assert single["num_replicas"] == 1
    np.testing.assert_allclose(run["task_weights"], single["task_weights"], rtol=0, atol=ATOL)
    _assert_networks_close(run["network"], single["network"], ATOL)
    assert run["variables"].keys() == single["variables"].keys()
    for name in run["variables"]:  # weighting state and counters too
        np.testing.assert_allclose(np.asarray(run["variables"][name], dtype=float),
                                   np.asarray(single["variables"][name], dtype=float),
                                   rtol=0, atol=ATOL, err_msg=name)
    # The comparison means something: the weights moved away from uniform.
    assert np.abs(np.asarray(single["task_weights"]) - 1 / 3).max() > 0.01


@pytest.mark.parametrize("case", MIRRORED_CASES)
def test_mirrored_logged_task_losses_and_weights_match_single_device_run(mirrored, case):
    single, run = mirrored[case]["single"], mirrored[case]["mirrored"]
    # `{task}_loss`, `{task}_weight` and `loss` after every step.
    assert len(run["batch_logs"]) == 12
    _assert_logs_close(run["batch_logs"], single["batch_logs"], ATOL)
    # Per-epoch logs, `worst_*` and accuracies included.
    assert run["history"].keys() == single["history"].keys()
    for key in single["history"]:
        np.testing.assert_allclose(run["history"][key], single["history"][key], rtol=0,
                                   atol=ATOL, err_msg=key)
    # Logged weights are the weights, not their sum over the replicas.
    if case != "uncertainty":  # its weights exp(-s)/K need not sum to 1
        for logs in run["batch_logs"]:
            assert sum(logs[f"{t}_weight"] for t in TASKS) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose([run["history"][f"{t}_weight"][-1] for t in TASKS],
                               run["task_weights"], rtol=0, atol=1e-7)


def test_mirrored_task_losses_are_means_over_the_global_batch(mirrored):
    step = mirrored["global_batch"]
    assert step["num_replicas"] == 2
    assert sorted(step["replica_sizes"]) == [2, 3]  # a batch of 5 split unevenly
    want = np.asarray(step["by_hand"]["global"])  # over the whole global batch
    logged = [step["logged"][f"{t}_loss"] for t in TASKS]
    evaluated = [step["evaluate"][f"{t}_loss"] for t in TASKS]
    np.testing.assert_allclose(logged, want, rtol=1e-6)
    np.testing.assert_allclose(evaluated, want, rtol=1e-6)
    # Not one replica's share: the replicas' parts of the batch have
    # losses far from the global mean (the MSE task most of all).
    for part in step["by_hand"]["replicas"]:
        assert abs(part[2] - want[2]) > 0.5
    assert step["logged"]["worst_loss"] == pytest.approx(want.max(), rel=1e-6)
    # The ascent step used the global losses too.
    ascent = kmm.ProjectedGradientAscent(step_size=0.1, gamma=1.0)
    expected = ascent(np.asarray(step["task_weights_before"], np.float32),
                      want.astype(np.float32)).numpy()
    np.testing.assert_allclose(step["task_weights_after"], expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose([step["logged"][f"{t}_weight"] for t in TASKS], expected,
                               rtol=0, atol=1e-6)


# ------------------------------------------------------ MultiWorkerMirroredStrategy
def test_multi_worker_workers_end_with_identical_task_and_network_weights(workers):
    first, second = workers
    assert sorted([first["task"], second["task"]]) == [0, 1]
    assert first["num_replicas"] == second["num_replicas"] == 2
    np.testing.assert_array_equal(first["task_weights"], second["task_weights"])
    for a, b in zip(first["network"], second["network"]):
        np.testing.assert_array_equal(a, b)
    # Every variable (network, task weights, counters; not the metric accumulators).
    assert first["variables"].keys() == second["variables"].keys()
    assert "task_weights:0" in first["variables"]
    for name in first["variables"]:
        np.testing.assert_array_equal(first["variables"][name], second["variables"][name],
                                      err_msg=name)


def test_multi_worker_task_weights_are_on_the_simplex_and_moved_from_uniform(workers):
    weights = np.asarray(workers[0]["task_weights"])
    assert weights.shape == (3,)
    assert (weights >= 0).all() and weights.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.abs(weights - 1 / 3).max() > 0.05
    assert workers[0]["variables"]["train_step_counter:0"] == 12


def test_multi_worker_run_matches_single_process_run_within_tolerance(workers, mirrored):
    # Same model, seeds, global batches (see `multi_worker_dataset_fn`) and steps
    # as the single-device "minmax" run of the MirroredStrategy script.
    single = mirrored["minmax"]["single"]
    for worker in workers:
        np.testing.assert_allclose(worker["task_weights"], single["task_weights"], rtol=0,
                                   atol=ATOL)
        _assert_networks_close(worker["network"], single["network"], ATOL)
        _assert_logs_close(worker["batch_logs"], single["batch_logs"], ATOL)


def test_mirrored_dict_output_model_trains_exactly_like_the_list_output_one(mirrored):
    for mode in ("single", "mirrored"):
        dict_run, list_run = mirrored["minmax_dict"][mode], mirrored["minmax"][mode]
        np.testing.assert_array_equal(dict_run["task_weights"], list_run["task_weights"])
        _assert_networks_close(dict_run["network"], list_run["network"], 0.0)


# ------------------------------------------------ dynamic sparse training (RigL)
def test_dst_masks_are_identical_on_every_replica_and_match_one_device(mirrored):
    single, run = mirrored["dst"]["single"], mirrored["dst"]["mirrored"]
    assert run["num_replicas"] == 2
    assert [s["step"] for s in run["snapshots"]] == [2, 4, 6, 8, 10]
    for one, two in zip(single["snapshots"], run["snapshots"]):
        for mask_one, replicas in zip(one["masks"], two["masks"]):
            assert len(replicas) == 2
            np.testing.assert_array_equal(replicas[0], replicas[1])
            np.testing.assert_array_equal(replicas[0], mask_one[0])
