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

from keras_minmax_mtl.cli import arguments, output

__all__ = ["main", "build_parser", "check_train_arguments", "default_out", "flag_message",
           "non_finite", "non_finite_weights", "UsageError", "RunFailed", "WEIGHTINGS",
           "DATASETS", "DATASET_FACTS"]

#: `--weighting` names and what they build.
WEIGHTINGS = {
    "minmax": "min-max task weights on the simplex (Guo et al. 2025)",
    "ew": "equal weighting",
    "uw": "uncertainty weighting (Kendall et al. 2018)",
    "dwa": "dynamic weight average (Liu et al. 2019, T=2)",
}
#: Epochs of `kmm train` without staged pruning.
DEFAULT_EPOCHS = 20
#: `--pruning` names.
PRUNINGS = {
    "none": "dense",
    "reweighted_l1": "dense, reweighted-l1, hard prune, masked retraining (Guo et al. 2025)",
    "dst": "dynamic sparse training of the hidden layers (prune and grow at constant sparsity)",
    "task_aware": "warm-up, group similar tasks, re-allocate non-zeros by task difficulty "
                  "(Choi et al. 2023)",
    "hybrid": "shared trunk + one sparse kernel per task, W_t = W_shared + S_t, at the "
              "equal-non-zero budget of --sparsity (Xie et al. 2022)",
}
#: `--dataset` names.
DATASETS = {"multi_digits": "two handwritten digits per canvas; tasks left, right, sum (shipped)"}
#: What the flag checks need of each `--dataset` without importing it (its loader imports
#: TensorFlow): the task names and the number of examples of each split by default.
#: tests/test_cli.py checks them against `keras_minmax_mtl.data`.
DATASET_FACTS = {"multi_digits": {"tasks": ("left", "right", "sum"),
                                  "examples": {"train": 6000, "validation": 1000, "test": 2000}}}


def build_parser():
    """The `kmm` argument parser: `train`, `export` and `inspect`."""
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
                       help=f"default: {DEFAULT_EPOCHS}; with --pruning reweighted_l1 the stage "
                            "options set the epochs instead; with --pruning task_aware the "
                            "epochs of the grouped stage (default 10)")
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
    train.add_argument("--normalize-losses", action="store_true",
                       help="divide each task loss by its first-step value")
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
    # --- sparsity: the logic is in keras_minmax_mtl.cli.reweighted, .dst and .hybrid_cli ---
    sparse = train.add_argument_group("sparsity")
    sparse.add_argument("--pruning", default="none", choices=list(PRUNINGS),
                        help="; ".join(f"{k}: {v}" for k, v in PRUNINGS.items())
                             + " (default: %(default)s)")
    sparse.add_argument("--sparsity", type=arguments.finite, default=0.9,
                        help="fraction of the prunable weights that are zero (with "
                             "--sparsity-type filter: of the units removed from each pruned "
                             "layer), in [0, 1) (default: %(default)s)")
    sparse.add_argument("--dst-method", default="rigl", choices=["rigl", "set", "paper", "static"],
                        help="rigl: grow by |gradient|; set: grow at random; paper: the authors' "
                             "variant (on epochs); static: initial masks, never updated "
                             "(default: %(default)s)")
    sparse.add_argument("--density", default="erk", choices=["erk", "uniform"],
                        help="layer densities (default: %(default)s)")
    sparse.add_argument("--dst-update-every", type=arguments.positive_int, default=100,
                        help="steps (epochs for paper) between mask updates (default: %(default)s)")
    sparse.add_argument("--dst-end-step", type=arguments.positive_int, default=None,
                        help="last update step (default: 75%% of training)")
    sparse.add_argument("--drop-fraction", type=arguments.drop_fraction, default=0.3,
                        help="initial drop fraction, cosine-decayed (default: %(default)s)")
    sparse.add_argument("--grow-ratio", type=arguments.drop_fraction, default=None,
                        help="paper only: constant grow ratio (default: --drop-fraction)")
    # --- end of sparsity ---
    data = train.add_argument_group("data size")
    data.add_argument("--train-examples", type=arguments.positive_int, default=None,
                      help="number of training examples (default: the dataset's)")
    data.add_argument("--test-examples", type=arguments.positive_int, default=None,
                      help="number of validation and test examples (default: the dataset's)")
    from keras_minmax_mtl.cli import reweighted as reweighted_cli

    reweighted_cli.add_arguments(train, arguments.positive_int, arguments.non_negative_int, arguments.positive_float,
                                 arguments.non_negative_float)
    from keras_minmax_mtl.cli import task_aware as taskaware_cli

    taskaware_cli.add_arguments(train, arguments.positive_int, arguments.non_negative_int, arguments.positive_float)
    from keras_minmax_mtl.cli import hybrid as hybrid_cli

    hybrid_cli.add_arguments(train, arguments.non_negative_int)
    output.add_train_verbose(train)
    # --- TFLite export (issue 5): logic in keras_minmax_mtl/cli/export.py ---
    from keras_minmax_mtl.cli import export as export_commands
    export_commands.add_train_option(train)
    export_commands.add_commands(commands)
    # --- end of TFLite export ---
    parser.flag_owners = _flag_owners(train)
    return parser


