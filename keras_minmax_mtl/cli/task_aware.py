"""`kmm train --pruning task_aware`: the command-line side of `keras_minmax_mtl.sparsity.task_aware`.

`kmm train` calls `add_arguments` to add the task-aware options and, with
`--pruning task_aware`, `TaskAwareCliRun` to warm up the standard network
with the chosen weighting, measure and group the tasks and build the grouped
network (`prepare`), to give the grouped model's `fit` its callbacks, and to
report and save the result after training (`finish`):

    kmm train --pruning task_aware --sparsity 0.9 --warmup-epochs 10 --epochs 10 \\
        --similarity-coefficient 0.5 --groups 2

`--sparsity s` sets the budget: the grouped network keeps as many non-zero
weights in its pruned kernels (trunk + group branches) as the standard network
keeps at sparsity `s` in its trunk and task-hidden kernels — as many as
`--pruning reweighted_l1 --sparsity s`. `--epochs` counts the epochs of the
grouped stage, after `--warmup-epochs` epochs of warm-up (default 10 + 10).
"""
import json

__all__ = ["add_arguments", "TaskAwareCliRun", "DEFAULT_EPOCHS"]

#: Epochs of the grouped stage when `--epochs` is not given (after the warm-up).
DEFAULT_EPOCHS = 10


def add_arguments(train_parser, positive_int, non_negative_int, positive_float):
    """Adds the task-aware options to the `kmm train` parser (`--pruning`, `--sparsity` are in `cli`)."""
    group = train_parser.add_argument_group(
        "task-aware dynamic model optimisation (--pruning task_aware)")
    group.add_argument("--warmup-epochs", type=non_negative_int, default=10,
                       help="epochs of the standard network before grouping (default: %(default)s)")
    group.add_argument("--similarity-coefficient", type=_unit_float, default=0.5,
                       help="alpha in S = alpha*S_weight + (1-alpha)*S_loss, in [0, 1] "
                            "(default: %(default)s)")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--groups", type=positive_int, default=None,
                        help="number of task groups (default: by --similarity-threshold)")
    choice.add_argument("--similarity-threshold", type=_threshold, default=0.0,
                        help="merge groups while their average similarity is at least this, in "
                             "[-1, 1] (default: %(default)s)")
    group.add_argument("--allocate-every", type=positive_int, default=100,
                       help="steps between re-allocations by difficulty (default: %(default)s)")
    group.add_argument("--smoothing", type=positive_float, default=0.5,
                       help="added to every group's difficulty before allocating "
                            "(default: %(default)s)")
    group.add_argument("--initial-allocation", default="global", choices=["erk", "uniform", "global"],
                       help="how the pruned kernels share the budget at the start: ERK or uniform "
                            "densities, or one global magnitude ranking (default: %(default)s)")
    group.add_argument("--measure-samples", type=positive_int, default=256,
                       help="training samples of the held measurement batch (default: %(default)s)")
    return group


def _unit_float(text):
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], received {text}")
    return value


def _threshold(text):
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [-1, 1], received {text}")
    return value


class TaskAwareCliRun:
    """One task-aware run of `kmm train`: warm-up and grouping before `fit`, report after it.

    Args:
        args: the parsed `kmm train` arguments.
    """

    def __init__(self, args):
        from keras_minmax_mtl.sparsity.task_aware import TaskAwareRun

        self.args = args
        self.run = TaskAwareRun(
            sparsity=args.sparsity, alpha=args.similarity_coefficient, num_groups=args.groups,
            similarity_threshold=args.similarity_threshold, update_every=args.allocate_every,
            smoothing=args.smoothing, density=args.initial_allocation,
            measure_samples=args.measure_samples, seed=args.seed,
            verbose=1 if args.verbose else 0)

    def prepare(self, model, train_dataset):
        """Warms up (a copy of) the compiled `model`, groups the tasks; returns the grouped model."""
        print(f"pruning: task_aware at {self.args.sparsity:.2%} (equal non-zero count to "
              f"reweighted_l1), {self.args.warmup_epochs} warm-up + {self.args.epochs} grouped "
              f"epochs, alpha={self.args.similarity_coefficient}")
        return self.run.prepare(model, train_dataset, self.args.warmup_epochs,
                                verbose=self.args.verbose)

    @property
    def callbacks(self):
        return self.run.callbacks

    def finish(self, model, out):
        """Prints groups and sparsity, saves the stripped model, the report and its plot."""
        from keras_minmax_mtl.cli.plots import plot_task_aware
        from keras_minmax_mtl.sparsity.pruning import nonzero_kernel_count, sparsity_report, strip_pruning

        report = self.run.report()
        report["sparsity"] = sparsity_report(model)
        report["nonzero_kernel_weights"] = nonzero_kernel_count(model)
        print(f"\ntask groups: {report['groups']}; budget {report['budget']} non-zero weights, "
              f"sparsity of the pruned kernels {report['sparsity']['overall']['sparsity']:.4f}")
        last = report["history"][-1]
        print("final branch densities: " + ", ".join(f"{k} {v:.3f}"
                                                     for k, v in last["density"].items()))
        stripped = strip_pruning(model)
        stripped.compile_from_config(model.get_compile_config())  # loads ready to evaluate
        path = out / "model_stripped.keras"
        stripped.save(path)
        (out / "task_aware.json").write_text(json.dumps(report, indent=2))
        plot_task_aware(report, out / "task_aware.png",
                        title=f"task-aware, sparsity {self.args.sparsity} (seed {self.args.seed})")
        print(f"wrote {path.name} (without pruning wrappers), task_aware.json, task_aware.png")
        return {"report": report, "stripped_model": str(path)}
