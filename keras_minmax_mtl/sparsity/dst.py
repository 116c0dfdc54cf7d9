r"""Dynamic sparse training (DST): prune-and-grow masks on tfmot's pruning wrappers.

The network trains sparse from the first step. `DynamicSparseTraining` sets
every wrapped kernel's mask at the target sparsity when training starts, then
every `update_every` steps until `end_step` it drops, in each layer, the
``n_drop = ⌊f(t) · n_active⌉`` active weights of smallest magnitude and grows
as many inactive ones (by largest ``|∂L/∂w|`` for RigL, at random for SET),
so each layer keeps exactly its number of active weights. The drop fraction
decays from `drop_fraction` to 0 at `end_step`:

.. math::

    f(t) = f_0 \cdot \tfrac12\left(1 + \cos\tfrac{\pi t}{T_{end}}\right)
    \quad(\text{cosine}),\qquad f(t) = f_0\quad(\text{constant}).

Grown weights start at exactly 0 and their optimizer slots (SGD momentum,
Adam's first and second moments, …) are reset to 0.

**Why the wrappers need `HoldMasks`.** A `PruneLowMagnitude` wrapper asks its
pruning schedule at every training step whether to recompute the mask by
weight magnitude. Any schedule that says yes (`ConstantSparsity`,
`PolynomialDecay`) would overwrite the masks this callback sets. `HoldMasks`
always says no, so the callback's masks are the only ones; the wrapper still
multiplies each kernel by its mask in every forward pass (``w ← w · mask``),
so masked weights stay zero in every forward pass. The callback refuses
wrappers with any other schedule. `prune_for_dst` wraps a model's layers with
it.

**Gradients for RigL** come from the training step itself: the callback asks
`MultiTaskModel.request_gradients` for the kernels' gradients, sets the
request's flag before an update step, and that step's backward pass stores
them (summed over replicas under `tf.distribute`). There is no second
forward pass (which would also advance tfmot's `pruning_step`), and steps
that are not update steps do no extra work. RigL and the paper's variant
therefore need a `MultiTaskModel` (any weighting: min-max or a baseline);
SET works on any `tf_keras` model.

**The authors' variant** (`method="paper"`, Guo et al. 2025) counts
`update_every` and `end_step` in *epochs*: at the first step of every
`update_every`-th epoch until `end_step` it drops ``⌊f(t)·n_active⌉`` weights
by magnitude (cosine-decayed) and grows ``⌊grow_ratio·n_active⌉`` by gradient,
a constant ratio. Since the growth does not decay with the drop, the density
of each layer *drifts upward* over training (as in the authors' code): the
final sparsity is below the target. This is our reading of their
description; their exact code was not available to us.

Example:

>>> import tensorflow_model_optimization as tfmot
>>> base = prune_for_dst(multi_digits_network(seed=0))
>>> model = MinMaxMultiTask(base, step_size=0.1, gamma=5.0)
>>> model.compile(...)
>>> dst = DynamicSparseTraining(sparsity=0.9, method="rigl", density="erk",
...                             update_every=100, end_step=3000)
>>> model.fit(train, epochs=20,
...           callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), dst])
>>> dst.history[-1]["turnover"]        # fraction of active weights regrown, per layer
"""
import math

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_schedule import (
    PruningSchedule,
)

from keras_minmax_mtl.core.checks import is_finite_real
from keras_minmax_mtl.core.backend import keras, register, require_functional
from keras_minmax_mtl.sparsity.densities import DISTRIBUTIONS, active_counts
from keras_minmax_mtl.sparsity.mask_updaters import MaskUpdater, RigLUpdater, SETUpdater
from keras_minmax_mtl.sparsity.maths import (
    DST_DECAYS,
    check_dst_schedule,
    drop_fraction_at,
    dst_end_step,
    random_mask,
)
from keras_minmax_mtl.core.multitask import MultiTaskModel
from keras_minmax_mtl.sparsity.policy import is_prunable
from keras_minmax_mtl.sparsity.pruning import (
    check_single_step_execution,
    clone_nested,
    pruning_wrappers,
    short_name,
    sparsity_report,
    walk_layers,
)

__all__ = ["check_wrappers", "wrapped_kernels", 
    "HoldMasks",
    "DynamicSparseTraining",
    "METHODS",
    "DECAYS",
    "drop_fraction_at",
    "prune_for_dst",
    "initialize_masks",
    "magnitude_masks",
    "optimizer_slots",
    "set_mask",
]