#: The option groups of `kmm train` whose flags mean something with one choice only:
#: {group title prefix: (the deciding flag's dest, its value)}.
_GROUP_OWNERS = {
    "min-max weighting": ("weighting", "minmax"),
    "reweighted-l1 pruning": ("pruning", "reweighted_l1"),
    "task-aware dynamic model optimisation": ("pruning", "task_aware"),
    "hybrid shared": ("pruning", "hybrid"),
}


def _flag_owners(train):
    """`{dest: (flag, default, owner dest, owner values)}` for the flags tied to one method."""
    owners = {}
    for group in train._action_groups:
        owner = next((o for title, o in _GROUP_OWNERS.items()
                      if (group.title or "").startswith(title)), None)
        for action in group._group_actions:
            flag = action.option_strings[-1] if action.option_strings else None
            if owner is not None:
                owners[action.dest] = (flag, action.default, owner[0], (owner[1],))
            elif group.title == "sparsity" and action.dest == "sparsity":
                owners[action.dest] = (flag, action.default, "pruning",
                                       tuple(p for p in PRUNINGS if p != "none"))
            elif group.title == "sparsity" and action.dest != "pruning":
                owners[action.dest] = (flag, action.default, "pruning", ("dst",))
    return owners


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
#: `ValueError` raised while building it becomes ``kmm: error: argument --flag: ...``.
_FLAGS = {
    "weighting": {"step_size": "--step-size", "gamma": "--gamma", "update_every": "--update-every",
                  "update_on": "--update-on", "ascent": "--ascent", "scale": "--scale",
                  "normalize_losses": "--normalize-losses", "learning_rate": "--learning-rate"},
    "train data": {"num_examples": "--train-examples", "batch_size": "--batch-size",
                   "seed": "--seed"},
    "test data": {"num_examples": "--test-examples", "batch_size": "--batch-size",
                  "seed": "--seed"},
    "network": {"seed": "--seed"},
    "reweighted_l1": {"sparsity": "--sparsity", "target_sparsity": "--sparsity", "rho": "--rho",
                      "epsilon": "--epsilon", "allocation": "--allocation",
                      "sparsity_type": "--sparsity-type", "dense_steps": "--dense-epochs",
                      "begin_step": "--dense-epochs", "reweighted_steps": "--reweighted-epochs",
                      "prune_step": "--reweighted-epochs"},
    "dst": {"sparsity": "--sparsity", "method": "--dst-method", "density": "--density",
            "update_every": "--dst-update-every", "end_step": "--dst-end-step",
            "drop_fraction": "--drop-fraction", "grow_ratio": "--grow-ratio", "seed": "--seed"},
    "task_aware": {"sparsity": "--sparsity", "budget": "--sparsity",
                   "alpha": "--similarity-coefficient", "num_groups": "--groups",
                   "similarity_threshold": "--similarity-threshold",
                   "update_every": "--allocate-every", "smoothing": "--smoothing",
                   "density": "--initial-allocation", "measure_samples": "--measure-samples",
                   "warmup_epochs": "--warmup-epochs", "seed": "--seed"},
    "hybrid": {"sparsity": "--sparsity", "shared_sparsity": "--sparsity",
               "task_share": "--task-share", "allocation": "--hybrid-allocation",
               "prune_step": "--hybrid-dense-epochs", "end_step": "--hybrid-prune-epochs"},
}
#: The flag a library error of a stage names when its message names no argument.
_STAGE_FLAG = {"weighting": "--weighting", "train data": "--train-examples",
               "test data": "--test-examples", "network": "--dataset",
               "reweighted_l1": "--sparsity", "dst": "--sparsity", "task_aware": "--sparsity",
               "hybrid": "--sparsity"}


