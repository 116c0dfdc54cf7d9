r"""Layer surgery: a structured-pruned model rebuilt without its removed units, genuinely smaller.

TFLite Micro and the Edge TPU have no sparse kernels: a zero weight costs as
much as any other. Only removing whole neurons and filters shrinks their files
and their invoke time. `shrink(model)` does that: it rebuilds a Functional
model without the removed units and cuts the inputs of the layers that follow,
so that the new model computes exactly what the old one computed.

A **removed unit** is an output column ``j`` of a hidden `Dense` kernel with
``kernel[:, j] = 0``, or a filter ``j`` of a hidden `Conv2D` with
``kernel[..., j] = 0`` (what structured pruning leaves behind). Whatever the
layer's input, the unit then outputs the constant

.. math::  c_j = \mathrm{act}(b_j),

which the layers after it transform channel by channel (a
`BatchNormalization` in inference mode gives
``γ (c − μ)/\sqrt{σ² + ε} + β``, an activation ``act(c)``, pooling and
`Flatten` keep it constant). Where ``c_j ≠ 0`` its contribution is folded
into the bias of the consumer, which is exact wherever the consumer sees
``c_j`` at every position of its window:

- a `Dense` consumer (also through `Flatten` or pooling):
  ``b' = b + Σ_{i removed} c_i W[i, :]``;
- a `Conv2D` consumer that pads nothing (``padding="valid"``, or `"same"`
  where the kernel needs no padding, e.g. 1×1):
  ``b' = b + Σ_{i removed} c_i Σ_{h,w} K[h, w, i, :]``.

A `Conv2D` with zero padding sees ``0`` instead of ``c_j`` at the borders, so
no bias can stand for it: such a unit is **kept** (the report lists it under
`kept_constant`). So is a unit whose channel reaches a model output without a
weighted layer in between. Units with ``c_j = 0`` (zero bias and
``act(0) = 0``, the usual case) are always removed.

Layers the surgery cuts through: `Dense`, `Conv2D` (channels last, one
group), `BatchNormalization` (last axis), `MaxPooling2D`, `AveragePooling2D`,
`GlobalAveragePooling2D`, `GlobalMaxPooling2D`, `Flatten` (channel removal
maps to the flattened rows ``(h·W + w)·C + c``), `Dropout`,
`SpatialDropout2D`, `Activation` / `ReLU` / `LeakyReLU` / `ELU` / `Rescaling`
(element-wise only), `Concatenate` (last axis), and branch points: a layer
feeding several task heads has every consumer cut. Also:

- `DepthwiseConv2D`: a removed input channel ``j`` removes its
  ``depth_multiplier`` outputs, constant ``act(c_j Σ_{h,w} K[h, w, j, m] +
  b)`` (exact without zero padding, or where ``c_j = 0``);
- `ZeroPadding2D` passes a removed channel whose constant is 0 (any other
  constant would meet the zeros of the padding: its unit is kept);
- `Add`, `Subtract`, `Multiply`, `Average`, `Maximum`, `Minimum`: a channel
  removed in every input is removed (its constant combines theirs, e.g. the
  sum); one removed in only some inputs is kept, since the others still
  need it (the channel groups of `keras_minmax_mtl.sparsity.dependency` say
  which units must go together);
- `Reshape` that keeps the last axis (e.g. ``(C,) → (1, 1, C)`` of a
  squeeze-excite block) gets the smaller channel count;
- nested Functional models are entered, and the shrunk model calls their
  layers directly (`sparsity.dependency.inline_nested_models`).

Any other layer that would receive a cut tensor raises an error naming it.

Example:

>>> from keras_minmax_mtl.export.surgery import shrink, shrink_report
>>> model = multi_digits_network()   # half the units of its hidden layers zeroed (see
>>> small = shrink(model)            # benchmarks/micro_latency.py); model is unchanged
>>> report = shrink_report(model, small)
>>> report["total"]["params"], report["layers"]["trunk_dense"]["units"]
({'before': 110695, 'after': 28103}, {'before': 64, 'after': 32})
"""
import collections

import numpy as np
import tensorflow as tf

