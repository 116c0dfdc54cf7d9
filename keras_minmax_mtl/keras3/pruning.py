r"""Magnitude pruning for Keras 3 models without tfmot: masked kernels, the mask callback, `strip`.

tfmot prunes only tf_keras models; this module does it for `import keras`
models on any back-end. A `PruneMasked` wrapper holds a 0/1 `mask`, a
non-trainable variable of the kernel's shape, and computes the wrapped layer's
own `call` with the kernel replaced by

.. math::

    W_{\text{eff}} = W \odot M

(`keras.ops.multiply`, substituted through `Layer.stateless_call`), so the
masked entries are zero in every forward pass on every back-end, receive zero
gradient, and the mask is saved and loaded with the model (`.keras`).

- `prune_model(model)`: a copy of a Functional model whose hidden Dense,
  Conv1D/2D/3D and DepthwiseConv1D/2D layers are wrapped (the output layers
  stay dense, as on the tf_keras path); `model` is not changed;
- `UpdateMasks(schedule)`: a callback that, before training step ``k``
  (1-based, tfmot's count), asks ``schedule(k) → (should_prune, s)`` and if so
  sets every mask to keep the ``round(n·(1 − s))`` largest ``|W ⊙ M|``
  (`keras_minmax_mtl.sparsity.maths.magnitude_mask`, the maths the tf_keras
  path shares) and zeroes the pruned weights;
- `ReweightedL1Stages(schedule)`: the three stages of reweighted ℓ1 (dense →
  penalty ``ρ Σ_j |w_j|/(|w^ref_j| + ε)`` → prune and masked retraining) on
  wrappers made with ``prune_model(model, reweighted_l1=True)``;
- `sparsity_report`, `masked_layers`, `set_mask`, `strip`.

The callbacks work through plain `model.fit`: on TensorFlow the train function
reads the variables they assign; on JAX, whose `fit` keeps the training state
outside the variables, they call the trainer's `jax_state_sync()` first, which
writes the state to the variables and makes the next step read them back
(the one back-end-specific hook here).

Example:

>>> pruned = prune_model(base)
>>> model = MinMaxMultiTask(pruned)
>>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
>>> model.fit(x, y, epochs=5, callbacks=[UpdateMasks(PolynomialDecay(0.0, 0.9, 0, 500, frequency=50))])
>>> sparsity_report(model)["overall"]["sparsity"]       # 0.9 (to rounding)
>>> plain = strip(model)       # a MinMaxMultiTask whose base model has no wrappers
"""
import numpy as np

from keras_minmax_mtl.keras3.backend import keras, register, require_functional
from keras_minmax_mtl.keras3.multitask import MultiTaskModel
from keras_minmax_mtl.keras3.schedules import PruningSchedule, ReweightedL1Schedule
from keras_minmax_mtl.sparsity.maths import (
    check_epsilon,
    check_rho,
    magnitude_mask,
    reweighted_factors,
)

__all__ = ["PRUNABLE_LAYERS", "PruneMasked", "prune_model", "masked_layers", "set_mask",
           "optimizer_slots", "sparsity_report", "strip", "sync_state", "UpdateMasks",
           "ReweightedL1Stages", "check_single_step"]

ops = keras.ops

#: The layer classes whose kernel `PruneMasked` masks.
PRUNABLE_LAYERS = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D,
                   keras.layers.Conv3D, keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)


def _check_prunable(layer):
    if not isinstance(layer, PRUNABLE_LAYERS):
        raise ValueError(
            f"Argument `layer` must be one of {[c.__name__ for c in PRUNABLE_LAYERS]} for "
            f"`PruneMasked`. Received: layer {getattr(layer, 'name', layer)!r} of class "
            f"{type(layer).__name__}")
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        raise ValueError(
            f"Argument `layer` must be a plain float layer: layer {layer.name!r} has LoRA or "
            f"quantization enabled, whose kernel is not a single variable to mask. Prune first, "
            f"`strip`, then quantize.")