def flag_message(message, stage):
    """A library error message of a `kmm train` stage in terms of its flags: ``argument --flag: ...``.

    The Python argument names of `_FLAGS[stage]` become their flags; the
    flag of the first one named (else the stage's main flag) leads the line.
    """
    flags = _FLAGS[stage]
    named = [(message.find(f"`{name}`"), flag) for name, flag in flags.items()
             if f"`{name}`" in message]
    lead = min(named)[1] if named else _STAGE_FLAG[stage]
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


def default_out(args):
    """The default `--out`: ``runs/<dataset>-<weighting>[-<pruning>...]-e<epochs>-s<seed>``.

    It names what tells the README's runs apart: the weighting, the pruning
    method with its kind and `--sparsity`, the epochs (the sum of the stages
    with reweighted ℓ1) and the seed, e.g. ``runs/multi_digits-minmax-e20-s0``,
    ``runs/multi_digits-minmax-reweighted_l1-0.9-e20-s0``,
    ``runs/multi_digits-minmax-dst-rigl-0.9-e20-s0``.
    """
    parts = [args.dataset, args.weighting]
    if args.pruning != "none":
        kind = {"dst": f"-{args.dst_method}",
                "reweighted_l1": "-filter" if args.sparsity_type == "filter" else ""}
        parts.append(f"{args.pruning}{kind.get(args.pruning, '')}-{args.sparsity:g}")
    parts += [f"e{args.epochs}", f"s{args.seed}"]
    return pathlib.Path("runs") / "-".join(parts)


def _num_examples(args, split):
    given = args.train_examples if split == "train" else args.test_examples
    return given if given is not None else DATASET_FACTS[args.dataset]["examples"][split]


def check_train_arguments(parser, args):
    """Checks every `kmm train` rule that needs no data, fills in the defaults and `--out`.

    Raises `UsageError` (one line, exit 2) for the first broken rule; imports
    no TensorFlow and writes nothing.
    """
    check_flags_are_used(parser, args)
    if args.pruning == "reweighted_l1" and args.epochs is not None:
        raise UsageError("argument --epochs: not allowed with --pruning reweighted_l1, whose "
                         "--dense-epochs, --reweighted-epochs and --retrain-epochs set the "
                         f"epochs. Received --epochs {args.epochs}")
    if args.pruning == "reweighted_l1":
        from keras_minmax_mtl.cli.reweighted import check_arguments

        check_arguments(parser, args)
        args.epochs = args.dense_epochs + args.reweighted_epochs + args.retrain_epochs
    if args.epochs is None and args.pruning == "task_aware":
        from keras_minmax_mtl.cli.task_aware import DEFAULT_EPOCHS as GROUPED_EPOCHS

        args.epochs = GROUPED_EPOCHS
    if args.epochs is None:
        args.epochs = DEFAULT_EPOCHS
    if args.pruning == "dst":
        _check_dst(args)
    if args.pruning == "task_aware":
        if not 0.0 <= args.sparsity < 1.0:
            raise UsageError(f"argument --sparsity: must be in [0, 1) (the fraction of the "
                             f"prunable weights removed). Received --sparsity {args.sparsity:g}")
        tasks = len(DATASET_FACTS[args.dataset]["tasks"])
        if args.groups is not None and args.groups > tasks:
            raise UsageError(f"argument --groups: must be in [1, {tasks}] (the number of tasks of "
                             f"{args.dataset}). Received --groups {args.groups}")
        if args.measure_samples < 2:
            raise UsageError(f"argument --measure-samples: must be an integer >= 2. Received "
                             f"--measure-samples {args.measure_samples}")
    if args.pruning == "hybrid":
        if not 0.0 <= args.sparsity < 1.0:
            raise UsageError(f"argument --sparsity: must be in [0, 1) (the sparsity whose "
                             f"non-zero count the hybrid network keeps). Received --sparsity "
                             f"{args.sparsity:g}")
        dense = args.epochs // 2 if args.hybrid_dense_epochs is None else args.hybrid_dense_epochs
        if dense + args.hybrid_prune_epochs >= args.epochs:
            raise UsageError(f"argument --hybrid-dense-epochs: --hybrid-dense-epochs + "
                             f"--hybrid-prune-epochs must be < --epochs (some masked training "
                             f"after the prune). Received {dense} + {args.hybrid_prune_epochs} "
                             f"with --epochs {args.epochs}")
    if args.out is None:
        args.out = default_out(args)