#: `method` names of `DynamicSparseTraining`.
METHODS = {
    "rigl": "drop by magnitude, grow by largest |gradient| (Evci et al. 2020)",
    "set": "drop by magnitude, grow at random (Mocanu et al. 2018)",
    "paper": "the authors' variant: magnitude drop, gradient grow at a constant ratio, on "
             "epochs; density drifts upward (Guo et al. 2025)",
}
#: `decay` names: how the drop fraction goes to 0 at `end_step`.
DECAYS = DST_DECAYS


@register
class HoldMasks(PruningSchedule):
    """A tfmot pruning schedule that never prunes: the masks keep whatever value they are given.

    Give it to `prune_low_magnitude` for layers whose masks are set by
    `DynamicSparseTraining` (or by `initialize_masks`): tfmot then never
    recomputes them by magnitude, while its wrapper still applies them
    (``w ← w · mask``) in every forward pass.

    Example:

    >>> tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=HoldMasks())
    """

    def __call__(self, step):
        return tf.constant(False), tf.constant(0.0, dtype=tf.float32)

    def get_config(self):
        # The registered name, so that `PruneLowMagnitude.from_config` finds the class.
        return {"class_name": keras.saving.get_registered_name(type(self)), "config": {}}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _output_layers(model):
    """The layers that produce `model`'s outputs, entering nested models that produce one."""
    found = []
    for tensor in model.outputs:
        layer = tensor._keras_history.layer
        while isinstance(layer, keras.Model) and getattr(layer, "outputs", None):
            index = tensor._keras_history.tensor_index
            tensor = tf.nest.flatten(layer.outputs)[index]
            layer = tensor._keras_history.layer
        found.append(layer)
    return found


def prune_for_dst(model, layer_names=None):
    """A copy of the Functional `model` whose chosen layers are wrapped for DST; `model` is unchanged.

    Enters nested Functional and Sequential models: the convolutions of a
    ``tf_keras.applications`` trunk called as a layer (``h = trunk(inputs)``)
    are wrapped inside a copy of the trunk. A layer shared by two branches is
    wrapped once (one mask) and stays shared.

    Args:
        model: a Functional `tf_keras` model.
        layer_names: names of the layers to wrap with
            `prune_low_magnitude(layer, pruning_schedule=HoldMasks())`, at
            any depth of nesting. Defaults to every prunable layer
            (`policy.is_prunable`: Dense, convolutions, tfmot
            `PrunableLayer`s, ...; not `DepthwiseConv2D`) except the layers
            that produce the model's outputs (the task heads' classifiers
            stay dense).

    Returns:
        The wrapped copy, with the weights of `model`.

    Raises:
        ValueError: for names that are not prunable layers, for a name that
            two different layers carry at different depths of nesting (it
            would be ambiguous), for a nested subclassed model, and when no
            layer is left to wrap.

    Example:

    >>> trunk = keras.applications.MobileNetV2(alpha=0.35, weights=None, include_top=False,
    ...                                        pooling="avg", input_shape=(32, 32, 3))
    >>> inputs = keras.Input((32, 32, 3)); h = trunk(inputs)
    >>> base = keras.Model(inputs, [keras.layers.Dense(10, name="a")(h),
    ...                             keras.layers.Dense(1, name="b")(h)])
    >>> len(pruning_wrappers(prune_for_dst(base)))   # every Conv2D of the trunk
    35
    """
    require_functional(model, "model")
    outputs = {id(layer) for layer in _output_layers(model)}
    by_name = {}
    for layer in walk_layers(model):
        if is_prunable(layer):
            by_name.setdefault(layer.name, []).append(layer)
    prunable = list(by_name)
    if layer_names is None:
        chosen = {id(layer) for layers in by_name.values() for layer in layers
                  if id(layer) not in outputs}
        if not chosen:
            raise ValueError(
                f"Model {model.name!r} has no prunable layer (Dense, convolution) outside its "
                f"output layers for dynamic sparse training to wrap. Prunable layers found: "
                f"{prunable}. Pass `layer_names` to wrap output layers too.")
    else:
        if isinstance(layer_names, str):
            layer_names = [layer_names]
        unknown = sorted(set(layer_names) - set(prunable))
        if unknown:
            raise ValueError(f"Argument `layer_names` must name prunable layers of the model "
                             f"{prunable}. Received unknown or unprunable names: {unknown}")
        ambiguous = sorted(name for name in set(layer_names) if len(by_name[name]) > 1)
        if ambiguous:
            raise ValueError(
                f"Argument `layer_names` names layers {ambiguous} that several layers of the "
                f"model carry (a nested model's layer and another with the same name). Rename "
                f"them so that each name is unique. Received: layer_names={list(layer_names)!r}")
        chosen = {id(by_name[name][0]) for name in layer_names}

    copies = []

    def wrap(layer):
        # A copy of every layer (the user's model keeps its own), wrapped if chosen; its
        # weights are copied once the clone is built.
        if isinstance(layer, keras.layers.InputLayer):
            return layer.__class__.from_config(layer.get_config())
        copy = layer.__class__.from_config(layer.get_config())
        copies.append((layer, copy))
        if id(layer) in chosen:
            return tfmot.sparsity.keras.prune_low_magnitude(copy, pruning_schedule=HoldMasks())
        return copy

    wrapped = clone_nested(model, wrap)
    for layer, copy in copies:
        copy.set_weights(layer.get_weights())
    return wrapped