@register
class PruneMasked(keras.layers.Wrapper):
    r"""Wraps a Dense / convolution layer so that it computes with ``W ⊙ M``.

    The wrapper adds the non-trainable variable `mask` (ones at first) and,
    with `reweighted_l1=True`, the non-trainable `factors` (``1/(|w^ref| + ε)``)
    and `coefficient` (``c``) of the reweighted-ℓ1 penalty, which it then adds
    with `add_loss` at every call:

    .. math::

        P = c \sum_j |(W \odot M)_j| \cdot \text{factor}_j

    (``c = 0`` outside the reweighted stage). The wrapped layer's own `call`
    runs with its kernel replaced by ``W ⊙ M`` and its other variables as
    they are (`Layer.stateless_call`), so the output is exactly the layer's
    with a masked kernel.

    Args:
        layer: a `Dense`, `Conv1D/2D/3D` or `DepthwiseConv1D/2D` layer
            (`PRUNABLE_LAYERS`), without LoRA or quantization.
        reweighted_l1: whether to hold and add the reweighted-ℓ1 penalty.
            Defaults to `False`.
        **kwargs: `keras.layers.Layer` arguments (e.g. `name`; defaults to
            ``"masked_" + layer.name``).

    Example:

    >>> layer = PruneMasked(keras.layers.Dense(8))
    >>> y = layer(x); layer.mask.assign(new_mask)   # then y == x @ (W * new_mask) + b
    """

    def __init__(self, layer, reweighted_l1=False, **kwargs):
        _check_prunable(layer)
        if not isinstance(reweighted_l1, bool):
            raise ValueError(f"Argument `reweighted_l1` must be True or False. "
                             f"Received: reweighted_l1={reweighted_l1!r}")
        kwargs.setdefault("name", f"masked_{layer.name}")
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(layer, **kwargs)
        self.reweighted_l1 = reweighted_l1

    def build(self, input_shape=None):
        super().build(input_shape)
        kernel = self.layer.kernel
        self.mask = self.add_weight(name="mask", shape=kernel.shape, initializer="ones",
                                    trainable=False, dtype=kernel.dtype)
        if self.reweighted_l1:
            self.factors = self.add_weight(name="reweighted_factors", shape=kernel.shape,
                                           initializer="ones", trainable=False, dtype=kernel.dtype)
            self.coefficient = self.add_weight(name="reweighted_coefficient", shape=(),
                                               initializer="zeros", trainable=False,
                                               dtype=kernel.dtype)
        self.built = True

    @property
    def kernel(self):
        """The wrapped layer's kernel variable ``W`` (unmasked)."""
        return self.layer.kernel

    def masked_kernel(self):
        """``W ⊙ M``, the kernel the layer computes with (a tensor)."""
        return ops.multiply(self.layer.kernel, self.mask)

    def call(self, inputs, training=None):
        kernel = self.layer.kernel
        masked = self.masked_kernel()
        # The variables' current values (in a stateless train step, the step's), with the
        # kernel replaced by its masked value.
        trainable = [masked if v is kernel else v.value for v in self.layer.trainable_variables]
        frozen = [masked if v is kernel else v.value for v in self.layer.non_trainable_variables]
        outputs, _ = self.layer.stateless_call(trainable, frozen, inputs)
        if self.reweighted_l1:
            self.add_loss(self.coefficient * ops.sum(ops.abs(masked) * self.factors))
        return outputs

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config["reweighted_l1"] = self.reweighted_l1
        return config


def _flat_outputs(model):
    return keras.tree.flatten(model.outputs)


def _output_layers(model):
    """The layers whose output tensor is one of `model`'s outputs."""
    outputs = _flat_outputs(model)
    found = set()
    for layer in model.layers:
        try:
            tensor = layer.output
        except (AttributeError, ValueError):  # a layer called several times
            continue
        if any(tensor is out for out in keras.tree.flatten(outputs)):
            found.add(layer.name)
    return found


