import json

import numpy as np
import pytest

import keras_minmax_mtl as kmm
from keras_minmax_mtl import cli, datasets
from keras_minmax_mtl._keras import keras


def test_train_writes_model_metrics_and_plot_that_agree(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", "--dataset", "multi_digits", "--weighting", "minmax", "--epochs", "2",
                     "--seed", "3", "--out", str(out), "--train-examples", "512",
                     "--test-examples", "256", "--verbose", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    worst = metrics["worst_task"]
    assert f"{worst}" in printed and "<- worst" in printed
    worst_line = next(line for line in printed.splitlines() if "<- worst" in line)
    assert worst_line.split()[0] == worst
    assert metrics["worst_accuracy"] == min(metrics["test_accuracy"].values())
    assert (out / "task_weights.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trajectory = np.array(metrics["task_weight_trajectory"])
    assert trajectory.shape == (2 * 8, 3)  # 512 / 64 = 8 steps per epoch
    np.testing.assert_allclose(trajectory.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(trajectory[-1], list(metrics["final_task_weights"].values()))

    model = keras.models.load_model(out / "model.keras")
    assert isinstance(model, kmm.MinMaxMultiTask)
    np.testing.assert_allclose(model.task_weights.numpy(), trajectory[-1], atol=1e-6)
    test = datasets.multi_digits("test", seed=3, num_examples=256, batch_size=64)
    result = model.evaluate(test, verbose=0, return_dict=True)
    for task, accuracy in metrics["test_accuracy"].items():
        assert result[f"{task}_accuracy"] == pytest.approx(accuracy)


@pytest.mark.parametrize("weighting", ["ew", "uw", "dwa"])
def test_train_runs_every_baseline(tmp_path, weighting):
    out = tmp_path / weighting
    cli.main(["train", "--weighting", weighting, "--epochs", "1", "--out", str(out),
              "--train-examples", "128", "--test-examples", "64", "--verbose", "0"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["weighting"] == weighting and set(metrics["test_accuracy"]) == {
        "left", "right", "sum"}


def test_unknown_weighting_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--weighting", "gradnorm"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'gradnorm' (choose from 'minmax', 'ew', 'uw', 'dwa')" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "argument --epochs: must be an integer > 0, received 0"),
    (["--scale", "-1"], "argument --scale: must be a number > 0 or 'num_tasks', received '-1'"),
    (["--step-size", "0"], "argument --step-size: must be a number > 0, received 0"),
    (["--pruning", "reweighted_l1", "--epochs", "3"],
     "argument --epochs: not allowed with --pruning reweighted_l1"),
    (["--pruning", "magnitude"], "invalid choice: 'magnitude' (choose from 'none', 'reweighted_l1', 'dst', 'task_aware', 'hybrid')"),
])
def test_bad_numbers_are_refused(capsys, argv, message):
    with pytest.raises(SystemExit):
        cli.main(["train", *argv])
    assert message in capsys.readouterr().err


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "train" in capsys.readouterr().out
