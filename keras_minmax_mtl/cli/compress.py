"""`kmm compress`: the smallest model whose worst task stays within a budget of the dense one.

    kmm compress --dataset multi_digits --max-worst-drop 1.0
    kmm compress --dataset multi_fashion --max-worst-drop 1.0 --method filter --target micro

The command side of `keras_minmax_mtl.sparsity.budget.compress_to_budget`: it
trains the dense min-max model (`--dense-epochs`, then `--candidate-epochs`
more: the reference), searches the sparsity on the validation split, each
candidate warm-started from the dense weights (one progress line per candidate), reports the chosen model on the test split
(every task's accuracy and drop against dense), exports it for each
`--target` (`export_tflite`, verified in the target's runtime) and writes into
`--out`: `model.keras` (the chosen model, without pruning wrappers),
`model_dense.keras`, `compress.json`, `compress.png` (validation worst task
against non-zero weights, every candidate, the budget drawn) and the
`.tflite` files. `--out` follows `kmm train`'s rules
(`keras_minmax_mtl.cli.run_folder`): locked, written aside and swapped in
whole, an earlier run replaced only with `--overwrite`.

When no candidate sparser than the dense model passes, the dense model is the
result: the command says "no sparser model within budget", reports and
exports the dense model, and exits 0 (the budget holds; `compress.json` has
``"found": false``).
"""
import argparse
import json
import pathlib

from keras_minmax_mtl.core import arguments
from keras_minmax_mtl.sparsity.budget import BUDGET_METHODS, DEFAULT_LADDER

__all__ = ["add_command", "ladder", "default_out", "points", "format_report", "write_run",
           "TARGETS", "FILES"]

#: `--target` choices (the export targets), in the order they are exported.
TARGETS = ("mobile", "micro", "edgetpu")
#: What `kmm compress` writes besides the `.tflite` files (`run_folder.RUN_FILES` lists them).
FILES = ("model.keras", "model_dense.keras", "compress.json", "compress.png")


def ladder(text):
    """`argparse` type of `--ladder`: comma-separated sparsities, strictly increasing in (0, 1)."""
    parts = [part.strip() for part in text.split(",")]
    values = []
    for part in parts:
        try:
            values.append(arguments.finite(part))
        except argparse.ArgumentTypeError:
            values = None
            break
    if (not values or not all(0.0 < v < 1.0 for v in values)
            or any(b <= a for a, b in zip(values, values[1:]))):
        raise argparse.ArgumentTypeError(
            "must be comma-separated sparsities in (0, 1), strictly increasing (e.g. "
            f"{','.join(f'{v:g}' for v in DEFAULT_LADDER)}), received {text!r}")
    return tuple(values)


def add_command(commands, datasets, data_dir_help):
    """Adds `kmm compress` to the `kmm` subparsers; `datasets` are the `--dataset` choices."""
    from keras_minmax_mtl.cli.output import add_verbose_flag

    compress = commands.add_parser(
        "compress", help="the smallest model whose worst task stays within --max-worst-drop of "
                         "the dense model's",
        description="Train the dense min-max model (--dense-epochs, then --candidate-epochs "
                    "more: the reference), then search the sparsity on the validation "
                    "split for the smallest model whose worst task is within --max-worst-drop "
                    "accuracy points of the dense worst task (each candidate warm-started from "
                    "the dense weights and trained with min-max); report it on the test split "
                    "and export it.")
    compress.add_argument("--dataset", default="multi_digits", choices=sorted(datasets),
                          help="dataset (default: %(default)s)")
    compress.add_argument("--max-worst-drop", type=arguments.non_negative_float, required=True,
                          help="the budget: how many accuracy points the validation worst task "
                               "may lose against the dense model (1.0 = 0.01 accuracy)")
    compress.add_argument("--method", default="reweighted_l1", choices=list(BUDGET_METHODS),
                          help="; ".join(f"{k}: {v}" for k, v in BUDGET_METHODS.items())
                               + " (default: %(default)s)")
    compress.add_argument("--target", action="append", choices=TARGETS, default=None,
                          help="export target of the chosen model; repeat for several "
                               f"(default: {', '.join(TARGETS)})")
    compress.add_argument("--out", type=pathlib.Path, default=None,
                          help="output folder (default: runs/compress-<dataset>-<method>-"
                               "d<max-worst-drop>-s<seed>); refused if it holds a run, unless "
                               "--overwrite")
    compress.add_argument("--overwrite", action="store_true",
                          help="replace the run already in --out (only once the new one is "
                               "complete)")
    compress.add_argument("--seed", type=arguments.seed, default=0,
                          help="seed of the data, weights and shuffling (default: %(default)s)")
    search = compress.add_argument_group("search")
    search.add_argument("--ladder", type=ladder, default=DEFAULT_LADDER,
                        help="sparsities tried in order until one fails (default: "
                             f"{','.join(f'{v:g}' for v in DEFAULT_LADDER)})")
    search.add_argument("--bisections", type=arguments.non_negative_int, default=2,
                        help="midpoints tried between the last pass and the first fail "
                             "(default: %(default)s)")
    search.add_argument("--dense-epochs", type=arguments.positive_int, default=10,
                        help="epochs of the dense model before the candidates start from its "
                             "weights; the dense reference trains --candidate-epochs more "
                             "(default: %(default)s)")
    search.add_argument("--candidate-epochs", type=arguments.positive_int, default=6,
                        help="epochs of each candidate from the dense weights: half reweighted, "
                             "half masked retraining (reweighted_l1, filter; >= 2), or all DST "
                             "(at least 2 training steps in all) (default: %(default)s)")
    training = compress.add_argument_group("training")
    training.add_argument("--batch-size", type=arguments.positive_int, default=64,
                          help="default: %(default)s")
    training.add_argument("--learning-rate", type=arguments.positive_float, default=1e-3,
                          help="Adam learning rate (default: %(default)s)")
    training.add_argument("--data-dir", type=pathlib.Path, default=None, help=data_dir_help)
    training.add_argument("--train-examples", type=arguments.positive_int, default=None,
                          help="number of training examples (default: the dataset's)")
    training.add_argument("--test-examples", type=arguments.positive_int, default=None,
                          help="number of validation and test examples (default: the dataset's)")
    add_verbose_flag(compress)
    return compress


