r"""Weighting × compression × seeds on one dataset: tables, paired tests and plots.

Trains every combination of `--weightings` (minmax, ew, uw, dwa) and
`--compressions` (dense, reweighted_l1, dst, filter_l1, task_aware, hybrid; the
sparse ones at `--sparsity`, which for filter_l1 is the fraction of units removed
per layer and for task_aware and hybrid the same count of non-zero kernel weights
as reweighted_l1)
for every seed (same data and initial weights per seed; see
`benchmarks/_runs.py` for the settings), then writes into `--out`:

- `runs/<compression>-<weighting>-s<seed>.json`: one file per run, written as
  soon as the run ends. A rerun skips the runs whose file exists with the same
  configuration, so an interrupted benchmark resumes where it stopped;
- `compare.json`: every run, the summaries and the tests;
- `compare.md`: per compression, mean ± std over seeds of each task's test
  accuracy, the mean over tasks and the worst task (Δm only where the dataset
  defines single-task references — not for multi_digits), and paired t-tests
  (scipy `ttest_rel`, pairs = seeds) of min-max against each baseline on the
  worst-task and the mean accuracy;
- with `--exports` (e.g. `mobile_int8 micro_int8`), every run's model is also
  exported (`export_tflite`, see `_runs.EXPORTS`) and each file is run on the
  test split in its runtime: `compare.md` gains a table of file bytes and the
  files' worst-task and mean accuracy;
- `task_weights_<compression>.png`: the min-max task-weight trajectory (first seed);
- `worst_vs_sparsity.png`: worst-task test accuracy against achieved sparsity.

    python benchmarks/compare.py --dataset multi_digits --seeds 3

One line per run is printed while it runs (`[k/N]`, the result, the elapsed time).
"""
import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _runs  # noqa: E402
from keras_minmax_mtl.core.arguments import positive_int  # noqa: E402

LABELS = {"dense": "dense", "reweighted_l1": "reweighted ℓ1", "dst": "DST (RigL)",
          "filter_l1": "filter ℓ1 (whole units)", "task_aware": "task-aware",
          "hybrid": "hybrid (W_shared + S_t)"}


def configurations(args):
    """The run configurations in the order they are trained (compression, seed, weighting)."""
    exports = {"exports": list(args.exports)} if args.exports else {}
    return [{"dataset": args.dataset, "weighting": w, "compression": c, "seed": s,
             "epochs": args.epochs, "sparsity": None if c == "dense" else args.sparsity,
             "batch_size": args.batch_size, "train_examples": args.train_examples,
             "learning_rate": args.learning_rate, **exports}
            for c in args.compressions for s in args.seed_list for w in args.weightings]


def run_path(runs_dir, config):
    return runs_dir / f"{config['compression']}-{config['weighting']}-s{config['seed']}.json"


def load_saved(path, config):
    """The saved result at `path` if it exists and was run with `config`, else `None`."""
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return saved if saved.get("config") == config else None


def run_all(args, train=None):
    """Trains (or loads) every configuration, printing one line per run; returns the results."""
    train = train or _runs.train_run
    runs_dir = args.out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    configs = configurations(args)
    results, trained, start = [], 0, time.perf_counter()
    for k, config in enumerate(configs, 1):
        path = run_path(runs_dir, config)
        result = load_saved(path, config)
        name = f"{config['weighting']:<6} {config['compression']:<13} seed {config['seed']}"
        if result is None:
            result = train(config)
            trained += 1
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(result))
            tmp.replace(path)  # never a half-written run file
            note = f"trained in {result['train_seconds']:.0f}s"
        else:
            note = "saved run, skipped"
        elapsed = time.perf_counter() - start
        print(f"[{k}/{len(configs)}] {name}: test worst {result['test']['worst']:.4f} mean "
              f"{result['test']['mean']:.4f} sparsity {result['sparsity']:.3f} ({note}; "
              f"elapsed {elapsed / 60:.1f} min)", flush=True)
        results.append(result)
    return results, trained


