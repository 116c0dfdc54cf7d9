"""Compression under a worst-task budget: the search, the methods it builds, `kmm compress`."""
import json

import numpy as np
import pytest

from keras_minmax_mtl.cli import main as cli
from keras_minmax_mtl.sparsity import budget
from keras_minmax_mtl.sparsity.budget import passes, search_budget


# --------------------------------------------------------------- the search (pure Python)
def _fake(passing_up_to):
    """A fake `evaluate`: worst 0.80 up to `passing_up_to`, 0.50 above; records each call."""
    calls = []

    def evaluate(sparsity):
        calls.append(sparsity)
        return 0.80 if sparsity <= passing_up_to else 0.50

    return evaluate, calls


def test_the_ladder_climbs_to_the_first_fail_then_bisects_towards_the_last_pass():
    evaluate, calls = _fake(0.8)
    chosen, tried = search_budget(evaluate, reference=0.80, max_worst_drop=1.0)
    assert calls == [0.5, 0.75, 0.9, 0.825, 0.7875]
    assert [t["passed"] for t in tried] == [True, True, False, False, True]
    assert [t["sparsity"] for t in tried] == calls and chosen == 0.7875


def test_when_every_rung_passes_the_last_one_is_chosen_and_nothing_is_bisected():
    evaluate, calls = _fake(0.99)
    assert search_budget(evaluate, 0.80, 1.0)[0] == 0.975
    assert calls == [0.5, 0.75, 0.9, 0.95, 0.975]


def test_when_nothing_passes_it_bisects_towards_the_dense_model_and_chooses_it():
    evaluate, calls = _fake(0.05)
    assert search_budget(evaluate, 0.80, 1.0, bisections=3)[0] == 0.0
    assert calls == [0.5, 0.25, 0.125, 0.0625]
    evaluate, calls = _fake(0.2)
    assert search_budget(evaluate, 0.80, 1.0, bisections=3)[0] == 0.1875
    assert calls == [0.5, 0.25, 0.125, 0.1875]


def test_a_custom_ladder_without_bisections_stops_at_the_first_fail():
    evaluate, calls = _fake(0.6)
    assert search_budget(evaluate, 0.80, 1.0, ladder=(0.5, 0.9, 0.95), bisections=0)[0] == 0.5
    assert calls == [0.5, 0.9]


def test_a_drop_of_exactly_the_budget_passes_on_float32_accuracies():
    # MultiFashion, 2 000 validation canvases: the control 1399 right, a candidate 1379 (exactly
    # 1 point less); Keras' float32 accuracies put the candidate 5e-8 below the float64 edge.
    control, candidate = np.float32(1399 / 2000), np.float32(1379 / 2000)
    assert float(candidate) < float(control) - 0.01
    assert passes(float(candidate), float(control), 1.0)
    assert not passes(float(np.float32(1378 / 2000)), float(control), 1.0)


def test_the_budget_is_in_accuracy_points_and_its_edge_passes():
    assert passes(0.79, 0.80, 1.0) and passes(0.80, 0.80, 0.0) and passes(0.95, 0.80, 0.0)
    assert not passes(0.7899, 0.80, 1.0) and not passes(0.7999, 0.80, 0.0)
    tried = search_budget(lambda s: {0.5: 0.79, 0.75: float("nan")}[s], 0.80, 1.0,
                          ladder=(0.5, 0.75), bisections=0)[1]
    assert [t["passed"] for t in tried] == [True, False]  # a NaN accuracy fails


@pytest.mark.parametrize("kwargs, message", [
    ({"ladder": (0.9, 0.5)}, "Argument `ladder` must be a non-empty, strictly increasing "
                             "sequence of sparsities in (0, 1). Received: ladder=(0.9, 0.5)"),
    ({"ladder": (0.5, 1.0)}, "Received: ladder=(0.5, 1.0)"),
    ({"ladder": ()}, "Received: ladder=()"),
    ({"max_worst_drop": -1.0}, "Argument `max_worst_drop` must be a finite number >= 0 "
                               "(accuracy points). Received: max_worst_drop=-1.0"),
    ({"max_worst_drop": float("nan")}, "Received: max_worst_drop=nan"),
    ({"bisections": -1}, "Argument `bisections` must be an integer >= 0. Received: bisections=-1"),
    ({"reference": float("inf")}, "Argument `reference` must be a finite number. "
                                  "Received: reference=inf"),
])
def test_bad_search_arguments_are_refused_by_name(kwargs, message):
    arguments = {"reference": 0.8, "max_worst_drop": 1.0, **kwargs}
    with pytest.raises(ValueError) as info:
        search_budget(lambda s: 0.8, **arguments)
    assert message in str(info.value)


