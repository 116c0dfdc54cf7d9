r"""The compression methods behind one interface, and their registry: what `kmm train --pruning` runs.

A `SparsityMethod` is one way of compressing the network during training. It
names itself (`name`, `summary`), declares its options (`Option`: each one
flag of `kmm train` with its type, default, help and the library arguments it
stands for), and runs in five steps that `kmm train` and `benchmarks/_runs.py`
call alike:

1. ``method = Method(sparsity=..., epochs=..., seed=..., **options)`` checks
   the options and settles the epochs of `fit` (`method.epochs`);
2. ``network = method.wrap(base, steps_per_epoch)`` wraps the base network for
   pruning (and makes `method.callbacks`);
3. the caller builds and compiles the multi-task model on `network`;
4. ``model = method.prepare(model, train)`` (task-aware: the warm-up and the
   grouped network; the others give `model` back), then
   ``model.fit(train, epochs=method.epochs, callbacks=[..., *method.callbacks])``;
5. ``method.finish(model, out)`` prints and saves the result (`kmm train`), or
   `achieved_sparsity` and `extras` (the benchmarks).

The registry (`METHODS`, `get_method`, `register_method`) is where `kmm train`
finds its `--pruning` choices, their flags and help, which flags belong to which
method (a flag of another method is refused, not ignored), the default run
folder's name and how a library error is told in flags. Adding a method is one
subclass decorated with `register_method`.

This module imports no TensorFlow: `kmm` builds its parser from the registry
and checks the flags before TensorFlow is imported, so the methods import the
library inside their functions.

Example:

>>> method = get_method("reweighted_l1")(sparsity=0.9)
>>> method.epochs                        # 10 dense + 5 reweighted + 5 retraining
20
>>> network = method.wrap(base, steps_per_epoch=94)
>>> model = MinMaxMultiTask(network); model.compile(...)
>>> model = method.prepare(model, train)
>>> model.fit(train, epochs=method.epochs, callbacks=method.callbacks)
"""
import json
import math

from keras_minmax_mtl.core import arguments

__all__ = ["Option", "OptionError", "SparsityMethod", "METHODS", "get_method", "register_method",
           "Dense", "ReweightedL1", "DynamicSparse", "TaskAware", "Hybrid", "DEFAULT_EPOCHS",
           "SPARSITY_FLAG", "steps_per_epoch", "save_stripped", "write_stripped"]

#: Epochs of `kmm train` when `--epochs` is not given (and the method does not set them).
DEFAULT_EPOCHS = 20
#: The flag shared by every method that prunes: the target sparsity (or its budget).
SPARSITY_FLAG = "--sparsity"


class OptionError(ValueError):
    """A bad option of a method, told as its flag: ``str(error)`` is ``argument --flag: ...``.

    Args:
        flag: the flag, e.g. ``"--rho"``.
        message: the rule and the value received.
    """

    def __init__(self, flag, message):
        super().__init__(f"argument {flag}: {message}")
        self.flag = flag


class Option:
    """One option of a method: a flag of `kmm train` and a keyword of the method's constructor.

    Args:
        flag: the flag, ``"--dense-epochs"``; the keyword is its name with
            underscores, `dense_epochs`.
        type: turns the flag's text into the value (an `argparse` type such as
            `keras_minmax_mtl.core.arguments.positive_int`, or any callable).
            Defaults to `None`: the text (with `choices`).
        default: the value when the flag is not given.
        help: the help text (``%(default)s`` is the default).
        library: names of the library arguments this option becomes; a
            library `ValueError` naming one is told as this flag.
        choices: the allowed values, or `None`.
        exclusive: options of one method with the same `exclusive` key are
            mutually exclusive flags.

    Example:

    >>> Option("--rho", arguments.non_negative_float, None, "weight of the penalty", library=("rho",))
    """

    def __init__(self, flag, type=None, default=None, help="", library=(), choices=None,
                 exclusive=None):
        if not flag.startswith("--"):
            raise ValueError(f"Argument `flag` must start with '--'. Received: flag={flag!r}")
        self.flag = flag
        self.dest = flag[2:].replace("-", "_")
        self.type = type
        self.default = default
        self.help = help
        self.library = tuple(library)
        self.choices = choices
        self.exclusive = exclusive

    def add_to(self, group):
        """Adds the flag to an `argparse` parser or group."""
        extra = {"type": self.type} if self.type is not None else {}
        if self.choices is not None:
            extra["choices"] = self.choices
        return group.add_argument(self.flag, default=self.default, help=self.help, **extra)

    def __repr__(self):
        return f"Option({self.flag!r}, default={self.default!r})"


#: `--pruning` name -> method class, in the order `register_method` met them.
METHODS = {}


