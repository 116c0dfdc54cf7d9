"""benchmarks/claim.py on a fake training function: the search, the paired statistics, resuming.

The training function is replaced by one that returns known accuracies, so the
confidence intervals, tests and goals are checked against values computed
here by hand (no TensorFlow, no training).
"""
import json
import runpy

import numpy as np
import pytest
from scipy import stats

from tests.helpers import REPO_ROOT

#: Per (weighting, arm) the worst-task accuracy of seed s is BASE + STEP * s + offset.
OFFSETS = {("minmax", "dense"): 0.10, ("ew", "dense"): 0.05, ("minmax", "reweighted_l1"): 0.09,
           ("ew", "reweighted_l1"): 0.02}
SEED_NOISE = [0.0, 0.01, -0.02, 0.03, 0.005]


def fake_train(config):
    seed = config["seed"]
    if seed >= 1000:  # the search: step size 0.1 is best on validation
        value = 0.5 + (0.1 if config["minmax"] == {"step_size": 0.1, "gamma": 5.0} else 0.0)
        summary = {"tasks": {"a": value, "b": value + 0.1}, "worst": value, "mean": value + 0.05}
        return {"config": config, "task_names": ["a", "b"], "train_seconds": 0.0,
                "validation": summary, "test": summary, "sparsity": 0.0, "nonzero_weights": 1}
    noise = SEED_NOISE[seed] * (2 if config["weighting"] == "ew" else 1)
    worst = 0.4 + OFFSETS[(config["weighting"], config["compression"])] + noise
    summary = {"tasks": {"a": worst, "b": worst + 0.2}, "worst": worst, "mean": worst + 0.1}
    return {"config": config, "task_names": ["a", "b"], "train_seconds": 0.0,
            "validation": summary, "test": summary, "sparsity": config["sparsity"] or 0.0,
            "nonzero_weights": 10}


ARGS = ["--dataset", "multi_digits", "--seeds", "5", "--search-seeds", "2", "--arms", "dense",
        "rl1_90", "--weightings", "minmax", "ew"]


@pytest.fixture(scope="module")
def claim():
    return runpy.run_path(str(REPO_ROOT / "benchmarks" / "claim.py"))