def points(value):
    """`value` accuracy points in words: ``"1 point"``, ``"0.5 points"``."""
    return f"{value:g} point{'' if value == 1 else 's'}"


def default_out(args):
    """The default `--out`: ``runs/compress-<dataset>-<method>-d<max-worst-drop>-s<seed>``."""
    return pathlib.Path("runs") / (f"compress-{args.dataset}-{args.method}-"
                                   f"d{args.max_worst_drop:g}-s{args.seed}")


def format_report(report):
    """The lines printed after the search: what was chosen, and every task on test."""
    chosen = report["chosen"]
    what = "units removed per layer" if report["method"] == "filter" else "sparsity"
    if report["found"]:
        head = (f"chosen: {what} {chosen['sparsity']:g} (achieved {chosen['achieved_sparsity']:.4f}"
                f"), {chosen['nonzero_weights']} non-zero kernel weights of "
                f"{report['candidates'][0]['nonzero_weights']} dense; validation worst "
                f"{chosen['val_worst']:.4f} vs dense {report['reference']:.4f} (budget "
                f"{points(report['max_worst_drop'])})")
    else:
        head = (f"no sparser model within budget: every candidate lost more than "
                f"{points(report['max_worst_drop'])} of validation worst-task accuracy; the "
                f"result is the dense model ({chosen['nonzero_weights']} non-zero kernel weights)")
    test = report["test"]
    width = max(len("task"), *(len(t) for t in [*test["dense"], *test["dense_mae"]]))
    lines = [head, "", f"{'task':<{width}}  dense test  chosen test  drop (points)"]
    for task in test["dense"]:
        mark = "  <- worst" if task == test["worst_task"] else ""
        lines.append(f"{task:<{width}}  {test['dense'][task]:10.4f}  {test['chosen'][task]:11.4f}"
                     f"  {test['drop_points'][task]:+13.2f}{mark}")
    for task in test["dense_mae"]:
        lines.append(f"{task:<{width}}  MAE {test['dense_mae'][task]:.4f} -> "
                     f"{test['chosen_mae'][task]:.4f} (a regression)")
    lines.append(f"worst task drop on test: {test['worst_drop_points']:+.2f} points")
    return lines


def write_run(result, work, out, args):
    """Writes the chosen and dense models, the exports, `compress.json` and `compress.png` into `work`.

    The report names the files at their final place `out` (which `work`
    replaces once complete). Returns the report.
    """
    from keras_minmax_mtl.cli.export import export_after_training, export_name
    from keras_minmax_mtl.cli.output import show_logs
    from keras_minmax_mtl.cli.plots import plot_budget_search

    report = result.to_dict()
    result.model.save(work / "model.keras")
    result.dense_model.save(work / "model_dense.keras")
    files = {}
    for target in args.target:
        export = export_after_training(result.model, work, target, args.dataset, args.seed,
                                       verbose=show_logs(args), data_dir=args.data_dir)
        files[target] = {"file": str(out / export_name(target)), "bytes": export["bytes"],
                         "gzip_bytes": export["gzip_bytes"],
                         "quantization": export["quantization"]}
    report["files"] = files
    report["dataset"] = args.dataset
    report["arguments"] = {k: (str(v) if isinstance(v, pathlib.Path) else
                               list(v) if isinstance(v, tuple) else v)
                           for k, v in vars(args).items()}
    report["model"] = str(out / "model.keras")
    plot_budget_search(report, work / "compress.png",
                       title=f"{args.dataset}: {args.method}, budget {points(args.max_worst_drop)} "
                             f"of the worst task (seed {args.seed})")
    (work / "compress.json").write_text(json.dumps(report, indent=2, allow_nan=False))
    return report
