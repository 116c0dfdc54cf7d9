r"""Start-up time of `kmm --help` relative to importing TensorFlow.

What is measured
----------------
Wall time of fresh interpreters, started one after the other in one run:

- ``import tensorflow``: ``python -c "import tensorflow"``, the cost every
  command that trains or exports pays once;
- ``kmm --help``, ``kmm train --help`` and ``kmm train --epochs 0`` (a bad
  flag): ``python -m keras_minmax_mtl.cli.main ...``, which must not import
  TensorFlow before the arguments are valid.

The commands alternate within each repeat (tensorflow, then each kmm
command), so a machine that slows down during the run slows all of them.
The headline numbers are

    ratio(command) = median wall time (command) / median wall time (import tensorflow)

with the goal ``ratio <= 0.1`` for every command. Each command's output is
checked (the help text, the one-line error, exit status 0 or 2), so a command
that fails fast is not timed as a fast one.

    python benchmarks/cli_startup.py                 # 5 repeats
    python benchmarks/cli_startup.py --repeats 9 --out benchmarks/results/cli_startup.json

Prints one line per command and the ratios; saves JSON (the raw times too).
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: name -> (argv after the interpreter, expected exit status, text expected in stdout or stderr).
COMMANDS = {
    "import tensorflow": (["-c", "import tensorflow"], 0, None),
    "kmm --help": (["-m", "keras_minmax_mtl.cli.main", "--help"], 0, "usage: kmm"),
    "kmm train --help": (["-m", "keras_minmax_mtl.cli.main", "train", "--help"], 0,
                         "usage: kmm train"),
    "kmm train --epochs 0": (["-m", "keras_minmax_mtl.cli.main", "train", "--epochs", "0"], 2,
                             "kmm: error: argument --epochs"),
}


def time_command(argv, status, expected, env):
    """Wall seconds of one fresh `python argv`; raises if its status or output is not as expected."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env,
                          cwd=ROOT, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != status or (expected and expected not in done.stdout + done.stderr):
        raise RuntimeError(f"{argv} exited {done.returncode} (expected {status}); "
                           f"stdout {done.stdout[-500:]!r}, stderr {done.stderr[-500:]!r}")
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=5, help="default: %(default)s")
    parser.add_argument("--out", type=pathlib.Path,
                        default=ROOT / "benchmarks" / "results" / "cli_startup.json")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"argument --repeats: must be >= 1, received {args.repeats}")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times = {name: [] for name in COMMANDS}
    for repeat in range(args.repeats):
        for name, (command, status, expected) in COMMANDS.items():
            times[name].append(time_command(command, status, expected, env))
        print(f"repeat {repeat + 1}/{args.repeats}: "
              + ", ".join(f"{name} {t[-1]:.2f}s" for name, t in times.items()), flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    reference = medians["import tensorflow"]
    ratios = {name: medians[name] / reference for name in COMMANDS if name != "import tensorflow"}
    print(f"\nmedian of {args.repeats}: import tensorflow {reference:.2f}s")
    for name, ratio in ratios.items():
        print(f"  {name:<22} {medians[name]:.3f}s  ratio {ratio:.3f}  "
              f"({'meets' if ratio <= 0.1 else 'misses'} the goal <= 0.1)")
    result = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "repeats": args.repeats,
              "seconds": times, "median_seconds": medians, "ratio_to_import_tensorflow": ratios,
              "goal": "ratio <= 0.1", "meets_goal": all(r <= 0.1 for r in ratios.values())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0 if result["meets_goal"] else 1


if __name__ == "__main__":
    sys.exit(main())
