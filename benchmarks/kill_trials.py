"""SIGKILL `kmm train` and `kmm export` at random points over a complete earlier result.

Each trial copies a complete earlier run (or export) into a fresh folder,
starts the command over it in a new process (`--overwrite` for `kmm train`),
kills it with SIGKILL at a chosen point and checks what is left:

- ``previous``: the folder is byte for byte the earlier result;
- ``new``: the folder is a complete new result (metrics and model agree, the
  model loads; for export: the `.tflite` loads and its report matches it);
- ``damaged``: anything else (the failure this script looks for).

Kill points cycle through ``random`` (uniform over the command's measured
duration), ``save`` (the moment the new `model.keras` appears in the run's
work folder, i.e. during `model.save`) and ``late`` (the moment its
`metrics.json` appears, just before the swap); export trials use ``random``
only. After each trial the next command's start-up repair is run
(`run_folder.RunFolder`) and the folder must hold nothing but the result.

    python benchmarks/kill_trials.py                 # 20 trials each; ~10 minutes on 2 cores
    python benchmarks/kill_trials.py --trials 3 --commands train

Prints the counts and saves them as JSON under benchmarks/results/.
"""
import argparse
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

#: A tiny `kmm train` run (a few seconds after TensorFlow's import).
TRAIN_FLAGS = ["--epochs", "2", "--train-examples", "64", "--test-examples", "32",
               "--batch-size", "32", "--verbose", "0"]
KILL_POINTS = ("random", "save", "late")


def _command(*argv):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "-m", "keras_minmax_mtl.cli.main", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _work_file(out, name):
    for work in out.parent.glob(f".{out.name}.new-*"):
        if (work / name).exists():
            return True
    return False


def _kill(process, out, point, delay, timeout=120.0):
    """Kills `process` at `point`; returns False if it ended first."""
    start = time.monotonic()
    while process.poll() is None and time.monotonic() - start < timeout:
        if point == "random" and time.monotonic() - start >= delay:
            break
        if point == "save" and _work_file(out, "model.keras"):
            break
        if point == "late" and _work_file(out, "metrics.json"):
            break
        time.sleep(0.002)
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True


def _complete_run(out, seed):
    """Whether `out` holds a complete `kmm train` run of `seed` whose model loads and agrees."""
    import numpy as np

    from keras_minmax_mtl.core.backend import keras

    try:
        metrics = json.loads((out / "metrics.json").read_text())
        model = keras.models.load_model(out / "model.keras")
    except Exception:  # noqa: BLE001 - anything unreadable is a damaged run
        return False
    return (metrics["seed"] == seed and sorted(os.listdir(out)) == [
        "metrics.json", "model.keras", "task_weights.png"]
            and np.allclose(model.task_weights.numpy(), list(metrics["final_task_weights"].values())))


def _complete_export(folder, target):
    from keras_minmax_mtl.export.runtimes import load_interpreter

    try:
        report = json.loads((folder / f"model_{target}.json").read_text())
        path = folder / f"model_{target}.tflite"
        load_interpreter(path)
    except Exception:  # noqa: BLE001 - anything unreadable is a damaged export
        return False
    return report["bytes"] == path.stat().st_size


def _repair_leaves_only(out):
    from keras_minmax_mtl.cli.run_folder import RunFolder

    with RunFolder(out, overwrite=True):
        pass
    return sorted(os.listdir(out.parent)) == [out.name]


def train_trials(trials, root, rng, duration=None, points=KILL_POINTS):
    """`trials` killed `kmm train --overwrite` runs over a complete run; returns the records.

    Trial `i` is killed at `points[i % len(points)]`; `duration` (seconds) bounds the
    random kill times (default: measured by one uninterrupted run).
    """
    from keras_minmax_mtl.cli import main as cli

    previous = root / "previous" / "run"
    assert cli.main(["train", *TRAIN_FLAGS, "--seed", "0", "--out", str(previous)]) == 0
    if duration is None:  # one uninterrupted run measures how long the command takes
        start = time.monotonic()
        reference = root / "reference" / "run"
        _command("train", *TRAIN_FLAGS, "--seed", "1", "--out", str(reference)).wait()
        duration = time.monotonic() - start
    records = []
    for trial in range(trials):
        out = root / f"trial{trial}" / "run"
        shutil.copytree(previous, out)
        before = _files(out)
        point = points[trial % len(points)]
        delay = rng.uniform(0.0, duration)
        process = _command("train", *TRAIN_FLAGS, "--seed", "1", "--out", str(out), "--overwrite")
        killed = _kill(process, out, point, delay)
        state = ("previous" if out.is_dir() and _files(out) == before
                 else "new" if out.is_dir() and _complete_run(out, seed=1) else "damaged")
        clean = _repair_leaves_only(out)
        if state == "previous":  # the repair must not change it either
            state = "previous" if _files(out) == before else "damaged"
        records.append({"trial": trial, "point": point, "delay": delay if point == "random"
                        else None, "killed": killed, "state": state, "clean_after_repair": clean})
        shutil.rmtree(out.parent)
    return records


def export_trials(trials, root, rng, target="mobile"):
    """`trials` killed `kmm export` runs over a complete export of the same run; returns the records."""
    from keras_minmax_mtl.cli import main as cli

    run = root / "export-run"
    assert cli.main(["train", *TRAIN_FLAGS, "--seed", "0", "--out", str(run)]) == 0
    previous = root / "export-previous"
    assert cli.main(["export", str(run), "--target", target, "--samples", "16",
                     "--out", str(previous)]) == 0
    start = time.monotonic()
    _command("export", str(run), "--target", target, "--samples", "16",
             "--out", str(root / "export-reference")).wait()
    duration = time.monotonic() - start
    records = []
    for trial in range(trials):
        out = root / f"export{trial}"
        shutil.copytree(previous, out)
        before = _files(out)
        delay = rng.uniform(0.0, duration)
        process = _command("export", str(run), "--target", target, "--samples", "16",
                           "--out", str(out))
        killed = _kill(process, out, "random", delay)
        files = _files(out)
        state = ("previous" if files == before
                 else "new" if _complete_export(out, target) and set(files) == set(before)
                 else "damaged")
        records.append({"trial": trial, "point": "random", "delay": delay, "killed": killed,
                        "state": state, "clean_after_repair": set(os.listdir(out)) == set(before)})
        shutil.rmtree(out)
    return records


def summary(records):
    """Counts of the trials by outcome."""
    count = lambda key, value: sum(r[key] == value for r in records)  # noqa: E731
    return {"trials": len(records), "killed": count("killed", True),
            "previous_intact": count("state", "previous"), "new_complete": count("state", "new"),
            "damaged": count("state", "damaged"),
            "leftovers_after_repair": count("clean_after_repair", False),
            "by_point": {p: sum(r["point"] == p for r in records)
                         for p in sorted({r["point"] for r in records})}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--commands", nargs="+", default=["train", "export"],
                        choices=["train", "export"])
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--out", type=pathlib.Path,
                        default=REPO_ROOT / "benchmarks" / "results" / "kill_trials.json")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    results = {"trials_per_command": args.trials, "seed": args.seed}
    with tempfile.TemporaryDirectory() as root:
        for command in args.commands:
            run = train_trials if command == "train" else export_trials
            records = run(args.trials, pathlib.Path(root), rng)
            results[command] = {"summary": summary(records), "records": records}
            print(f"kmm {command}: " + json.dumps(results[command]["summary"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