def summarize(args, results):
    """Mean ± std over seeds per (compression, weighting) and the paired tests."""
    from scipy import stats

    summary, tests = {}, {}
    for c in args.compressions:
        summary[c] = {}
        for w in args.weightings:
            group = sorted((r for r in results if r["config"]["compression"] == c
                            and r["config"]["weighting"] == w), key=lambda r: r["config"]["seed"])
            tasks = group[0]["task_names"]
            cell = {t: _runs.mean_std([r["test"]["tasks"][t] for r in group]) for t in tasks}
            for key in ("mean", "worst", "delta_m"):
                if key in group[0]["test"]:
                    cell[key] = _runs.mean_std([r["test"][key] for r in group])
            cell["validation_worst"] = _runs.mean_std([r["validation"]["worst"] for r in group])
            cell["sparsity"] = float(np.mean([r["sparsity"] for r in group]))
            cell["nonzero_weights"] = float(np.mean([r["nonzero_weights"] for r in group]))
            cell["exports"] = {
                name: {"bytes": _runs.mean_std([r["exports"][name]["bytes"] for r in group]),
                       "worst": _runs.mean_std([r["exports"][name]["test"]["worst"] for r in group]),
                       "mean": _runs.mean_std([r["exports"][name]["test"]["mean"] for r in group]),
                       **({"invoke_seconds": _runs.mean_std(
                           [r["exports"][name]["invoke_seconds"] for r in group])}
                          if "invoke_seconds" in group[0]["exports"][name] else {})}
                for name in group[0].get("exports", {})}
            cell["seeds"] = [r["config"]["seed"] for r in group]
            summary[c][w] = cell
        if "minmax" not in args.weightings or len(args.seed_list) < 2:
            continue
        tests[c] = {}
        for w in args.weightings:
            if w == "minmax":
                continue
            tests[c][w] = {}
            for key in ("worst", "mean"):
                a = np.array(summary[c]["minmax"][key]["values"])
                b = np.array(summary[c][w][key]["values"])
                t, p = stats.ttest_rel(a, b)
                tests[c][w][key] = {"difference": float(np.mean(a - b)),
                                    "t": None if np.isnan(t) else float(t),
                                    "p": None if np.isnan(p) else float(p)}
    return summary, tests


def power_note(n, tests=0):
    """What a paired t-test over `n` seeds can and cannot show, for `tests` tests."""
    from scipy import stats

    if n < 2:
        return "One seed: no paired test is possible."
    critical = stats.t.ppf(0.975, n - 1)
    note = (f"Paired t-test over {n} seeds ({n - 1} degree{'s' if n > 2 else ''} of freedom): "
            f"p < 0.05 needs the mean per-seed difference to exceed {critical / np.sqrt(n):.2f}× "
            f"the standard deviation of the per-seed differences (t > {critical:.2f}). With so "
            f"few seeds the test has little power: p ≥ 0.05 does not show that two weightings "
            f"are equal, only that {n} seeds cannot tell them apart.")
    if tests > 1:
        note += (f" {tests} tests are reported and none is corrected for multiple comparisons: "
                 f"about {0.05 * tests:.1f} of them would fall below 0.05 by chance if no "
                 f"weighting differed.")
    return note


def _fmt(cell, scale=100):
    return f"{cell['mean'] * scale:.2f} ± {cell['std'] * scale:.2f}"