def _check_dst(args):
    """The `--pruning dst` rules, including that the update schedule fits in the run."""
    if not 0.0 < args.sparsity < 1.0:
        raise UsageError(f"argument --sparsity: must be in (0, 1) with --pruning dst (the "
                         f"fraction of the hidden-layer weights that are zero). Received "
                         f"--sparsity {args.sparsity:g}")
    if args.dst_method == "static":
        return
    if args.grow_ratio is not None and args.dst_method != "paper":
        raise UsageError(f"argument --grow-ratio: only used by --dst-method paper. Received "
                         f"--grow-ratio {args.grow_ratio:g} with --dst-method {args.dst_method}")
    unit = "epoch" if args.dst_method == "paper" else "step"
    if args.dst_end_step is not None and args.dst_end_step < args.dst_update_every:
        raise UsageError(f"argument --dst-end-step: must be >= --dst-update-every "
                         f"({args.dst_update_every}): the first mask update is at {unit} "
                         f"{args.dst_update_every}. Received --dst-end-step {args.dst_end_step}")
    steps = math.ceil(_num_examples(args, "train") / args.batch_size)
    total = args.epochs if unit == "epoch" else args.epochs * steps
    end = args.dst_end_step if args.dst_end_step is not None else int(0.75 * total)
    if end < args.dst_update_every or args.dst_update_every > total:
        raise UsageError(f"argument --dst-update-every: the first mask update, at {unit} "
                         f"{args.dst_update_every}, comes after the last one (--dst-end-step, "
                         f"default 75% of the run's {total} {unit}s: {end}); give a smaller "
                         f"--dst-update-every or more --epochs. Received --dst-update-every "
                         f"{args.dst_update_every}")


def _load_dataset(args):
    from keras_minmax_mtl import data as datasets
    from keras_minmax_mtl.data import networks

    if args.dataset == "multi_digits":
        with _Flags("train data"):
            train = datasets.multi_digits("train", seed=args.seed,
                                          num_examples=args.train_examples,
                                          batch_size=args.batch_size)
        with _Flags("test data"):
            splits = {
                "train": train,
                "validation": datasets.multi_digits("validation", seed=args.seed,
                                                    num_examples=args.test_examples,
                                                    batch_size=args.batch_size),
                "test": datasets.multi_digits("test", seed=args.seed,
                                              num_examples=args.test_examples,
                                              batch_size=args.batch_size),
            }
        with _Flags("network"):
            base = networks.multi_digits_network(seed=args.seed)
        losses = {task: "sparse_categorical_crossentropy" for task in base.output_names}
        return splits, base, losses
    raise AssertionError(args.dataset)  # argparse restricts the choices


def _build_model(args, base):
    import keras_minmax_mtl as kmm

    common = dict(scale=args.scale, normalize_losses=args.normalize_losses)
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
    """A `kmm train` run built from its flags, before anything is written or trained."""

    def __init__(self, args):
        from keras_minmax_mtl.core.backend import keras

        self.args = args
        keras.utils.set_random_seed(args.seed)
        self.splits, base, losses = _load_dataset(args)
        self.sparse = None
        with _Flags(args.pruning if args.pruning != "none" else "weighting"):
            if args.pruning == "reweighted_l1":
                from keras_minmax_mtl.cli.reweighted import ReweightedL1Run

                self.sparse = ReweightedL1Run(args, base, self.splits["train"])
                base = self.sparse.model
            elif args.pruning == "dst":
                from keras_minmax_mtl.sparsity.dst import CliRun

                self.sparse = CliRun(args)
                base = self.sparse.wrap(base)
            elif args.pruning == "task_aware":
                from keras_minmax_mtl.cli.task_aware import TaskAwareCliRun

                self.sparse = TaskAwareCliRun(args)
            elif args.pruning == "hybrid":
                from keras_minmax_mtl.cli.hybrid import HybridRun

                self.sparse = HybridRun(args, base, self.splits["train"])
                base = self.sparse.model
        with _Flags("weighting"):
            self.model = _build_model(args, base)
            self.model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss=losses,
                               metrics={task: ["accuracy"] for task in self.model.task_names})


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


