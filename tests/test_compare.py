"""benchmarks/compare.py on a tiny configuration: outputs consistent with the saved runs, resuming."""
import json
import runpy
import sys

import numpy as np
import pytest
from scipy import stats

from tests.helpers import REPO_ROOT

TINY = ["--dataset", "multi_digits", "--seeds", "2", "--weightings", "minmax", "ew",
        "--compressions", "dense", "--epochs", "1", "--train-examples", "128"]


@pytest.fixture(scope="module")
def compare():
    return runpy.run_path(str(REPO_ROOT / "benchmarks" / "compare.py"))


def test_compare_writes_consistent_outputs_and_resumes_without_training(compare, tmp_path, capsys):
    first = compare["main"]([*TINY, "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert first["trained"] == 4
    for k in range(1, 5):
        assert f"[{k}/4]" in printed
    runs = {p.name: json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")}
    assert sorted(runs) == ["dense-ew-s0.json", "dense-ew-s1.json",
                            "dense-minmax-s0.json", "dense-minmax-s1.json"]
    for run in runs.values():
        assert run["test"]["worst"] == min(run["test"]["tasks"].values())
        assert len(run["task_weight_trajectory"]) == run["steps_per_epoch"] == 2  # 128 / 64

    saved = json.loads((tmp_path / "compare.json").read_text())
    for weighting in ("minmax", "ew"):
        worst = [runs[f"dense-{weighting}-s{s}.json"]["test"]["worst"] for s in (0, 1)]
        cell = saved["summary"]["dense"][weighting]["worst"]
        assert cell["values"] == worst
        assert cell["mean"] == pytest.approx(np.mean(worst))
        assert cell["std"] == pytest.approx(np.std(worst, ddof=1))
    minmax = [runs[f"dense-minmax-s{s}.json"]["test"]["mean"] for s in (0, 1)]
    ew = [runs[f"dense-ew-s{s}.json"]["test"]["mean"] for s in (0, 1)]
    test = saved["tests"]["dense"]["ew"]["mean"]
    assert test["difference"] == pytest.approx(np.mean(np.subtract(minmax, ew)))
    expected_p = stats.ttest_rel(minmax, ew).pvalue
    assert (test["p"] is None) if np.isnan(expected_p) else test["p"] == pytest.approx(expected_p)

    table = (tmp_path / "compare.md").read_text()
    cell = saved["summary"]["dense"]["minmax"]
    assert (f"| dense | minmax | {cell['left']['mean'] * 100:.2f} ± {cell['left']['std'] * 100:.2f} |"
            in table)
    assert "| dense | ew |" in table and "Δm %" not in table and "little power" in table
    assert "2 tests are reported" in table  # worst and mean, min-max vs ew
    for name in ("task_weights_dense.png", "worst_vs_sparsity.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def no_training(config):
        raise AssertionError(f"resumed run trained {config}")

    second = compare["main"]([*TINY, "--out", str(tmp_path)], train=no_training)
    assert second["trained"] == 0
    assert "saved run, skipped" in capsys.readouterr().out
    assert (tmp_path / "compare.md").read_text() == table


def test_compare_does_not_reuse_a_run_saved_with_another_configuration(compare, tmp_path):
    args = compare["build_parser"]().parse_args([*TINY, "--out", str(tmp_path)])
    args.seed_list = [0]
    config = compare["configurations"](args)[0]
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"config": config, "test": {}}))
    assert compare["load_saved"](path, config) == {"config": config, "test": {}}
    assert compare["load_saved"](path, {**config, "learning_rate": 0.1}) is None
    assert compare["load_saved"](tmp_path / "absent.json", config) is None


def test_compare_exports_every_run_and_scores_the_files(compare, tmp_path, monkeypatch):
    from keras_minmax_mtl.data.networks import multi_digits_network

    # One block of 10 invokes instead of the benchmark's 7 x 100: only `> 0` is checked.
    monkeypatch.setattr(sys.modules["_runs"], "MICRO_LATENCY_BLOCKS", 1)
    monkeypatch.setattr(sys.modules["_runs"], "MICRO_LATENCY_INVOKES", 10)

    argv = ["--dataset", "multi_digits", "--seeds", "1", "--weightings", "minmax",
            "--compressions", "dense", "--epochs", "1", "--train-examples", "128",
            "--exports", "micro_int8", "--out", str(tmp_path)]
    result = compare["main"](argv)
    run = json.loads((tmp_path / "runs" / "dense-minmax-s0.json").read_text())
    assert run["config"]["exports"] == ["micro_int8"]
    kernels = [w for w in multi_digits_network(seed=0).get_weights() if w.ndim >= 2]
    assert run["nonzero_weights"] == sum(w.size for w in kernels)  # dense: no zero kernel entry
    micro = run["exports"]["micro_int8"]
    assert micro["storage"] == "dense" and micro["bytes"] > 0
    assert micro["test"]["worst"] == min(micro["test"]["tasks"].values())
    assert micro["invoke_seconds"] > 0
    # A full-int8 file of a (barely trained) model agrees with Keras on most test samples.
    for task, accuracy in run["test"]["tasks"].items():
        assert abs(micro["test"]["tasks"][task] - accuracy) < 0.1
    cell = result["summary"]["dense"]["minmax"]["exports"]["micro_int8"]
    table = (tmp_path / "compare.md").read_text()
    assert (f"| dense | minmax | micro_int8 | {micro['bytes']} ± 0 | "
            f"{cell['worst']['mean'] * 100:.2f} ± 0.00 |") in table


def test_worst_vs_sparsity_fits_its_labels_in_the_figure(compare):
    """Every label of the plot is inside the PNG (the x label used to run off both sides)."""
    from argparse import Namespace

    from keras_minmax_mtl.cli.plots import texts_outside

    compressions = list(compare["_runs"].COMPRESSIONS)
    args = Namespace(weightings=["minmax", "ew", "uw", "dwa"], compressions=compressions,
                     dataset="multi_digits", seed_list=[0, 1, 2])
    summary = {c: {w: {"sparsity": 0.0 if c == "dense" else 0.9,
                       "worst": {"mean": 0.5 + 0.01 * i, "std": 0.02}}
                   for i, w in enumerate(args.weightings)} for c in compressions}
    figure = compare["worst_vs_sparsity_figure"](args, summary)
    assert "hybrid: same non-zero count" in figure.axes[0].get_xlabel()
    assert texts_outside(figure) == []
