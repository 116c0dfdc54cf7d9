r"""Structured (filter) pruning for microcontrollers: file bytes, TFLite Micro latency and accuracy.

For each unit fraction of `--fractions` (default 0.5 and 0.75), trains
`--weightings` (min-max and equal weighting) × `--seeds` runs of reweighted ℓ1
in filter mode (`filter_l1` in `benchmarks/_runs.py`: 10 dense + 5 reweighted
group-ℓ1 + 5 retraining epochs; that fraction of the units of every trunk and
task-hidden layer removed; outputs keep all their units), plus one dense run
per weighting and seed as the reference. Every model is exported for
`micro` (full int8, batch 1) by `export_tflite`:

- `micro_int8`: `structured="auto"`, so the layer surgery
  (`keras_minmax_mtl.export.surgery.shrink`) removes the pruned units first;
- `micro_int8_unshrunk` (sparse runs only): `structured=False`, the same
  masked model at full size, zeros stored as zeros.

Each file runs the whole test split in TFLite Micro (the accuracies are those
of the files, not of the Keras models), and its invoke latency is measured in
the same process, alternating with the other file of the run
(`_runs.export_run`). The script prints, per fraction and weighting, mean ±
std over seeds of

- bytes ratio: shrunk micro bytes / dense-run micro bytes (same seed and weighting);
- latency ratio: shrunk / unshrunk invoke time (same run, same process);
- worst-task and mean test accuracy of the shrunk file.

Runs are saved and resumed by `compare.py` (one folder per fraction under
`--out`); the table goes to `--out/structured.md` and `structured.json`.

    PYTHONPATH=. python benchmarks/structured.py --seeds 3
"""
import argparse
import json
import os
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _runs  # noqa: E402
import compare  # noqa: E402
from keras_minmax_mtl.core.arguments import positive_int  # noqa: E402


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.75],
                        help="fractions of units removed per pruned layer (default: 0.5 0.75)")
    parser.add_argument("--weightings", nargs="+", default=["minmax", "ew"],
                        choices=_runs.WEIGHTINGS)
    parser.add_argument("--seeds", type=positive_int, default=3)
    parser.add_argument("--epochs", type=positive_int, default=20)
    parser.add_argument("--train-examples", type=positive_int, default=None)
    parser.add_argument("--out", type=pathlib.Path,
                        default=pathlib.Path(__file__).parent / "results" / "structured")
    return parser


def _compare(args, compressions, fraction, out, exports):
    argv = ["--dataset", "multi_digits", "--weightings", *args.weightings,
            "--compressions", *compressions, "--seeds", str(args.seeds),
            "--epochs", str(args.epochs), "--sparsity", str(fraction),
            "--exports", *exports, "--out", str(out)]
    if args.train_examples is not None:
        argv += ["--train-examples", str(args.train_examples)]
    compare.main(argv)
    return json.loads((out / "compare.json").read_text())["runs"]


def _by_run(runs, compression):
    """`{(weighting, seed): run}` of the runs of `compression`."""
    return {(r["config"]["weighting"], r["config"]["seed"]): r
            for r in runs if r["config"]["compression"] == compression}


def summarize(dense, sparse_by_fraction):
    """Per fraction and weighting: the ratios and accuracies, mean ± std over seeds."""
    rows = {}
    for fraction, runs in sparse_by_fraction.items():
        for (weighting, seed), run in sorted(runs.items()):
            shrunk = run["exports"]["micro_int8"]
            unshrunk = run["exports"]["micro_int8_unshrunk"]
            reference = dense[(weighting, seed)]["exports"]["micro_int8"]
            row = rows.setdefault((fraction, weighting), {k: [] for k in (
                "bytes", "dense_bytes", "bytes_ratio", "unshrunk_bytes_ratio", "latency_ratio",
                "worst", "mean", "keras_worst", "removed_units", "seeds")})
            row["bytes"].append(shrunk["bytes"])
            row["dense_bytes"].append(reference["bytes"])
            row["bytes_ratio"].append(shrunk["bytes"] / reference["bytes"])
            row["unshrunk_bytes_ratio"].append(unshrunk["bytes"] / reference["bytes"])
            row["latency_ratio"].append(shrunk["invoke_seconds"] / unshrunk["invoke_seconds"])
            row["worst"].append(shrunk["test"]["worst"])
            row["mean"].append(shrunk["test"]["mean"])
            row["keras_worst"].append(run["test"]["worst"])
            row["removed_units"].append(run["removed_units"])
            row["seeds"].append(seed)
    return {f"{fraction}/{weighting}": {k: (v if k == "seeds" else _runs.mean_std(v))
                                        for k, v in row.items()}
            for (fraction, weighting), row in rows.items()}


def markdown(summary, dense):
    def fmt(cell, scale=1.0, digits=3):
        return f"{cell['mean'] * scale:.{digits}f} ± {cell['std'] * scale:.{digits}f}"

    lines = ["| units removed | weighting | micro bytes | / dense micro bytes | "
             "latency shrunk / unshrunk | worst task (file) | mean (file) | worst task (Keras) |",
             "|---|---|---|---|---|---|---|---|"]
    weightings = sorted({w for w, _ in dense})
    for w in weightings:
        runs = [r for (rw, _), r in sorted(dense.items()) if rw == w]
        worst = _runs.mean_std([r["exports"]["micro_int8"]["test"]["worst"] for r in runs])
        mean = _runs.mean_std([r["exports"]["micro_int8"]["test"]["mean"] for r in runs])
        keras_worst = _runs.mean_std([r["test"]["worst"] for r in runs])
        size = _runs.mean_std([r["exports"]["micro_int8"]["bytes"] for r in runs])
        lines.append(f"| 0 (dense) | {w} | {size['mean']:.0f} | 1 | 1 | {fmt(worst, 100, 2)} | "
                     f"{fmt(mean, 100, 2)} | {fmt(keras_worst, 100, 2)} |")
    for key, cell in summary.items():
        fraction, w = key.split("/")
        lines.append(
            f"| {float(fraction):.0%} ({fmt(cell['removed_units'])}) | {w} | "
            f"{cell['bytes']['mean']:.0f} | {fmt(cell['bytes_ratio'])} | "
            f"{fmt(cell['latency_ratio'])} | {fmt(cell['worst'], 100, 2)} | "
            f"{fmt(cell['mean'], 100, 2)} | {fmt(cell['keras_worst'], 100, 2)} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    sparse = {}
    dense = None
    for k, fraction in enumerate(args.fractions):
        compressions = ["dense", "filter_l1"] if k == 0 else ["filter_l1"]
        out = args.out / f"units-{fraction:g}"
        runs = _compare(args, compressions, fraction, out, ["micro_int8", "micro_int8_unshrunk"])
        sparse[fraction] = _by_run(runs, "filter_l1")
        if k == 0:
            dense = _by_run(runs, "dense")
    summary = summarize(dense, sparse)
    table = markdown(summary, dense)
    (args.out / "structured.md").write_text(table)
    (args.out / "structured.json").write_text(json.dumps(
        {"arguments": {k: str(v) for k, v in vars(args).items()}, "summary": summary},
        indent=2))
    print("\nmulti_digits, reweighted ℓ1 in filter mode, TFLite Micro full-int8 files "
          "(mean ± std over seeds; accuracies on the test split, in %):\n")
    print(table)
    print(f"wrote {args.out / 'structured.md'} and {args.out / 'structured.json'}")
    return summary


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
