"""The `kmm` command line.

`kmm train` trains a multi-task network with one of the weightings on a
dataset, prints the per-task test accuracy with the worst task marked, and
writes into `--out`: the model (`model.keras`, reloadable with
`tf_keras.models.load_model` once `keras_minmax_mtl` is imported),
`metrics.json` and `task_weights.png` (the task-weight trajectory).

    kmm train --dataset multi_digits --weighting minmax --epochs 20 --seed 0 --out runs/minmax-s0

Every flag, and every combination of flags the library would refuse later, is
checked before anything is written; a bad one ends the command with one line
``kmm: error: argument --flag: ...`` and exit status 2. The run folder is
locked while a run uses it, an earlier run in it is replaced only with
`--overwrite`, and a run is written to a sibling folder that replaces `--out`
whole only once every file is written and every weight and metric is finite
(`keras_minmax_mtl.cli.run_folder`); a failed run (a non-finite loss, weight or
metric) exits 1 and leaves `--out` as it was.

This is the only module that knows datasets, networks and models together.
"""
import argparse
import json
import math
import os
import pathlib
import re
import sys
import time

import numpy as np

from keras_minmax_mtl.core import arguments
from keras_minmax_mtl.sparsity.methods import (
    DEFAULT_EPOCHS,
    METHODS,
    SPARSITY_FLAG,
    OptionError,
    get_method,
)
from keras_minmax_mtl.cli import output

__all__ = ["main", "build_parser", "check_train_arguments", "check_compress_arguments", "default_out", "flag_message",
           "non_finite", "non_finite_weights", "UsageError", "RunFailed", "WEIGHTINGS",
           "DATASETS", "DATASET_FACTS"]

#: `--weighting` names and what they build.
WEIGHTINGS = {
    "minmax": "min-max task weights on the simplex (Guo et al. 2025)",
    "ew": "equal weighting",
    "uw": "uncertainty weighting (Kendall et al. 2018)",
    "dwa": "dynamic weight average (Liu et al. 2019, T=2)",
}
#: `--dataset` names.
DATASETS = {
    "multi_digits": "two handwritten digits per canvas; tasks left, right, sum (shipped)",
    "multi_fashion": "two Fashion-MNIST items per canvas; tasks left, right (10-way) and ink "
                     "(a regression, L1), from a local copy (--data-dir)",
}
#: What the flag checks need of each `--dataset` without importing it (its loader imports
#: TensorFlow): the task names and the number of examples of each split by default.
#: tests/test_cli.py checks them against `keras_minmax_mtl.data`.
DATASET_FACTS = {"multi_digits": {"tasks": ("left", "right", "sum"),
                                  "examples": {"train": 6000, "validation": 1000, "test": 2000}},
                 "multi_fashion": {"tasks": ("left", "right", "ink"),
                                   "examples": {"train": 20000, "validation": 5000, "test": 10000}}}
#: The datasets read from a folder (`--data-dir`): its default and the files it must hold.
DATA_DIRS = {"multi_fashion": ("/usr/share/datasets/fashion-mnist",
                               ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                                "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"))}
#: The help of `--data-dir` (`kmm train`, `kmm compress`).
DATA_DIR_HELP = ("the folder of the dataset's files, for --dataset multi_fashion: Fashion-MNIST's "
                 f"four idx .gz files (default: {DATA_DIRS['multi_fashion'][0]}, where Debian's "
                 "dataset-fashion-mnist puts them)")
#: `--normalize-losses` values and the library's `normalize_losses`.
NORMALIZE = {"auto": "auto", "on": True, "off": False}


