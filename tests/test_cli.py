import json
import os
import pathlib
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

import keras_minmax_mtl as kmm
from keras_minmax_mtl.cli import main as cli
from keras_minmax_mtl import data as datasets
from keras_minmax_mtl.core.backend import keras


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


# ------------------------------------------------------------ bad flags (issue 13)
SMALL = ["--train-examples", "64", "--test-examples", "32", "--batch-size", "32", "--verbose", "0"]


def _refused(capsys, argv, flag, out):
    """Runs `kmm train argv`: exit 2, one stderr line `kmm: error: argument FLAG...`, `out` not made."""
    with pytest.raises(SystemExit) as info:
        cli.main(["train", *argv])
    assert info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kmm: error: argument {flag}"), lines
    assert not out.exists()
    return lines[0]


@pytest.mark.parametrize("argv, flag", [
    (["--pruning", "dst", "--sparsity", "1.5"], "--sparsity: must be in (0, 1)"),
    (["--pruning", "hybrid", "--sparsity", "1.5"], "--sparsity: must be in [0, 1)"),
    (["--pruning", "task_aware", "--sparsity", "1.5"], "--sparsity: must be in [0, 1)"),
    (["--pruning", "dst", "--sparsity", "nan"], "--sparsity: must be a finite number"),
    (["--pruning", "dst", "--drop-fraction", "2"], "--drop-fraction: must be in (0, 1]"),
    (["--pruning", "dst", "--grow-ratio", "0.5"], "--grow-ratio: only used by --dst-method paper"),
    (["--pruning", "task_aware", "--groups", "5"], "--groups: must be in [1, 3]"),
    (["--pruning", "task_aware", "--measure-samples", "1"], "--measure-samples: must be"),
    (["--pruning", "task_aware", "--similarity-threshold", "nan"], "--similarity-threshold"),
    (["--pruning", "dst", "--dst-end-step", "1"], "--dst-end-step: must be >= --dst-update-every"),
    (["--pruning", "dst", "--epochs", "1"], "--dst-update-every: the first mask update, at step "
                                            "100, comes after the last one"),
    (["--pruning", "dst", "--dst-method", "paper", "--epochs", "4"], "--dst-update-every"),
    (["--pruning", "hybrid", "--epochs", "2", "--hybrid-dense-epochs", "2"],
     "--hybrid-dense-epochs: --hybrid-dense-epochs + --hybrid-prune-epochs must be < --epochs"),
    (["--pruning", "reweighted_l1", "--rho", "inf"], "--rho: must be a finite number"),
    (["--gamma", "-1"], "--gamma: must be a number >= 0, received -1"),
    (["--gamma", "inf"], "--gamma: must be a finite number, received inf"),
    (["--gamma", "nan"], "--gamma: must be a finite number, received nan"),
    (["--step-size", "inf"], "--step-size: must be a finite number, received inf"),
    (["--learning-rate", "inf"], "--learning-rate: must be a finite number, received inf"),
    (["--scale", "inf"], "--scale: must be a finite number > 0 or 'num_tasks', received 'inf'"),
    (["--seed", str(2 ** 40)], f"--seed: must be an integer in [0, 2**32), received {2 ** 40}"),
    (["--step-size", "abc"], "--step-size: must be a number, received 'abc'"),
    (["--epochs", "1e3"], "--epochs: must be an integer > 0, received '1e3'"),
])
def test_bad_flags_end_in_one_line_and_write_nothing(capsys, tmp_path, argv, flag):
    out = tmp_path / "run"
    _refused(capsys, [*argv, *SMALL, "--out", str(out)], flag, out)
    assert list(tmp_path.iterdir()) == []


def test_an_out_that_is_a_file_or_under_a_file_is_refused(capsys, tmp_path):
    file = tmp_path / "hostname"
    file.write_text("x")
    line = _refused(capsys, [*SMALL, "--out", str(file)], "--out", tmp_path / "none")
    assert line == f"kmm: error: argument --out: {file} is a file; give a folder"
    line = _refused(capsys, [*SMALL, "--out", str(file / "run")], "--out", tmp_path / "none")
    assert line == f"kmm: error: argument --out: {file / 'run'} lies under the file {file}; give a folder"
    assert file.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["hostname"]