def prune_model(model, layer_names=None, reweighted_l1=False):
    """A copy of the Functional Keras 3 `model` with its chosen layers in `PruneMasked`; `model` is unchanged.

    Args:
        model: a built Functional Keras 3 model (no nested models).
        layer_names: names of the layers to wrap. Defaults to every layer of
            `PRUNABLE_LAYERS` except those that produce the model's outputs
            (the task heads' classifiers stay dense).
        reweighted_l1: give each wrapper the reweighted-ℓ1 penalty (for
            `ReweightedL1Stages`). Defaults to `False`.

    Returns:
        The copy, with `model`'s weights and all-ones masks.

    Raises:
        ValueError: for a nested model, unknown or unprunable names, or no layer to wrap.
    """
    require_functional(model, "model")
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    if nested:
        raise ValueError(
            f"Argument `model` holds nested models {nested}; the Keras 3 pruning does not enter "
            f"them yet. Build the model flat (call the trunk's layers on the inputs).")
    prunable = [layer.name for layer in model.layers if isinstance(layer, PRUNABLE_LAYERS)]
    if layer_names is None:
        outputs = _output_layers(model)
        chosen = {name for name in prunable if name not in outputs}
        if not chosen:
            raise ValueError(
                f"Model {model.name!r} has no prunable layer outside its output layers. "
                f"Prunable layers: {prunable}. Pass `layer_names` to wrap output layers too.")
    else:
        layer_names = [layer_names] if isinstance(layer_names, str) else list(layer_names)
        unknown = sorted(set(layer_names) - set(prunable))
        if unknown:
            raise ValueError(f"Argument `layer_names` must name prunable layers of the model "
                             f"{prunable}. Received unknown or unprunable names: {unknown}")
        chosen = set(layer_names)
    copies = []

    def clone(layer):
        copy = layer.__class__.from_config(layer.get_config())
        copies.append((layer, copy))
        if layer.name in chosen:
            return PruneMasked(copy, reweighted_l1=reweighted_l1)
        return copy

    wrapped = keras.models.clone_model(model, clone_function=clone)
    for layer, copy in copies:
        copy.set_weights(layer.get_weights())
    return wrapped


def _layers(model):
    if isinstance(model, MultiTaskModel):
        model = model.base_model
    return model.layers


def masked_layers(model):
    """The `PruneMasked` wrappers of a Functional model or of a `MultiTaskModel`'s base model."""
    return [layer for layer in _layers(model) if isinstance(layer, PruneMasked)]


def _require_wrappers(model, owner):
    wrappers = masked_layers(model)
    if not wrappers:
        raise ValueError(
            f"`{owner}` was given a model without `PruneMasked` wrappers, so it has no masks. "
            f"Wrap the base model first: `pruned = prune_model(base_model)`, then build the "
            f"multi-task model on it.")
    return wrappers


def optimizer_slots(optimizer, variable):
    """The optimizer variables that hold per-element state of `variable` (SGD momentum, Adam's m and v, ...).

    Keras 3 optimizers name them ``{variable.path with '/' → '_'}_{slot}``
    (`Optimizer.add_variable_from_reference`). Empty before the optimizer is built.
    """
    if optimizer is None:
        return []
    prefix = variable.path.replace("/", "_") + "_"
    return [v for v in optimizer.variables
            if v.name.startswith(prefix) and tuple(v.shape) == tuple(variable.shape)]


def set_mask(wrapper, new, optimizer=None):
    """Sets `wrapper.mask` to `new` and ``W ← W ⊙ new``; grown weights and their optimizer slots start at 0.

    Args:
        wrapper: a built `PruneMasked`.
        new: the 0/1 mask, a NumPy array of the kernel's shape.
        optimizer: whose slots of the grown weights to reset, or `None`.

    Returns:
        The boolean array of the grown positions (off before, on now).
    """
    old = keras.ops.convert_to_numpy(wrapper.mask)
    value = keras.ops.convert_to_numpy(wrapper.kernel)
    new = np.asarray(new, dtype=old.dtype)
    grown = (new > 0) & ~(old > 0)
    wrapper.kernel.assign(np.where(grown, 0, value * new).astype(value.dtype))
    for slot in optimizer_slots(optimizer, wrapper.kernel):
        current = keras.ops.convert_to_numpy(slot)
        slot.assign(np.where(grown, 0, current).astype(current.dtype))
    wrapper.mask.assign(new)
    return grown


def sparsity_report(model):
    """Per-layer and overall sparsity of the masked kernels ``W ⊙ M`` (zeros counted).

    Without wrappers (e.g. after `strip`), the kernels of the model's
    `PRUNABLE_LAYERS` that are not output layers are counted instead.

    Returns:
        `{"layers": {name: {"size", "zeros", "sparsity"}}, "overall": {...}}`.
    """
    found = []
    wrappers = masked_layers(model)
    if wrappers:
        for w in wrappers:
            found.append((w.layer.name, keras.ops.convert_to_numpy(w.masked_kernel())))
    else:
        base = model.base_model if isinstance(model, MultiTaskModel) else model
        outputs = _output_layers(base)
        for layer in base.layers:
            if isinstance(layer, PRUNABLE_LAYERS) and layer.name not in outputs:
                found.append((layer.name, keras.ops.convert_to_numpy(layer.kernel)))
    layers = {}
    for name, values in found:
        zeros = int(np.count_nonzero(values == 0))
        layers[name] = {"size": int(values.size), "zeros": zeros, "sparsity": zeros / values.size}
    size = sum(r["size"] for r in layers.values())
    zeros = sum(r["zeros"] for r in layers.values())
    return {"layers": layers,
            "overall": {"size": size, "zeros": zeros, "sparsity": zeros / size if size else 0.0}}