def test_each_method_is_the_registry_s_warm_started_from_the_dense_weights():
    rl1 = budget.budget_method("reweighted_l1", 0.9, 6, steps_per_epoch=10)
    assert (rl1.name, rl1.sparsity_type, rl1.dense_epochs, rl1.reweighted_epochs,
            rl1.retrain_epochs, rl1.epochs) == ("reweighted_l1", "unstructured", 0, 3, 3, 6)
    units = budget.budget_method("filter", 0.5, 2, steps_per_epoch=10)
    assert (units.sparsity_type, units.allocation, units.dense_epochs, units.reweighted_epochs,
            units.retrain_epochs) == ("filter", "uniform", 0, 1, 1)
    dst = budget.budget_method("dst", 0.9, 2, steps_per_epoch=10)
    assert (dst.name, dst.dst_method, dst.epochs, dst.dst_update_every) == ("dst", "rigl", 2, 15)
    with pytest.raises(ValueError, match=r"`candidate_epochs` must be >= 2 with "
                                         r"method='filter'.*Received: candidate_epochs=1"):
        budget.budget_method("filter", 0.5, 1, steps_per_epoch=10)
    # One step in all leaves DST no mask update before its end (75% of the steps): refused.
    with pytest.raises(ValueError) as info:
        budget.budget_method("dst", 0.5, 1, steps_per_epoch=1)
    assert str(info.value) == (
        "Argument `candidate_epochs` must give method='dst' at least 2 training steps (a mask "
        "update within the first 75% of them); candidate_epochs * steps_per_epoch = 1 * 1 = 1. "
        "Received: candidate_epochs=1")
    assert budget.budget_method("dst", 0.5, 1, steps_per_epoch=2).dst_update_every == 1
    with pytest.raises(ValueError, match=r"`method` must be one of \['reweighted_l1', 'filter', "
                                         r"'dst'\]. Received: method='hybrid'"):
        budget.budget_method("hybrid", 0.5, 2, steps_per_epoch=10)


def test_dst_warm_start_keeps_each_kernel_s_largest_weights():
    from keras_minmax_mtl.core.backend import keras
    from keras_minmax_mtl.sparsity.dst import magnitude_masks, prune_for_dst, wrapped_kernels

    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(5, name="hidden")(inputs)
    base = keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden))
    kernel = np.arange(20, dtype=np.float32).reshape(4, 5) * np.where(np.arange(20) % 2, 1, -1
                                                                        ).reshape(4, 5)
    base.get_layer("hidden").kernel.assign(kernel)
    wrapped = prune_for_dst(base)
    assert magnitude_masks(wrapped, 0.75, "uniform") == [5]
    (_, weight, mask), = wrapped_kernels(wrapped)
    expected = (np.abs(kernel) >= 15).astype(np.float32)  # |w| = 15..19 are the 5 largest
    np.testing.assert_array_equal(mask.numpy(), expected)
    np.testing.assert_array_equal(weight.numpy(), kernel * expected)


# ------------------------------------------------------------------ kmm compress: flags
def _refused(capsys, argv, start, tmp_path):
    with pytest.raises(SystemExit) as info:
        cli.main(["compress", *argv])
    assert info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kmm: error: {start}"), lines
    return lines[0]


