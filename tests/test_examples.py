import runpy

import pytest

from tests.helpers import REPO_ROOT


def test_minmax_example_runs_and_reports_every_task():
    module = runpy.run_path(str(REPO_ROOT / "examples" / "minmax_multi_digits.py"))
    results = module["main"](["--epochs", "1", "--train-examples", "256"])
    assert set(results) == {"minmax", "ew"}
    for result in results.values():
        assert result["worst_accuracy"] == pytest.approx(
            min(result[f"{t}_accuracy"] for t in ("left", "right", "sum")))