def markdown(args, summary, tests):
    """The markdown report: one table per compression, then the tests."""
    tasks = [k for k in next(iter(next(iter(summary.values())).values()))
             if k not in ("mean", "worst", "delta_m", "validation_worst", "sparsity", "seeds",
                          "nonzero_weights", "exports")]
    has_delta = any("delta_m" in cell for per in summary.values() for cell in per.values())
    lines = [f"Dataset `{args.dataset}`, seeds {args.seed_list}, {args.epochs} epochs, "
             f"sparsity {args.sparsity:.0%} for the sparse runs (hybrid: as many non-zero kernel "
             f"weights as the standard network at that sparsity). Test accuracy in %, "
             f"mean ± std over seeds (std with ddof=1)."
             + ("" if has_delta else " Δm is not defined for this dataset (no single-task "
                                     "reference values), so it is not shown.")
             + (" For filter ℓ1 the sparsity asked for is the fraction of output units "
                "removed from each pruned layer; the sparsity column is, for every "
                "compression, the fraction of zero prunable weights reached."
                if "filter_l1" in args.compressions else ""), ""]
    header = ["compression", "weighting", *tasks, "mean", "worst task", *(["Δm %"] if has_delta else []),
              "sparsity", "non-zero weights"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in args.compressions:
        for w in args.weightings:
            cell = summary[c][w]
            row = [LABELS[c], w, *(_fmt(cell[t]) for t in tasks), _fmt(cell["mean"]),
                   _fmt(cell["worst"])]
            if has_delta:
                row.append(_fmt(cell["delta_m"], 1) if "delta_m" in cell else "")
            row += [f"{cell['sparsity']:.3f}", f"{cell['nonzero_weights']:.0f}"]
            lines.append("| " + " | ".join(row) + " |")
    if args.exports:
        lines += ["", "Exported files (`export_tflite`, run on the test split in their runtime): "
                      "bytes and accuracy in %, mean ± std over seeds.", "",
                  "| compression | weighting | export | bytes | worst task | mean | micro invoke µs |",
                  "|---|---|---|---|---|---|---|"]
        for c in args.compressions:
            for w in args.weightings:
                for name, cell in summary[c][w]["exports"].items():
                    lines.append(f"| {LABELS[c]} | {w} | {name} | {cell['bytes']['mean']:.0f} ± {cell['bytes']['std']:.0f} | "
                                 f"{_fmt(cell['worst'])} | {_fmt(cell['mean'])} | "
                                 + (_fmt(cell["invoke_seconds"], 1e6)
                                    if "invoke_seconds" in cell else "") + " |")
    if tests:
        lines += ["", "Paired t-tests (scipy.stats.ttest_rel, pairs = seeds), min-max minus "
                      "baseline, in accuracy points:", "",
                  "| compression | baseline | Δ worst task | p (worst) | Δ mean | p (mean) |",
                  "|---|---|---|---|---|---|"]
        for c, per in tests.items():
            for w, test in per.items():
                lines.append(
                    f"| {LABELS[c]} | {w} | {test['worst']['difference'] * 100:+.2f} | "
                    f"{_p(test['worst']['p'])} | {test['mean']['difference'] * 100:+.2f} | "
                    f"{_p(test['mean']['p'])} |")
    lines += ["", power_note(len(args.seed_list),
                             sum(2 * len(per) for per in tests.values()))]
    return "\n".join(lines) + "\n"


def _p(p):
    return "n/a (identical pairs)" if p is None else f"{p:.3f}"


def plot(args, results, summary):
    """Writes the task-weight and the worst-vs-sparsity PNGs; returns their paths."""
    from keras_minmax_mtl.cli.plots import plot_task_weights

    paths = []
    if "minmax" in args.weightings:
        seed = args.seed_list[0]
        for c in args.compressions:
            run = next(r for r in results if r["config"]["compression"] == c
                       and r["config"]["weighting"] == "minmax" and r["config"]["seed"] == seed)
            path = args.out / f"task_weights_{c}.png"
            plot_task_weights(run["task_weight_trajectory"], run["task_names"], path,
                              title=f"{args.dataset}, {LABELS[c]}: min-max task weights "
                                    f"(seed {seed})", steps_per_epoch=run["steps_per_epoch"])
            paths.append(path)
    figure = worst_vs_sparsity_figure(args, summary)
    path = args.out / "worst_vs_sparsity.png"
    figure.savefig(path)
    paths.append(path)
    return paths


def worst_vs_sparsity_figure(args, summary):
    """The worst-task accuracy against sparsity, one marker per weighting and compression."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.4), dpi=90)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    markers = dict(zip(_runs.COMPRESSIONS, "os^Dvx<>p*"))
    for i, w in enumerate(args.weightings):
        for c in args.compressions:
            cell = summary[c][w]
            x = cell["sparsity"] * 100 + (i - (len(args.weightings) - 1) / 2) * 0.6
            axes.errorbar(x, cell["worst"]["mean"] * 100, yerr=cell["worst"]["std"] * 100,
                          fmt=markers[c], color=f"C{i}", capsize=3,
                          label=f"{w}, {LABELS[c]}")
    axes.set_xlabel("sparsity of the prunable weights (%; hybrid: same non-zero count)\n"
                    "weightings offset for legibility", fontsize="small")
    axes.set_ylabel("worst-task test accuracy (%)")
    axes.set_title(f"{args.dataset}: worst task vs sparsity\n(mean ± std, "
                   f"{len(args.seed_list)} seeds)", fontsize="medium")
    axes.legend(fontsize=7, ncol=2)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="multi_digits", choices=sorted(_runs.DATASETS))
    parser.add_argument("--weightings", nargs="+", default=list(_runs.WEIGHTINGS),
                        choices=_runs.WEIGHTINGS)
    parser.add_argument("--compressions", nargs="+", default=list(_runs.COMPRESSIONS),
                        choices=_runs.COMPRESSIONS)
    parser.add_argument("--seeds", type=positive_int, default=3,
                        help="number of seeds: runs with seeds 0..N-1 (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=20,
                        help="epochs per run; reweighted l1: half dense, a quarter reweighted, "
                             "the rest retraining (default: %(default)s = 10 + 5 + 5)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--exports", nargs="+", default=[], choices=list(_runs.EXPORTS),
                        help="also export every run's model and score the files on the test split")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-examples", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--out", type=pathlib.Path,
                        default=pathlib.Path(__file__).parent / "results" / "compare")
    return parser


def main(argv=None, train=None):
    args = build_parser().parse_args(argv)
    args.seed_list = list(range(args.seeds))
    print(f"compare: {args.dataset}, weightings {args.weightings}, compressions "
          f"{args.compressions}, seeds {args.seed_list}, {args.epochs} epochs, sparsity "
          f"{args.sparsity}; runs saved in {args.out / 'runs'}", flush=True)
    results, trained = run_all(args, train)
    summary, tests = summarize(args, results)
    report = markdown(args, summary, tests)
    pngs = plot(args, results, summary)
    (args.out / "compare.md").write_text(report)
    (args.out / "compare.json").write_text(json.dumps({
        "arguments": {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()},
        "summary": summary, "tests": tests,
        "runs": [{k: v for k, v in r.items() if k != "task_weight_trajectory"} for r in results]},
        indent=2))
    print()
    print(report)
    print(f"trained {trained} of {len(results)} runs; wrote {args.out / 'compare.md'}, "
          f"{args.out / 'compare.json'}, " + ", ".join(str(p) for p in pngs))
    return {"summary": summary, "tests": tests, "trained": trained, "pngs": pngs}


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # a script, not the library
    main()