def _strip_functional(model):
    copies = []

    def clone(layer):
        source = layer.layer if isinstance(layer, PruneMasked) else layer
        copy = source.__class__.from_config(source.get_config())
        copies.append((layer, copy))
        return copy

    stripped = keras.models.clone_model(model, clone_function=clone)
    for layer, copy in copies:
        if isinstance(layer, PruneMasked):
            values = [keras.ops.convert_to_numpy(layer.masked_kernel()) if v is layer.kernel
                      else keras.ops.convert_to_numpy(v) for v in layer.layer.weights]
            copy.set_weights(values)
        else:
            copy.set_weights(layer.get_weights())
    return stripped


def strip(model):
    """A copy of `model` without `PruneMasked` wrappers, each kernel holding ``W ⊙ M``; `model` is unchanged.

    Accepts a Functional Keras 3 model or a `keras_minmax_mtl.keras3.MultiTaskModel`
    (e.g. `MinMaxMultiTask`); for the latter the copy is a model of the same
    class and configuration on the stripped base model, with the weighting's
    state (task weights) and the step counter copied. The copy is not compiled.
    Its predictions equal `model`'s.

    Raises:
        TypeError: for anything else.
    """
    if isinstance(model, MultiTaskModel):
        config = model.get_config()
        config["base_model"] = _strip_functional(model.base_model)
        copy = type(model).from_config(config)
        for source, target in zip(model.weighting.variables, copy.weighting.variables):
            target.assign(keras.ops.convert_to_numpy(source))  # a copy, never a shared buffer
        copy.train_step_counter.assign(keras.ops.convert_to_numpy(model.train_step_counter))
        return copy
    require_functional(model, "model")
    return _strip_functional(model)


def sync_state(model):
    """Makes the model's variables current before a callback reads or assigns them.

    On JAX, `fit` keeps the training state outside the variables between
    steps; the trainer's `jax_state_sync()` writes it back and makes the next
    step read the variables again (so a mask assigned now is used). Other
    back-ends train on the variables themselves: nothing to do.
    """
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()


def check_single_step(model, owner):
    """Raises `ValueError` unless `model` runs one training step per execution (batch hooks = steps)."""
    executions = getattr(model, "steps_per_execution", 1)
    if executions != 1:
        raise ValueError(
            f"`{owner}` acts between training steps and needs `compile(steps_per_execution=1)`: "
            f"with N > 1 steps per execution its batch hooks run once per N steps. Received: "
            f"steps_per_execution={executions}")


@register
class UpdateMasks(keras.callbacks.Callback):
    """Sets the masks by magnitude at the steps a `PruningSchedule` says.

    Before training step ``k`` (1-based; ``k − 1`` is the optimizer's
    `iterations` when the step starts, so a second `fit` continues the
    count) it asks ``schedule(k) → (should_prune, sparsity)``; if true, each
    wrapper's mask is set to keep the ``round(n·(1 − sparsity))`` largest
    ``|W ⊙ M|`` of its kernel (ties by index) and the pruned weights are set to 0.
    The step's forward pass uses the new masks, as tfmot's wrappers do.

    Args:
        schedule: a `keras_minmax_mtl.keras3.schedules.PruningSchedule`
            (`ConstantSparsity`, `PolynomialDecay`, `ReweightedL1Schedule`, ...).

    Attributes:
        history: `[(step, sparsity)]` of the mask updates done.

    Example:

    >>> model.fit(x, y, epochs=10, callbacks=[UpdateMasks(PolynomialDecay(0.0, 0.9, 0, 300))])
    """

    def __init__(self, schedule):
        super().__init__()
        if not isinstance(schedule, PruningSchedule):
            raise TypeError(
                f"Argument `schedule` must be a `keras_minmax_mtl.keras3.schedules.PruningSchedule` "
                f"(e.g. PolynomialDecay(0.0, 0.9, 0, 1000)). Received: schedule={schedule!r}")
        self.schedule = schedule
        self.history = []
        self.step = None

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule)}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["schedule"]))

    def on_train_begin(self, logs=None):
        check_single_step(self.model, type(self).__name__)
        self.wrappers = _require_wrappers(self.model, type(self).__name__)
        self.step = None

    def _start(self):
        optimizer = self.model.optimizer
        self.step = int(keras.ops.convert_to_numpy(optimizer.iterations)) if optimizer else 0

    def prune(self, sparsity):
        """Sets every mask to `sparsity` by magnitude (of ``W ⊙ M``) now."""
        for wrapper in self.wrappers:
            values = keras.ops.convert_to_numpy(wrapper.masked_kernel())
            set_mask(wrapper, magnitude_mask(values, sparsity))

    def on_train_batch_begin(self, batch, logs=None):
        if self.step is None:
            self._start()
        step = self.step + 1
        should_prune, sparsity = self.schedule(step)
        if should_prune:
            sync_state(self.model)
            self.prune(sparsity)
            self.history.append((step, float(sparsity)))

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1


