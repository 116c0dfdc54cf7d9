"""Per-task accuracy of several weightings over several seeds, through `kmm train`.

Runs `kmm train` once per (weighting, seed) in a fresh process (same data,
same initial weights per seed, only the weighting differs), then prints and
saves mean ± std over seeds of every task's test accuracy, of the mean over
tasks and of the worst task — and the same on the validation split, which is
the one to choose hyper-parameters on.

    python benchmarks/seeds.py --weightings minmax ew --seeds 0 1 2 --epochs 20

Extra arguments after `--` go to every `kmm train` call, e.g.
`-- --step-size 0.1 --gamma 1`.
"""
import argparse
import json
import pathlib
import subprocess
import sys

import numpy as np


def run(weighting, seed, epochs, out, extra):
    command = [sys.executable, "-m", "keras_minmax_mtl.cli.main", "train", "--weighting", weighting,
               "--seed", str(seed), "--epochs", str(epochs), "--out", str(out), "--verbose", "0",
               *extra]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "metrics.json").read_text())


def summarize(runs, key):
    tasks = runs[0]["tasks"]
    per_task = np.array([[r[key][t] for t in tasks] for r in runs])
    rows = {t: per_task[:, i] for i, t in enumerate(tasks)}
    rows["mean"] = per_task.mean(axis=1)
    rows["worst"] = per_task.min(axis=1)
    return {name: {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                   "values": v.tolist()} for name, v in rows.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weightings", nargs="+", default=["minmax", "ew"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--runs-dir", type=pathlib.Path, default=pathlib.Path("runs/seeds"))
    parser.add_argument("--out", type=pathlib.Path,
                        default=pathlib.Path("benchmarks/results/seeds.json"))
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    results = {}
    for weighting in args.weightings:
        runs = []
        for seed in args.seeds:
            metrics = run(weighting, seed, args.epochs,
                          args.runs_dir / f"{weighting}-s{seed}", extra)
            metrics["validation_accuracy"] = {
                t: metrics["history"][f"val_{t}_accuracy"][-1] for t in metrics["tasks"]}
            runs.append(metrics)
            print(f"{weighting} seed {seed}: test {metrics['test_accuracy']}", flush=True)
        results[weighting] = {"test": summarize(runs, "test_accuracy"),
                              "validation": summarize(runs, "validation_accuracy"),
                              "final_task_weights": [r["final_task_weights"] for r in runs]}
    for split in ("validation", "test"):
        names = list(results[args.weightings[0]][split])
        print(f"\n{split} accuracy, mean ± std over seeds {args.seeds} ({args.epochs} epochs)")
        print(f"{'weighting':<10}" + "".join(f"{n:>16}" for n in names))
        for weighting in args.weightings:
            cells = results[weighting][split]
            print(f"{weighting:<10}" + "".join(
                f"{cells[n]['mean']:>9.4f} ± {cells[n]['std']:.4f}" for n in names))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seeds": args.seeds, "epochs": args.epochs, "extra": extra,
                                    "results": results}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
