"""benchmarks/structured.py on a tiny configuration: the ratios come from the saved runs' files."""
import json
import runpy
import sys

import pytest

from tests.helpers import REPO_ROOT, shrink_benchmark_splits


def test_structured_benchmark_ratios_match_the_saved_runs(tmp_path, capsys, monkeypatch):
    script = runpy.run_path(str(REPO_ROOT / "benchmarks" / "structured.py"))
    runs_module = sys.modules["_runs"]
    # The ratio is checked against the saved invoke times, not their size: one block of
    # 10 invokes per file instead of the benchmark's 7 x 100.
    monkeypatch.setattr(runs_module, "MICRO_LATENCY_BLOCKS", 1)
    monkeypatch.setattr(runs_module, "MICRO_LATENCY_INVOKES", 10)
    # 64 validation and 128 test canvases (not 1000 and 2000): every file still runs the whole
    # test split in TFLite Micro, and the table is checked against the runs' own files.
    shrink_benchmark_splits(runs_module, monkeypatch)
    summary = script["main"](["--seeds", "1", "--epochs", "3", "--train-examples", "128",
                              "--fractions", "0.5", "--weightings", "minmax",
                              "--out", str(tmp_path)])
    runs = tmp_path / "units-0.5" / "runs"
    dense = json.loads((runs / "dense-minmax-s0.json").read_text())
    sparse = json.loads((runs / "filter_l1-minmax-s0.json").read_text())
    shrunk = sparse["exports"]["micro_int8"]
    unshrunk = sparse["exports"]["micro_int8_unshrunk"]
    cell = summary["0.5/minmax"]
    assert cell["bytes_ratio"]["values"] == [shrunk["bytes"] / dense["exports"]["micro_int8"]["bytes"]]
    assert cell["latency_ratio"]["values"] == [shrunk["invoke_seconds"] / unshrunk["invoke_seconds"]]
    assert cell["worst"]["values"] == [shrunk["test"]["worst"]]
    # Half the units of every pruned layer are gone: the file shrinks; the unshrunk one does not.
    assert cell["bytes_ratio"]["values"][0] < 0.5
    assert unshrunk["bytes"] == pytest.approx(dense["exports"]["micro_int8"]["bytes"], rel=0.01)
    assert sparse["removed_units"] == pytest.approx(0.5, abs=0.01)
    table = (tmp_path / "structured.md").read_text()
    assert f"| 50% (0.500 ± 0.000) | minmax | {shrunk['bytes']} |" in table
    assert table in capsys.readouterr().out