@register
class ReweightedL1Stages(UpdateMasks):
    r"""Reweighted-ℓ1 pruning in three stages on a Keras 3 model (Guo et al., 2025).

    With a `ReweightedL1Schedule(target_sparsity, prune_step, begin_step, refresh_steps)`:

    1. steps ``1 … begin_step − 1``: dense training (``c = 0``);
    2. steps ``begin_step … prune_step − 1``: the penalty
       ``ρ Σ_j |w_j| / (|w^ref_j| + ε)`` is on (``c = ρ``), ``w^ref`` taken at
       `begin_step` and at every refresh step
       (`keras_minmax_mtl.sparsity.maths.reweighted_factors`, the formula of
       the tf_keras path);
    3. step `prune_step`: ``c = 0`` and the masks are set to `target_sparsity`
       by magnitude; then masked retraining (masks held).

    The wrappers must have been made with ``prune_model(..., reweighted_l1=True)``.

    Args:
        schedule: a `ReweightedL1Schedule`.
        rho: ρ, `>= 0`.
        epsilon: ε, `> 0`. Defaults to `1e-6`.

    Example:

    >>> schedule = ReweightedL1Schedule(0.9, prune_step=301, begin_step=101)
    >>> model.fit(x, y, epochs=5, callbacks=[ReweightedL1Stages(schedule, rho=1e-4)])
    """

    def __init__(self, schedule, rho, epsilon=1e-6):
        if not isinstance(schedule, ReweightedL1Schedule):
            raise TypeError(f"Argument `schedule` must be a `ReweightedL1Schedule`. "
                            f"Received: schedule={schedule!r}")
        super().__init__(schedule)
        self.rho = check_rho(rho)
        self.epsilon = check_epsilon(epsilon)

    def get_config(self):
        config = super().get_config()
        config.update(rho=self.rho, epsilon=self.epsilon)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        plain = [w.layer.name for w in self.wrappers if not w.reweighted_l1]
        if plain:
            raise ValueError(
                f"The wrappers of layers {plain} hold no reweighted-ℓ1 penalty. Wrap the model "
                f"with `prune_model(base_model, reweighted_l1=True)`.")

    def refresh(self):
        """``w^ref ← W ⊙ M``: each wrapper's factors become ``1/(|w^ref| + ε)``."""
        for wrapper in self.wrappers:
            reference = np.abs(keras.ops.convert_to_numpy(wrapper.masked_kernel()))
            wrapper.factors.assign(reweighted_factors(reference, self.epsilon))

    def _set_coefficient(self, value):
        for wrapper in self.wrappers:
            wrapper.coefficient.assign(value)

    def on_train_batch_begin(self, batch, logs=None):
        if self.step is None:
            self._start()
            sync_state(self.model)
            # The stage of a resumed run: the penalty is on inside the reweighted stage.
            self._set_coefficient(self.rho if self.schedule.stage(self.step + 1) == "reweighted"
                                  else 0.0)
        step = self.step + 1
        if step == self.schedule.begin_step and self.schedule.stage(step) == "reweighted":
            sync_state(self.model)
            self.refresh()
            self._set_coefficient(self.rho)
        elif step in self.schedule.refresh_steps:
            sync_state(self.model)
            self.refresh()
        if step == self.schedule.prune_step:
            sync_state(self.model)
            self._set_coefficient(0.0)
        super().on_train_batch_begin(batch, logs)
