"""`kmm train --pruning reweighted_l1`: the command-line side of reweighted-ℓ1 pruning.

`kmm train` calls `add_arguments` to build its "pruning" option group and,
when `--pruning` is given, `ReweightedL1Run` to wrap the network before the
model is built, to give `fit` its callbacks, and to report and save the
result after training:

    kmm train --pruning reweighted_l1 --sparsity 0.9 --weighting minmax --seed 0
    kmm train --pruning reweighted_l1 --sparsity-type filter --sparsity 0.5

With `--pruning`, training lasts `--dense-epochs + --reweighted-epochs +
--retrain-epochs` epochs (this replaces `--epochs`); the hard prune happens at
the first step of the retraining stage. With `--sparsity-type filter`,
`--sparsity` is the fraction of output units (neurons, filters) removed from
every pruned layer, and the run prints the removed units per layer.
"""
import json
import math

__all__ = ["add_arguments", "check_arguments", "ReweightedL1Run", "save_stripped",
           "steps_per_epoch"]

#: ρ and the allocation chosen on the validation split of multi_digits at 90 % sparsity
#: (seed 0, min-max; `benchmarks/reweighted_l1.py --select-rho ...`): with uniform
#: allocation ρ ∈ {1e-6, 1e-5, 1e-4} gave worst-task validation accuracy 0.144, 0.190,
#: 0.210; with global allocation ρ ∈ {1e-4, 1e-3} gave 0.414, 0.160. The library's
#: own default allocation stays the paper's (uniform); the command line uses the winner.
DEFAULT_RHO = 1e-4
DEFAULT_ALLOCATION = "global"
#: ρ of `--sparsity-type filter` (the group penalty is about ρ times the number of pruned
#: units right after a refresh, not ρ times the number of weights), chosen on the validation
#: split of multi_digits at 50 % of the units removed (seed 0, min-max, 10 + 5 + 5 epochs;
#: `kmm train --pruning reweighted_l1 --sparsity-type filter --sparsity 0.5 --rho R`, the
#: last epoch's val_*_accuracy): ρ ∈ {0, 1e-4, 1e-3, 3e-3, 1e-2, 1e-1} gave worst-task
#: validation accuracy 0.372, 0.379, 0.382, 0.350, 0.339, 0.083. One seed: 0 to 1e-3 are
#: within noise of each other; 1e-1 destroys the network before the prune.
DEFAULT_FILTER_RHO = 1e-3


def add_arguments(train_parser, positive_int, non_negative_int, positive_float,
                  non_negative_float=float):
    """Adds the reweighted-ℓ1 stage options to the `kmm train` parser.

    `--pruning` and `--sparsity` are shared with the other methods and live in `cli`.
    """
    group = train_parser.add_argument_group(
        "reweighted-l1 pruning (--pruning reweighted_l1; its stages replace --epochs)")
    group.add_argument("--dense-epochs", type=non_negative_int, default=10,
                       help="epochs of dense training (default: %(default)s)")
    group.add_argument("--reweighted-epochs", type=non_negative_int, default=5,
                       help="epochs of reweighted-l1 training (default: %(default)s)")
    group.add_argument("--retrain-epochs", type=positive_int, default=5,
                       help="epochs of masked retraining after the prune (default: %(default)s)")
    group.add_argument("--sparsity-type", default="unstructured",
                       choices=["unstructured", "filter"],
                       help="unstructured: single weights; filter: whole output units (Dense "
                            "neurons, Conv2D filters), --sparsity is then the fraction of units "
                            "removed per layer (default: %(default)s)")
    group.add_argument("--rho", type=non_negative_float, default=None,
                       help=f"weight of the reweighted penalty (default: {DEFAULT_RHO}, "
                            f"{DEFAULT_FILTER_RHO} with --sparsity-type filter)")
    group.add_argument("--epsilon", type=positive_float, default=1e-6,
                       help="epsilon of the reweighted penalty (default: %(default)s)")
    group.add_argument("--allocation", default=None, choices=["uniform", "global"],
                       help="per-layer uniform sparsity or one global magnitude ranking "
                            f"(default: {DEFAULT_ALLOCATION}; uniform, the only choice, with "
                            f"--sparsity-type filter)")
    return group


def check_arguments(parser, args):
    """Checks the reweighted-ℓ1 options of `kmm train` and fills in their defaults.

    Exits through `parser.error` for a `--sparsity` outside `[0, 1)`, a
    negative `--rho` and `--allocation global` with `--sparsity-type filter`.
    """
    kind = "fraction of the units removed from each pruned layer" \
        if args.sparsity_type == "filter" else "fraction of the prunable weights removed"
    if not 0.0 <= args.sparsity < 1.0:
        parser.error(f"argument --sparsity: must be in [0, 1) (the {kind}). "
                     f"Received --sparsity {args.sparsity}")
    if args.rho is None:
        args.rho = DEFAULT_FILTER_RHO if args.sparsity_type == "filter" else DEFAULT_RHO
    if not math.isfinite(args.rho) or not args.rho >= 0:
        parser.error(f"argument --rho: must be >= 0. Received --rho {args.rho}")
    if args.allocation is None:
        args.allocation = "uniform" if args.sparsity_type == "filter" else DEFAULT_ALLOCATION
    if args.sparsity_type == "filter" and args.allocation != "uniform":
        parser.error("argument --allocation: --sparsity-type filter removes the same fraction "
                     "of units from every layer and needs --allocation uniform. Received "
                     f"--allocation {args.allocation}")