from keras_minmax_mtl.core.backend import keras, require_functional, require_tf_keras_model
from keras_minmax_mtl.export.deployable import deployable_model
from keras_minmax_mtl.export.logits import custom_scope
from keras_minmax_mtl.sparsity.dependency import (
    ELEMENTWISE_ACTIVATIONS,
    MERGE_LAYERS,
    activation_name,
    inline_nested_models,
    is_unit_layer,
    layer_calls,
    layer_kind,
    leaf_layers,
    trace_graph,
)
from keras_minmax_mtl.sparsity.pruning import short_name

__all__ = ["removed_units", "has_structured_sparsity", "shrink", "shrink_report",
           "SUPPORTED_LAYERS"]

_PASS_THROUGH = ("MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D",
                 "GlobalMaxPooling2D", "Dropout", "SpatialDropout2D")
_ACTIVATION_LAYERS = ("Activation", "ReLU", "LeakyReLU", "ELU", "Rescaling")

#: The layer classes whose inputs `shrink` can cut (by class name).
SUPPORTED_LAYERS = ("Dense", "Conv2D", "DepthwiseConv2D", "BatchNormalization", "Flatten",
                    "Concatenate", "Reshape", "ZeroPadding2D", *MERGE_LAYERS, *_PASS_THROUGH,
                    *_ACTIVATION_LAYERS)

_MERGE_CONSTANTS = {
    "Add": lambda c: np.sum(c, axis=0), "Subtract": lambda c: c[0] - c[1],
    "Multiply": lambda c: np.prod(c, axis=0), "Average": lambda c: np.mean(c, axis=0),
    "Maximum": lambda c: np.max(c, axis=0), "Minimum": lambda c: np.min(c, axis=0)}

# The channels (last axis) of one tensor: which are kept, the constant value of each removed
# one, and the (layer name, unit) pairs each removed channel comes from (a tuple: an `Add` of
# two removed channels comes from both).
_Channels = collections.namedtuple("_Channels", ["kept", "const", "origin"])


def _plain_base(model):
    """The Functional model to operate on: base of a `MultiTaskModel`, pruning stripped (a copy)."""
    return deployable_model(model)[0]


def _output_layers(model):
    return {id(tensor._keras_history.layer) for tensor in model.outputs}


def _zero_units(model):
    """`{layer name: array of zero-kernel units}` of the hidden Dense/Conv2D layers of `model`."""
    outputs = _output_layers(model)
    found = {}
    for layer in leaf_layers(model):
        if not is_unit_layer(layer) or id(layer) in outputs:
            continue
        if activation_name(layer.activation) not in ELEMENTWISE_ACTIVATIONS:
            continue
        kernel = layer.kernel.numpy()
        zero = np.all(kernel.reshape(-1, kernel.shape[-1]) == 0, axis=0)
        if zero.any():
            found[layer.name] = np.flatnonzero(zero)
    return found


def removed_units(model):
    """`{layer name: sorted unit indices}` of the removed units of a structured-pruned model.

    A removed unit is an output column ``j`` of a `Dense` kernel that is all
    zero, ``kernel[:, j] = 0``, or a `Conv2D` filter with ``kernel[..., j] =
    0``, in a layer that is not a model output and whose activation is
    element-wise. Pruning wrappers are looked through (the masked kernels
    count).

    Args:
        model: a Functional `tf_keras` model or a `MultiTaskModel`, with or
            without tfmot pruning wrappers. It is not changed.

    Returns:
        `{layer name: [unit, ...]}` for the layers with at least one removed
        unit; `{}` if there are none. `shrink` removes these units except
        those it must keep (see `shrink_report`'s `kept_constant`).

    Example:

    >>> layer = model.get_layer("trunk_dense")
    >>> kernel, bias = layer.get_weights()
    >>> kernel[:, [3, 7]] = 0
    >>> layer.set_weights([kernel, bias])
    >>> removed_units(model)
    {'trunk_dense': [3, 7]}
    """
    return {name: [int(i) for i in units]
            for name, units in _zero_units(_plain_base(model)).items()}