def wrapped_kernels(model):
    """`[(wrapper, weight, mask)]` for every pruned weight of `model`, in layer order."""
    return [(w, weight, mask) for w in pruning_wrappers(model) for weight, mask, _ in w.pruning_vars]


def check_wrappers(model):
    """Raises a `ValueError` unless `model` holds tfmot pruning wrappers (see `prune_for_dst`)."""
    wrappers = pruning_wrappers(model)
    if not wrappers:
        raise ValueError(
            "The model has no tfmot pruning wrappers, so dynamic sparse training has no masks to "
            "update. Wrap the layers to sparsify first: `base = prune_for_dst(base_model)` (or "
            "`tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=HoldMasks())`), "
            "then build the multi-task model on it.")
    other = sorted(w.layer.name for w in wrappers if not isinstance(w.pruning_schedule, HoldMasks))
    if other:
        raise ValueError(
            f"The pruning wrappers of layers {other} use a schedule other than `HoldMasks`; "
            "tfmot would overwrite the masks set by dynamic sparse training with magnitude masks "
            "at its pruning steps. Wrap them with "
            "`prune_low_magnitude(layer, pruning_schedule=HoldMasks())` (see `prune_for_dst`).")
    return wrappers


def initialize_masks(model, sparsity, density="erk", seed=0):
    """Sets random masks at `sparsity` on every wrapped kernel of `model` and zeroes the masked weights.

    Layer densities follow `density` (`"uniform"`, `"erk"` or `"er"`, see
    `keras_minmax_mtl.sparsity.densities`), with exactly ``round((1 − sparsity)·N)``
    active weights in total. Layer ``l`` draws its positions with
    `numpy.random.default_rng((seed, l))`. The wrappers must use `HoldMasks`.
    A static-mask baseline is this function followed by training without
    `DynamicSparseTraining`.

    Returns:
        The list of active counts, one per wrapped kernel.
    """
    check_wrappers(model)
    kernels = wrapped_kernels(model)
    counts = active_counts([tuple(weight.shape) for _, weight, _ in kernels], sparsity, density)
    for index, ((_, weight, mask), count) in enumerate(zip(kernels, counts)):
        rng = np.random.default_rng((int(seed), index))
        new_mask = random_mask(tuple(weight.shape), count, rng, mask.dtype.as_numpy_dtype)
        mask.assign(new_mask)
        weight.assign(weight.numpy() * new_mask)
    return counts


def magnitude_masks(model, sparsity, density="erk"):
    """Sets masks at `sparsity` that keep each wrapped kernel's largest weights; zeroes the rest.

    The warm start of dynamic sparse training from trained dense weights
    (`keras_minmax_mtl.sparsity.budget`): layer ``l`` keeps its ``n_l`` weights
    of largest ``|w|`` (ties broken by position), where the counts ``n_l``
    follow `density` exactly as in `initialize_masks`. `DynamicSparseTraining`
    then starts from these masks (it draws random ones only when every mask is
    all ones). The wrappers must use `HoldMasks`.

    Example:

    >>> wrapped = prune_for_dst(trained_base)
    >>> magnitude_masks(wrapped, 0.9)       # then fit with DynamicSparseTraining(sparsity=0.9)

    Returns:
        The list of active counts, one per wrapped kernel.
    """
    check_wrappers(model)
    kernels = wrapped_kernels(model)
    counts = active_counts([tuple(weight.shape) for _, weight, _ in kernels], sparsity, density)
    for (_, weight, mask), count in zip(kernels, counts):
        values = weight.numpy()
        order = np.argsort(-np.abs(values).ravel(), kind="stable")
        flat = np.zeros(values.size, dtype=mask.dtype.as_numpy_dtype)
        flat[order[:count]] = 1
        new_mask = flat.reshape(values.shape)
        mask.assign(new_mask)
        weight.assign(values * new_mask)
    return counts