class ReweightedL1Run:
    """One reweighted-ℓ1 run of `kmm train`: set up before `fit`, reported after it.

    Args:
        args: the parsed `kmm train` arguments (`args.epochs` is set to the
            sum of the stage epochs).
        base_model: the Functional network to prune (not changed).
        train_dataset: the batched training dataset (gives the steps per epoch).
    """

    def __init__(self, args, base_model, train_dataset):
        from keras_minmax_mtl.sparsity.reweighted import prune_reweighted_l1

        steps = steps_per_epoch(train_dataset)
        self.steps_per_epoch = steps
        # A ValueError (e.g. a unit fraction that empties a layer of this network) is turned
        # into `kmm: error: argument --sparsity: ...` by the caller.
        self.model, self.callbacks = prune_reweighted_l1(
            base_model, args.sparsity, dense_steps=args.dense_epochs * steps,
            reweighted_steps=args.reweighted_epochs * steps, rho=args.rho,
            epsilon=args.epsilon, allocation=args.allocation,
            sparsity_type=args.sparsity_type)
        args.epochs = args.dense_epochs + args.reweighted_epochs + args.retrain_epochs
        self.args = args
        stages = self.callbacks[-1]
        what = "of the units" if args.sparsity_type == "filter" else "of the weights"
        print(f"pruning: reweighted_l1 ({args.sparsity_type}) removing {args.sparsity:.2%} {what} "
              f"({args.allocation}), rho={args.rho}, "
              f"epsilon={args.epsilon}; {args.epochs} epochs = {args.dense_epochs} dense + "
              f"{args.reweighted_epochs} reweighted + {args.retrain_epochs} retraining "
              f"({steps} steps each); w_ref refreshed at steps "
              f"{(stages.begin_step, *stages.refresh_steps) if stages.begin_step < stages.prune_step else ()}, "
              f"prune at step {stages.prune_step}")

    def finish(self, model, out):
        """Prints the sparsity (and removed units) per layer and overall, saves the stripped model.

        Returns the report (with the `structured.structured_report` under
        `"units"` with `--sparsity-type filter`).
        """
        units = _print_units if self.args.sparsity_type == "filter" else None
        return {**save_stripped(model, out, units), "steps_per_epoch": self.steps_per_epoch}


def steps_per_epoch(train_dataset):
    """The batches of `train_dataset` per epoch; a `ValueError` if unknown or infinite.

    Shared by the `--pruning` methods whose schedules count steps.
    """
    steps = int(train_dataset.cardinality())
    if steps <= 0:
        raise ValueError(f"`--pruning` needs a training dataset of known, finite length. "
                         f"Received cardinality {steps}.")
    return steps


def save_stripped(model, out, extra_report=None):
    """Prints `model`'s sparsity per layer and overall; writes the stripped model and the report.

    Writes `out/model_stripped.keras` (without pruning wrappers, compiled
    with `model`'s loss, metrics and optimizer settings) and
    `out/sparsity.json`; returns `{"report", "stripped_model"}`. Shared by the
    `--pruning` methods of `kmm train` that end with a pruned model.
    `extra_report(model)`, if given, prints more and returns what goes into the
    report under `"units"`.
    """
    from keras_minmax_mtl.sparsity.pruning import sparsity_report, strip_pruning

    report = sparsity_report(model)
    width = max(len("overall"), *(len(n) for n in report["layers"]))
    print(f"\n{'pruned weights':<{width}}  {'size':>8}  {'zeros':>8}  sparsity")
    for name, layer in report["layers"].items():
        print(f"{name:<{width}}  {layer['size']:8d}  {layer['zeros']:8d}  {layer['sparsity']:8.2%}")
    overall = report["overall"]
    print(f"{'overall':<{width}}  {overall['size']:8d}  {overall['zeros']:8d}  "
          f"{overall['sparsity']:8.2%}")
    if extra_report is not None:
        report["units"] = extra_report(model)
    stripped = strip_pruning(model)
    stripped.compile_from_config(model.get_compile_config())  # loads ready to evaluate
    path = out / "model_stripped.keras"
    stripped.save(path)
    (out / "sparsity.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {path.name} (without pruning wrappers) and sparsity.json")
    return {"report": report, "stripped_model": str(path)}


def _print_units(model):
    """Prints the removed output units per pruned layer and overall; returns the report."""
    from keras_minmax_mtl.sparsity.structured import structured_report

    units = structured_report(model)
    width = max(len("overall"), *(len(n) for n in units["layers"]))
    print(f"\n{'removed units':<{width}}  {'units':>6}  {'removed':>7}  fraction")
    for name, layer in [*units["layers"].items(), ("overall", units["overall"])]:
        print(f"{name:<{width}}  {layer['units']:6d}  {layer['removed']:7d}  "
              f"{layer['fraction']:8.2%}")
    return units