def has_structured_sparsity(model):
    """Whether `model` has a removed unit (see `removed_units`): `shrink` makes it smaller."""
    return bool(removed_units(model))


def _all_kept(tensor):
    channels = int(tensor.shape[-1]) if tensor.shape.rank else 1
    return _Channels(np.ones(channels, bool), np.zeros(channels, np.float64),
                     _origins(channels))


def _origins(count):
    origin = np.empty(count, dtype=object)
    origin[:] = [() for _ in range(count)]
    return origin


def _cut(state):
    return not state.kept.all()


def _elementwise(fn, values):
    """`fn` applied to a 1-D float array (through TensorFlow, as the model computes it)."""
    return np.asarray(fn(tf.constant(np.asarray(values, np.float32)[None, :])))[0].astype(
        np.float64)


def _zero_padding(layer, input_shape):
    """Whether a `Conv2D` with this input shape pads nothing, so every window sees only inputs."""
    if layer.padding == "valid":
        return True
    for size, k, s, d in zip(input_shape[1:3], layer.kernel_size, layer.strides,
                             layer.dilation_rate):
        if size is None:
            return False
        out = -(-int(size) // s)
        if (out - 1) * s + (k - 1) * d + 1 - int(size) > 0:
            return False
    return True


class _Planner:
    """One forward pass over the graph: channel states, blocked units and the new weights."""

    def __init__(self, model, removals):
        self.model = model
        self.removals = removals          # {layer name: array of units to remove}
        self.states = {}                  # {(layer name, node index, tensor index): _Channels}
        self.blocked = set()              # {(layer name, unit)} that must be kept
        self.plans = {}                   # {layer name: (config changes, {weight name: value})}

    def key(self, tensor):
        history = tensor._keras_history
        return history.layer.name, history.node_index, history.tensor_index

    def block(self, state, channels):
        for origins in state.origin[channels & ~state.kept]:
            self.blocked.update(origins)

    def run(self):
        self.calls = layer_calls(self.model)

        def visit(layer, node, inputs):
            return self.layer(layer, node, inputs, tf.nest.flatten(node.outputs))

        states = trace_graph(self.model, visit, [_all_kept(t) for t in self.model.inputs])
        for state in states:
            self.block(state, np.ones_like(state.kept))
        return self

    def unsupported(self, layer, inputs):
        origins = sorted({o for s in inputs for os in s.origin[~s.kept] for o in os})
        return ValueError(
            f"Layer {layer.name!r} ({layer_kind(layer)}) receives channels from which `shrink` removes "
            f"units ({', '.join(f'{n}[{u}]' for n, u in origins[:6])}"
            f"{', ...' if len(origins) > 6 else ''}), but it cannot cut the inputs of a "
            f"{layer_kind(layer)}. Supported layers: {', '.join(SUPPORTED_LAYERS)}. Export without "
            "structured surgery (structured=False), or prune the units feeding this layer less.")

    def layer(self, layer, node, inputs, outputs):
        kind = layer_kind(layer)
        if isinstance(layer, keras.layers.InputLayer):
            return [_all_kept(t) for t in outputs]
        removing = layer.name in self.removals and len(self.removals[layer.name])
        if not any(_cut(s) for s in inputs) and not removing:
            return [_all_kept(t) for t in outputs]
        if self.calls[id(layer)] > 1:
            raise ValueError(
                f"Layer {layer.name!r} ({kind}) is called {self.calls[id(layer)]} times "
                "(a shared layer); `shrink` cannot cut a shared layer's units or inputs.")
        if is_unit_layer(layer):
            return [self.unit_layer(layer, inputs[0], node.keras_inputs[0].shape)]
        if kind == "BatchNormalization":
            return [self.batch_norm(layer, inputs[0], node.keras_inputs[0].shape)]
        if kind == "DepthwiseConv2D" and layer.data_format == "channels_last":
            return [self.depthwise(layer, inputs[0], node.keras_inputs[0].shape)]
        if kind == "ZeroPadding2D" and layer.data_format == "channels_last":
            s = inputs[0]
            self.block(s, s.const != 0)  # the padding is 0, not the constant
            return [s]
        if kind in MERGE_LAYERS and len({len(s.kept) for s in inputs}) == 1:
            return [self.merge(kind, inputs)]
        if kind == "Reshape" and node.keras_inputs[0].shape[-1] == layer.target_shape[-1]:
            s = inputs[0]
            self.plans[layer.name] = (
                {"target_shape": (*layer.target_shape[:-1], int(s.kept.sum()))}, {})
            return [s]
        if kind == "Flatten" and layer.data_format == "channels_last":
            spatial = int(np.prod(node.keras_inputs[0].shape[1:-1]))
            s = inputs[0]
            return [_Channels(np.tile(s.kept, spatial), np.tile(s.const, spatial),
                              np.tile(s.origin, spatial))]
        if kind == "Concatenate" and layer.axis in (-1, len(outputs[0].shape) - 1):
            return [_Channels(*(np.concatenate([getattr(s, f) for s in inputs])
                                for f in _Channels._fields))]
        if kind in _PASS_THROUGH and getattr(layer, "data_format", "channels_last") == \
                "channels_last":
            return [inputs[0]]
        if kind in _ACTIVATION_LAYERS and (
                kind != "Activation" or activation_name(layer.activation)
                in ELEMENTWISE_ACTIVATIONS):
            s = inputs[0]
            fresh = layer.__class__.from_config(layer.get_config())
            return [s._replace(const=np.where(s.kept, 0.0, _elementwise(fresh, s.const)))]
        raise self.unsupported(layer, inputs)

    def unit_layer(self, layer, state, input_shape):
        weights = {short_name(w): w.numpy() for w in layer.weights}
        kernel = weights["kernel"]
        units = kernel.shape[-1]
        bias = weights.get("bias", np.zeros(units, kernel.dtype)).astype(np.float64)
        removed_in = ~state.kept
        fold = np.zeros(units, np.float64)
        if removed_in.any():
            constant = removed_in & (state.const != 0)
            if constant.any():
                if isinstance(layer, keras.layers.Conv2D) and \
                        not _zero_padding(layer, input_shape):
                    # Zero padding: the border windows see 0, not the constant. Keep the units.
                    self.block(state, constant)
                else:
                    rows = kernel[..., constant, :].astype(np.float64)
                    rows = rows.reshape(-1, *rows.shape[-2:]).sum(axis=0)  # over the window
                    fold = state.const[constant] @ rows
            kernel = kernel[..., state.kept, :]
        removed = np.zeros(units, bool)
        removed[np.asarray(self.removals.get(layer.name, []), int)] = True
        keep = ~removed
        new_bias = bias + fold
        const = np.zeros(units, np.float64)
        if removed.any():
            const[removed] = _elementwise(layer.activation, new_bias)[removed]
        origin = _origins(units)
        for unit in np.flatnonzero(removed):
            origin[unit] = ((layer.name, int(unit)),)
        changes = {"units" if isinstance(layer, keras.layers.Dense) else "filters":
                   int(keep.sum())}
        new = {"kernel": kernel[..., keep]}
        if "bias" in weights or np.any(fold != 0):
            changes["use_bias"] = True
            new["bias"] = new_bias[keep].astype(np.float32)
        self.plans[layer.name] = (changes, new)
        return _Channels(keep, const, origin)

    def depthwise(self, layer, state, input_shape):
        """A depthwise convolution: input channel ``j`` makes outputs ``j·m … j·m + m − 1``."""
        weights = {short_name(w): w.numpy() for w in layer.weights}
        kernel = weights["depthwise_kernel"]               # (kh, kw, channels, m)
        m = layer.depth_multiplier
        removed_in = ~state.kept
        if not _zero_padding(layer, input_shape):
            self.block(state, removed_in & (state.const != 0))
        sums = kernel.astype(np.float64).sum(axis=(0, 1)).reshape(-1)   # per output channel
        bias = weights.get("bias", np.zeros(sums.shape, kernel.dtype)).astype(np.float64)
        kept = np.repeat(state.kept, m)
        values = np.repeat(state.const, m) * sums + bias
        const = np.where(kept, 0.0, _elementwise(layer.activation, values))
        new = {"depthwise_kernel": kernel[:, :, state.kept, :]}
        if "bias" in weights:
            new["bias"] = weights["bias"][kept]
        self.plans[layer.name] = ({}, new)
        return _Channels(kept, const, np.repeat(state.origin, m))

    def merge(self, kind, inputs):
        """`Add`, `Multiply`, ...: a channel is removed where it is removed in every input."""
        removed = np.all([~s.kept for s in inputs], axis=0)
        for s in inputs:  # removed here, kept in another input: it must be computed
            self.block(s, ~removed)
        const = np.where(removed, _MERGE_CONSTANTS[kind](np.array([s.const for s in inputs])),
                         0.0)
        origin = _origins(len(removed))
        for j in np.flatnonzero(removed):
            origin[j] = tuple(o for s in inputs for o in s.origin[j])
        return _Channels(~removed, const, origin)

    def batch_norm(self, layer, state, input_shape):
        axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        if list(axis) not in ([len(input_shape) - 1], [-1]):
            raise self.unsupported(layer, [state])
        weights = {short_name(w): w.numpy().astype(np.float64)
                   for w in layer.weights}
        channels = len(state.kept)
        gamma = weights.get("gamma", np.ones(channels))
        beta = weights.get("beta", np.zeros(channels))
        scale = gamma / np.sqrt(weights["moving_variance"] + layer.epsilon)
        const = np.where(state.kept, 0.0,
                         (state.const - weights["moving_mean"]) * scale + beta)
        self.plans[layer.name] = ({}, {name: value[state.kept].astype(np.float32)
                                       for name, value in weights.items()})
        return state._replace(const=const)


def _plan(base):
    """Runs the planner until no unit it removes must be kept; returns it and the kept units."""
    removals = _zero_units(base)
    kept = set()
    while True:
        planner = _Planner(base, removals).run()
        if not planner.blocked:
            break
        kept |= planner.blocked
        removals = {name: np.array([u for u in units if (name, int(u)) not in kept], int)
                    for name, units in removals.items()}
    layers = {layer.name: layer for layer in leaf_layers(base)}
    for name, units in removals.items():
        layer = layers[name]
        total = layer.kernel.shape[-1]
        if len(units) == total:
            raise ValueError(
                f"Layer {name!r} ({layer_kind(layer)}) has all of its {total} units removed (every "
                "kernel column is zero), so nothing after it depends on the model's inputs "
                "through it and no layer with 0 units can be built. Prune it less (e.g. a "
                "lower sparsity for this layer) or remove the layer from the network.")
    return planner, sorted(kept)


def shrink(model):
    """A new, smaller Functional model without the removed units; numerically the same model.

    Every removed unit (`removed_units`) of a hidden `Dense`/`Conv2D` layer
    is dropped from its layer, and the layers that consume it are cut to
    match: the next `Dense` loses kernel rows, the next `Conv2D` input
    channels, a `BatchNormalization` its gamma, beta and moving statistics,
    and a `Flatten` after a convolution maps each removed filter to its
    flattened rows. The constant ``c_j`` a removed unit outputs is folded
    into the consumers' biases where that is exact (see the module
    docstring); a unit whose non-zero constant would reach a zero-padded
    `Conv2D` or a model output is kept. Model output layers keep all their
    units; layer names, output names and the model name are unchanged.

    Args:
        model: a Functional `tf_keras` model or a `MultiTaskModel`, with or
            without tfmot pruning wrappers (stripped on a copy). It is not
            changed.

    Returns:
        A new, dense, uncompiled Functional `tf_keras` model (for a
        `MultiTaskModel`, a new base model: wrap it again with
        `model.with_base_model(shrunk)` to keep the task weights).

    Raises:
        ValueError: a layer whose inputs must be cut is not supported (the
            message names it, its type and the supported layers), is shared,
            or a layer has all its units removed.
        TypeError: for subclassed and Keras 3 models.

    Example:

    >>> small = shrink(model)
    >>> np.allclose(small.predict(x), model.predict(x), atol=1e-5)
    True
    """
    base = _plain_base(model)
    planner, _ = _plan(base)
    plans = planner.plans

    def clone(layer):
        config = layer.get_config()
        config.update(plans.get(layer.name, ({}, {}))[0])
        return layer.__class__.from_config(config)

    def weights(old, new):
        if old.name in plans:
            values = plans[old.name][1]
            return [values[short_name(w)] for w in new.weights]
        return old.get_weights()

    with custom_scope(base):
        if any(isinstance(layer, keras.Model) for layer in base.layers):
            copies = {}

            def clone_nested(layer):
                copies[layer.name] = layer
                return clone(layer), None

            copy = inline_nested_models(base, clone=clone_nested)
            for new in copy.layers:
                if new.name in copies and new.weights:
                    new.set_weights(weights(copies[new.name], new))
            return copy
        copy = keras.models.clone_model(base, clone_function=clone)
    for old, new in zip(base.layers, copy.layers):
        if old.weights:
            new.set_weights(weights(old, new))
    return copy


def _units(layer):
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return int(np.prod(layer.depthwise_kernel.shape[2:]))
    if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
        return int(layer.kernel.shape[-1])
    if isinstance(layer, keras.layers.BatchNormalization):
        return int(layer.moving_mean.shape[-1])
    return None


def _weight_bytes(layer):
    """(params, float32 bytes, int8 bytes): kernels 1 byte each in int8, every other weight 4."""
    params = int(sum(np.prod(w.shape) for w in layer.weights))
    kernels = int(sum(np.prod(w.shape) for w in layer.weights
                      if w.name.split("/")[-1].startswith(("kernel", "depthwise_kernel"))))
    return params, 4 * params, kernels + 4 * (params - kernels)


def shrink_report(original, shrunk):
    """Units, parameters and weight bytes per layer, before and after `shrink`.

    Weight bytes are those of the weights themselves, not of a file:
    ``float32 = 4·params``; ``int8`` = 1 byte per kernel weight plus 4 per
    other weight (int32 biases; `BatchNormalization` statistics, which the
    TFLite converter folds into the convolution before it).

    Args:
        original: the model given to `shrink` (any form it accepts).
        shrunk: the model `shrink` returned.

    Returns:
        `{"layers": {name: {"units": {"before", "after"}, "params": {...},
        "float32_bytes": {...}, "int8_bytes": {...}}}, "total": {"params",
        "float32_bytes", "int8_bytes"} (each {"before", "after"}),
        "removed_units": {layer: count}, "kept_constant": [[layer, unit],
        ...]}`: `kept_constant` are removed units `shrink` kept because their
        non-zero constant output cannot be folded exactly (zero-padded
        `Conv2D` consumer, or a model output).

    Example:

    >>> shrink_report(model, shrink(model))["total"]["int8_bytes"]  # model: see module example
    {'before': 111436, 'after': 28532}
    """
    base = _plain_base(original)
    require_functional(require_tf_keras_model(shrunk, "shrunk"), "shrunk")
    _, kept = _plan(base)
    layers, total = {}, {k: {"before": 0, "after": 0}
                         for k in ("params", "float32_bytes", "int8_bytes")}
    for layer in leaf_layers(base):
        try:
            new = shrunk.get_layer(layer.name)
        except ValueError as error:
            raise ValueError(f"Argument `shrunk` must be `shrink(original)`: it has no layer "
                             f"{layer.name!r}.") from error
        entry = {"units": {"before": _units(layer), "after": _units(new)}}
        for key, before, after in zip(("params", "float32_bytes", "int8_bytes"),
                                      _weight_bytes(layer), _weight_bytes(new)):
            entry[key] = {"before": before, "after": after}
            total[key]["before"] += before
            total[key]["after"] += after
        if layer.weights:
            layers[layer.name] = entry
    return {"layers": layers, "total": total,
            "removed_units": {n: e["units"]["before"] - e["units"]["after"]
                              for n, e in layers.items()
                              if e["units"]["before"] != e["units"]["after"]},
            "kept_constant": [[name, unit] for name, unit in kept]}