def optimizer_slots(optimizer, variable):
    """The optimizer variables that hold per-element state of `variable` (momentum, Adam's m and v…).

    Works for `tf_keras` optimizers (named ``{optimizer}/{slot}/{variable name}``
    by `add_variable_from_reference`) and legacy ones (`get_slot`). Returns an
    empty list before the optimizer has created its slots.
    """
    if hasattr(optimizer, "get_slot_names"):  # legacy optimizers
        return [optimizer.get_slot(variable, name) for name in optimizer.get_slot_names()
                if _has_slot(optimizer, variable, name)]
    target = variable._shared_name
    scope = f"{optimizer.name}/"
    slots = []
    for slot in optimizer.variables:
        name = slot.name.split(":")[0]
        if name.startswith(scope):  # the optimizer's name scope, e.g. "Adam/m/dense/kernel"
            name = name[len(scope):]
        if "/" in name and name.split("/", 1)[1] == target and slot.shape == variable.shape \
                and slot is not variable:
            slots.append(slot)
    return slots


def _has_slot(optimizer, variable, name):
    try:
        optimizer.get_slot(variable, name)
        return True
    except (KeyError, ValueError):
        return False


def set_mask(weight, mask, new, optimizer=None):
    """Sets a wrapped kernel's mask to `new`; grown weights and their optimizer slots start at 0.

    ``weight ← weight · new`` (dropped weights become 0), except that every
    weight switched on by `new` (inactive before) is set to exactly 0, and so
    are its entries in the optimizer's slots (momentum, Adam's moments…).

    Args:
        weight: the kernel variable.
        mask: its mask variable (from the wrapper's `pruning_vars`).
        new: the new 0/1 mask, a NumPy array of the mask's shape.
        optimizer: the optimizer whose slots to reset, or `None`. Defaults to `None`.

    Returns:
        The boolean array of the grown positions.
    """
    old = mask.numpy()
    value = weight.numpy()
    grown = (new > 0) & ~(old > 0)
    weight.assign(np.where(grown, 0, value * new).astype(value.dtype))
    if optimizer is not None:
        for slot in optimizer_slots(optimizer, weight):
            slot.assign(np.where(grown, 0, slot.numpy()).astype(value.dtype))
    mask.assign(new)
    return grown