def test_claim_chooses_on_validation_and_reports_exact_paired_statistics(claim, tmp_path, capsys):
    out = claim["main"]([*ARGS, "--out", str(tmp_path)], train=fake_train)
    printed = capsys.readouterr().out
    assert out["chosen"] == {"step_size": 0.1, "gamma": 5.0}
    assert "[24/24]" in printed  # 2 search settings × 2 seeds + 2 arms × 5 seeds × 2 weightings
    saved = json.loads((tmp_path / "runs" / "dense-minmax-s0.json").read_text())
    assert saved["config"]["minmax"] == {"step_size": 0.1, "gamma": 5.0}
    assert "minmax" not in json.loads((tmp_path / "runs" / "dense-ew-s0.json").read_text())["config"]

    # min-max − EW at 90 %: 0.07 − noise per seed (EW's noise is twice min-max's).
    d = 0.07 - np.array(SEED_NOISE)
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / np.sqrt(5)
    test = out["tests"]["rl1_90"]["ew"]["worst"]
    assert test["difference"] == pytest.approx(d.mean())
    assert test["ci95"] == pytest.approx([d.mean() - half, d.mean() + half])
    assert test["wilcoxon_p"] == pytest.approx(0.0625)  # all 5 positive: exact p = 2 / 2**5
    assert test["wins"] == 5 and test["losses"] == 0
    assert test["t_p"] == pytest.approx(stats.ttest_rel(0.49 + np.array(SEED_NOISE),
                                                        0.42 + 2 * np.array(SEED_NOISE)).pvalue)
    # Holm over the two worst-task t-tests (dense and 90 %, min-max − EW = 0.05 / 0.07 − noise).
    p_dense = stats.ttest_rel(0.50 + np.array(SEED_NOISE), 0.45 + 2 * np.array(SEED_NOISE)).pvalue
    low, high = sorted([p_dense, test["t_p"]])
    holm = {low: min(1, 2 * low), high: max(min(1, 2 * low), high)}
    assert test["holm_p"] == pytest.approx(holm[test["t_p"]])
    assert out["tests"]["dense"]["ew"]["worst"]["holm_p"] == pytest.approx(holm[p_dense])
    assert claim["holm"]([0.01, None, 0.04, 0.03]) == pytest.approx([0.03, None, 0.06, 0.06])
    # Wilcoxon cannot reach p < 0.05 with 5 seeds, so the goal is not met.
    goal = out["goals"]["minmax rl1_90 worst > ew rl1_90 worst, p < 0.05"]
    assert not goal["met"]
    drop = out["goals"]["minmax rl1_90 worst − minmax dense worst ≥ −2 points"]
    assert drop["difference"] == pytest.approx(-0.01) and drop["met"]
    assert drop["t_p"] is None and drop["ci95"] == pytest.approx([-0.01, -0.01])  # constant

    table = (tmp_path / "claim.md").read_text()
    assert "| 0.1 | 5 | 60.00 **(chosen)** | 60.00, 60.00 |" in table
    assert "| 0.02 | 5 | 50.00 | 50.00, 50.00 |" in table
    assert f"| reweighted ℓ1 90 % | ew | 5 | {d.mean() * 100:+.2f} |" in table
    assert (tmp_path / "claim.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def no_training(config):
        raise AssertionError(f"resumed run trained {config}")

    again = claim["main"]([*ARGS, "--out", str(tmp_path)], train=no_training)
    assert again["tests"] == out["tests"]
    report = claim["main"]([*ARGS, "--seeds", "6", "--out", str(tmp_path), "--report-only"],
                           train=no_training)
    assert report["cells"]["dense"]["minmax"]["seeds"] == [0, 1, 2, 3, 4]  # seed 5 not run


def test_claim_chooses_the_learning_rate_on_validation_with_ew_then_uses_it(claim, tmp_path,
                                                                           capsys):
    seen = []

    def rated_train(config):
        seen.append((config["weighting"], config["seed"], config["learning_rate"]))
        if config["seed"] >= 1000 and config["weighting"] == "ew":  # 0.003 is best on validation
            value = {0.001: 0.5, 0.003: 0.7, 0.01: 0.6}[config["learning_rate"]]
            summary = {"tasks": {"a": value, "b": value}, "worst": value, "mean": value}
            return {"config": config, "task_names": ["a", "b"], "train_seconds": 0.0,
                    "validation": summary, "test": {**summary, "worst": 1 - value},
                    "sparsity": 0.0, "nonzero_weights": 1}
        return fake_train(config)

    out = claim["main"]([*ARGS, "--learning-rates", "0.001", "0.003", "0.01",
                         "--out", str(tmp_path)], train=rated_train)
    printed = capsys.readouterr().out
    assert "chosen on validation: learning rate 0.003" in printed
    assert "[30/30]" in printed  # 3 rates × 2 seeds + 2 × 2 min-max settings + 20 claim runs
    # The search: EW at dense on the search seeds only; everything after it at the chosen rate.
    assert seen[:6] == [("ew", s, r) for r in (0.001, 0.003, 0.01) for s in (1000, 1001)]
    assert {rate for _, _, rate in seen[6:]} == {0.003}
    assert out["chosen"] == {"step_size": 0.1, "gamma": 5.0}
    table = (tmp_path / "claim.md").read_text()
    assert "Adam 0.003;" in table
    assert "| dense | 0.003 | 70.00 **(chosen)** | 70.00, 70.00 |" in table
    assert "| dense | 0.01 | 60.00 | 60.00, 60.00 |" in table
    saved = json.loads((tmp_path / "claim.json").read_text())
    assert [r["learning_rate"] for r in saved["learning_rate_search"]] == [0.001, 0.003, 0.01]
    assert saved["learning_rates"] == {"dense": 0.003, "rl1_90": 0.003}


def test_claim_with_a_rate_per_arm_searches_each_sparse_arm_and_trains_it_at_its_rate(
        claim, tmp_path, capsys):
    seen = []
    best = {"dense": 0.003, "reweighted_l1": 0.01}

    def rated_train(config):
        seen.append((config["compression"], config["weighting"], config["seed"],
                     config["learning_rate"]))
        if config["seed"] >= 1000 and config["weighting"] == "ew":
            value = 0.7 if config["learning_rate"] == best[config["compression"]] else 0.5
            summary = {"tasks": {"a": value, "b": value}, "worst": value, "mean": value}
            return {"config": config, "task_names": ["a", "b"], "train_seconds": 0.0,
                    "validation": summary, "test": summary, "sparsity": 0.0,
                    "nonzero_weights": 1}
        return fake_train(config)

    args = [*ARGS, "--learning-rates", "0.001", "0.003", "0.01", "--rate-per-arm",
            "--out", str(tmp_path)]
    claim["main"](args, train=rated_train)
    printed = capsys.readouterr().out
    assert "chosen on validation: learning rate 0.01 for rl1_90" in printed
    assert "[36/36]" in printed  # (3 + 3) rates × 2 seeds + 2 × 2 min-max settings + 20 runs
    rates = (0.001, 0.003, 0.01)
    assert seen[:12] == [(c, "ew", s, r) for c in ("dense", "reweighted_l1") for r in rates
                         for s in (1000, 1001)]
    # Min-max's settings are searched at dense's rate; each arm's runs train at its own.
    assert {(c, r) for c, w, s, r in seen[12:16]} == {("dense", 0.003)}
    assert {(c, r) for c, w, s, r in seen[16:]} == {("dense", 0.003), ("reweighted_l1", 0.01)}
    assert (tmp_path / "search" / "rl1_90-ew-lr0.01-s1001.json").exists()
    table = (tmp_path / "claim.md").read_text()
    assert "Adam dense 0.003, reweighted ℓ1 90 % 0.01;" in table
    assert "| reweighted ℓ1 90 % | 0.01 | 70.00 **(chosen)** | 70.00, 70.00 |" in table
    assert "| reweighted ℓ1 90 % | 0.003 | 50.00 | 50.00, 50.00 |" in table
    saved = json.loads((tmp_path / "claim.json").read_text())
    assert saved["learning_rates"] == {"dense": 0.003, "rl1_90": 0.01}
    # Resumed: every saved run, searches included, is reused.
    seen.clear()
    claim["main"](args, train=rated_train)
    assert seen == []


def test_claim_refuses_a_learning_rate_that_is_not_positive(claim, capsys):
    with pytest.raises(SystemExit) as stop:
        claim["main"]([*ARGS, "--learning-rates", "0.01", "0"], train=fake_train)
    assert stop.value.code == 2
    assert "--learning-rates" in capsys.readouterr().err


def test_the_dst_arm_trains_rigl_with_erdos_renyi_densities(claim):
    args = claim["build_parser"]().parse_args(["--dataset", "multi_digits"])
    args.learning_rate, args.epochs, args.train_examples, args.arm_rates = 0.01, 20, None, {}
    config = claim["base_config"](args, "dst_90", "minmax", 3)
    assert config["compression"] == "dst" and config["sparsity"] == 0.9
    assert config["method_options"] == {"density": "er"}
    assert "method_options" not in claim["base_config"](args, "rl1_90", "minmax", 3)
    method = claim["_runs"].compression_method("dst", 0.9, 3, 94, 20, config["method_options"])
    assert method.density == "er" and method.sparsity == 0.9
