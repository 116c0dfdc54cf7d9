"""The run folder of `kmm train`: lock, publish by swap, recovery after a kill (no TensorFlow)."""
import os

import pytest

from keras_minmax_mtl.cli import run_folder
from keras_minmax_mtl.cli.run_folder import RunFolder, RunFolderError, check_destination


def _run(folder, **files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_json", ".json").replace("_keras", ".keras")).write_text(text)


def _contents(folder):
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("exchange", [True, False])
def test_publish_swaps_the_new_run_in_whole(tmp_path, monkeypatch, exchange):
    out = tmp_path / "run"
    _run(out, model_keras="old", metrics_json="old", model_stripped_keras="stale")
    if not exchange:  # the two-rename fallback of systems without renameat2
        monkeypatch.setattr(run_folder, "_exchange", lambda a, b: False)
    with RunFolder(out, overwrite=True) as folder:
        assert (tmp_path / ".run.lock").read_text() == f"{os.getpid()} train\n"  # pid, command
        _run(folder.work, model_keras="new", metrics_json="new")
        assert _contents(out)["model.keras"] == "old"  # nothing changes before publish
        folder.publish()
    assert _contents(out) == {"metrics.json": "new", "model.keras": "new"}
    assert os.listdir(tmp_path) == ["run"]  # no work folder, old run or lock file left


def test_an_unpublished_run_leaves_the_folder_as_it_was(tmp_path):
    out = tmp_path / "run"
    _run(out, model_keras="old")
    with pytest.raises(KeyboardInterrupt):
        with RunFolder(out, overwrite=True) as folder:
            _run(folder.work, model_keras="half")
            raise KeyboardInterrupt
    assert _contents(out) == {"model.keras": "old"} and os.listdir(tmp_path) == ["run"]


def test_a_kill_between_the_two_renames_is_repaired_by_the_next_run(tmp_path, capsys):
    out = tmp_path / "run"
    # What the fallback leaves when killed after `DIR -> .DIR.old-PID`, before `.DIR.new-* -> DIR`.
    _run(tmp_path / ".run.old-4242", model_keras="previous", metrics_json="previous")
    _run(tmp_path / ".run.new-abc", model_keras="killed")
    with pytest.raises(RunFolderError, match=r"run already holds a run \(metrics.json, "
                                             r"model.keras\); add --overwrite to replace it, or "
                                             r"choose another --out; restored the previous run "
                                             r".*/run from .run.old-4242 \(a run was killed "
                                             r"while replacing it\); removed .run.new-abc, left "
                                             r"by a killed run"):
        RunFolder(out, overwrite=False).__enter__()
    assert _contents(out) == {"metrics.json": "previous", "model.keras": "previous"}
    assert os.listdir(tmp_path) == ["run"]
    # The same state, with --overwrite: repaired, then the new run may replace it.
    os.rename(out, tmp_path / ".run.old-4242")
    with RunFolder(out, overwrite=True) as folder:
        assert folder.notes == [f"restored the previous run {out} from .run.old-4242 (a run was "
                                f"killed while replacing it)"]
    assert _contents(out) == {"metrics.json": "previous", "model.keras": "previous"}


def test_the_lock_refuses_a_second_run_and_names_the_first(tmp_path):
    out = tmp_path / "run"
    with RunFolder(out):
        with pytest.raises(RunFolderError, match=rf"run is in use by another kmm train "
                                                 rf"\(pid {os.getpid()}\)"):
            RunFolder(out).__enter__()
    with RunFolder(out):  # free again once the first run ended
        pass


@pytest.mark.parametrize("setup, overwrite, message", [
    (lambda d: (d / "run").write_text("x"), True, r"run is a file; give a folder"),
    (lambda d: (d / "f").write_text("x"), True, r"f/run lies under the file .*/f; give a folder"),
    (lambda d: _run(d / "run", metrics_json="{}"), False, r"already holds a run \(metrics.json\); "
                                                          r"add --overwrite"),
    (lambda d: _run(d / "run", data_csv="1"), True, r"holds files that kmm train did not write "
                                                    r"\(data_csv\)"),
])
def test_destinations_that_are_refused(tmp_path, setup, overwrite, message):
    setup(tmp_path)
    path = tmp_path / ("f/run" if message.startswith("f/") else "run")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(RunFolderError, match=message):
        check_destination(path, overwrite)
    assert sorted(os.listdir(tmp_path)) == before


def test_destinations_that_are_accepted(tmp_path):
    check_destination(tmp_path / "new" / "run", overwrite=False)  # made by the run
    (tmp_path / "empty").mkdir()
    check_destination(tmp_path / "empty", overwrite=False)
    _run(tmp_path / "old", model_keras="", metrics_json="")
    (tmp_path / "old" / "model_micro.tflite").write_text("")
    check_destination(tmp_path / "old", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["empty", "old"]
