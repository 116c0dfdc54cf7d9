"""SIGKILL `kmm train` over a complete earlier run: the earlier run survives, or the new one is whole.

Two trials of benchmarks/kill_trials.py (the 20-trial version is the benchmark):
one killed the moment the new `model.keras` appears (during `model.save`,
where the killed run of issue 13 destroyed the previous model), one at a
random time of the run.
"""
import random
import runpy

from tests.helpers import REPO_ROOT


def test_a_killed_run_never_damages_the_previous_one(tmp_path):
    trials = runpy.run_path(str(REPO_ROOT / "benchmarks" / "kill_trials.py"))
    rng = random.Random(13)
    records = trials["train_trials"](2, tmp_path, rng, duration=12.0, points=("save", "random"))
    assert [r["point"] for r in records] == ["save", "random"]
    assert records[0]["killed"]  # killed during the save, not after the run ended
    for record in records:
        assert record["state"] in ("previous", "new"), record
        assert record["clean_after_repair"], record
    # Killed before the swap, the folder is the previous run, byte for byte.
    assert records[0]["state"] == "previous"