def build_parser():
    """The `kmm` argument parser: `train`, `compress`, `export` and `inspect`."""
    parser = _Parser(
        prog="kmm", description="Compressed multi-task learning with min-max task weighting.")
    output.add_verbose_flag(parser, top_level=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = commands.add_parser(
        "train", help="train a multi-task model and report per-task test accuracy",
        description="Train a multi-task model; only the task weighting differs between "
                    "--weighting choices, so their results compare fairly.")
    train.add_argument("--dataset", default="multi_digits", choices=sorted(DATASETS),
                       help="dataset (default: %(default)s)")
    train.add_argument("--weighting", default="minmax", choices=list(WEIGHTINGS),
                       help="task weighting: " + "; ".join(f"{k}: {v}" for k, v in WEIGHTINGS.items()))
    train.add_argument("--epochs", type=arguments.positive_int, default=None,
                       help="; ".join([f"default: {DEFAULT_EPOCHS}",
                                       *(m.epochs_help for m in METHODS.values() if m.epochs_help)]))
    train.add_argument("--seed", type=arguments.seed, default=0,
                       help="seed of the data draw, initial weights and shuffling (default: %(default)s)")
    train.add_argument("--out", type=pathlib.Path, default=None,
                       help="output folder (default: runs/<dataset>-<weighting>[-<pruning>"
                            "[-<kind>]-<sparsity>]-e<epochs>-s<seed>); refused if it holds a run, "
                            "unless --overwrite")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run already in --out (it is replaced only once the new "
                            "run is complete)")
    train.add_argument("--batch-size", type=arguments.positive_int, default=64, help="default: %(default)s")
    train.add_argument("--learning-rate", type=arguments.positive_float, default=1e-3,
                       help="Adam learning rate (default: %(default)s)")
    train.add_argument("--scale", type=arguments.scale, default=1.0,
                       help="multiplies the weighted loss: a number > 0 or 'num_tasks' (default: 1)")
    train.add_argument("--normalize-losses", nargs="?", const="on", default=None,
                       choices=sorted(NORMALIZE),
                       help="divide each task loss by its first-step value: on (the bare flag), "
                            "off, or auto (when the first losses differ more than 10x, i.e. are "
                            "of different scales). Default: the library's: auto for minmax, off "
                            "for the others")
    minmax = train.add_argument_group("min-max weighting")
    minmax.add_argument("--step-size", type=arguments.positive_float, default=0.02,
                        help="ascent step 1/beta (default: %(default)s)")
    minmax.add_argument("--gamma", type=arguments.non_negative_float, default=5.0,
                        help="pull towards uniform weights (default: %(default)s)")
    minmax.add_argument("--update-every", type=arguments.positive_int, default=1,
                        help="ascent every N steps or epochs (default: %(default)s)")
    minmax.add_argument("--update-on", default="step", choices=["step", "epoch"],
                        help="what --update-every counts (default: %(default)s)")
    minmax.add_argument("--ascent", default="projected", choices=["projected", "exponentiated"],
                        help="ascent rule (default: %(default)s)")
    # --- sparsity: the methods and their options come from keras_minmax_mtl.sparsity.methods ---
    sparse = train.add_argument_group("sparsity")
    sparse.add_argument("--pruning", default="none", choices=list(METHODS),
                        help="; ".join(f"{k}: {m.summary}" for k, m in METHODS.items())
                             + " (default: %(default)s)")
    sparse.add_argument(SPARSITY_FLAG, type=arguments.finite, default=0.9,
                        help="fraction of the prunable weights that are zero (with "
                             "--sparsity-type filter: of the units removed from each pruned "
                             "layer), in [0, 1) (default: %(default)s)")
    owners = {"sparsity": (SPARSITY_FLAG, 0.9, "pruning",
                           tuple(name for name, m in METHODS.items() if m.sparse))}
    for name, method in METHODS.items():
        if not method.options:
            continue
        group = train.add_argument_group(method.group_title())
        exclusive = {}
        for option in method.options:
            target = group
            if option.exclusive is not None:
                if option.exclusive not in exclusive:
                    exclusive[option.exclusive] = group.add_mutually_exclusive_group()
                target = exclusive[option.exclusive]
            option.add_to(target)
            owners[option.dest] = (option.flag, option.default, "pruning", (name,))
    # --- end of sparsity ---
    data = train.add_argument_group("data")
    data.add_argument("--data-dir", type=pathlib.Path, default=None,
                      help=DATA_DIR_HELP)
    data.add_argument("--train-examples", type=arguments.positive_int, default=None,
                      help="number of training examples (default: the dataset's)")
    data.add_argument("--test-examples", type=arguments.positive_int, default=None,
                      help="number of validation and test examples (default: the dataset's)")
    output.add_train_verbose(train)
    # --- TFLite export (issue 5): logic in keras_minmax_mtl/cli/export.py ---
    from keras_minmax_mtl.cli import export as export_commands
    export_commands.add_train_option(train)
    export_commands.add_commands(commands)
    # --- end of TFLite export ---
    # --- compression under a worst-task budget: logic in keras_minmax_mtl/cli/compress.py ---
    from keras_minmax_mtl.cli import compress as compress_commands
    compress_commands.add_command(commands, DATASETS, DATA_DIR_HELP)
    # --- end of compression under a budget ---
    # The flags that mean something with one choice only:
    # {dest: (flag, default, the deciding flag's dest, the choices that use it)}.
    owners.update({action.dest: (action.option_strings[-1], action.default, "weighting",
                                 ("minmax",)) for action in minmax._group_actions})
    owners["data_dir"] = ("--data-dir", None, "dataset", tuple(DATA_DIRS))
    parser.flag_owners = owners
    return parser


def check_flags_are_used(parser, args):
    """Refuses a flag given for a method that the run does not use (it would be ignored silently).

    Raises:
        UsageError: e.g. for `--sparsity 0.5` with `--pruning none`, or `--gamma 2` with
            `--weighting ew`.
    """
    for dest, (flag, default, owner, values) in getattr(parser, "flag_owners", {}).items():
        value = getattr(args, dest, default)
        if value != default and getattr(args, owner) not in values:
            need = " or ".join(f"--{owner} {v}" for v in values)
            raise UsageError(f"argument {flag}: only used with {need}; this run has "
                             f"--{owner} {getattr(args, owner)}, so it would be ignored. "
                             f"Received {flag} {value}")


class UsageError(SystemExit):
    """A bad flag: `main` prints ``kmm: error: MESSAGE`` (one line) and the exit status is 2.

    ``str(error)`` is the message.
    """

    def __init__(self, message):
        super().__init__(message)
        self.message = message
        self.code = 2


class RunFailed(Exception):
    """A run that trained but is not sound (a non-finite loss, weight or metric); exit status 1."""


class _Parser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are a `UsageError` (one line, exit 2), not usage + exit."""

    def error(self, message):
        raise UsageError(message)


#: What the library calls the flags of `kmm train`, per stage of building a run: a library
#: `ValueError` raised while building it becomes ``kmm: error: argument --flag: ...``. A
#: compression method's stage is its name; its flags are `SparsityMethod.flags()`.
_FLAGS = {
    "weighting": {"step_size": "--step-size", "gamma": "--gamma", "update_every": "--update-every",
                  "update_on": "--update-on", "ascent": "--ascent", "scale": "--scale",
                  "normalize_losses": "--normalize-losses", "learning_rate": "--learning-rate"},
    "train data": {"num_examples": "--train-examples", "batch_size": "--batch-size",
                   "seed": "--seed"},
    "test data": {"num_examples": "--test-examples", "batch_size": "--batch-size",
                  "seed": "--seed"},
    "network": {"seed": "--seed"},
}
#: The flag a library error of a stage names when its message names no argument.
_STAGE_FLAG = {"weighting": "--weighting", "train data": "--train-examples",
               "test data": "--test-examples", "network": "--dataset"}


def flag_message(message, stage):
    """A library error message of a `kmm train` stage in terms of its flags: ``argument --flag: ...``.

    `stage` is a stage of `_FLAGS` or the name of a compression method. The
    Python argument names of the stage become their flags; the flag of the
    first one named (else the stage's main flag) leads the line.
    """
    flags = _FLAGS[stage] if stage in _FLAGS else get_method(stage).flags()
    named = [(message.find(f"`{name}`"), flag) for name, flag in flags.items()
             if f"`{name}`" in message]
    lead = min(named)[1] if named else _STAGE_FLAG.get(stage, SPARSITY_FLAG)
    for name, flag in flags.items():
        message = message.replace(f"`{name}`", flag)
        message = re.sub(rf"(?<![\w`-]){re.escape(name)}(?![\w`])", flag, message)
    message = re.sub(rf"^Argument {re.escape(lead)} ", "", message)
    return f"argument {lead}: {' '.join(message.split())}"


class _Flags:
    """Turns a library `ValueError` raised while building a stage into a `UsageError`."""

    def __init__(self, stage):
        self.stage = stage

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is not None and issubclass(kind, ValueError):
            raise UsageError(flag_message(str(error), self.stage)) from error
        return False


def default_out(args, method=None):
    """The default `--out`: ``runs/<dataset>-<weighting>[-<pruning>...]-e<epochs>-s<seed>``.

    It names what tells the README's runs apart: the weighting, the pruning
    method with its kind and `--sparsity`, the epochs (the sum of the stages
    with reweighted ℓ1) and the seed, e.g. ``runs/multi_digits-minmax-e20-s0``,
    ``runs/multi_digits-minmax-reweighted_l1-0.9-e20-s0``,
    ``runs/multi_digits-minmax-dst-rigl-0.9-e20-s0``; the method's part is
    its `SparsityMethod.run_name()` (`method`, else the one of `args`).
    """
    method = get_method(args.pruning).from_arguments(args) if method is None else method
    parts = [args.dataset, args.weighting, method.run_name()]
    parts = [part for part in parts if part] + [f"e{args.epochs}", f"s{args.seed}"]
    return pathlib.Path("runs") / "-".join(parts)


def _num_examples(args, split):
    given = args.train_examples if split == "train" else args.test_examples
    return given if given is not None else DATASET_FACTS[args.dataset]["examples"][split]


class _RunSize:
    """What a method's `check_run` may ask of the run, from `DATASET_FACTS` (no TensorFlow)."""

    def __init__(self, args):
        self.args = args
        self.dataset = args.dataset

    @property
    def steps_per_epoch(self):
        return math.ceil(_num_examples(self.args, "train") / self.args.batch_size)

    @property
    def num_tasks(self):
        return len(DATASET_FACTS[self.dataset]["tasks"])


def check_train_arguments(parser, args):
    """Checks every `kmm train` rule that needs no data, fills in the defaults and `--out`.

    Returns the compression method (`keras_minmax_mtl.sparsity.methods`) of
    `--pruning`; its options with their defaults filled in and its epochs go
    back into `args`. Raises `UsageError` (one line, exit 2) for the first
    broken rule; imports no TensorFlow and writes nothing.
    """
    check_flags_are_used(parser, args)
    try:
        method = get_method(args.pruning).from_arguments(args)
        method.check_run(_RunSize(args))
    except OptionError as error:
        raise UsageError(str(error)) from None
    vars(args).update(method.settings)
    args.epochs = method.epochs
    _check_data_dir(args)
    if args.out is None:
        args.out = default_out(args, method)
    return method


def _check_data_dir(args):
    """`--data-dir` holds the dataset's files (checked before TensorFlow is imported)."""
    if args.dataset not in DATA_DIRS:
        return
    default, files = DATA_DIRS[args.dataset]
    folder = args.data_dir if args.data_dir is not None else pathlib.Path(default)
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        where = "" if args.data_dir is not None else " (the default)"
        raise UsageError(
            f"argument --data-dir: {str(folder)!r}{where} lacks {', '.join(missing)}; "
            f"--dataset {args.dataset} reads a local copy of Fashion-MNIST (nothing is "
            f"downloaded): `apt-get install dataset-fashion-mnist` puts the files in {default}, "
            f"or pass the folder that holds them. Received --data-dir {args.data_dir}")
    args.data_dir = folder


def _load_dataset(args):
    """`(splits, base model, losses, metrics)` of `--dataset`, each task's metric its main one."""
    from keras_minmax_mtl.data import networks

    if args.dataset == "multi_digits":
        from keras_minmax_mtl.data.digits import MULTI_DIGITS_TASKS as tasks
        from keras_minmax_mtl.data.digits import multi_digits as load
        network, extra = networks.multi_digits_network, {}
    else:
        from keras_minmax_mtl.data.fashion import MULTI_FASHION_TASKS as tasks
        from keras_minmax_mtl.data.fashion import multi_fashion as load
        network, extra = networks.multi_fashion_network, {"data_dir": args.data_dir}
    with _Flags("train data"):
        train = load("train", seed=args.seed, num_examples=args.train_examples,
                     batch_size=args.batch_size, **extra)
    with _Flags("test data"):
        splits = {
            "train": train,
            "validation": load("validation", seed=args.seed, num_examples=args.test_examples,
                               batch_size=args.batch_size, **extra),
            "test": load("test", seed=args.seed, num_examples=args.test_examples,
                         batch_size=args.batch_size, **extra),
        }
    with _Flags("network"):
        base = network(seed=args.seed)
    regression = {task for task, classes in tasks.items() if classes is None}
    losses = {task: "mae" if task in regression else "sparse_categorical_crossentropy"
              for task in base.output_names}
    metrics = {task: ["mae" if task in regression else "accuracy"] for task in base.output_names}
    return splits, base, losses, metrics


def _build_model(args, base):
    import keras_minmax_mtl as kmm

    common = dict(scale=args.scale)
    if args.normalize_losses is not None:
        common["normalize_losses"] = NORMALIZE[args.normalize_losses]
    if args.weighting == "minmax":
        return kmm.MinMaxMultiTask(base, step_size=args.step_size, gamma=args.gamma,
                                   update_every=args.update_every, update_on=args.update_on,
                                   ascent=args.ascent, **common)
    weighting = {
        "ew": kmm.EqualWeighting,
        "uw": kmm.UncertaintyWeighting,
        "dwa": kmm.DynamicWeightAverage,
    }[args.weighting]()
    return kmm.MultiTaskModel(base, weighting=weighting, **common)


class _Run:
    """A `kmm train` run built from its flags and its compression `method`, before anything is written."""

    def __init__(self, args, method):
        from keras_minmax_mtl.core.backend import keras
        from keras_minmax_mtl.sparsity.methods import steps_per_epoch

        self.args = args
        self.method = method
        keras.utils.set_random_seed(args.seed)
        self.splits, base, losses, metrics = _load_dataset(args)
        with _Flags(args.pruning if args.pruning != "none" else "weighting"):
            base = method.wrap(base, steps_per_epoch(self.splits["train"]))
        with _Flags("weighting"):
            self.model = _build_model(args, base)
            self.model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss=losses,
                               metrics=metrics)


def non_finite(value, path=""):
    """The paths (``"test_loss.left"``, ``"history.loss[3]"``) of the non-finite numbers in `value`.

    `value` is a JSON-like structure of dicts, lists, tuples, arrays and numbers.
    """
    if isinstance(value, dict):
        return [p for key, item in value.items()
                for p in non_finite(item, f"{path}.{key}" if path else str(key))]
    if isinstance(value, (list, tuple, np.ndarray)):
        if isinstance(value, np.ndarray) and value.dtype.kind in "fc":
            return [] if np.isfinite(value).all() else [path]
        return [p for i, item in enumerate(value) for p in non_finite(item, f"{path}[{i}]")]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return [path]
    return []


def non_finite_weights(model):
    """The names of the floating-point weights of `model` (network and task weights) with a NaN or inf."""
    bad = [w.name for w in model.weights
           if w.dtype.is_floating and not np.isfinite(w.numpy()).all()]
    if not np.isfinite(np.asarray(model.task_weights)).all():
        bad.append("task_weights")
    return bad


def _refuse_non_finite(what, paths):
    if paths:
        shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        raise RunFailed(f"{what} not finite: {shown}")


def _relocate(value, work, out):
    """`value` with every string path under the work folder `work` made a path under `out`."""
    if isinstance(value, dict):
        return {key: _relocate(item, work, out) for key, item in value.items()}
    if isinstance(value, list):
        return [_relocate(item, work, out) for item in value]
    if isinstance(value, str) and value.startswith(str(work)):
        return str(out) + value[len(str(work)):]
    return value


def format_table(task_names, accuracies, worst_task, errors=None):
    """The per-task table printed at the end of `kmm train`.

    `accuracies` holds the classification tasks (the worst and the mean are
    over them); `errors` the regression tasks' test mean absolute error.
    """
    errors = errors or {}
    width = max(len("mean"), *(len(t) for t in task_names))
    lines = [f"{'task':<{width}}  test accuracy"]
    for task in task_names:
        if task in accuracies:
            mark = "  <- worst" if task == worst_task else ""
            lines.append(f"{task:<{width}}  {accuracies[task]:13.4f}{mark}")
    lines.append(f"{'mean':<{width}}  {np.mean([accuracies[t] for t in accuracies]):13.4f}")
    for task in task_names:
        if task in errors:
            lines.append(f"{task:<{width}}  test MAE {errors[task]:.4f} (a regression)")
    return "\n".join(lines)


def _train(run, work):
    """Trains the built `run` and writes it into the folder `work`; returns the metrics.

    The files name their final place, `run.args.out`, which `work` replaces
    once the run is complete (`run_folder.RunFolder.publish`).

    Raises:
        RunFailed: a non-finite loss (`NonFiniteLossError`), weight or metric.
    """
    from keras_minmax_mtl.core.callbacks import TaskWeightHistory
    from keras_minmax_mtl.core.multitask import NonFiniteLossError
    from keras_minmax_mtl.cli import plots
    from keras_minmax_mtl.cli.plots import plot_task_weights, run_events, run_title

    args, model, method, splits = run.args, run.model, run.method, run.splits
    out, work = pathlib.Path(args.out), pathlib.Path(work)
    work.mkdir(parents=True, exist_ok=True)
    weights = TaskWeightHistory()
    try:
        line = method.describe()
        if line:
            print(line)
        model = method.prepare(model, splits["train"])  # task_aware: warm-up, grouped network
        tasks = model.task_names
        print(f"kmm train: {args.dataset}, weighting={args.weighting}, tasks={tasks}, "
              f"epochs={args.epochs}, seed={args.seed}")
        progress = []
        if getattr(args, "progress", None) == "compact":
            from keras_minmax_mtl.cli.progress import CompactProgress

            progress = [CompactProgress(tasks, args.epochs)]
        start = time.perf_counter()
        history = model.fit(splits["train"], epochs=args.epochs,
                            validation_data=splits["validation"],
                            callbacks=[weights, *method.callbacks, *progress],
                            verbose=args.verbose)
        train_seconds = time.perf_counter() - start
    except NonFiniteLossError as error:
        raise RunFailed(f"the loss became non-finite ({' '.join(str(error).split())})") from error
    test = model.evaluate(splits["test"], verbose=0, return_dict=True)
    _refuse_non_finite("weights", non_finite_weights(model))
    _refuse_non_finite("test metrics", non_finite({k: float(v) for k, v in test.items()}))
    accuracy = {task: float(test[f"{task}_accuracy"]) for task in tasks if f"{task}_accuracy" in test}
    errors = {task: float(test[f"{task}_mae"]) for task in tasks if f"{task}_mae" in test}
    worst_task = min(accuracy, key=accuracy.get)
    print()
    print(format_table(tasks, accuracy, worst_task, errors))

    model.save(work / "model.keras")
    steps_per_epoch = len(weights.history) // args.epochs if args.epochs else None
    metrics = {
        "dataset": args.dataset,
        "weighting": args.weighting,
        "seed": args.seed,
        "epochs": args.epochs,
        "arguments": {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()},
        "tasks": tasks,
        "test_accuracy": accuracy,
        "test_loss": {task: float(test[f"{task}_loss"]) for task in tasks},
        **({"test_mae": errors} if errors else {}),
        "worst_task": worst_task,
        "worst_accuracy": accuracy[worst_task],
        "mean_accuracy": float(np.mean(list(accuracy.values()))),
        "final_task_weights": dict(zip(tasks, map(float, np.asarray(model.task_weights)))),
        "history": {k: [float(v) for v in values] for k, values in history.history.items()},
        "task_weight_trajectory": weights.history.tolist(),
        "train_seconds": train_seconds,
        "model": str(out / "model.keras"),
    }
    report = method.finish(model, work, plots)
    if report is not None:
        metrics["pruning"] = _relocate(report, work, out)
    plot_task_weights(weights.history, tasks, work / "task_weights.png", title=run_title(args),
                      steps_per_epoch=steps_per_epoch,
                      events=run_events(args, metrics.get("pruning"), steps_per_epoch))
    _refuse_non_finite("metrics", non_finite(metrics))
    (work / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
    if getattr(args, "export", None):  # TFLite export (issue 5)
        from keras_minmax_mtl.cli.export import export_after_training
        export_after_training(model, work, args.export, args.dataset, args.seed,
                              verbose=output.show_logs(args), data_dir=args.data_dir)
    return metrics


def _train_command(parser, args):
    """`kmm train`: checks, builds, trains into a locked work folder, publishes; the exit status."""
    method = check_train_arguments(parser, args)
    out = args.out
    _check_out(out, args.overwrite)
    output.import_tensorflow(output.show_logs(args))
    run = _Run(args, method)
    folder = _locked_run_folder(out, args.overwrite, "train")
    try:  # from here on: the lock is held and the new run goes to folder.work
        for note in folder.notes:
            print(f"kmm train: {note}")
        try:
            _train(run, folder.work)
        except RunFailed as error:
            return _run_failed(error, out)
        folder.publish()
    finally:
        folder.__exit__(None, None, None)
    print(f"\nwrote {out}: " + ", ".join(sorted(os.listdir(out))))
    return 0


def _check_out(out, overwrite):
    """Refuses, as a bad `--out`, a destination `RunFolder` would not take (before TensorFlow loads)."""
    from keras_minmax_mtl.cli.run_folder import RunFolderError, check_destination

    try:
        check_destination(out, overwrite)
    except RunFolderError as error:
        raise UsageError(f"argument --out: {error}") from None


def _locked_run_folder(out, overwrite, command):
    """`RunFolder(out, overwrite, command)`, entered (its lock held); one it refuses is a bad `--out`."""
    from keras_minmax_mtl.cli.run_folder import RunFolder, RunFolderError

    folder = RunFolder(out, overwrite, command)
    try:
        folder.__enter__()
    except RunFolderError as error:
        raise UsageError(f"argument --out: {error}") from None
    return folder


def _run_failed(error, out):
    """Says on stderr that the run failed and that `out` was not written to; returns exit status 1."""
    print(f"kmm: error: the run failed: {error}; nothing was written to {out}"
          + (" (the run already in it is unchanged)" if out.exists() else ""), file=sys.stderr)
    return 1


def check_compress_arguments(args):
    """Checks every `kmm compress` rule that needs no data, fills in the defaults and `--out`.

    Raises `UsageError` (one line, exit 2) for the first broken rule; imports
    no TensorFlow and writes nothing.
    """
    from keras_minmax_mtl.cli.compress import TARGETS, default_out
    from keras_minmax_mtl.sparsity.budget import budget_method

    if args.data_dir is not None and args.dataset not in DATA_DIRS:
        raise UsageError(f"argument --data-dir: only used with "
                         f"{' or '.join(f'--dataset {d}' for d in DATA_DIRS)}; this run has "
                         f"--dataset {args.dataset}, so it would be ignored. Received --data-dir "
                         f"{args.data_dir}")
    examples = _num_examples(args, "train")
    steps = math.ceil(examples / args.batch_size)
    try:
        budget_method(args.method, args.ladder[0], args.candidate_epochs, steps, args.seed)
    except ValueError as error:
        if args.method == "dst":
            rule = (f"must give --method dst at least 2 training steps (a mask update within "
                    f"the first 75% of them); {args.candidate_epochs} "
                    f"epoch{'' if args.candidate_epochs == 1 else 's'} of {steps} "
                    f"step{'' if steps == 1 else 's'} is {args.candidate_epochs * steps}")
        else:
            rule = f"must be >= 2 with --method {args.method} (reweighted and retraining epochs)"
        raise UsageError(f"argument --candidate-epochs: {rule}. Received --candidate-epochs "
                         f"{args.candidate_epochs}") from error
    args.target = list(dict.fromkeys(args.target)) if args.target else list(TARGETS)
    _check_data_dir(args)
    if args.out is None:
        args.out = default_out(args)


def _compress_command(args):
    """`kmm compress`: checks, builds, searches into a locked work folder, publishes; the exit status."""
    check_compress_arguments(args)
    out = args.out
    _check_out(out, args.overwrite)
    output.import_tensorflow(output.show_logs(args))
    from keras_minmax_mtl.cli.compress import format_report, points, write_run
    from keras_minmax_mtl.core.backend import keras
    from keras_minmax_mtl.core.multitask import NonFiniteLossError
    from keras_minmax_mtl.data import networks
    from keras_minmax_mtl.sparsity.budget import compress_to_budget
    from keras_minmax_mtl.weighting.minmax import MinMaxMultiTask

    keras.utils.set_random_seed(args.seed)
    splits, _, losses, metrics = _load_dataset(args)
    network = {"multi_digits": networks.multi_digits_network,
               "multi_fashion": networks.multi_fashion_network}[args.dataset]

    def build_model(base):
        model = MinMaxMultiTask(base)
        model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss=losses,
                      metrics=metrics)
        return model

    folder = _locked_run_folder(out, args.overwrite, "compress")
    try:  # from here on: the lock is held and the new run goes to folder.work
        for note in folder.notes:
            print(f"kmm compress: {note}")
        print(f"kmm compress: {args.dataset}, method={args.method}, weighting=minmax, budget "
              f"{points(args.max_worst_drop)} of the validation worst task, ladder "
              f"{','.join(f'{v:g}' for v in args.ladder)} then {args.bisections} bisections; "
              f"{args.dense_epochs} dense epochs, {args.candidate_epochs} per candidate, "
              f"seed {args.seed}", flush=True)
        try:
            result = compress_to_budget(
                lambda: network(seed=args.seed), build_model, splits["train"],
                splits["validation"], splits["test"], max_worst_drop=args.max_worst_drop,
                method=args.method, dense_epochs=args.dense_epochs,
                candidate_epochs=args.candidate_epochs, ladder=args.ladder,
                bisections=args.bisections, seed=args.seed,
                log=lambda line: print(line, flush=True))
            bad = non_finite({k: v for k, v in result.to_dict().items() if k != "candidates"})
            _refuse_non_finite("test metrics", bad)
        except (NonFiniteLossError, RunFailed, ValueError) as error:
            return _run_failed(" ".join(str(error).split()), out)
        print()
        print("\n".join(format_report(result.to_dict())))
        report = write_run(result, folder.work, out, args)
        folder.publish()
    finally:
        folder.__exit__(None, None, None)
    files = ", ".join(f"{t} {f['bytes']} bytes" for t, f in report["files"].items())
    print(f"\nfiles: {files}; searched {len(report['candidates']) - 1} candidates in "
          f"{report['seconds']:.1f}s")
    print(f"wrote {out}: " + ", ".join(sorted(os.listdir(out))))
    return 0


def main(argv=None):
    """Entry point of the `kmm` console script; returns the exit status (2: bad flags, 1: failed run).

    Nothing imports TensorFlow before the arguments are valid (`--help` and a
    bad flag take a fraction of a second), and TensorFlow's logs are hidden
    unless `-v` is given (`keras_minmax_mtl.cli.output`).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        with output.quiet_tensorflow(output.show_logs(args)):
            if args.command == "train":
                # Without --verbose: Keras prints nothing, CompactProgress one line per epoch.
                if args.verbose is None and args.show_logs:
                    args.verbose = 1
                args.progress = "compact" if args.verbose is None else "keras"
                args.verbose = 0 if args.verbose is None else args.verbose
                return _train_command(parser, args)
            if args.command == "compress":
                return _compress_command(args)
            if args.command in ("export", "inspect"):  # TFLite export (issue 5)
                from keras_minmax_mtl.cli.export import run_command
                run_command(args)
    except UsageError as error:
        print(f"kmm: error: {' '.join(error.message.split())}", file=sys.stderr)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