def register_method(cls):
    """Class decorator: adds a `SparsityMethod` subclass to `METHODS` under `cls.name`.

    Raises:
        ValueError: for a class without a `name`, a name already taken, or a
            flag that another method (or `--sparsity`) already has.
    """
    if not (isinstance(cls, type) and issubclass(cls, SparsityMethod)):
        raise ValueError(f"`register_method` takes a subclass of `SparsityMethod`. Received: {cls!r}")
    if not isinstance(cls.name, str) or not cls.name:
        raise ValueError(f"A registered method needs a `name` (its `--pruning` value). "
                         f"Received: {cls.__name__}.name={cls.name!r}")
    if cls.name in METHODS:
        raise ValueError(f"Method name {cls.name!r} is taken by {METHODS[cls.name].__name__}. "
                         f"Received: {cls.__name__}")
    taken = {option.flag: other.name for other in METHODS.values() for option in other.options}
    taken[SPARSITY_FLAG] = "every method"
    clash = sorted(o.flag for o in cls.options if o.flag in taken)
    if clash:
        raise ValueError(f"Method {cls.name!r} declares flags {clash} that "
                         f"{sorted({taken[f] for f in clash})} already use. Received: {cls.__name__}")
    METHODS[cls.name] = cls
    return cls


def get_method(name):
    """The registered method class named `name` (a `--pruning` value).

    Raises:
        ValueError: naming the registered methods.
    """
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"Argument `name` must be one of {list(METHODS)}. Received: name={name!r}")
    return METHODS[name]


class SparsityMethod:
    """Base class of the compression methods; a subclass overrides what it needs.

    Args:
        sparsity: the target sparsity (`--sparsity`); ignored where `sparse`
            is false. Defaults to `0.9`.
        epochs: `kmm train --epochs`, or `None` (then `default_epochs`, or the
            method's stages).
        seed: the run's seed. Defaults to `0`.
        verbose: the Keras verbosity of the run (0, 1, 2). Defaults to `0`.
        **options: one keyword per `Option` of `options`; missing ones take
            their defaults.

    Attributes:
        epochs: the epochs of the `fit` call that `prepare`'s model trains.
        callbacks: what `fit` needs (after `wrap`).
        settings: `{option keyword: value}`, defaults filled in.

    Raises:
        OptionError: for an option outside its rule (told as its flag).
        TypeError: for a keyword that is not an option of the method.
    """

    #: The `--pruning` value.
    name = None
    #: One line for `kmm train --help`.
    summary = ""
    #: The title of the method's option group in `kmm train --help`.
    title = None
    #: The method's own options.
    options = ()
    #: Whether the method takes `--sparsity`.
    sparse = True
    #: The library arguments `--sparsity` stands for (in messages).
    sparsity_library = ("sparsity",)
    #: Other library argument names and the `kmm train` flags they are told as.
    library_flags = {}
    #: Epochs when `--epochs` is not given.
    default_epochs = DEFAULT_EPOCHS
    #: What `--epochs` means with this method, for `kmm train --help` (`None`: the usual).
    epochs_help = None

    def __init__(self, sparsity=0.9, epochs=None, seed=0, verbose=0, **options):
        known = {option.dest: option for option in self.options}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TypeError(f"{type(self).__name__} takes the options {sorted(known)}. "
                            f"Received unknown options: {unknown}")
        self.sparsity = sparsity
        self.seed = seed
        self.verbose = verbose
        self.settings = {dest: options.get(dest, option.default) for dest, option in known.items()}
        for dest, value in self.settings.items():
            setattr(self, dest, value)
        self.callbacks = []
        self.epochs = self.resolve_epochs(epochs)
        self.check_options()
        self.settings = {dest: getattr(self, dest) for dest in known}

    @classmethod
    def from_arguments(cls, args):
        """The method of the parsed `kmm train` arguments `args`."""
        return cls(sparsity=args.sparsity, epochs=args.epochs, seed=args.seed,
                   verbose=args.verbose, **{o.dest: getattr(args, o.dest) for o in cls.options})

    @classmethod
    def scaled(cls, epochs, steps_per_epoch, sparsity, seed, **options):
        """The method at its defaults for a benchmark run of `epochs` epochs in all.

        A method with stages or schedules of fixed length scales them to the
        run (`benchmarks/_runs.py` uses this). Defaults to the method with
        `epochs` as they are.
        """
        del steps_per_epoch
        return cls(sparsity=sparsity, epochs=epochs, seed=seed, **options)

    @classmethod
    def flags(cls):
        """`{library argument name: flag}`: how a library error of this method is told in flags."""
        names = {name: SPARSITY_FLAG for name in (cls.sparsity_library if cls.sparse else ())}
        names.update({name: o.flag for o in cls.options for name in o.library})
        names.update(cls.library_flags)
        return names

    @classmethod
    def group_title(cls):
        """The title of the method's option group in `kmm train --help`."""
        return cls.title or f"{cls.name} (--pruning {cls.name})"

    # ------------------------------------------------------------------ steps
    def resolve_epochs(self, epochs):
        """The epochs of `fit` given `--epochs` (`None` when not given)."""
        return self.default_epochs if epochs is None else epochs

    def stages(self):
        """`[(stage name, epochs)]`: the run's stages in order (the epochs of `fit` add up to `epochs`).

        A plot can mark where each stage ends. Defaults to one stage,
        ``[("train", epochs)]``.
        """
        return [("train", self.epochs)]

    def check_options(self):
        """Checks the options that need nothing of the run; may fill in defaults."""

    def check_run(self, run):
        """Checks what needs the run's size before anything is built.

        `run` has `steps_per_epoch` (from the number of examples and the batch
        size), `num_tasks` and `dataset` (its name); `kmm train` computes each
        only when it is read.
        """

    def run_name(self):
        """The method's part of the default run folder name, e.g. ``"dst-rigl-0.9"``."""
        return f"{self.name}-{self.sparsity:g}"

    def wrap(self, base, steps_per_epoch):
        """The network to build the multi-task model on (`base` is not changed); sets `callbacks`."""
        return base

    def describe(self):
        """The line `kmm train` prints about the method before training, or `None`."""
        return None

    def prepare(self, model, train_dataset):
        """The compiled model to `fit` (task-aware: after its warm-up). Defaults to `model`."""
        return model

    def finish(self, model, out, plots=None):
        """Prints the result, writes its files into the folder `out`; returns the report (JSON-able).

        `plots` is `kmm`'s plotting module, for the methods that draw a
        figure. Defaults to the `sparsity.json` report and the stripped model
        (`save_stripped`).
        """
        return save_stripped(model, out)

    def achieved_sparsity(self, model, base):
        """The sparsity the trained `model` reached (of the pruned kernels)."""
        from keras_minmax_mtl.sparsity.pruning import sparsity_report

        return sparsity_report(model)["overall"]["sparsity"]

    def extras(self, model):
        """What a benchmark result adds about the method's trained `model` (JSON-able)."""
        return {}

    # ---------------------------------------------------------------- helpers
    @classmethod
    def option(cls, dest):
        """The `Option` whose keyword is `dest`."""
        return next(o for o in cls.options if o.dest == dest)

    def refuse(self, dest, rule, shown=None):
        """Raises `OptionError` for option `dest` (or `sparsity`/`epochs`): the rule and the value."""
        flag = {"sparsity": SPARSITY_FLAG, "epochs": "--epochs"}.get(dest) or self.option(dest).flag
        value = getattr(self, dest) if shown is None else shown
        raise OptionError(flag, f"{rule}. Received {flag} {value}")


