"""`kmm export` and `kmm inspect`: one line `kmm: error: ...` for every bad flag or file, nothing written."""
import json

import numpy as np
import pytest

import keras_minmax_mtl as kmm
from keras_minmax_mtl.cli import main as cli
from keras_minmax_mtl.data.networks import multi_digits_network
from tests.test_loading import pipepager_lambda, rewrite_config, wait_for


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """What `kmm train` writes, without the training: model.keras and metrics.json."""
    run = tmp_path_factory.mktemp("run")
    model = kmm.MinMaxMultiTask(multi_digits_network(seed=0))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.save(run / "model.keras")
    (run / "metrics.json").write_text(json.dumps({"dataset": "multi_digits", "seed": 0}))
    return run


def copy_run(run_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.keras", "metrics.json"):
        (run / name).write_bytes((run_dir / name).read_bytes())
    return run


def error_line(capsys, argv, status=2):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == status
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kmm: error: "), captured.err
    return lines[0]


def test_bad_flags_give_one_line_exit_2_and_write_nothing(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    cases = [
        (["export", str(tmp_path / "nope"), "--out", str(out)],
         f"kmm: error: argument MODEL_DIR: no folder '{tmp_path / 'nope'}'"),
        (["export", str(run_dir / "metrics.json"), "--out", str(out)],
         "is a file, not a folder written by `kmm train`"),
        (["export", str(tmp_path), "--out", str(out)], "has no model.keras"),
        (["export", str(run_dir), "--target", "micro", "--quantization", "float", "--out",
          str(out)], "kmm: error: --quantization float is not available for --target micro "
                     "(choose from int8)"),
        (["export", str(run_dir), "--target", "phone", "--out", str(out)],
         "kmm: error: argument --target: invalid choice: 'phone' (choose from "),
        (["export", str(run_dir), "--samples", "0", "--out", str(out)],
         "kmm: error: --samples must be an integer > 0, received 0"),
        (["export", str(run_dir), "--out", str(run_dir / "metrics.json")],
         f"kmm: error: --out '{run_dir / 'metrics.json'}' must be a folder, but "
         f"'{run_dir / 'metrics.json'}' is a file"),
        (["export", str(run_dir), "--out", str(run_dir / "metrics.json" / "sub")],
         f"but '{run_dir / 'metrics.json'}' is a file"),
        (["inspect", str(tmp_path / "missing.tflite")],
         f"kmm: error: argument FILE.tflite: TFLite file '{tmp_path / 'missing.tflite'}' does "
         "not exist."),
    ]
    for argv, message in cases:
        assert message in error_line(capsys, argv), argv
    assert not out.exists()
    assert sorted(p.name for p in run_dir.iterdir()) == ["metrics.json", "model.keras"]


def test_a_run_folder_in_use_is_refused_and_the_export_takes_the_lock(run_dir, tmp_path, capsys):
    import os

    from keras_minmax_mtl.cli.run_folder import FolderLock, RunFolder, RunFolderError

    run = copy_run(run_dir, tmp_path)
    with RunFolder(run, overwrite=True):  # a kmm train replacing the run being exported
        line = error_line(capsys, ["export", str(run), "--target", "micro"])
    assert line == (f"kmm: error: argument MODEL_DIR: {run} is in use by another kmm train "
                    f"(pid {os.getpid()}); wait for it to end")
    (tmp_path / "o").mkdir()
    other = copy_run(run_dir, tmp_path / "o")  # --out another run folder, being compressed
    with RunFolder(other, overwrite=True, command="compress"):
        line = error_line(capsys, ["export", str(run), "--out", str(other)])
    assert line == (f"kmm: error: --out: {other} is in use by another kmm compress "
                    f"(pid {os.getpid()}); wait for it to end or choose another --out")
    for folder in (run, other):
        assert sorted(p.name for p in folder.iterdir()) == ["metrics.json", "model.keras"]
    # An export holding the lock refuses a train on the same folder, naming the export.
    with FolderLock(run, "export"):
        with pytest.raises(RunFolderError, match=rf"is in use by another kmm export "
                                                 rf"\(pid {os.getpid()}\); wait"):
            RunFolder(run, overwrite=True).__enter__()
    assert sorted(os.listdir(tmp_path)) == ["o", "run"]  # no lock file left


def test_bad_metrics_json_is_named(run_dir, tmp_path, capsys):
    run = copy_run(run_dir, tmp_path)
    (run / "metrics.json").write_text("{")
    assert "metrics.json' is not JSON" in error_line(capsys, ["export", str(run)])
    (run / "metrics.json").write_text(json.dumps({"dataset": "cifar", "seed": 0}))
    assert "names the dataset 'cifar', for which `kmm export` has no representative data" in (
        error_line(capsys, ["export", str(run)]))


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", b"\x00" * 64])
def test_damaged_files_give_one_line_naming_the_file(run_dir, tmp_path, capsys, content):
    run = copy_run(run_dir, tmp_path)
    (run / "model.keras").write_bytes(content)
    line = error_line(capsys, ["export", str(run)])
    assert f"Model file '{run / 'model.keras'}' is not a valid .keras archive" in line
    (tmp_path / "x.tflite").write_bytes(content)
    line = error_line(capsys, ["inspect", str(tmp_path / "x.tflite")])
    assert f"argument FILE.tflite: TFLite file '{tmp_path / 'x.tflite'}'" in line
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json", "model.keras"]


def test_a_tampered_model_is_refused_and_its_command_never_runs(tmp_path, capsys):
    from tests.test_loading import saved

    run = tmp_path / "run"
    run.mkdir()
    path = saved(run, lambda_layer=True)
    marker = tmp_path / "MARKER"
    rewrite_config(path, pipepager_lambda(marker))
    (run / "metrics.json").write_text(json.dumps({"dataset": "multi_digits", "seed": 0}))
    line = error_line(capsys, ["export", str(run)])
    assert "Lambda layer 'evil'" in line and "pydoc.pipepager" in line and "--trust-model" in line
    assert not wait_for(marker, 0.5)
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json", "model.keras"]


def test_a_nan_model_fails_the_int8_export_with_status_1(run_dir, tmp_path, capsys):
    run = copy_run(run_dir, tmp_path)
    model = kmm.MinMaxMultiTask(multi_digits_network(seed=0))
    kernel = model.base_model.get_layer("trunk_dense").kernel
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.save(run / "model.keras")
    line = error_line(capsys, ["export", str(run), "--quantization", "int8", "--samples", "8",
                               "--out", str(tmp_path / "out")], status=1)
    assert "the export failed its verification, nothing was written" in line
    assert "The Keras model computes non-finite outputs (NaN or ±inf)" in line
    assert "'left': " in line and "trunk_dense/kernel" in line
    assert not (tmp_path / "out").exists()
