"""The `kmm` command line.

`kmm train` trains a multi-task network with one of the weightings on a
dataset, prints the per-task test accuracy with the worst task marked, and
writes into `--out`: the model (`model.keras`, reloadable with
`tf_keras.models.load_model` once `keras_minmax_mtl` is imported),
`metrics.json` and `task_weights.png` (the task-weight trajectory).

    kmm train --dataset multi_digits --weighting minmax --epochs 20 --seed 0 --out runs/minmax-s0

This is the only module that knows datasets, networks and models together.
"""
import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np

__all__ = ["main", "build_parser", "WEIGHTINGS", "DATASETS"]

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


def build_parser():
    """The `kmm` argument parser: `train`, `export` and `inspect`."""
    parser = argparse.ArgumentParser(
        prog="kmm", description="Compressed multi-task learning with min-max task weighting.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    train = commands.add_parser(
        "train", help="train a multi-task model and report per-task test accuracy",
        description="Train a multi-task model; only the task weighting differs between "
                    "--weighting choices, so their results compare fairly.")
    train.add_argument("--dataset", default="multi_digits", choices=sorted(DATASETS),
                       help="dataset (default: %(default)s)")
    train.add_argument("--weighting", default="minmax", choices=list(WEIGHTINGS),
                       help="task weighting: " + "; ".join(f"{k}: {v}" for k, v in WEIGHTINGS.items()))
    train.add_argument("--epochs", type=_positive_int, default=None,
                       help=f"default: {DEFAULT_EPOCHS}; with --pruning reweighted_l1 the stage "
                            "options set the epochs instead; with --pruning task_aware the "
                            "epochs of the grouped stage (default 10)")
    train.add_argument("--seed", type=_non_negative_int, default=0,
                       help="seed of the data draw, initial weights and shuffling (default: %(default)s)")
    train.add_argument("--out", type=pathlib.Path, default=None,
                       help="output folder (default: runs/<dataset>-<weighting>-s<seed>)")
    train.add_argument("--batch-size", type=_positive_int, default=64, help="default: %(default)s")
    train.add_argument("--learning-rate", type=_positive_float, default=1e-3,
                       help="Adam learning rate (default: %(default)s)")
    train.add_argument("--scale", type=_scale, default=1.0,
                       help="multiplies the weighted loss: a number > 0 or 'num_tasks' (default: 1)")
    train.add_argument("--normalize-losses", action="store_true",
                       help="divide each task loss by its first-step value")
    minmax = train.add_argument_group("min-max weighting")
    minmax.add_argument("--step-size", type=_positive_float, default=0.02,
                        help="ascent step 1/beta (default: %(default)s)")
    minmax.add_argument("--gamma", type=float, default=5.0,
                        help="pull towards uniform weights (default: %(default)s)")
    minmax.add_argument("--update-every", type=_positive_int, default=1,
                        help="ascent every N steps or epochs (default: %(default)s)")
    minmax.add_argument("--update-on", default="step", choices=["step", "epoch"],
                        help="what --update-every counts (default: %(default)s)")
    minmax.add_argument("--ascent", default="projected", choices=["projected", "exponentiated"],
                        help="ascent rule (default: %(default)s)")
    # --- sparsity: the logic is in keras_minmax_mtl.reweighted_cli, .dst and .hybrid_cli ---
    sparse = train.add_argument_group("sparsity")
    sparse.add_argument("--pruning", default="none", choices=list(PRUNINGS),
                        help="; ".join(f"{k}: {v}" for k, v in PRUNINGS.items())
                             + " (default: %(default)s)")
    sparse.add_argument("--sparsity", type=float, default=0.9,
                        help="fraction of the prunable weights that are zero (with "
                             "--sparsity-type filter: of the units removed from each pruned "
                             "layer), in [0, 1) (default: %(default)s)")
    sparse.add_argument("--dst-method", default="rigl", choices=["rigl", "set", "paper", "static"],
                        help="rigl: grow by |gradient|; set: grow at random; paper: the authors' "
                             "variant (on epochs); static: initial masks, never updated "
                             "(default: %(default)s)")
    sparse.add_argument("--density", default="erk", choices=["erk", "uniform"],
                        help="layer densities (default: %(default)s)")
    sparse.add_argument("--dst-update-every", type=_positive_int, default=100,
                        help="steps (epochs for paper) between mask updates (default: %(default)s)")
    sparse.add_argument("--dst-end-step", type=_positive_int, default=None,
                        help="last update step (default: 75%% of training)")
    sparse.add_argument("--drop-fraction", type=float, default=0.3,
                        help="initial drop fraction, cosine-decayed (default: %(default)s)")
    sparse.add_argument("--grow-ratio", type=float, default=None,
                        help="paper only: constant grow ratio (default: --drop-fraction)")
    # --- end of sparsity ---
    data = train.add_argument_group("data size")
    data.add_argument("--train-examples", type=_positive_int, default=None,
                      help="number of training examples (default: the dataset's)")
    data.add_argument("--test-examples", type=_positive_int, default=None,
                      help="number of validation and test examples (default: the dataset's)")
    from keras_minmax_mtl import reweighted_cli

    reweighted_cli.add_arguments(train, _positive_int, _non_negative_int, _positive_float)
    from keras_minmax_mtl import taskaware_cli

    taskaware_cli.add_arguments(train, _positive_int, _non_negative_int, _positive_float)
    from keras_minmax_mtl import hybrid_cli

    hybrid_cli.add_arguments(train, _non_negative_int)
    train.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2],
                       help="Keras verbosity: 0 silent, 1 progress bar, 2 one line per epoch")
    # --- TFLite export (issue 5): logic in keras_minmax_mtl/export_commands.py ---
    from keras_minmax_mtl import export_commands
    export_commands.add_train_option(train)
    export_commands.add_commands(commands)
    # --- end of TFLite export ---
    return parser


