"""`kmm train --pruning hybrid`: the command-line side of hybrid shared + per-task sparse compression.

`kmm train` calls `add_arguments` to add the hybrid options and, with
`--pruning hybrid`, `HybridRun` to convert the network (`hybrid_network`),
wrap it for pruning to the equal-non-zero budget of `--sparsity`, give `fit`
its callbacks, and report and save the result:

    kmm train --pruning hybrid --sparsity 0.9 --task-share 0.25 --weighting minmax --seed 0

`--sparsity s` means: as many non-zero kernel weights in total (``W_shared``,
every ``S_t``, the task layers) as the standard network with its trunk and
task-hidden kernels at sparsity `s` and its output kernels dense
(`hybrid.equal_nonzero_budget`); `--task-share` of them, after the output
kernels, go to the ``S_t``. Training lasts `--epochs`: the first
`--hybrid-dense-epochs` dense, then the prune (one-shot, or gradual over
`--hybrid-prune-epochs`), then masked training.
"""
import argparse

__all__ = ["add_arguments", "HybridRun", "prune_steps", "DEFAULT_TASK_SHARE", "DEFAULT_ALLOCATION",
           "DEFAULT_PRUNE_EPOCHS"]

#: Chosen on the validation split of multi_digits at the equal-non-zero budget of 90 %
#: (seed 0, min-max, 20 epochs, `benchmarks/hybrid.py`; worst-task, then mean validation
#: accuracy): one-shot global allocation with task share 0, 0.1, 0.25, 0.5, 0.75 gave
#: worst 0.382, 0.384, 0.348, 0.384, 0.294 (mean 0.713, 0.722, 0.709, 0.732, 0.695); uniform
#: allocation gave 0.100-0.127; a gradual prune over 4 epochs with task share 0.1 / 0.5
#: gave 0.365 / 0.349. See docs/results.md.
DEFAULT_TASK_SHARE = 0.5
DEFAULT_ALLOCATION = "global"
DEFAULT_PRUNE_EPOCHS = 0


def _share(text):
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), received {text}")
    return value


def add_arguments(train_parser, non_negative_int):
    """Adds the hybrid options to the `kmm train` parser (`--pruning`, `--sparsity` live in `cli`)."""
    group = train_parser.add_argument_group(
        "hybrid shared + per-task sparse compression (--pruning hybrid)")
    group.add_argument("--task-share", type=_share, default=DEFAULT_TASK_SHARE,
                       help="share of the non-zero budget (after the dense output layers) given "
                            "to the per-task sparse kernels S_t (default: %(default)s)")
    group.add_argument("--hybrid-allocation", default=DEFAULT_ALLOCATION,
                       choices=["uniform", "global"],
                       help="per-kernel uniform density or one magnitude ranking per group "
                            "(default: %(default)s)")
    group.add_argument("--hybrid-dense-epochs", type=non_negative_int, default=None,
                       help="dense epochs before the prune (default: half of --epochs)")
    group.add_argument("--hybrid-prune-epochs", type=non_negative_int,
                       default=DEFAULT_PRUNE_EPOCHS,
                       help="0: one-shot prune; N: gradual (cubic) over N epochs "
                            "(default: %(default)s)")
    return group


def prune_steps(dense_epochs, prune_epochs, epochs, steps_per_epoch):
    """`(prune_step, end_step, frequency)` of a run: dense epochs, prune epochs, masked epochs.

    One-shot (`end_step=None`) when `prune_epochs` is 0; a gradual prune
    updates the masks 4 times per epoch.

    Raises:
        ValueError: unless ``dense_epochs + prune_epochs < epochs`` (some
            masked training after the prune).
    """
    if dense_epochs + prune_epochs >= epochs:
        raise ValueError(
            f"Argument `--hybrid-dense-epochs` + `--hybrid-prune-epochs` must be < --epochs "
            f"(some masked training after the prune). Received: {dense_epochs} + "
            f"{prune_epochs} with --epochs {epochs}")
    prune_step = dense_epochs * steps_per_epoch + 1
    end_step = prune_step + prune_epochs * steps_per_epoch if prune_epochs else None
    return prune_step, end_step, max(1, steps_per_epoch // 4)


class HybridRun:
    """One `--pruning hybrid` run of `kmm train`: set up before `fit`, reported after it.

    Args:
        args: the parsed `kmm train` arguments.
        base_model: the standard Functional network (not changed).
        train_dataset: the batched training dataset (gives the steps per epoch).

    Raises:
        ValueError: if the dense and prune epochs do not fit in `--epochs`, or
            the budget cannot be split (see `hybrid.split_budget`).
    """

    def __init__(self, args, base_model, train_dataset):
        from keras_minmax_mtl.sparsity.hybrid import hybrid_at_sparsity

        from keras_minmax_mtl.cli.reweighted import steps_per_epoch

        steps = steps_per_epoch(train_dataset)
        dense = args.epochs // 2 if args.hybrid_dense_epochs is None else args.hybrid_dense_epochs
        self.steps_per_epoch = steps
        prune_step, end_step, frequency = prune_steps(dense, args.hybrid_prune_epochs,
                                                      args.epochs, steps)
        self.model, self.callbacks, self.split = hybrid_at_sparsity(
            base_model, args.sparsity, args.task_share, prune_step, end_step=end_step,
            frequency=frequency, allocation=args.hybrid_allocation)
        self.budget = self.split["total_nonzeros"]
        print(f"pruning: hybrid at the equal-non-zero budget of sparsity {args.sparsity:.2%}: "
              f"{self.budget} non-zero kernel weights = {self.split['shared_nonzeros']} shared "
              f"(W_shared + task-hidden) + {self.split['task_budget']} per-task S_t "
              f"(task share {args.task_share}) + {self.split['dense_nonzeros']} dense outputs; "
              f"{args.hybrid_allocation} allocation; prune at step {prune_step}"
              + (f" to {end_step} (gradual)" if end_step else " (one-shot)"))

    def finish(self, model, out):
        """Prints the sparsity and non-zero counts, saves the stripped model; returns the report."""
        from keras_minmax_mtl.sparsity.hybrid import kernel_nonzeros
        from keras_minmax_mtl.cli.reweighted import save_stripped

        saved = save_stripped(model, out)
        counts = kernel_nonzeros(model)
        print(f"non-zero kernel weights: {counts['total']} (budget {self.budget}) = "
              f"{counts['shared']} shared + {counts['task']} per-task + {counts['dense']} dense")
        return {**saved, "nonzeros": counts, "budget": self.budget, "split": self.split,
                "steps_per_epoch": self.steps_per_epoch}