def steps_per_epoch(train_dataset):
    """The batches of `train_dataset` per epoch; a `ValueError` if unknown or infinite."""
    steps = int(train_dataset.cardinality())
    if steps <= 0:
        raise ValueError(f"`--pruning` needs a training dataset of known, finite length. "
                         f"Received cardinality {steps}.")
    return steps


def write_stripped(model, out):
    """Writes `model` without its pruning wrappers to ``out/model_stripped.keras``; returns the path.

    The file is compiled with `model`'s loss, metrics and optimizer settings,
    so it loads ready to `evaluate`.
    """
    from keras_minmax_mtl.sparsity.pruning import strip_pruning

    path = out / "model_stripped.keras"
    stripped = strip_pruning(model)
    stripped.compile_from_config(model.get_compile_config())
    stripped.save(path)
    return path


def save_stripped(model, out, extra_report=None):
    """Prints `model`'s sparsity per layer and overall; writes the stripped model and the report.

    Writes `out/model_stripped.keras` (`write_stripped`) and
    `out/sparsity.json`; returns `{"report", "stripped_model"}`.
    `extra_report(model)`, if given, prints more and returns what goes into the
    report under `"units"`.
    """
    from keras_minmax_mtl.sparsity.pruning import sparsity_report

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
    path = write_stripped(model, out)
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


# ===================================================================== methods
@register_method
class Dense(SparsityMethod):
    """No compression: the dense network (`--pruning none`)."""

    name = "none"
    summary = "dense"
    sparse = False

    def run_name(self):
        return None

    def finish(self, model, out, plots=None):
        return None

    def achieved_sparsity(self, model, base):
        return 0.0