def test_an_out_that_cannot_be_created_is_refused_before_training(capsys):
    # /proc takes no new folders, not even from root (for whom permission bits do not count).
    out = pathlib.Path("/proc/kmm-test-run")
    line = _refused(capsys, [*SMALL, "--out", str(out)], "--out", out)
    assert "cannot create /proc/kmm-test-run" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_out_in_a_read_only_folder_is_refused(capsys, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        line = _refused(capsys, [*SMALL, "--out", str(parent / "run")], "--out", parent / "run")
    finally:
        parent.chmod(0o700)
    assert line == f"kmm: error: argument --out: cannot create {parent / 'run'}: {parent} is not writable"


def test_library_errors_are_told_in_flags():
    message = ("Argument `end_step` must be an integer >= update_every (100): the first update "
               "happens at step `update_every`. Received: end_step=1")
    assert cli.flag_message(message, "dst") == (
        "argument --dst-end-step: must be an integer >= --dst-update-every (100): the first "
        "update happens at step --dst-update-every. Received: --dst-end-step=1")
    assert cli.flag_message("Argument `num_groups` must be in [1, 3]. Received: num_groups=5",
                            "task_aware") == "argument --groups: must be in [1, 3]. Received: --groups=5"
    assert cli.flag_message("no argument named", "hybrid") == "argument --sparsity: no argument named"


def test_default_out_names_pruning_sparsity_epochs_and_seed():
    parser = cli.build_parser()

    def out(*argv):
        args = parser.parse_args(["train", *argv])
        cli.check_train_arguments(parser, args)
        return str(args.out)

    assert out() == "runs/multi_digits-minmax-e20-s0"
    assert out("--epochs", "30", "--seed", "2", "--weighting", "ew") == "runs/multi_digits-ew-e30-s2"
    assert out("--pruning", "reweighted_l1") == "runs/multi_digits-minmax-reweighted_l1-0.9-e20-s0"
    assert out("--pruning", "reweighted_l1", "--sparsity-type", "filter", "--sparsity", "0.5",
               "--retrain-epochs", "7") == "runs/multi_digits-minmax-reweighted_l1-filter-0.5-e22-s0"
    assert out("--pruning", "dst", "--dst-method", "set") == "runs/multi_digits-minmax-dst-set-0.9-e20-s0"
    assert out("--pruning", "task_aware") == "runs/multi_digits-minmax-task_aware-0.9-e10-s0"
    assert out("--pruning", "hybrid", "--sparsity", "0.95") == "runs/multi_digits-minmax-hybrid-0.95-e20-s0"


# ------------------------------------------- the run folder: overwrite, lock, failed runs
def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A complete tiny dense run (1 epoch), copied by the tests that run over it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert cli.main(["train", "--epochs", "1", *SMALL, "--out", str(out)]) == 0
    return out


@pytest.fixture
def previous(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out, _files(out)


def test_a_run_folder_is_replaced_only_with_overwrite_and_then_whole(previous, capsys):
    out, _ = previous
    # What an earlier pruned run leaves (its stripped model and report) beside its model.
    shutil.copy(out / "model.keras", out / "model_stripped.keras")
    (out / "sparsity.json").write_text("{}")
    before = _files(out)
    dense = ["train", "--epochs", "1", *SMALL, "--seed", "1", "--out", str(out)]
    with pytest.raises(SystemExit) as info:
        cli.main(dense)
    assert info.value.code == 2
    line, = capsys.readouterr().err.splitlines()
    assert line == (f"kmm: error: argument --out: {out} already holds a run (metrics.json, "
                    f"model.keras, model_stripped.keras, ...); add --overwrite to replace it, or "
                    f"choose another --out")
    assert _files(out) == before
    assert cli.main([*dense, "--overwrite"]) == 0
    # No stale file of the earlier run survives beside the new model; nothing is left beside it.
    assert sorted(os.listdir(out)) == ["metrics.json", "model.keras", "task_weights.png"]
    assert os.listdir(out.parent) == ["run"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seed"] == 1 and metrics["model"] == str(out / "model.keras")


def test_overwrite_never_deletes_files_kmm_did_not_write(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(SystemExit) as info:
        cli.main(["train", *SMALL, "--out", str(out), "--overwrite"])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"kmm: error: argument --out: {out} holds files that kmm train did not write "
        f"(notes.txt); --overwrite would delete them: choose another --out"]
    assert os.listdir(out) == ["notes.txt"] and os.listdir(tmp_path) == ["mine"]


def test_a_run_folder_in_use_is_refused_naming_the_other_pid(previous, capsys):
    from keras_minmax_mtl.cli.run_folder import RunFolder

    out, before = previous
    with RunFolder(out, overwrite=True):  # another run holds the folder
        with pytest.raises(SystemExit) as info:
            cli.main(["train", "--epochs", "1", *SMALL, "--out", str(out), "--overwrite"])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"kmm: error: argument --out: {out} is in use by another kmm train (pid {os.getpid()}); "
        f"wait for it to end or choose another --out"]
    assert _files(out) == before and os.listdir(out.parent) == ["run"]


def _assert_failed(capsys, code, what, out, before):
    assert code == 1
    line, = capsys.readouterr().err.splitlines()
    assert line.startswith(f"kmm: error: the run failed: {what}") and line.endswith(
        f"nothing was written to {out} (the run already in it is unchanged)"), line
    assert _files(out) == before and os.listdir(out.parent) == ["run"]
    keras.models.load_model(out / "model.keras")


def test_a_non_finite_loss_fails_the_run_and_keeps_the_previous_one(previous, capsys):
    out, before = previous
    code = cli.main(["train", "--epochs", "1", *SMALL, "--learning-rate", "1e30", "--out",
                     str(out), "--overwrite"])
    _assert_failed(capsys, code, "the loss became non-finite (Non-finite loss for task", out, before)


def test_non_finite_weights_fail_the_run(previous, capsys, monkeypatch):
    out, before = previous
    fit = kmm.MultiTaskModel.fit

    def fit_then_break_a_weight(self, *args, **kwargs):
        history = fit(self, *args, **kwargs)
        kernel = self.base_model.get_layer("left").kernel
        kernel.assign(tf.fill(kernel.shape, float("nan")))
        return history

    monkeypatch.setattr(kmm.MultiTaskModel, "fit", fit_then_break_a_weight)
    code = cli.main(["train", "--epochs", "1", *SMALL, "--out", str(out), "--overwrite"])
    _assert_failed(capsys, code, "weights not finite: left/kernel", out, before)


def test_non_finite_metrics_fail_the_run(previous, capsys, monkeypatch):
    out, before = previous
    evaluate = kmm.MultiTaskModel.evaluate

    def evaluate_with_a_nan_loss(self, *args, **kwargs):
        return {**evaluate(self, *args, **kwargs), "sum_loss": float("nan")}

    monkeypatch.setattr(kmm.MultiTaskModel, "evaluate", evaluate_with_a_nan_loss)
    code = cli.main(["train", "--epochs", "1", *SMALL, "--out", str(out), "--overwrite"])
    _assert_failed(capsys, code, "test metrics not finite: sum_loss", out, before)


def test_non_finite_finds_every_path():
    assert cli.non_finite({"a": [1.0, float("nan")], "b": {"c": float("inf"), "d": "x"},
                           "e": np.array([1.0, np.nan]), "f": 3}) == ["a[1]", "b.c", "e"]


@pytest.mark.parametrize("argv,flag", [
    (["--sparsity", "0.5"], "--sparsity"),
    (["--weighting", "ew", "--gamma", "2"], "--gamma"),
    (["--pruning", "hybrid", "--dense-epochs", "3"], "--dense-epochs"),
    (["--pruning", "reweighted_l1", "--drop-fraction", "0.2"], "--drop-fraction"),
])
def test_a_flag_of_a_method_the_run_does_not_use_is_refused(argv, flag, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--out", str(out), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"kmm: error: argument {flag}: only used with")
    assert not out.exists()


# --- a fast and quiet command line (issue 14) ---

#: Calls `main` on each argv in one fresh interpreter; prints, per argv, the exit status and
#: whether TensorFlow was imported by then.
NO_TENSORFLOW = r"""
import json, sys
from keras_minmax_mtl.cli import main as cli
results = []
for argv in json.loads(sys.argv[1]):
    try:
        status = cli.main(argv)
    except SystemExit as exit:
        status = exit.code
    results.append([argv, status, "tensorflow" in sys.modules])
print("RESULTS" + json.dumps(results))
"""


def run_python(code, *args, timeout=300, cwd=None):
    """`subprocess.run` of `python -c code args` with this checkout on the path."""
    import subprocess
    import sys

    from tests.helpers import REPO_ROOT

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell has it
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=cwd)


def test_help_and_argument_errors_import_no_tensorflow(tmp_path):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x00" * 64)
    cases = [
        (["--help"], 0), (["train", "--help"], 0), (["export", "--help"], 0),
        (["inspect", "--help"], 0), ([], 2), (["--bogus"], 2), (["train", "--bogus"], 2),
        (["train", "--epochs", "0"], 2), (["train", "--weighting", "ew", "--gamma", "2"], 2),
        (["train", "--pruning", "dst", "--dst-update-every", "100000", "--epochs", "1"], 2),
        (["train", "--pruning", "task_aware", "--groups", "4"], 2),
        (["train", "--pruning", "hybrid", "--sparsity", "1.5"], 2),
        (["export", str(tmp_path / "missing")], 2), (["export", str(tmp_path)], 2),
        (["inspect", str(tmp_path / "missing.tflite")], 2), (["inspect", str(junk)], 2),
        (["-v", "train", "--epochs", "-1"], 2),
        (["compress", "--help"], 0), (["compress", "--max-worst-drop", "-1"], 2),
        (["compress", "--max-worst-drop", "1", "--ladder", "0.9,0.5"], 2),
        (["compress", "--max-worst-drop", "1", "--candidate-epochs", "1"], 2),
    ]
    done = run_python(NO_TENSORFLOW, json.dumps([argv for argv, _ in cases]))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.split("RESULTS", 1)[1])
    assert [[argv, status] for argv, status, _ in results] == [list(c) for c in cases]
    assert [argv for argv, _, imported in results if imported] == []
    errors = [line for line in done.stderr.splitlines() if line]
    assert len(errors) == sum(status == 2 for _, status in cases) - 1  # no command: the help
    assert all(line.startswith("kmm: error: ") for line in errors), errors


def test_dataset_facts_of_the_flag_checks_are_the_datasets():
    assert cli.DATASET_FACTS["multi_digits"] == {
        "tasks": tuple(datasets.MULTI_DIGITS_TASKS),
        "examples": dict(datasets.DEFAULT_NUM_EXAMPLES)}
    assert set(cli.DATASET_FACTS) == set(cli.DATASETS)


@pytest.mark.parametrize("argv, show_logs, verbose, progress", [
    (["train"], False, 0, "compact"),
    (["train", "--verbose", "0"], False, 0, "keras"),
    (["train", "-v"], True, 1, "keras"),
    (["train", "--verbose", "2"], True, 2, "keras"),
    (["-v", "train"], True, 1, "keras"),
    (["-v", "train", "--verbose", "2"], True, 2, "keras"),
    (["export", "run"], False, None, None),
    (["export", "run", "-v"], True, None, None),
    (["-v", "export", "run"], True, None, None),
    (["inspect", "-v", "f.tflite"], True, None, None),
])
def test_verbose_shows_the_logs_before_or_after_the_command(argv, show_logs, verbose, progress,
                                                            monkeypatch):
    from keras_minmax_mtl.cli import output

    seen = {}

    def stop(parser, args):
        seen.update(show_logs=output.show_logs(args), verbose=args.verbose,
                    progress=args.progress)
        return 0

    monkeypatch.setattr(cli, "_train_command", stop)
    args = cli.build_parser().parse_args(argv)
    if args.command == "train":
        assert cli.main(argv) == 0
        assert seen == {"show_logs": show_logs, "verbose": verbose, "progress": progress}
    else:
        assert output.show_logs(args) is show_logs


def test_captured_output_holds_what_c_code_writes_and_shows_it_on_failure(capsys):
    import ctypes

    from keras_minmax_mtl.core.logs import captured_output

    libc = ctypes.CDLL(None)
    with captured_output() as captured:
        os.write(1, b"fd one\n")
        os.write(2, b"fd two\n")
        libc.printf(b"buffered printf\n")  # flushed before the descriptors come back
    assert captured.text.splitlines() == ["fd one", "fd two", "buffered printf"]
    with pytest.raises(RuntimeError, match="conversion failed"):
        with captured_output():
            os.write(2, b"E0000 the real error\n")
            raise RuntimeError("conversion failed")
    assert capsys.readouterr().err == "E0000 the real error\n"
    with captured_output(enabled=False) as shown:
        pass
    assert shown.text == ""


def test_compact_progress_prints_loss_each_task_s_metric_and_weights():
    from keras_minmax_mtl.cli.progress import format_epoch, main_metric

    logs = {"loss": 2.46474, "left_loss": 2.2, "right_loss": 2.1, "left_accuracy": 0.18204,
            "right_accuracy": 0.21151, "worst_loss": 2.2, "worst_accuracy": 0.18,
            "left_weight": 0.29149, "right_weight": 0.70851, "val_loss": 2.4,
            "val_left_accuracy": 0.2705, "val_right_accuracy": 0.369}
    assert main_metric(logs, "left") == "accuracy"
    line = format_epoch(3, 20, logs, ["left", "right"], seconds=1.234)
    assert line == ("epoch  3/20  1.2s  loss 2.4647  accuracy train/val  left 0.182/0.271  "
                    "right 0.212/0.369  weights  left 0.291  right 0.709")
    assert format_epoch(1, 1, {"loss": 1.0, "a_loss": 0.5}, ["a"]) == "epoch 1/1  loss 1.0000  loss  a 0.500"


#: TensorFlow's, absl's, LiteRT's and the TFLite converter's log lines.
LOG_LINE = re.compile(r"^[IWEF]\d{4} |^WARNING: All log messages|cuda|oneDNN|absl|XNNPACK|"
                      r"fully_quantize|^INFO: |^WARNING:tensorflow|tensorflow/|\.cc:\d+\]")

#: One `kmm train --export edgetpu`, then `kmm export --target mobile` and `kmm inspect` of it,
#: in one fresh interpreter (the train command imports TensorFlow, the export converts).
TRAIN_EXPORT_INSPECT = r"""
import sys
from keras_minmax_mtl.cli import main as cli
out, deploy = sys.argv[1], sys.argv[2]
status = [cli.main(["train", "--epochs", "2", "--train-examples", "64", "--test-examples", "32",
                    "--batch-size", "32", "--out", out, "--export", "edgetpu"]),
          cli.main(["export", out, "--target", "mobile", "--samples", "16", "--out", deploy]),
          cli.main(["inspect", deploy + "/model_mobile.tflite"])]
print("STATUS", status)
"""


@pytest.fixture(scope="module")
def quiet_run(tmp_path_factory):
    """Output of TRAIN_EXPORT_INSPECT: (completed process, run folder, deploy folder)."""
    root = tmp_path_factory.mktemp("quiet")
    done = run_python(TRAIN_EXPORT_INSPECT, str(root / "run"), str(root / "deploy"), cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, root / "run", root / "deploy"


def test_train_export_and_inspect_print_no_tensorflow_log_line(quiet_run):
    done, _, _ = quiet_run
    assert "STATUS [0, 0, 0]" in done.stdout
    logs = [line for line in (done.stdout + done.stderr).splitlines() if LOG_LINE.search(line)]
    assert logs == []
    assert done.stderr == ""


def test_train_prints_one_compact_line_per_epoch(quiet_run):
    done, _, _ = quiet_run
    epochs = [line for line in done.stdout.splitlines() if line.startswith("epoch ")]
    pattern = (r"epoch [12]/2  \d+\.\ds  loss \d\.\d{4}  accuracy train/val  "
               r"left \d\.\d{3}/\d\.\d{3}  right \d\.\d{3}/\d\.\d{3}  sum \d\.\d{3}/\d\.\d{3}  "
               r"weights  left \d\.\d{3}  right \d\.\d{3}  sum \d\.\d{3}")
    assert len(epochs) == 2 and all(re.fullmatch(pattern, line) for line in epochs), epochs
    assert max(len(line) for line in epochs) < 160  # Keras: 540-620 characters


def test_export_prints_the_output_mapping_and_inspect_shows_it(quiet_run):
    done, run, deploy = quiet_run
    report = json.loads((run / "model_edgetpu_uncompiled.json").read_text())
    outputs = report["outputs"]
    assert sorted(outputs) == ["left", "right", "sum"]
    assert sorted(o["position"] for o in outputs.values()) == [0, 1, 2]
    assert [report["output_forms"][t] for t in outputs] == ["logits_above_floor"] * 3
    for task, tensor in outputs.items():
        zero = tensor["quantization"]["zero_point"][0]
        floor = report["logit_floors"][task]
        line = (f"    {task}: output {tensor['position']}, tensor {tensor['tensor']!r} (index "
                f"{tensor['index']}), int8 {tensor['shape']}, logits above the floor "
                f"t={floor:.4g}, max(z - t, 0) (the final softmax dropped: the same top-1 where "
                f"max z > t); value = {tensor['quantization']['scale']:.6g} * (q "
                f"{'+' if zero < 0 else '-'} {abs(zero)})")
        assert line in done.stdout.splitlines(), (line, done.stdout)
    assert "    left: output " in done.stdout.split("model_mobile.tflite", 1)[1]  # kmm export too
    # kmm inspect (the JSON after the export's lines): the same mapping and every op's layer.
    inspected = json.loads(done.stdout[done.stdout.index("\n{") + 1:done.stdout.index("STATUS")])
    mobile = json.loads((deploy / "model_mobile.json").read_text())
    assert inspected["outputs"] == mobile["outputs"]
    assert {o["op"] for o in inspected["outputs"].values()} == {"SOFTMAX"}
    layers = [op["layer"] for op in inspected["op_list"]]
    assert layers == [op["layer"] for op in mobile["op_list"]]  # as export_tflite names them
    assert None not in layers and {"trunk_conv1", "left", "right", "sum"} <= set(layers)


def test_edgetpu_export_says_the_compiler_was_not_run_and_names_the_file_uncompiled(quiet_run):
    import shutil

    done, run, _ = quiet_run
    assert shutil.which("edgetpu_compiler") is None  # this machine has no compiler
    assert (run / "model_edgetpu_uncompiled.tflite").is_file()
    assert not (run / "model_edgetpu.tflite").exists()
    assert ("  Edge TPU: edgetpu_compiler was not found on PATH, so "
            "model_edgetpu_uncompiled.tflite is not compiled") in done.stdout
    assert "checked instead: the compiler's documented rules" in done.stdout
    ops = len(json.loads((run / "model_edgetpu_uncompiled.json").read_text())["edgetpu"]["rules"]["ops"])
    assert f"  Edge TPU rules: all {ops} ops would map to the Edge TPU" in done.stdout
    assert "Edge TPU rules: all ops map" not in done.stdout


def test_a_compiled_edgetpu_file_is_named_model_edgetpu(quiet_run, tmp_path):
    from keras_minmax_mtl.cli.export import edgetpu_summary, export_name
    from keras_minmax_mtl.export.targets import EdgeTPUTarget, compiled_name

    assert export_name("edgetpu") == "model_edgetpu_uncompiled.tflite"
    assert export_name("micro") == "model_micro.tflite"
    assert compiled_name("model_edgetpu_uncompiled") == "model_edgetpu.tflite"
    assert compiled_name("net") == "net_edgetpu.tflite"
    compiler = tmp_path / "edgetpu_compiler"  # the real one's command line: -s -o DIR FILE
    compiler.write_text('#!/bin/sh\ncp "$4" "$3/$(basename "$4" .tflite)_edgetpu.tflite"\n'
                        'echo "Edge TPU Compiler version 16.0"\n')
    compiler.chmod(0o755)
    source = quiet_run[1] / "model_edgetpu_uncompiled.tflite"
    work = tmp_path / "work"
    work.mkdir()
    staged = work / source.name
    staged.write_bytes(source.read_bytes())
    entries, files = EdgeTPUTarget(compiler=str(compiler)).extra_files(
        staged, staged.read_bytes(), [], work)
    assert sorted(files) == ["edgetpu_compiler.log", "model_edgetpu.tflite"]
    assert files["model_edgetpu.tflite"].read_bytes() == source.read_bytes()
    assert entries["edgetpu"]["compiler"]["compiled"] == "model_edgetpu.tflite"
    lines = edgetpu_summary(staged, entries["edgetpu"])
    assert lines[0] == ("  Edge TPU: compiled by edgetpu_compiler into model_edgetpu.tflite "
                        "(log: edgetpu_compiler.log)")


# --- plots: each method's title, its prune step or mask updates, nothing cut off (issue 14) ---

def test_task_weight_plot_titles_the_method_and_marks_its_events():
    from argparse import Namespace

    from keras_minmax_mtl.cli.plots import run_events, run_title, task_weights_figure, texts_outside

    common = dict(dataset="multi_digits", weighting="minmax", seed=3, sparsity=0.9)
    reweighted = Namespace(**common, pruning="reweighted_l1", sparsity_type="weight",
                           dense_epochs=1, reweighted_epochs=2, retrain_epochs=1, epochs=4)
    assert run_title(reweighted) == ("multi_digits: minmax task weights, seed 3\n"
                                     "reweighted l1 (weight), 90% sparse")
    assert run_events(reweighted, {}, 8) == [{"step": 9, "label": "reweighted l1 begins"},
                                              {"step": 25, "label": "hard prune"}]
    dst = Namespace(**common, pruning="dst", dst_method="rigl", epochs=3)
    assert run_title(dst) == "multi_digits: minmax task weights, seed 3\nDST (rigl), 90% sparse"
    updates = {"updates": [{"step": 4}, {"step": 8}, {"step": 12}]}
    assert run_events(dst, updates, 8) == [{"step": s, "label": "DST mask update"} for s in (4, 8, 12)]
    paper = Namespace(**{**vars(dst), "dst_method": "paper"})
    assert [e["step"] for e in run_events(paper, {"updates": [{"step": 1}]}, 8)] == [8]
    hybrid = Namespace(**common, pruning="hybrid", epochs=4, hybrid_dense_epochs=None,
                       hybrid_prune_epochs=1)
    assert run_events(hybrid, {}, 8) == [{"step": 17, "label": "prune"},
                                          {"step": 25, "label": "prune ends"}]
    task_aware = Namespace(**common, pruning="task_aware", epochs=2)
    history = {"report": {"history": [{"step": 0}, {"step": 5}, {"step": 10}]}}
    assert run_events(task_aware, history, 8) == [
        {"step": s, "label": "task-aware re-allocation"} for s in (5, 10)]
    dense = Namespace(**common, pruning="none", epochs=2)
    assert run_title(dense) == "multi_digits: minmax task weights, seed 3\ndense"
    assert run_events(dense, None, 8) == []

    history = np.full((32, 3), 1 / 3)
    long = ("multi_digits: minmax task weights, seed 0 -- reweighted l1 (unstructured), 80% sparse "
            "with the global allocation")  # one line: cut off on both sides before
    assert texts_outside(task_weights_figure(history, ["left", "right", "sum"], long)) == []
    figure = task_weights_figure(history, ["left", "right", "sum"], run_title(reweighted), 8,
                                 run_events(reweighted, {}, 8) + run_events(dst, updates, 8))
    axes = figure.axes[0]
    assert axes.get_title() == run_title(reweighted)
    legend = [t.get_text() for t in axes.get_legend().get_texts()]
    assert legend == ["left", "right", "sum", "uniform 1/K", "DST mask update (3x, steps 4-12)",
                      "reweighted l1 begins (step 9)", "hard prune (step 25)"]
    marked = {(line.get_xdata()[0], line.get_color()) for line in axes.get_lines()
              if line.get_label() and list(line.get_xdata()) == [line.get_xdata()[0]] * 2}
    assert {x for x, color in marked if color != "0.85"} == {4, 8, 12, 9, 25}
    assert texts_outside(figure) == []


def test_task_aware_allocation_panel_draws_a_single_allocation():
    from keras_minmax_mtl.cli.plots import task_aware_figure, texts_outside

    report = {"measurement": {"task_names": ["left", "right", "sum"],
                              "similarity": np.eye(3).tolist()},
              "groups": [["left", "right"], ["sum"]],
              "history": [{"step": 0, "density": {"branch0": 0.2, "branch1": 0.05}}]}
    figure = task_aware_figure(report, title="task-aware", last_step=48)
    panel = figure.axes[-1]
    assert panel.get_title() == "dynamic allocation (1 allocation)"
    steps = [line for line in panel.get_lines() if line.get_label().startswith("branch")]
    assert [list(line.get_xdata()) for line in steps] == [[0, 48], [0, 48]]
    assert [list(line.get_ydata()) for line in steps] == [[0.2, 0.2], [0.05, 0.05]]
    assert panel.get_xlim()[1] > panel.get_xlim()[0] and texts_outside(figure) == []
    short = task_aware_figure(report)  # without the run's length: one step to the right
    assert [list(line.get_xdata()) for line in short.axes[-1].get_lines()
            if line.get_label().startswith("branch")] == [[0, 1], [0, 1]]