def format_table(task_names, accuracies, worst_task):
    """The per-task accuracy table printed at the end of `kmm train`."""
    width = max(len("mean"), *(len(t) for t in task_names))
    lines = [f"{'task':<{width}}  test accuracy"]
    for task in task_names:
        mark = "  <- worst" if task == worst_task else ""
        lines.append(f"{task:<{width}}  {accuracies[task]:13.4f}{mark}")
    lines.append(f"{'mean':<{width}}  {np.mean([accuracies[t] for t in task_names]):13.4f}")
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
    from keras_minmax_mtl.cli.plots import plot_task_weights, run_events, run_title

    args, model, sparse, splits = run.args, run.model, run.sparse, run.splits
    out, work = pathlib.Path(args.out), pathlib.Path(work)
    work.mkdir(parents=True, exist_ok=True)
    weights = TaskWeightHistory()
    try:
        if hasattr(sparse, "prepare"):  # task_aware: warm-up and grouping build a new network
            model = sparse.prepare(model, splits["train"])
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
                            callbacks=[weights, *(sparse.callbacks if sparse else []), *progress],
                            verbose=args.verbose)
        train_seconds = time.perf_counter() - start
    except NonFiniteLossError as error:
        raise RunFailed(f"the loss became non-finite ({' '.join(str(error).split())})") from error
    test = model.evaluate(splits["test"], verbose=0, return_dict=True)
    _refuse_non_finite("weights", non_finite_weights(model))
    _refuse_non_finite("test metrics", non_finite({k: float(v) for k, v in test.items()}))
    accuracy = {task: float(test[f"{task}_accuracy"]) for task in tasks}
    worst_task = min(tasks, key=accuracy.get)
    print()
    print(format_table(tasks, accuracy, worst_task))

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
        "worst_task": worst_task,
        "worst_accuracy": accuracy[worst_task],
        "mean_accuracy": float(np.mean(list(accuracy.values()))),
        "final_task_weights": dict(zip(tasks, map(float, np.asarray(model.task_weights)))),
        "history": {k: [float(v) for v in values] for k, values in history.history.items()},
        "task_weight_trajectory": weights.history.tolist(),
        "train_seconds": train_seconds,
        "model": str(out / "model.keras"),
    }
    if sparse is not None:
        metrics["pruning"] = _relocate(sparse.finish(model, work), work, out)
    plot_task_weights(weights.history, tasks, work / "task_weights.png", title=run_title(args),
                      steps_per_epoch=steps_per_epoch,
                      events=run_events(args, metrics.get("pruning"), steps_per_epoch))
    _refuse_non_finite("metrics", non_finite(metrics))
    (work / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
    if getattr(args, "export", None):  # TFLite export (issue 5)
        from keras_minmax_mtl.cli.export import export_after_training
        export_after_training(model, work, args.export, args.dataset, args.seed,
                              verbose=output.show_logs(args))
    return metrics


def _train_command(parser, args):
    """`kmm train`: checks, builds, trains into a locked work folder, publishes; the exit status."""
    from keras_minmax_mtl.cli.run_folder import RunFolder, RunFolderError, check_destination

    check_train_arguments(parser, args)
    out = args.out
    try:
        check_destination(out, args.overwrite)
    except RunFolderError as error:
        raise UsageError(f"argument --out: {error}") from None
    output.import_tensorflow(output.show_logs(args))
    run = _Run(args)
    folder = RunFolder(out, args.overwrite)
    try:
        folder.__enter__()
    except RunFolderError as error:
        raise UsageError(f"argument --out: {error}") from None
    try:  # from here on: the lock is held and the new run goes to folder.work
        for note in folder.notes:
            print(f"kmm train: {note}")
        try:
            _train(run, folder.work)
        except RunFailed as error:
            print(f"kmm: error: the run failed: {error}; nothing was written to {out}"
                  + (" (the run already in it is unchanged)" if out.exists() else ""),
                  file=sys.stderr)
            return 1
        folder.publish()
    finally:
        folder.__exit__(None, None, None)
    print(f"\nwrote {out}: " + ", ".join(sorted(os.listdir(out))))
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
            if args.command in ("export", "inspect"):  # TFLite export (issue 5)
                from keras_minmax_mtl.cli.export import run_command
                run_command(args)
    except UsageError as error:
        print(f"kmm: error: {' '.join(error.message.split())}", file=sys.stderr)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