@register_method
class ReweightedL1(SparsityMethod):
    """Reweighted ℓ1 (Guo et al. 2025): dense, reweighted-ℓ1, hard prune, masked retraining.

    Training lasts ``dense_epochs + reweighted_epochs + retrain_epochs`` (this
    replaces `--epochs`); the hard prune happens at the first step of the
    retraining stage. With ``sparsity_type="filter"``, `sparsity` is the
    fraction of output units (neurons, filters) removed from every pruned
    layer, and the report lists the removed units per layer
    (`keras_minmax_mtl.sparsity.reweighted.prune_reweighted_l1`). With
    ``sparsity_type="group"`` it is the fraction of the channel dependency
    groups of every family removed (residual stages, depthwise blocks and
    nested trunks prune through), ranked by `group_score` (``"worst"`` /
    ``"weighted"``: per-task Taylor importance on the first
    `GROUP_SCORE_BATCHES` training batches under the task weights).
    """

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
    FILTER_RHO = 1e-3
    #: ρ of `--sparsity-type group`: filter mode's (the group penalty is also about ρ times the
    #: number of pruned groups right after a refresh); not tuned separately.
    GROUP_RHO = 1e-3
    #: Training batches the per-task Taylor importance of `--group-score worst|weighted` sums.
    GROUP_SCORE_BATCHES = 8

    name = "reweighted_l1"
    summary = "dense, reweighted-l1, hard prune, masked retraining (Guo et al. 2025)"
    title = "reweighted-l1 pruning (--pruning reweighted_l1; its stages replace --epochs)"
    sparsity_library = ("sparsity", "target_sparsity")
    epochs_help = "with --pruning reweighted_l1 the stage options set the epochs instead"
    options = (
        Option("--dense-epochs", arguments.non_negative_int, 10,
               "epochs of dense training (default: %(default)s)",
               library=("dense_steps", "begin_step")),
        Option("--reweighted-epochs", arguments.non_negative_int, 5,
               "epochs of reweighted-l1 training (default: %(default)s)",
               library=("reweighted_steps", "prune_step")),
        Option("--retrain-epochs", arguments.positive_int, 5,
               "epochs of masked retraining after the prune (default: %(default)s)"),
        Option("--sparsity-type", None, "unstructured",
               "unstructured: single weights; filter: whole output units (Dense neurons, Conv2D "
               "filters), --sparsity is then the fraction of units removed per layer; group: "
               "whole channel dependency groups (through residual Add, depthwise, BatchNorm, "
               "padding, nested trunks), --sparsity is then the fraction of each family's "
               "groups removed (default: %(default)s)", library=("sparsity_type",),
               choices=["unstructured", "filter", "group"]),
        Option("--group-score", None, "norm",
               "with --sparsity-type group: rank the groups by their l2 norm, or by the "
               "per-task Taylor importance on the first training batches under the task "
               "weights, worst task or weighted sum (default: %(default)s)",
               library=("group_score",), choices=["norm", "worst", "weighted"]),
        Option("--rho", arguments.non_negative_float, None,
               f"weight of the reweighted penalty (default: {DEFAULT_RHO}, {FILTER_RHO} with "
               f"--sparsity-type filter or group)", library=("rho",)),
        Option("--epsilon", arguments.positive_float, 1e-6,
               "epsilon of the reweighted penalty (default: %(default)s)", library=("epsilon",)),
        Option("--allocation", None, None,
               "per-layer uniform sparsity or one global magnitude ranking (with "
               "--sparsity-type group: the same fraction of every family's channel groups, or "
               f"one ranking across the families; default: {DEFAULT_ALLOCATION}, uniform with "
               f"--sparsity-type filter or group; uniform, the only choice, with filter)",
               library=("allocation",), choices=["uniform", "global"]),
    )

    def resolve_epochs(self, epochs):
        if epochs is not None:
            self.refuse("epochs", "not allowed with --pruning reweighted_l1, whose --dense-epochs, "
                        "--reweighted-epochs and --retrain-epochs set the epochs", epochs)
        return self.dense_epochs + self.reweighted_epochs + self.retrain_epochs

    def stages(self):
        return [("dense", self.dense_epochs), ("reweighted", self.reweighted_epochs),
                ("retrain", self.retrain_epochs)]

    def check_options(self):
        filter_mode = self.sparsity_type == "filter"
        group_mode = self.sparsity_type == "group"
        kind = ("fraction of the units removed from each pruned layer" if filter_mode
                else "fraction of the channel groups removed from each family" if group_mode
                else "fraction of the prunable weights removed")
        if not 0.0 <= self.sparsity < 1.0:
            self.refuse("sparsity", f"must be in [0, 1) (the {kind})")
        if self.rho is None:
            self.rho = (self.FILTER_RHO if filter_mode else self.GROUP_RHO if group_mode
                        else self.DEFAULT_RHO)
        if not math.isfinite(self.rho) or not self.rho >= 0:
            self.refuse("rho", "must be >= 0")
        if self.allocation is None:
            self.allocation = "uniform" if filter_mode or group_mode else self.DEFAULT_ALLOCATION
        if filter_mode and self.allocation != "uniform":
            self.refuse("allocation", "--sparsity-type filter removes the same fraction of units "
                        "from every layer and needs --allocation uniform")
        if self.group_score != "norm" and not group_mode:
            self.refuse("group_score", f"ranks channel groups and needs --sparsity-type group "
                        f"(received --sparsity-type {self.sparsity_type})")

    @classmethod
    def scaled(cls, epochs, steps_per_epoch, sparsity, seed, **options):
        """10 + 5 + 5 epochs scaled to `epochs`: `epochs // 2`, `max(1, epochs // 4)`, the rest."""
        if epochs < 3:
            raise ValueError(f"Argument `epochs` must be >= 3 with {cls.name} (dense, reweighted "
                             f"and retraining stages). Received: epochs={epochs}")
        dense, reweighted = epochs // 2, max(1, epochs // 4)
        return cls(sparsity=sparsity, seed=seed, dense_epochs=dense, reweighted_epochs=reweighted,
                   retrain_epochs=epochs - dense - reweighted, **options)

    def run_name(self):
        kind = "" if self.sparsity_type == "unstructured" else f"-{self.sparsity_type}"
        return f"{self.name}{kind}-{self.sparsity:g}"

    def wrap(self, base, steps_per_epoch):
        from keras_minmax_mtl.sparsity.reweighted import prune_reweighted_l1

        self.steps_per_epoch = steps_per_epoch
        network, self.callbacks = prune_reweighted_l1(
            base, self.sparsity, dense_steps=self.dense_epochs * steps_per_epoch,
            reweighted_steps=self.reweighted_epochs * steps_per_epoch, rho=self.rho,
            epsilon=self.epsilon, allocation=self.allocation, sparsity_type=self.sparsity_type)
        return network

    def prepare(self, model, train_dataset):
        """With `--group-score worst|weighted`: the stages score the groups on the training batches."""
        if self.group_score == "norm":
            return model
        from keras_minmax_mtl.sparsity.reweighted import ReweightedL1Stages

        old = self.callbacks[-1]
        self.callbacks[-1] = ReweightedL1Stages(
            rho=old.rho, begin_step=old.begin_step, prune_step=old.prune_step,
            refresh_steps=old.refresh_steps, epsilon=old.epsilon, allocation=old.allocation,
            target_sparsity=old.target_sparsity, sparsity_type=old.sparsity_type,
            group_score=self.group_score,
            score_data=train_dataset.take(self.GROUP_SCORE_BATCHES))
        return model

    def describe(self):
        stages = self.callbacks[-1]
        group = ("of the channel groups" if self.allocation == "global"
                 else "of the channel groups of each family")
        what = {"filter": "of the units", "group": group}.get(self.sparsity_type,
                                                              "of the weights")
        refresh = (stages.begin_step, *stages.refresh_steps) \
            if stages.begin_step < stages.prune_step else ()
        return (f"pruning: reweighted_l1 ({self.sparsity_type}) removing {self.sparsity:.2%} "
                f"{what} ({self.allocation}"
                f"{', ranked by ' + self.group_score if self.sparsity_type == 'group' else ''}), "
                f"rho={self.rho}, epsilon={self.epsilon}; "
                f"{self.epochs} epochs = {self.dense_epochs} dense + {self.reweighted_epochs} "
                f"reweighted + {self.retrain_epochs} retraining ({self.steps_per_epoch} steps "
                f"each); w_ref refreshed at steps {refresh}, prune at step {stages.prune_step}")

    def finish(self, model, out, plots=None):
        """Prints the sparsity (and removed units) per layer and overall, saves the stripped model.

        Returns the report (with the `structured.structured_report` under
        `"units"` with `--sparsity-type filter`).
        """
        units = _print_units if self.sparsity_type in ("filter", "group") else None
        return {**save_stripped(model, out, units), "steps_per_epoch": self.steps_per_epoch}

    def extras(self, model):
        if self.sparsity_type not in ("filter", "group"):
            return {}
        from keras_minmax_mtl.sparsity.structured import structured_report

        return {"removed_units": structured_report(model)["overall"]["fraction"]}


