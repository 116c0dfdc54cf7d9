import runpy

import pytest

from tests.helpers import REPO_ROOT


def test_minmax_example_smoke_runs_and_reports_every_task(capsys):
    module = runpy.run_path(str(REPO_ROOT / "examples" / "minmax_multi_digits.py"))
    results = module["main"](["--smoke"])
    printed = capsys.readouterr().out
    # one epoch of 4 steps (256 examples, batch 64) per model, one line each with verbose=2
    assert printed.count("4/4 - ") == 2 and "Epoch 2/" not in printed
    assert set(results) == {"minmax", "ew"}
    for result in results.values():
        assert result["worst_accuracy"] == pytest.approx(
            min(result[f"{t}_accuracy"] for t in ("left", "right", "sum")))


def test_multi_digits_example_smoke_compresses_trains_and_exports(tmp_path):
    module = runpy.run_path(str(REPO_ROOT / "examples" / "multi_digits.py"))
    result = module["main"](["--smoke", "--compression", "reweighted_l1", "--target", "micro",
                             "--out", str(tmp_path)])
    assert set(result["accuracy"]) == {"left", "right", "sum"}
    assert result["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert result["export"]["target"] == "micro" and result["export"]["quantization"] == "int8"
    assert result["path"] == tmp_path / "model_micro.tflite" and result["path"].stat().st_size > 0
    assert (tmp_path / "task_weights.png").exists()
    assert result["task_weights"].shape == (12, 3)  # 3 epochs x 4 steps (256 examples, batch 64)
    assert result["task_weights"].sum(axis=1) == pytest.approx(1.0, abs=1e-5)