@pytest.mark.parametrize("argv, start", [
    (["--max-worst-drop", "-1"], "argument --max-worst-drop: must be a number >= 0, received -1"),
    (["--max-worst-drop", "nan"], "argument --max-worst-drop: must be a finite number, received nan"),
    ([], "the following arguments are required: --max-worst-drop"),
    (["--max-worst-drop", "1", "--ladder", "0.9,0.5"],
     "argument --ladder: must be comma-separated sparsities in (0, 1), strictly increasing (e.g. "
     "0.5,0.75,0.9,0.95,0.975), received '0.9,0.5'"),
    (["--max-worst-drop", "1", "--ladder", "0.5,1"], "argument --ladder: must be"),
    (["--max-worst-drop", "1", "--ladder", "0.5,x"], "argument --ladder: must be"),
    (["--max-worst-drop", "1", "--bisections", "-1"],
     "argument --bisections: must be an integer >= 0, received -1"),
    (["--max-worst-drop", "1", "--candidate-epochs", "1"],
     "argument --candidate-epochs: must be >= 2 with --method reweighted_l1 (reweighted and "
     "retraining epochs). Received --candidate-epochs 1"),
    (["--max-worst-drop", "1", "--method", "dst", "--candidate-epochs", "1", "--train-examples",
      "32", "--batch-size", "32"],
     "argument --candidate-epochs: must give --method dst at least 2 training steps (a mask "
     "update within the first 75% of them); 1 epoch of 1 step is 1. Received --candidate-epochs 1"),
    (["--max-worst-drop", "1", "--method", "hybrid"], "argument --method: invalid choice: 'hybrid'"),
    (["--max-worst-drop", "1", "--target", "phone"], "argument --target: invalid choice: 'phone'"),
    (["--max-worst-drop", "1", "--data-dir", "/tmp"],
     "argument --data-dir: only used with --dataset multi_fashion; this run has --dataset "
     "multi_digits, so it would be ignored. Received --data-dir /tmp"),
    (["--max-worst-drop", "1", "--dataset", "multi_fashion", "--data-dir", "/nonexistent"],
     "argument --data-dir: '/nonexistent' lacks"),
])
def test_bad_compress_flags_end_in_one_line_and_write_nothing(capsys, tmp_path, argv, start):
    out = tmp_path / "run"
    _refused(capsys, [*argv, "--out", str(out)], start, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_earlier_run_is_not_replaced_without_overwrite(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "compress.json").write_text("{}")
    line = _refused(capsys, ["--max-worst-drop", "1", "--out", str(out)], "argument --out:",
                    tmp_path)
    assert "already holds a run (compress.json); add --overwrite" in line
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert [p.name for p in out.iterdir()] == ["compress.json"]
    assert (out / "compress.json").read_text() == "{}"


# ------------------------------------------------------------ kmm compress: a tiny search
#: A budget of 100 points passes every candidate, so the candidates tried are known exactly (the
#: pass/fail choices of the search are the pure tests' above).
TINY = ["--dataset", "multi_digits", "--max-worst-drop", "100", "--train-examples", "64",
        "--test-examples", "64", "--batch-size", "32", "--dense-epochs", "1",
        "--candidate-epochs", "2", "--ladder", "0.5,0.9", "--bisections", "0", "--target",
        "mobile"]


def _compress_eagerly(argv):
    """`kmm compress argv` in this process, its models compiled to run eagerly: (status, stdout).

    Eagerly, no train or test step is traced: fitting and evaluating the four models (each
    traced anew in graph mode) took 24 of the tiny run's 34 s of CPU, and 5 of 15 s eagerly;
    the kernels and so the numbers are the same (checked: the validation worst tasks 0.0469, 0.0781, 0.0469 of the control and the
    two candidates of `TINY`, both ways).
    """
    import io
    import sys

    from keras_minmax_mtl.core.multitask import MultiTaskModel

    compile_graph = MultiTaskModel.compile

    def compile_eagerly(self, *args, **kwargs):
        return compile_graph(self, *args, **{**kwargs, "run_eagerly": True})

    capture = pytest.MonkeyPatch()
    stdout = io.StringIO()
    capture.setattr(sys, "stdout", stdout)
    capture.setattr(MultiTaskModel, "compile", compile_eagerly)
    try:
        code = cli.main(["compress", *argv])
    finally:
        capture.undo()
    return code, stdout.getvalue()


@pytest.fixture(scope="module")
def tiny_search(tmp_path_factory):
    out = tmp_path_factory.mktemp("compress") / "run"
    code, printed = _compress_eagerly([*TINY, "--out", str(out)])
    return code, out, printed


def test_a_non_finite_loss_fails_the_run_and_keeps_the_previous_one(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "compress.json").write_text('{"earlier": true}')
    code, _ = _compress_eagerly([*TINY, "--learning-rate", "1e30", "--out", str(out),
                                 "--overwrite"])
    assert code == 1
    error, = capsys.readouterr().err.splitlines()
    assert error.startswith("kmm: error: the run failed: ") and "non-finite" in error.lower()
    assert error.endswith(f"nothing was written to {out} (the run already in it is unchanged)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert [p.name for p in out.iterdir()] == ["compress.json"]
    assert (out / "compress.json").read_text() == '{"earlier": true}'


def test_compress_searches_reports_on_test_and_writes_the_run(tiny_search):
    from keras_minmax_mtl.data.digits import multi_digits
    from keras_minmax_mtl.loading import load_model
    from keras_minmax_mtl.sparsity.pruning import nonzero_kernel_count

    code, out, printed = tiny_search
    assert code == 0, printed
    assert sorted(p.name for p in out.iterdir()) == [
        "compress.json", "compress.png", "model.keras", "model_dense.keras", "model_mobile.json",
        "model_mobile.tflite"]
    report = json.loads((out / "compress.json").read_text())
    candidates = report["candidates"]
    assert [c["sparsity"] for c in candidates] == [0.0, 0.5, 0.9]
    reference = candidates[0]["val_worst"]
    assert report["reference"] == reference and report["max_worst_drop"] == 100.0
    assert [c["passed"] for c in candidates] == [True, True, True]
    assert report["sparsity"] == 0.9 == report["chosen"]["sparsity"] and report["found"] is True
    assert candidates[1]["nonzero_weights"] > candidates[2]["nonzero_weights"]
    for c in candidates[1:]:
        assert abs(c["achieved_sparsity"] - c["sparsity"]) < 0.01
    for c in candidates:
        assert min(c["val_accuracy"].values()) == c["val_worst"]
        assert c["val_accuracy"][c["worst_task"]] == c["val_worst"]
    # One progress line per candidate, in the order tried.
    lines = [line for line in printed.splitlines() if line.startswith("candidate ")]
    assert [line.split("  ")[0] for line in lines] == [
        "candidate 1: sparsity 0.5000", "candidate 2: sparsity 0.9000"]
    assert all("pass" in line.split("  ") for line in lines)
    # The chosen model is the saved one: its non-zeros and its test accuracy are the report's.
    model = load_model(out / "model.keras")
    assert nonzero_kernel_count(model) == report["chosen"]["nonzero_weights"]
    dense = load_model(out / "model_dense.keras")
    test = multi_digits("test", seed=0, num_examples=64, batch_size=32)
    for name, saved in (("chosen", model), ("dense", dense)):
        saved.run_eagerly = True  # no test step traced (see `tiny_search`)
        logs = saved.evaluate(test, verbose=0, return_dict=True)
        assert {t: float(logs[f"{t}_accuracy"]) for t in ("left", "right", "sum")} == \
            report["test"][name]
    for task, drop in report["test"]["drop_points"].items():
        assert drop == pytest.approx(100 * (report["test"]["dense"][task]
                                            - report["test"]["chosen"][task]), abs=1e-12)
    assert report["files"]["mobile"]["bytes"] == (out / "model_mobile.tflite").stat().st_size


def test_the_search_plot_marks_every_candidate_the_budget_and_the_choice(tiny_search):
    from keras_minmax_mtl.cli.plots import budget_search_figure, texts_outside

    report = json.loads((tiny_search[1] / "compress.json").read_text())
    figure = budget_search_figure(report, title="t")
    axes, = figure.axes
    points = [line for line in axes.lines if line.get_linestyle() == "None"]
    drawn = sorted(zip(*[np.concatenate([line.get_xdata() for line in points[:-1]]),
                         np.concatenate([line.get_ydata() for line in points[:-1]])]))
    assert drawn == sorted((c["nonzero_weights"], c["val_worst"]) for c in report["candidates"])
    budget_line = [line for line in axes.lines if line.get_linestyle() == "--"]
    assert budget_line[0].get_ydata()[0] == pytest.approx(report["reference"] - 1.0)
    assert list(points[-1].get_xdata()) == [report["chosen"]["nonzero_weights"]]
    assert texts_outside(figure) == []


# ------------------------------------------------ dst and filter end to end (a tiny network)
#: A 4-filter, 8-unit, 4-per-head multi_digits_network: 1 824 kernel weights, the same layers.
TINY_NETWORK = {"trunk_filters": (4,), "trunk_units": 8, "head_units": 4}
#: Its kernel weights: conv 3·3·1·4, trunk 6·8·4 → 8, hidden 8 → 4 (×3), outputs 4 → 10, 10, 19.
TINY_KERNELS = 36 + 192 * 8 + 3 * 8 * 4 + 4 * (10 + 10 + 19)


def _tiny_network(seed=0):
    from keras_minmax_mtl.data.networks import multi_digits_network

    return multi_digits_network(seed=seed, **TINY_NETWORK)


def _kernel_entries(model):
    """The number of entries of every Dense/Conv2D kernel of a plain Functional `model`."""
    return sum(int(np.prod(layer.kernel.shape)) for layer in model.layers
               if hasattr(layer, "kernel"))


def _check_the_search(candidates, reference, max_worst_drop, chosen, ladder_point, midpoint):
    """The search rules checked on the recorded candidates of a one-rung, one-bisection search.

    The rung `ladder_point` is tried first; if it fails, `midpoint` (between the dense
    model, 0, and the rung) is tried; the chosen sparsity is the largest that passes.
    """
    assert candidates[0]["sparsity"] == 0.0 and candidates[0]["val_worst"] == reference
    recorded = {c["sparsity"]: c for c in candidates[1:]}
    for c in candidates:
        assert c["passed"] == passes(c["val_worst"], reference, max_worst_drop), c
        assert min(c["val_accuracy"].values()) == c["val_worst"]
        assert c["val_accuracy"][c["worst_task"]] == c["val_worst"]
    expected = [ladder_point] if recorded[ladder_point]["passed"] else [ladder_point, midpoint]
    assert [c["sparsity"] for c in candidates[1:]] == expected
    assert chosen == max(c["sparsity"] for c in candidates if c["passed"])


def test_dst_search_through_the_api_chooses_by_the_recorded_numbers():
    from keras_minmax_mtl.core.backend import keras
    from keras_minmax_mtl.data.digits import multi_digits
    from keras_minmax_mtl.sparsity.pruning import nonzero_kernel_count, pruning_wrappers
    from keras_minmax_mtl.weighting.minmax import MinMaxMultiTask

    def build_model(network):
        model = MinMaxMultiTask(network)
        model.compile(optimizer=keras.optimizers.Adam(1e-2),
                      loss={t: "sparse_categorical_crossentropy" for t in model.task_names},
                      metrics={t: ["accuracy"] for t in model.task_names},
                      run_eagerly=True)  # no step traced (see `_compress_eagerly`)
        return model

    keras.utils.set_random_seed(0)
    splits = {s: multi_digits(s, seed=0, num_examples=32, batch_size=32) for s in ("train", "test")}
    lines = []
    # The training canvases decide here: 32 validation canvases leave the 19-class `sum` at 0
    # for every model, which passes anything. A budget of 0 points, 90% of the weights gone:
    # (on this machine) the rung fails, so does the midpoint, and the dense model is chosen.
    result = budget.compress_to_budget(
        _tiny_network, build_model, splits["train"], splits["train"], splits["test"],
        max_worst_drop=0.0, method="dst", dense_epochs=1, candidate_epochs=2, ladder=(0.9,),
        bisections=1, log=lines.append)
    candidates = result.candidates
    _check_the_search(candidates, result.reference, 0.0, result.sparsity, 0.9, 0.45)
    assert result.found == (result.sparsity > 0) and result.chosen["sparsity"] == result.sparsity
    assert result.settings["steps_per_epoch"] == 1
    assert [line.split(":")[0] for line in lines] == [
        "dense (1 + 2 epochs, the control)",
        *(f"candidate {i}" for i in range(1, len(candidates)))]
    # Sizes: the dense model has every kernel weight; DST keeps 1 - s of the wrapped kernels.
    dense_network = _tiny_network()
    assert candidates[0]["nonzero_weights"] == TINY_KERNELS == _kernel_entries(dense_network)
    wrapped = sum(int(np.prod(w.layer.kernel.shape))
                  for w in pruning_wrappers(budget.budget_method(
                      "dst", 0.5, 2, 1).wrap(_tiny_network(), 1)))
    for c in candidates[1:]:
        removed = TINY_KERNELS - c["nonzero_weights"]
        assert removed == round(c["achieved_sparsity"] * wrapped), c
        assert abs(c["achieved_sparsity"] - c["sparsity"]) < 0.01
    # The chosen model is the one measured: no wrappers, its non-zeros the record's.
    assert not pruning_wrappers(result.model)
    assert nonzero_kernel_count(result.model) == result.chosen["nonzero_weights"]
    logs = result.model.evaluate(splits["test"], verbose=0, return_dict=True)
    assert {t: float(logs[f"{t}_accuracy"]) for t in ("left", "right", "sum")} == \
        result.test["chosen"]


@pytest.fixture(scope="module")
def tiny_filter_search(tmp_path_factory):
    """`kmm compress --method filter --target micro` on `TINY_NETWORK`: (status, out, stdout).

    micro (int8, no sparse storage: only the removed units make its file smaller) converts
    once; mobile converts twice (dense and sparse storage, the smaller kept), 3 s more.
    """
    from keras_minmax_mtl.data import networks

    out = tmp_path_factory.mktemp("compress_filter") / "run"
    patch = pytest.MonkeyPatch()
    original = networks.multi_digits_network
    patch.setattr(networks, "multi_digits_network",
                  lambda seed=0: original(seed=seed, **TINY_NETWORK))
    try:
        code, printed = _compress_eagerly([
            "--dataset", "multi_digits", "--method", "filter", "--max-worst-drop", "100",
            "--train-examples", "32", "--test-examples", "32", "--batch-size", "32",
            "--dense-epochs", "1", "--candidate-epochs", "2", "--ladder", "0.5",
            "--bisections", "1", "--target", "micro", "--out", str(out)])
    finally:
        patch.undo()
    return code, out, printed


def test_filter_search_through_the_cli_reports_the_exported_model(tiny_filter_search):
    from keras_minmax_mtl.cli.compress import FILES
    from keras_minmax_mtl.export.surgery import shrink
    from keras_minmax_mtl.loading import load_model
    from keras_minmax_mtl.sparsity.pruning import nonzero_kernel_count
    from keras_minmax_mtl.sparsity.structured import structured_report

    code, out, printed = tiny_filter_search
    assert code == 0, printed
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*FILES, "model_micro.cc", "model_micro.h", "model_micro.json", "model_micro.tflite"])
    report = json.loads((out / "compress.json").read_text())
    candidates = report["candidates"]
    # A budget of 100 points passes the rung, so nothing is bisected and the rung is chosen.
    _check_the_search(candidates, report["reference"], 100.0, report["sparsity"], 0.5, 0.25)
    assert [c["sparsity"] for c in candidates] == [0.0, 0.5] and report["sparsity"] == 0.5
    assert report["method"] == "filter" and report["found"] is True
    # Half the units of every pruned layer: 2 of 4 filters, 4 of 8 trunk units, 2 of 4 per head.
    assert candidates[1]["achieved_sparsity"] == (2 + 4 + 3 * 2) / (4 + 8 + 3 * 4) == 0.5
    assert candidates[0]["nonzero_weights"] == TINY_KERNELS
    # The reported size is the exported model's: the rows that read removed units are gone too.
    # 2 filters: conv 3·3·1·2, trunk 6·8·2 → 4, hidden 4 → 2 (×3), outputs 2 → 10, 10, 19.
    small = 18 + 96 * 4 + 3 * 4 * 2 + 2 * (10 + 10 + 19)
    model = load_model(out / "model.keras")
    shrunk = shrink(model)
    assert _kernel_entries(shrunk) == small
    assert nonzero_kernel_count(shrunk) == small == report["chosen"]["nonzero_weights"]
    assert nonzero_kernel_count(model) == report["chosen"]["nonzero_weights"]
    assert (f"chosen: units removed per layer 0.5 (achieved 0.5000), {small} non-zero kernel "
            f"weights of {TINY_KERNELS} dense") in printed
    # The file holds the shrunk model: its kernels and the 2 + 4 + 3 * 2 + 39 biases left.
    export = json.loads((out / "model_micro.json").read_text())
    assert export["structured"]["applied"] is True and export["structured"]["kept_constant"] == []
    assert export["structured"]["params"]["shrunk"] == small + 2 + 4 + 3 * 2 + 39
    assert export["structured"]["removed_units"] == {
        name: layer["removed_units"] for name, layer in structured_report(model)["layers"].items()
        if layer["removed"]}
    micro = report["files"]["micro"]
    assert micro["bytes"] == (out / "model_micro.tflite").stat().st_size == export["bytes"]
    assert micro["file"] == str(out / "model_micro.tflite") and micro["quantization"] == "int8"
    assert f"files: micro {micro['bytes']} bytes" in printed