@register_method
class DynamicSparse(SparsityMethod):
    """Dynamic sparse training of the hidden layers: prune and grow at constant sparsity.

    `dst_method="static"` sets the initial masks (same sparsity and
    densities) and never updates them: the static-mask baseline
    (`keras_minmax_mtl.sparsity.dst`).

    The defaults are RigL's (ERK, update every 100 steps, drop fraction 0.3,
    cosine decay to 75 % of the steps). On `multi_digits` at 90 % (20
    epochs) the worst task is 0.19 on test with Adam 1e-3 (`kmm train`'s
    default) and ERK, 0.52 with `--learning-rate 1e-2`, and 0.81 with
    `--learning-rate 1e-2 --density er` (ERK leaves the 3×3×16×32
    convolution 300 of its 4608 weights, ER 2006; docs/dst.md, "Why DST from
    scratch lagged").
    """

    name = "dst"
    summary = "dynamic sparse training of the hidden layers (prune and grow at constant sparsity)"
    title = "dynamic sparse training (--pruning dst)"
    library_flags = {"seed": "--seed"}
    options = (
        Option("--dst-method", None, "rigl",
               "rigl: grow by |gradient|; set: grow at random; paper: the authors' variant (on "
               "epochs); static: initial masks, never updated (default: %(default)s)",
               library=("method",), choices=["rigl", "set", "paper", "static"]),
        Option("--density", None, "erk", "layer densities (default: %(default)s)",
               library=("density",), choices=["erk", "er", "uniform"]),
        Option("--dst-update-every", arguments.positive_int, 100,
               "steps (epochs for paper) between mask updates (default: %(default)s)",
               library=("update_every",)),
        Option("--dst-end-step", arguments.positive_int, None,
               "last update step (default: 75%% of training)", library=("end_step",)),
        Option("--drop-fraction", arguments.drop_fraction, 0.3,
               "initial drop fraction, cosine-decayed (default: %(default)s)",
               library=("drop_fraction",)),
        Option("--grow-ratio", arguments.drop_fraction, None,
               "paper only: constant grow ratio (default: --drop-fraction)",
               library=("grow_ratio",)),
    )

    @classmethod
    def scaled(cls, epochs, steps_per_epoch, sparsity, seed, **options):
        """RigL's defaults, with at least one update in the first 75 % of the run's steps."""
        every = min(cls.option("dst_update_every").default,
                    max(1, (3 * epochs * steps_per_epoch) // 4))
        return cls(sparsity=sparsity, epochs=epochs, seed=seed,
                   **{"dst_update_every": every, **options})

    def check_run(self, run):
        if not 0.0 < self.sparsity < 1.0:
            self.refuse("sparsity", "must be in (0, 1) with --pruning dst (the fraction of the "
                        "hidden-layer weights that are zero)", f"{self.sparsity:g}")
        if self.dst_method == "static":
            return
        if self.grow_ratio is not None and self.dst_method != "paper":
            raise OptionError("--grow-ratio", f"only used by --dst-method paper. Received "
                              f"--grow-ratio {self.grow_ratio:g} with --dst-method "
                              f"{self.dst_method}")
        unit = "epoch" if self.dst_method == "paper" else "step"
        every, end_step = self.dst_update_every, self.dst_end_step
        if end_step is not None and end_step < every:
            self.refuse("dst_end_step", f"must be >= --dst-update-every ({every}): the first mask "
                        f"update is at {unit} {every}")
        total = self.epochs if unit == "epoch" else self.epochs * run.steps_per_epoch
        end = end_step if end_step is not None else int(0.75 * total)
        if end < every or every > total:
            self.refuse("dst_update_every", f"the first mask update, at {unit} {every}, comes "
                        f"after the last one (--dst-end-step, default 75% of the run's {total} "
                        f"{unit}s: {end}); give a smaller --dst-update-every or more --epochs")

    def run_name(self):
        return f"{self.name}-{self.dst_method}-{self.sparsity:g}"

    def wrap(self, base, steps_per_epoch):
        """The base model with its hidden layers wrapped (`prune_for_dst`); static masks set now."""
        import tensorflow_model_optimization as tfmot

        from keras_minmax_mtl.sparsity.dst import DynamicSparseTraining, initialize_masks, prune_for_dst

        self.callback = None
        if self.dst_method != "static":
            self.callback = DynamicSparseTraining(
                sparsity=self.sparsity, method=self.dst_method, density=self.density,
                update_every=self.dst_update_every, end_step=self.dst_end_step,
                drop_fraction=self.drop_fraction, grow_ratio=self.grow_ratio, seed=self.seed,
                verbose=1 if self.verbose else 0)
        wrapped = prune_for_dst(base)
        if self.dst_method == "static":
            initialize_masks(wrapped, self.sparsity, self.density, self.seed)
        self.callbacks = [tfmot.sparsity.keras.UpdatePruningStep(),
                          *([self.callback] if self.callback else [])]
        return wrapped

    def finish(self, model, out, plots=None):
        """Prints the mask turnover per update and the final sparsity per layer; returns both."""
        from keras_minmax_mtl.sparsity.pruning import sparsity_report

        history = self.callback.history if self.callback else []
        report = sparsity_report(model)
        if history:
            print("\nmask turnover per update (grown / active):")
            for record in history:
                layers = ", ".join(f"{name} {r['turnover']:.3f}"
                                   for name, r in record["layers"].items())
                unit = "epoch" if self.dst_method == "paper" else "step"
                print(f"  {unit} {record['step']:>6}: {layers}")
        print("\nfinal sparsity per layer:")
        for name, r in report["layers"].items():
            print(f"  {name:<28} {r['sparsity']:.4f}  ({r['size'] - r['zeros']} of {r['size']} kept)")
        print(f"  {'overall':<28} {report['overall']['sparsity']:.4f}")
        return {"method": self.dst_method, "sparsity": report, "updates": history}


@register_method
class TaskAware(SparsityMethod):
    """Task-aware dynamic model optimisation (Choi et al. 2023): warm up, group, re-allocate.

    Warms up the standard network with the run's weighting for
    `warmup_epochs`, measures and groups the tasks, builds the grouped network
    and trains it for `epochs`, re-allocating the non-zeros by task difficulty
    (`keras_minmax_mtl.sparsity.task_aware.TaskAwareRun`). `sparsity` sets the
    budget: as many non-zero weights in the pruned kernels as the standard
    network at that sparsity (as many as reweighted ℓ1 keeps).
    """

    name = "task_aware"
    summary = "warm-up, group similar tasks, re-allocate non-zeros by task difficulty (Choi et al. 2023)"
    title = "task-aware dynamic model optimisation (--pruning task_aware)"
    sparsity_library = ("sparsity", "budget")
    library_flags = {"seed": "--seed"}
    #: Epochs of the grouped stage when `--epochs` is not given (after the warm-up).
    default_epochs = 10
    epochs_help = "with --pruning task_aware the epochs of the grouped stage (default 10)"
    options = (
        Option("--warmup-epochs", arguments.non_negative_int, 10,
               "epochs of the standard network before grouping (default: %(default)s)",
               library=("warmup_epochs",)),
        Option("--similarity-coefficient", arguments.unit_interval, 0.5,
               "alpha in S = alpha*S_weight + (1-alpha)*S_loss, in [0, 1] (default: %(default)s)",
               library=("alpha",)),
        Option("--groups", arguments.positive_int, None,
               "number of task groups (default: by --similarity-threshold)",
               library=("num_groups",), exclusive="groups"),
        Option("--similarity-threshold", arguments.signed_unit_interval, 0.0,
               "merge groups while their average similarity is at least this, in [-1, 1] "
               "(default: %(default)s)", library=("similarity_threshold",), exclusive="groups"),
        Option("--allocate-every", arguments.positive_int, 100,
               "steps between re-allocations by difficulty (default: %(default)s)",
               library=("update_every",)),
        Option("--smoothing", arguments.positive_float, 0.5,
               "added to every group's difficulty before allocating (default: %(default)s)",
               library=("smoothing",)),
        Option("--initial-allocation", None, "global",
               "how the pruned kernels share the budget at the start: ERK or uniform densities, "
               "or one global magnitude ranking (default: %(default)s)",
               library=("density",), choices=["erk", "uniform", "global"]),
        Option("--measure-samples", arguments.positive_int, 256,
               "training samples of the held measurement batch (default: %(default)s)",
               library=("measure_samples",)),
    )

    @classmethod
    def scaled(cls, epochs, steps_per_epoch, sparsity, seed, **options):
        """Half the epochs warm up, the rest train grouped; at least four re-allocations."""
        if epochs < 2:
            raise ValueError(f"Argument `epochs` must be >= 2 with {cls.name} (warm-up and "
                             f"grouped stages). Received: epochs={epochs}")
        warmup = epochs // 2
        grouped_steps = (epochs - warmup) * steps_per_epoch
        return cls(sparsity=sparsity, epochs=epochs - warmup, seed=seed, warmup_epochs=warmup,
                   **{"allocate_every": min(cls.option("allocate_every").default,
                                            max(1, grouped_steps // 4)), **options})

    def stages(self):
        """The grouped stage only: the warm-up trains in `prepare`, before `fit`."""
        return [("grouped", self.epochs)]

    def check_options(self):
        if not 0.0 <= self.sparsity < 1.0:
            self.refuse("sparsity", "must be in [0, 1) (the fraction of the prunable weights "
                        "removed)", f"{self.sparsity:g}")

    def check_run(self, run):
        if self.groups is not None and self.groups > run.num_tasks:
            self.refuse("groups", f"must be in [1, {run.num_tasks}] (the number of tasks of "
                        f"{run.dataset})")
        if self.measure_samples < 2:
            self.refuse("measure_samples", "must be an integer >= 2")

    def wrap(self, base, steps_per_epoch):
        from keras_minmax_mtl.sparsity.task_aware import TaskAwareRun

        self.run = TaskAwareRun(
            sparsity=self.sparsity, alpha=self.similarity_coefficient, num_groups=self.groups,
            similarity_threshold=self.similarity_threshold, update_every=self.allocate_every,
            smoothing=self.smoothing, density=self.initial_allocation,
            measure_samples=self.measure_samples, seed=self.seed,
            verbose=1 if self.verbose else 0)
        return base

    def describe(self):
        return (f"pruning: task_aware at {self.sparsity:.2%} (equal non-zero count to "
                f"reweighted_l1), {self.warmup_epochs} warm-up + {self.epochs} grouped epochs, "
                f"alpha={self.similarity_coefficient}")

    def prepare(self, model, train_dataset):
        """Warms up (a copy of) the compiled `model`, groups the tasks; returns the grouped model."""
        grouped = self.run.prepare(model, train_dataset, self.warmup_epochs, verbose=self.verbose)
        self.callbacks = self.run.callbacks
        return grouped

    def finish(self, model, out, plots=None):
        """Prints groups and sparsity, saves the stripped model, the report and (with `plots`) its plot."""
        from keras_minmax_mtl.sparsity.pruning import nonzero_kernel_count, sparsity_report

        report = self.run.report()
        report["sparsity"] = sparsity_report(model)
        report["nonzero_kernel_weights"] = nonzero_kernel_count(model)
        print(f"\ntask groups: {report['groups']}; budget {report['budget']} non-zero weights, "
              f"sparsity of the pruned kernels {report['sparsity']['overall']['sparsity']:.4f}")
        last = report["history"][-1]
        print("final branch densities: " + ", ".join(f"{k} {v:.3f}"
                                                     for k, v in last["density"].items()))
        path = write_stripped(model, out)
        (out / "task_aware.json").write_text(json.dumps(report, indent=2))
        written = [path.name + " (without pruning wrappers)", "task_aware.json"]
        if plots is not None:
            plots.plot_task_aware(report, out / "task_aware.png",
                                  title=f"task-aware, sparsity {self.sparsity} (seed {self.seed})")
            written.append("task_aware.png")
        print("wrote " + ", ".join(written))
        return {"report": report, "stripped_model": str(path)}

    def extras(self, model):
        report = self.run.report()
        return {"task_aware": {"groups": report["groups"], "budget": report["budget"],
                               "final_density": report["history"][-1]["density"]}}


@register_method
class Hybrid(SparsityMethod):
    """Hybrid shared + per-task sparse compression (Xie et al. 2022): ``W_t = W_shared + S_t``.

    `sparsity` means: as many non-zero kernel weights in total (``W_shared``,
    every ``S_t``, the task layers) as the standard network with its trunk and
    task-hidden kernels at that sparsity and its output kernels dense
    (`hybrid.equal_nonzero_budget`); `task_share` of them, after the output
    kernels, go to the ``S_t``. The first `hybrid_dense_epochs` are dense,
    then the prune (one-shot, or gradual over `hybrid_prune_epochs`), then
    masked training (`keras_minmax_mtl.sparsity.hybrid`).
    """

    #: Chosen on the validation split of multi_digits at the equal-non-zero budget of 90 %
    #: (seed 0, min-max, 20 epochs, `benchmarks/hybrid.py`; worst-task, then mean validation
    #: accuracy): one-shot global allocation with task share 0, 0.1, 0.25, 0.5, 0.75 gave
    #: worst 0.382, 0.384, 0.348, 0.384, 0.294 (mean 0.713, 0.722, 0.709, 0.732, 0.695); uniform
    #: allocation gave 0.100-0.127; a gradual prune over 4 epochs with task share 0.1 / 0.5
    #: gave 0.365 / 0.349. See docs/results.md.
    DEFAULT_TASK_SHARE = 0.5
    DEFAULT_ALLOCATION = "global"
    DEFAULT_PRUNE_EPOCHS = 0

    name = "hybrid"
    summary = ("shared trunk + one sparse kernel per task, W_t = W_shared + S_t, at the "
               "equal-non-zero budget of --sparsity (Xie et al. 2022)")
    title = "hybrid shared + per-task sparse compression (--pruning hybrid)"
    sparsity_library = ("sparsity", "shared_sparsity")
    options = (
        Option("--task-share", arguments.share, DEFAULT_TASK_SHARE,
               "share of the non-zero budget (after the dense output layers) given to the "
               "per-task sparse kernels S_t (default: %(default)s)", library=("task_share",)),
        Option("--hybrid-allocation", None, DEFAULT_ALLOCATION,
               "per-kernel uniform density or one magnitude ranking per group "
               "(default: %(default)s)", library=("allocation",), choices=["uniform", "global"]),
        Option("--hybrid-dense-epochs", arguments.non_negative_int, None,
               "dense epochs before the prune (default: half of --epochs)",
               library=("prune_step",)),
        Option("--hybrid-prune-epochs", arguments.non_negative_int, DEFAULT_PRUNE_EPOCHS,
               "0: one-shot prune; N: gradual (cubic) over N epochs (default: %(default)s)",
               library=("end_step",)),
    )

    @staticmethod
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

    @property
    def dense_epochs(self):
        """`hybrid_dense_epochs`, or half of the epochs."""
        return self.epochs // 2 if self.hybrid_dense_epochs is None else self.hybrid_dense_epochs

    def stages(self):
        prune = self.hybrid_prune_epochs
        return [("dense", self.dense_epochs), *([("prune", prune)] if prune else []),
                ("masked", self.epochs - self.dense_epochs - prune)]

    def check_options(self):
        if not 0.0 <= self.sparsity < 1.0:
            self.refuse("sparsity", "must be in [0, 1) (the sparsity whose non-zero count the "
                        "hybrid network keeps)", f"{self.sparsity:g}")
        if self.dense_epochs + self.hybrid_prune_epochs >= self.epochs:
            raise OptionError("--hybrid-dense-epochs", f"--hybrid-dense-epochs + "
                              f"--hybrid-prune-epochs must be < --epochs (some masked training "
                              f"after the prune). Received {self.dense_epochs} + "
                              f"{self.hybrid_prune_epochs} with --epochs {self.epochs}")

    def wrap(self, base, steps_per_epoch):
        from keras_minmax_mtl.sparsity.hybrid import hybrid_at_sparsity

        self.steps_per_epoch = steps_per_epoch
        prune_step, end_step, frequency = self.prune_steps(
            self.dense_epochs, self.hybrid_prune_epochs, self.epochs, steps_per_epoch)
        network, self.callbacks, self.split = hybrid_at_sparsity(
            base, self.sparsity, self.task_share, prune_step, end_step=end_step,
            frequency=frequency, allocation=self.hybrid_allocation)
        self.budget = self.split["total_nonzeros"]
        self.prune_at = (prune_step, end_step)
        return network

    def describe(self):
        prune_step, end_step = self.prune_at
        return (f"pruning: hybrid at the equal-non-zero budget of sparsity {self.sparsity:.2%}: "
                f"{self.budget} non-zero kernel weights = {self.split['shared_nonzeros']} shared "
                f"(W_shared + task-hidden) + {self.split['task_budget']} per-task S_t "
                f"(task share {self.task_share}) + {self.split['dense_nonzeros']} dense outputs; "
                f"{self.hybrid_allocation} allocation; prune at step {prune_step}"
                + (f" to {end_step} (gradual)" if end_step else " (one-shot)"))

    def finish(self, model, out, plots=None):
        """Prints the sparsity and non-zero counts, saves the stripped model; returns the report."""
        from keras_minmax_mtl.sparsity.hybrid import kernel_nonzeros

        saved = save_stripped(model, out)
        counts = kernel_nonzeros(model)
        print(f"non-zero kernel weights: {counts['total']} (budget {self.budget}) = "
              f"{counts['shared']} shared + {counts['task']} per-task + {counts['dense']} dense")
        return {**saved, "nonzeros": counts, "budget": self.budget, "split": self.split,
                "steps_per_epoch": self.steps_per_epoch}

    def achieved_sparsity(self, model, base):
        """The equal-non-zero sparsity: of the standard `base` with as many non-zero kernel weights."""
        from keras_minmax_mtl.sparsity import hybrid

        return hybrid.equivalent_sparsity(base, hybrid.kernel_nonzeros(model)["total"])