@register
class DynamicSparseTraining(keras.callbacks.Callback):
    """Prune-and-grow masks on a model's `HoldMasks` pruning wrappers (RigL, SET, the authors' variant).

    Sets the masks at `sparsity` when training starts (if every mask is still
    all ones, i.e. fresh wrappers; a second `fit` continues from the current
    masks), then updates them at the end of every update step. Use it with
    `tfmot.sparsity.keras.UpdatePruningStep()`, which tfmot's wrappers need.

    Args:
        sparsity: target fraction of zero weights over all wrapped kernels, in
            `(0, 1)`. Defaults to `0.9`.
        method: `"rigl"`, `"set"` or `"paper"` (see `METHODS`), or a
            `MaskUpdater` instance (e.g. `RigLUpdater()` or your own
            subclass), which then drops and grows ``n_drop`` weights at every
            update counted in steps. Defaults to `"rigl"`.
        density: layer densities, `"erk"`, `"er"` or `"uniform"` (see
            `keras_minmax_mtl.sparsity.densities`). Defaults to `"erk"`.
        update_every: steps between mask updates (epochs for `"paper"`), `> 0`.
            Defaults to `100`.
        end_step: last step (epoch for `"paper"`) at which masks change; at
            least `update_every`. Defaults to `None`: 75 % of the training
            steps (epochs) of the `fit` call, as in RigL.
        drop_fraction: drop fraction at step 0, in `(0, 1]`. Defaults to `0.3`.
        decay: `"cosine"` or `"constant"`. Defaults to `"cosine"`.
        grow_ratio: for `"paper"` only: the constant fraction of a layer's
            active weights grown at every update, in `(0, 1]`. Defaults to
            `None`: the same as `drop_fraction`.
        seed: seed of the initial masks, SET's growth and the tie breaks; the
            draws of update ``t``, layer ``l`` use
            `numpy.random.default_rng((seed, t, l))`, so reruns give the same
            masks. Defaults to `0`.
        verbose: print the turnover at each update. Defaults to `0`.

    Attributes:
        history: one dict per update: `step`, `drop_fraction`, and per layer
            `active` (count after the update), `grown` (count newly active)
            and `turnover` (`grown / active`).
        initial_counts: the active count of each wrapped kernel.
    """

    def __init__(self, sparsity=0.9, method="rigl", density="erk", update_every=100,
                 end_step=None, drop_fraction=0.3, decay="cosine", grow_ratio=None, seed=0,
                 verbose=0):
        super().__init__()
        # The batch hooks read no logs: Keras need not convert them to NumPy
        # (a device sync) after every step because of this callback.
        self._supports_tf_logs = True
        if not is_finite_real(sparsity) or not 0 < sparsity < 1:
            raise ValueError(f"Argument `sparsity` must be in (0, 1). Received: sparsity={sparsity!r}")
        if isinstance(method, type) and issubclass(method, MaskUpdater):
            raise ValueError(f"Argument `method` must be a `MaskUpdater` instance, not the class: "
                             f"pass `{method.__name__}()`. Received: method={method.__name__}")
        if not isinstance(method, MaskUpdater) and not (isinstance(method, str)
                                                        and method in METHODS):
            raise ValueError(f"Argument `method` must be one of {list(METHODS)} or a "
                             f"`MaskUpdater` instance (e.g. `RigLUpdater()`). "
                             f"Received: method={method!r}")
        if density not in DISTRIBUTIONS:
            raise ValueError(f"Argument `density` must be one of {list(DISTRIBUTIONS)}. "
                             f"Received: density={density!r}")
        update_every, end_step, drop_fraction = check_dst_schedule(update_every, end_step,
                                                                   drop_fraction, decay)
        if grow_ratio is not None:
            if method != "paper":
                raise ValueError(f"Argument `grow_ratio` is only used by method='paper'. "
                                 f"Received: grow_ratio={grow_ratio!r} with method={method!r}")
            if not is_finite_real(grow_ratio) or not 0 < grow_ratio <= 1:
                raise ValueError(f"Argument `grow_ratio` must be in (0, 1]. "
                                 f"Received: grow_ratio={grow_ratio!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"Argument `seed` must be an integer >= 0. Received: seed={seed!r}")
        self.sparsity = float(sparsity)
        self.method = method
        self.density = density
        self.update_every = update_every
        self.end_step = end_step
        self.drop_fraction = drop_fraction
        self.decay = decay
        self.grow_ratio = None if grow_ratio is None else float(grow_ratio)
        self.seed = seed
        self.verbose = verbose
        if isinstance(method, MaskUpdater):
            self.updater = method
        else:
            self.updater = SETUpdater() if method == "set" else RigLUpdater()
        self.history = []
        self.initial_counts = None
        self._request = None

    def get_config(self):
        """Every constructor argument; a `MaskUpdater` `method` as its Keras serialization.

        Raises:
            ValueError: for an updater whose class is not registered for Keras
                serialization (it could not be rebuilt from the config).
        """
        method = self.method
        if isinstance(method, MaskUpdater):
            kind = type(method)
            if keras.saving.get_registered_object(keras.saving.get_registered_name(kind)) is not kind:
                raise ValueError(
                    f"Argument `method` of this `DynamicSparseTraining` is a {kind.__name__}, "
                    f"whose class is not registered for Keras serialization, so the config could "
                    f"not rebuild it. Register the class with "
                    f"`@keras.saving.register_keras_serializable()` (and give it `get_config`), "
                    f"or pass a name of {list(METHODS)}. Received: method={method!r}")
            method = keras.saving.serialize_keras_object(method)
        return {"sparsity": self.sparsity, "method": method, "density": self.density,
                "update_every": self.update_every, "end_step": self.end_step,
                "drop_fraction": self.drop_fraction, "decay": self.decay,
                "grow_ratio": self.grow_ratio, "seed": self.seed, "verbose": self.verbose}

    @classmethod
    def from_config(cls, config):
        """The callback of `get_config()` (the updater rebuilt from its serialization)."""
        config = dict(config)
        if isinstance(config.get("method"), dict):
            config["method"] = keras.saving.deserialize_keras_object(config["method"])
        return cls(**config)

    # ----------------------------------------------------------------- timing
    @property
    def counts_epochs(self):
        """Whether `update_every` and `end_step` count epochs (method `"paper"`)."""
        return self.method == "paper"

    def _end(self):
        params = self.params or {}
        epochs, steps = params.get("epochs"), params.get("steps")
        if self.counts_epochs:
            total = epochs
        else:
            total = None if not epochs or not steps else epochs * steps
        return dst_end_step(self.end_step, total, self.update_every,
                            "epochs" if self.counts_epochs else "steps")

    def _is_update(self, t):
        return t > 0 and t % self.update_every == 0 and t <= self._end_value

    # -------------------------------------------------------------- callbacks
    def on_train_begin(self, logs=None):
        # Checks only: nothing of the model's state is read or changed here. The
        # masks and the step count are read at the first batch, after every
        # callback's `on_train_begin` has run, so that a
        # `keras.callbacks.BackupAndRestore` listed after this callback has
        # already restored the weights, the masks and `optimizer.iterations`.
        check_single_step_execution(self.model, type(self).__name__)
        check_wrappers(self.model)
        self._end_value = self._end()
        self._kernels = wrapped_kernels(self.model)
        if self.updater.needs_gradients:
            if not isinstance(self.model, MultiTaskModel):
                raise ValueError(
                    f"method={self.method!r} grows by gradient, which it reads from the training "
                    f"step of a `MultiTaskModel` (`request_gradients`). Received a model of class "
                    f"{type(self.model).__name__}: wrap it as `MultiTaskModel(base_model)` (one "
                    f"output is fine), or use method='set'.")
            self._request = self.model.request_gradients([w for _, w, _ in self._kernels])
        self._started = False
        self._epoch = 0
        self._pending = None

    def _start(self):
        """Reads (or sets) the masks and the step count: at the first batch of `fit`."""
        if all(np.all(mask.numpy() == 1) for _, _, mask in self._kernels):
            self.initial_counts = initialize_masks(self.model, self.sparsity, self.density, self.seed)
        else:
            self.initial_counts = [int(mask.numpy().sum()) for _, _, mask in self._kernels]
        self._step = int(self.model.optimizer.iterations.numpy()) if self.model.optimizer else 0
        self._started = True

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if not self._started:
            self._start()
        step = self._step + 1  # the step this batch is (1-based)
        if self.counts_epochs:
            # The epoch's first batch (index 0: a mid-epoch resume starts later).
            due = batch == 0 and self._is_update(self._epoch)
            t = self._epoch
        else:
            due = self._is_update(step)
            t = step
        self._pending = t if due else None
        if due and self._request is not None:
            self._request.requested.assign(True)

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._pending is None:
            return
        if self._request is not None:
            self._request.requested.assign(False)
        self._update(self._pending)
        self._pending = None

    def on_train_end(self, logs=None):
        if self._request is not None:
            self.model.release_gradients(self._request)
            self._request = None

    # ----------------------------------------------------------------- update
    def _update(self, t):
        fraction = drop_fraction_at(t, self.drop_fraction, self._end_value, self.decay)
        record = {"step": t, "drop_fraction": fraction, "layers": {}}
        optimizer = self.model.optimizer
        for index, (wrapper, weight, mask) in enumerate(self._kernels):
            old = mask.numpy()
            value = weight.numpy()
            n_active = int(old.sum())
            n_drop = int(round(fraction * n_active))
            if self.method == "paper":
                ratio = self.drop_fraction if self.grow_ratio is None else self.grow_ratio
                n_grow = int(round(ratio * n_active))
            else:
                n_grow = n_drop
            gradient = (self._request.gradients[index].numpy()
                        if self.updater.needs_gradients else None)
            rng = np.random.default_rng((self.seed, t, index))
            new = self.updater.update(value, old, gradient, n_drop, n_grow, rng)
            grown = set_mask(weight, mask, new, optimizer)
            active = int(new.sum())
            record["layers"][f"{wrapper.layer.name}/{short_name(weight)}"] = {
                "active": active, "grown": int(grown.sum()),
                "turnover": float(grown.sum()) / active if active else 0.0}
        self.history.append(record)
        if self.verbose:
            turnover = ", ".join(f"{name} {r['turnover']:.3f}" for name, r in record["layers"].items())
            unit = "epoch" if self.counts_epochs else "step"
            print(f"\nDST update at {unit} {t} (drop fraction {fraction:.3f}): turnover {turnover}")

    def report(self):
        """The sparsity of the model now (`pruning.sparsity_report`) and the update history."""
        return {"sparsity": sparsity_report(self.model), "updates": self.history}