def _positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be an integer > 0, received {text}")
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, received {text}")
    return value


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, received {text}")
    return value


def _scale(text):
    if text == "num_tasks":
        return text
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0 or 'num_tasks', received {text!r}")
    return value


def _load_dataset(args):
    from keras_minmax_mtl import datasets, networks

    if args.dataset == "multi_digits":
        splits = {
            "train": datasets.multi_digits("train", seed=args.seed, num_examples=args.train_examples,
                                           batch_size=args.batch_size),
            "validation": datasets.multi_digits("validation", seed=args.seed,
                                                num_examples=args.test_examples,
                                                batch_size=args.batch_size),
            "test": datasets.multi_digits("test", seed=args.seed, num_examples=args.test_examples,
                                          batch_size=args.batch_size),
        }
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


def format_table(task_names, accuracies, worst_task):
    """The per-task accuracy table printed at the end of `kmm train`."""
    width = max(len("mean"), *(len(t) for t in task_names))
    lines = [f"{'task':<{width}}  test accuracy"]
    for task in task_names:
        mark = "  <- worst" if task == worst_task else ""
        lines.append(f"{task:<{width}}  {accuracies[task]:13.4f}{mark}")
    lines.append(f"{'mean':<{width}}  {np.mean([accuracies[t] for t in task_names]):13.4f}")
    return "\n".join(lines)


def train(args):
    """Runs `kmm train`; returns the metrics it wrote."""
    from keras_minmax_mtl._keras import keras
    from keras_minmax_mtl.callbacks import TaskWeightHistory
    from keras_minmax_mtl.plotting import plot_task_weights

    out = args.out or pathlib.Path("runs") / f"{args.dataset}-{args.weighting}-s{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    splits, base, losses = _load_dataset(args)
    sparse = None
    if args.pruning == "reweighted_l1":
        from keras_minmax_mtl.reweighted_cli import ReweightedL1Run

        sparse = ReweightedL1Run(args, base, splits["train"])
        base = sparse.model
    elif args.pruning == "dst":
        from keras_minmax_mtl.dst import CliRun

        sparse = CliRun(args)
        base = sparse.wrap(base)
    elif args.pruning == "task_aware":
        from keras_minmax_mtl.taskaware_cli import TaskAwareCliRun

        sparse = TaskAwareCliRun(args)
    elif args.pruning == "hybrid":
        from keras_minmax_mtl.hybrid_cli import HybridRun

        sparse = HybridRun(args, base, splits["train"])
        base = sparse.model
    model = _build_model(args, base)
    tasks = model.task_names
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss=losses,
                  metrics={task: ["accuracy"] for task in tasks})
    if hasattr(sparse, "prepare"):  # task_aware: warm-up and grouping build a new network
        model = sparse.prepare(model, splits["train"])
    weights = TaskWeightHistory()
    print(f"kmm train: {args.dataset}, weighting={args.weighting}, tasks={tasks}, "
          f"epochs={args.epochs}, seed={args.seed}")
    start = time.perf_counter()
    history = model.fit(splits["train"], epochs=args.epochs, validation_data=splits["validation"],
                        callbacks=[weights, *(sparse.callbacks if sparse else [])],
                        verbose=args.verbose)
    train_seconds = time.perf_counter() - start
    test = model.evaluate(splits["test"], verbose=0, return_dict=True)
    accuracy = {task: float(test[f"{task}_accuracy"]) for task in tasks}
    worst_task = min(tasks, key=accuracy.get)
    print()
    print(format_table(tasks, accuracy, worst_task))

    model_path = out / "model.keras"
    model.save(model_path)
    steps_per_epoch = len(weights.history) // args.epochs if args.epochs else None
    plot_task_weights(weights.history, tasks, out / "task_weights.png",
                      title=f"{args.dataset}: {args.weighting} task weights (seed {args.seed})",
                      steps_per_epoch=steps_per_epoch)
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
        "model": str(model_path),
    }
    if sparse is not None:
        metrics["pruning"] = sparse.finish(model, out)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"\nwrote {model_path}, {out / 'metrics.json'}, {out / 'task_weights.png'}")
    if getattr(args, "export", None):  # TFLite export (issue 5)
        from keras_minmax_mtl.export_commands import export_after_training
        export_after_training(model, out, args.export, args.dataset, args.seed)
    return metrics


def main(argv=None):
    """Entry point of the `kmm` console script."""
    # The command line (not the library) quiets TensorFlow's C++ start-up log,
    # unless the user chose a level; TensorFlow is imported after this point.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        if args.pruning == "reweighted_l1" and args.epochs is not None:
            parser.error("argument --epochs: not allowed with --pruning reweighted_l1, whose "
                         "--dense-epochs, --reweighted-epochs and --retrain-epochs set the "
                         f"epochs. Received --epochs {args.epochs}")
        if args.pruning == "reweighted_l1":
            from keras_minmax_mtl.reweighted_cli import check_arguments

            check_arguments(parser, args)
        if args.epochs is None and args.pruning == "task_aware":
            from keras_minmax_mtl.taskaware_cli import DEFAULT_EPOCHS as GROUPED_EPOCHS

            args.epochs = GROUPED_EPOCHS
        if args.epochs is None:
            args.epochs = DEFAULT_EPOCHS
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "train":
        train(args)
    if args.command in ("export", "inspect"):  # TFLite export (issue 5)
        from keras_minmax_mtl.export_commands import run_command
        run_command(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
