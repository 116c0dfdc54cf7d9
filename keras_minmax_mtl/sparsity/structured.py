r"""Structured (filter / neuron) sparsity: whole output units removed, so the dense model shrinks.

TFLite Micro and the Edge TPU have no sparse kernels: a model pruned weight
by weight runs as slowly and takes as much memory as the dense one. Removing
whole output units (a Dense layer's neurons, a Conv2D layer's filters) lets
the layer surgery cut the layers themselves. This module holds the unit
maths that reweighted ℓ1 uses in its `sparsity_type="filter"` mode
(`keras_minmax_mtl.sparsity.reweighted`), and the prune that removes units.

**Units.** Both supported layer types keep their output units on the last
kernel axis: a Dense kernel has shape ``(in, out)`` and unit ``u`` is the
column ``W[:, u]``; a Conv2D kernel has shape ``(kh, kw, in, out)`` and unit
``u`` is the filter ``W[..., u]`` over ``(kh, kw, in)``. Its norm is

.. math::

    \|W_u\|_2 = \Big(\sum_{i} W_{i,u}^2\Big)^{1/2}

over every kernel entry ``i`` of the unit. The reweighted group-ℓ1 penalty
(Guo et al.'s reweighted ℓ1 with the unit as the group) is

.. math::

    \rho \sum_{\text{layers}} \sum_u \frac{\|W_u\|_2}{\|W_u^{\text{ref}}\|_2 + \varepsilon}.

**The contract with the layer surgery.** After `prune_units` (which
`ReweightedL1Stages` calls at the prune step in filter mode), for every
removed unit ``u`` of a pruned layer:

- its kernel slice is all zero, and its mask slice (the tfmot wrapper's
  `mask`) is all zero, so tfmot's wrapper keeps it zero in every forward pass;
- its bias entry is exactly 0 (layers with a bias);
- where the layer's output goes directly into a `BatchNormalization` (over
  the channel axis), that layer's `gamma` and `beta` entries (and
  `moving_mean`, so the inference output is also exact) are exactly 0;

so the unit outputs exactly ``act(0)`` (0 for relu and linear activations),
and the normalised channel is exactly 0. `RemovedUnits.hold` restores all
of it and `ReweightedL1Stages` calls it after every training batch of the
masked retraining, since the optimizer moves biases and `beta` (their
gradients are not masked). The masks are the record of which units were
removed (an all-zero mask slice), so the state survives save and load.

Example:

>>> kernel = np.array([[3.0, 0.0, 1.0], [4.0, 0.0, 1.0]])     # Dense, 2 inputs, 3 units
>>> unit_norms(kernel).numpy()
array([5.        , 0.        , 1.41421356])
>>> smallest_units(kernel, 0.5, "dense")                        # round(0.5 · 3) = 2 units
[1, 2]
"""
import math
import numbers

import numpy as np
import tensorflow as tf

from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.core.multitask import MultiTaskModel
from keras_minmax_mtl.sparsity.dependency import (
    channel_groups,
    group_slices,
    inline_nested_models,
    is_unit_layer,
    layer_calls,
    layer_kind,
    prune_groups,
)
from keras_minmax_mtl.sparsity.pruning import (
    PruneLowMagnitude,
    pruned_kernels,
    pruning_wrappers,
    strip_pruning,
    walk_layers,
)

__all__ = [
    "SPARSITY_TYPES",
    "STRUCTURED_LAYER_TYPES",
    "check_sparsity_type",
    "unit_norms",
    "magnitudes",
    "units_to_remove",
    "smallest_units",
    "check_structured_layer",
    "check_nested_outputs",
    "prune_units",
    "RemovedUnits",
    "structured_report",
    "zero_rows_of_removed_units",
    "check_group_layer",
    "pruned_groups",
    "RemovedGroups",
    "prune_channel_groups",
]

#: What the reweighted-ℓ1 pipeline removes: single weights, whole output units of each layer,
#: or whole channel dependency groups (`keras_minmax_mtl.sparsity.dependency`).
SPARSITY_TYPES = ("unstructured", "filter", "group")

#: The layer types whose output units the filter mode removes (units on the kernel's last axis).
STRUCTURED_LAYER_TYPES = (keras.layers.Dense, keras.layers.Conv2D)


def check_sparsity_type(sparsity_type):
    """Returns `sparsity_type` if it is one of `SPARSITY_TYPES`; raises `ValueError` otherwise."""
    if not isinstance(sparsity_type, str) or sparsity_type not in SPARSITY_TYPES:
        raise ValueError(
            f"Argument `sparsity_type` must be one of {list(SPARSITY_TYPES)}. "
            f"Received: sparsity_type={sparsity_type!r}"
        )
    return sparsity_type


def unit_norms(kernel):
    r"""The ℓ2 norm of every output unit of `kernel` (the last axis): ``‖W_u‖₂``.

    Differentiable everywhere: the gradient of a unit whose entries are all
    exactly zero is 0 (not NaN).

    Args:
        kernel: an array, tensor or variable of rank >= 2, units last.

    Returns:
        A tensor of shape ``(units,)``, in `kernel`'s dtype.

    Example:

    >>> unit_norms(np.array([[3.0, 0.0], [4.0, 0.0]])).numpy()
    array([5., 0.])
    """
    kernel = tf.convert_to_tensor(kernel)
    squares = tf.reshape(tf.square(kernel), [-1, tf.shape(kernel)[-1]])
    total = tf.reduce_sum(squares, axis=0)
    positive = total > 0
    # sqrt has an infinite derivative at 0: take it only where the sum is positive.
    return tf.where(positive, tf.sqrt(tf.where(positive, total, tf.ones_like(total))),
                    tf.zeros_like(total))


def magnitudes(kernel, sparsity_type):
    """What the reweighted penalty weighs: ``|w|`` per weight (unstructured) or ``‖W_u‖₂`` per unit (filter)."""
    if check_sparsity_type(sparsity_type) == "filter":
        return unit_norms(kernel)
    return tf.abs(kernel)


def units_to_remove(units, fraction, layer_name):
    """How many of a layer's `units` a unit fraction removes: ``round(fraction · units)``, halves up.

    Args:
        units: the layer's number of output units.
        fraction: the fraction of units to remove, in `[0, 1)`.
        layer_name: the layer's name, for the error message.

    Raises:
        ValueError: if `fraction` is not in `[0, 1)`, or if it would remove
            every unit of the layer (the layer's output would be constant).
    """
    if (not isinstance(fraction, numbers.Real) or isinstance(fraction, bool)
            or not 0.0 <= fraction < 1.0):
        raise ValueError(
            f"Argument `fraction` (the fraction of units to remove) must be in [0, 1). "
            f"Received: fraction={fraction!r}"
        )
    count = int(math.floor(float(fraction) * units + 0.5))
    if count >= units:
        raise ValueError(
            f"A unit fraction of {fraction!r} would remove all {units} units of layer "
            f"{layer_name!r} (round({fraction!r} · {units}) = {count}), leaving it without "
            f"output. Use a fraction below {(units - 0.5) / units:.4g} or keep this layer out "
            f"of the pruning (e.g. `MultiTaskPruningPolicy(exclude=[{layer_name!r}])`)."
        )
    return count


def smallest_units(kernel, fraction, layer_name):
    """The indices (ascending) of the ``round(fraction · units)`` units of `kernel` with the smallest norms.

    Ties are broken by index (the lower index is removed first).
    """
    norms = np.asarray(unit_norms(kernel))
    count = units_to_remove(norms.shape[0], fraction, layer_name)
    return sorted(int(i) for i in np.argsort(norms, kind="stable")[:count])


def check_structured_layer(layer):
    """Raises `ValueError` unless `layer` is a Dense or Conv2D layer (exactly those types).

    Subclasses such as `Conv2DTranspose` and `DepthwiseConv2D` keep other
    things on the kernel's last axis and are refused too.
    """
    if type(layer) not in STRUCTURED_LAYER_TYPES:
        raise ValueError(
            f"sparsity_type='filter' removes output units of Dense and Conv2D layers only. "
            f"Received layer {layer.name!r} of type {type(layer).__name__}: keep it out of "
            f"the pruning (e.g. `MultiTaskPruningPolicy(exclude=[{layer.name!r}])`) or use "
            f"sparsity_type='unstructured'."
        )
    return layer


def check_nested_outputs(model):
    """Refuses a wrapped layer whose units leave a nested model into a `BatchNormalization`.

    The filter contract zeroes the `gamma`/`beta` of a BatchNormalization
    that directly follows a pruned layer; a layer that produces a nested
    model's output is followed by the nested model's consumers in the outer
    graph, which the prune does not reach.
    """
    for nested in walk_layers(model):
        if not isinstance(nested, keras.Model) or not getattr(nested, "outputs", None):
            continue
        consumers = [node.outbound_layer for node in nested._outbound_nodes]
        norms = [layer.name for layer in consumers
                 if isinstance(layer, keras.layers.BatchNormalization)]
        if not norms:
            continue
        for tensor in nested.outputs:
            layer = tensor._keras_history.layer
            if isinstance(layer, PruneLowMagnitude):
                raise ValueError(
                    f"sparsity_type='filter' cannot remove units of layer {layer.layer.name!r}: it "
                    f"produces the output of the nested model {nested.name!r}, which feeds the "
                    f"BatchNormalization {norms} outside it, whose entries for the removed units "
                    f"would not be zeroed. Keep {layer.layer.name!r} out of the pruning (e.g. "
                    f"`MultiTaskPruningPolicy(exclude=[{layer.layer.name!r}])`), or build the "
                    f"trunk in the outer graph (e.g. `keras.applications...(input_tensor=...)`).")


def _following_batch_norms(wrapper):
    """The `BatchNormalization` layers that take `wrapper`'s output directly."""
    found = []
    for node in wrapper._outbound_nodes:
        layer = node.outbound_layer
        if isinstance(layer, keras.layers.BatchNormalization) and layer not in found:
            found.append(layer)
    return found


def _unit_variables(wrapper):
    """The variables of `wrapper`'s units, units on the last axis: kernel, bias, following BN's."""
    (kernel, _, _), = wrapper.pruning_vars
    units = int(kernel.shape[-1])
    variables = [kernel]
    bias = getattr(wrapper.layer, "bias", None)
    if bias is not None:
        variables.append(bias)
    for norm in _following_batch_norms(wrapper):
        channel = [v for v in (norm.gamma, norm.beta, norm.moving_mean) if v is not None]
        if any(tuple(v.shape) != (units,) for v in channel):
            raise ValueError(
                f"sparsity_type='filter' needs the BatchNormalization {norm.name!r} after layer "
                f"{wrapper.layer.name!r} to normalise its {units} output channels (axis=-1). "
                f"Received axis={norm.axis!r} with parameters of shape "
                f"{[tuple(v.shape) for v in channel]}."
            )
        variables.extend(channel)
    return variables


class RemovedUnits:
    """The removed units of a pruned model, read from its masks, and the hold that keeps them removed.

    A unit counts as removed when its whole mask slice is zero (in filter
    mode only `prune_units` writes the masks).

    Args:
        model: a model with tfmot pruning wrappers (Functional, or a
            `MultiTaskModel` on one) whose wrapped layers are Dense or Conv2D.

    Attributes:
        removed: `{layer name: [unit indices]}` for every wrapped layer
            (empty lists where nothing was removed).

    Example:

    >>> removed = RemovedUnits(model)     # multi_digits_network pruned at a unit fraction of 0.5
    >>> len(removed.removed["trunk_dense"])
    32
    >>> removed.hold()      # re-zeroes kernels, biases and BN entries of those units
    """

    def __init__(self, model):
        self.removed = {}
        self._holds = []
        for wrapper in pruning_wrappers(model):
            check_structured_layer(wrapper.layer)
            (_, mask, _), = wrapper.pruning_vars
            keep = np.asarray(unit_norms(mask)) > 0
            self.removed[wrapper.layer.name] = [int(i) for i in np.flatnonzero(~keep)]
            if keep.all():
                continue
            keep = tf.constant(keep.astype(np.float32))
            self._holds.extend((v, keep) for v in _unit_variables(wrapper))

    def hold(self):
        """Sets every kernel, bias, BN `gamma`/`beta`/`moving_mean` entry of the removed units to 0."""
        for variable, keep in self._holds:
            variable.assign(variable * tf.cast(keep, variable.dtype))


def prune_units(model, fractions):
    """Removes whole output units from every wrapped layer of `model`: the smallest ℓ2 norms.

    For each `PruneLowMagnitude` wrapper, the ``round(fraction · units)``
    units of smallest ``‖W_u‖₂`` (measured on ``weight · mask``) get an
    all-zero mask slice and kernel slice, bias entry, and `gamma`/`beta`/
    `moving_mean` entry of a directly following `BatchNormalization` (see the
    module docstring for the contract). The wrappers should hold their masks
    (a `ReweightedL1Schedule` with `sparsity_type="filter"` or `HoldMasks`),
    or tfmot would recompute them by magnitude.

    Args:
        model: a model with tfmot pruning wrappers around Dense/Conv2D layers.
        fractions: the unit fraction to remove, in `[0, 1)`: one number for
            every layer, or `{layer name: fraction}` for every wrapped layer.

    Returns:
        `RemovedUnits` of `model` after the prune.

    Raises:
        ValueError: for other layer types, a fraction outside `[0, 1)` or one
            that would remove every unit of a layer.

    Example:

    >>> removed = prune_units(wrapped, 0.5)          # wrapped multi_digits_network
    >>> {name: len(units) for name, units in removed.removed.items()}
    {'trunk_conv1': 8, 'trunk_conv2': 16, 'trunk_dense': 32,
     'left_hidden': 16, 'right_hidden': 16, 'sum_hidden': 16}
    """
    wrappers = pruning_wrappers(model)
    chosen = []
    for wrapper in wrappers:  # check everything before changing anything
        check_structured_layer(wrapper.layer)
        name = wrapper.layer.name
        fraction = fractions[name] if isinstance(fractions, dict) else fractions
        (weight, mask, _), = wrapper.pruning_vars
        chosen.append(smallest_units(weight.numpy() * mask.numpy(), fraction, name))
    for wrapper, units in zip(wrappers, chosen):
        (weight, mask, _), = wrapper.pruning_vars
        new_mask = mask.numpy()
        new_mask[..., units] = 0
        mask.assign(new_mask)
        weight.assign(weight.numpy() * new_mask)
    removed = RemovedUnits(model)
    removed.hold()
    return removed


def structured_report(model):
    """Per layer: output units, removed units (all-zero kernel slices), and overall.

    Counts over the Dense and Conv2D kernels that `pruning.sparsity_report`
    counts: ``weight · mask`` of every wrapper, or the layers' kernels after
    `strip_pruning`. A unit is removed when its whole kernel slice is zero.

    Returns:
        `{"layers": {name: {"units", "removed", "fraction"}}, "overall": {...}}`,
        with the removed units of each layer in `"removed_units"` too.

    Example:

    >>> structured_report(model)["layers"]["trunk_dense"]
    {'units': 64, 'removed': 32, 'fraction': 0.5, 'removed_units': [...]}
    """
    layers = {}
    for layer, _, values in pruned_kernels(model):
        if type(layer) not in STRUCTURED_LAYER_TYPES:
            continue
        norms = np.asarray(unit_norms(values))
        removed = [int(i) for i in np.flatnonzero(norms == 0)]
        layers[layer.name] = {"units": int(norms.size), "removed": len(removed),
                              "fraction": len(removed) / norms.size, "removed_units": removed}
    units = sum(r["units"] for r in layers.values())
    removed = sum(r["removed"] for r in layers.values())
    return {"layers": layers, "overall": {"units": units, "removed": removed,
                                          "fraction": removed / units if units else 0.0}}


def _kernels_by_name(model):
    """`{layer name: kernel variable}` of every layer with a kernel, wrapped layers included."""
    found = {}
    for layer in walk_layers(model):
        inner = layer.layer if isinstance(layer, PruneLowMagnitude) else layer
        kernel = getattr(inner, "kernel", None)
        if kernel is not None and not isinstance(inner, keras.Model):
            found[inner.name] = kernel
    return found


def zero_rows_of_removed_units(model, inputs=None):
    r"""Zeroes the kernel rows that read a removed unit whose value is 0; returns how many it zeroed.

    A unit whose kernel slice is all zero (a removed unit, `prune_units`)
    outputs the constant ``act(b_u)`` whatever the input: ``act(0) = 0`` for
    relu and linear layers, whose bias `RemovedUnits.hold` keeps at 0. The
    layers that read it keep their kernel rows for it (a Dense row ``W[u, :]``,
    one per position after `Flatten`; a Conv2D input channel ``K[:, :, u,
    :]``), which multiply 0: they change nothing, yet count as non-zero
    weights, while `keras_minmax_mtl.export.surgery.shrink` removes them from
    the exported file. Setting them to 0 makes `pruning.nonzero_kernel_count`
    the count of the exported model and leaves every output exactly as it
    was, since

    .. math::  y = \sum_{i} x_i W_{i,:} = \sum_{i \notin R} x_i W_{i,:}
               \quad\text{when } x_i = 0 \text{ for every } i \in R.

    Which rows read which units comes from `dependency.channel_groups` (a
    group is zeroed when every unit that makes it is removed); that the
    channel is exactly 0 where the reader sees it is checked by running the
    model (without wrappers) once on `inputs` (a removed unit's value is the
    same for every input), so a unit of constant ``act(b) ≠ 0`` (e.g. a
    sigmoid unit) keeps its rows.

    Args:
        model: a Functional `tf_keras` model or a `MultiTaskModel`, with or
            without tfmot pruning wrappers; its kernels (the wrapped layers'
            weights) are changed in place.
        inputs: a batch of the model's inputs (as `model` takes them).
            Defaults to one all-zero example, which needs every input's shape
            known but for the batch.

    Returns:
        The number of non-zero weights it set to 0.

    Raises:
        ValueError: without `inputs`, for a model input of unknown shape
            (other than the batch).

    Example:

    >>> prune_units(wrapped, 0.5)                  # half the units of every hidden layer
    >>> before = nonzero_kernel_count(wrapped)
    >>> zeroed = zero_rows_of_removed_units(wrapped)
    >>> nonzero_kernel_count(wrapped) == before - zeroed
    True
    """
    base = model.base_model if isinstance(model, MultiTaskModel) else model
    plain = inline_nested_models(strip_pruning(base))
    layers = {layer.name: layer for layer in plain.layers}
    calls = layer_calls(plain)
    rows = {}
    for group in channel_groups(plain):
        removed = all(np.all(layers[name].kernel.numpy()[..., unit] == 0)
                      for name, unit in group.producers)
        if removed and group.consumers:
            for name, row in group.consumers:
                if calls[id(layers[name])] == 1:  # a shared layer reads other inputs too
                    rows.setdefault(name, []).append(row)
    if not rows:
        return 0
    if inputs is None:
        if any(None in tuple(t.shape[1:]) for t in plain.inputs):
            raise ValueError(
                "Argument `inputs` is needed for a model input of unknown shape: "
                "`zero_rows_of_removed_units` runs the model once. Received: inputs=None for "
                f"inputs of shape {[tuple(t.shape) for t in plain.inputs]}")
        inputs = [np.zeros((1, *t.shape[1:]), t.dtype.as_numpy_dtype) for t in plain.inputs]
        inputs = inputs[0] if len(inputs) == 1 else inputs
    names = sorted(rows)
    probe = keras.Model(plain.inputs, [layers[name].input for name in names])
    seen = probe(inputs, training=False)
    seen = [seen] if len(names) == 1 else seen
    kernels = _kernels_by_name(base)
    zeroed = 0
    for name, value in zip(names, seen):
        value = np.asarray(value)
        exact = [row for row in rows[name] if np.all(value[..., row] == 0)]
        if not exact:
            continue
        kernel = kernels[name]
        new = kernel.numpy()
        zeroed += int(np.count_nonzero(new[..., exact, :]))
        new[..., exact, :] = 0
        kernel.assign(new)
    return zeroed


# ------------------------------------------------------------------ channel groups
def check_group_layer(layer):
    """Raises `ValueError` unless `layer` produces channel groups: a Dense or one-group, channels-last Conv2D.

    `sparsity_type="group"` wraps only such producers; a `DepthwiseConv2D`
    is never wrapped (its channels are members of its producer's groups).
    """
    if not is_unit_layer(layer):
        raise ValueError(
            f"sparsity_type='group' removes channel groups made by Dense and Conv2D layers "
            f"(channels last, groups=1); the pruning policy chose layer {layer.name!r} of type "
            f"{layer_kind(layer)}. Keep it out of the pruning (e.g. "
            f"`MultiTaskPruningPolicy(exclude=[{layer.name!r}])`) or use "
            f"sparsity_type='unstructured'.")
    return layer


def _base_of(model):
    return model.base_model if isinstance(model, MultiTaskModel) else model


def pruned_groups(model, groups=None):
    """The channel groups a `sparsity_type="group"` run removes from: every producer is wrapped.

    A prunable `ChannelGroup` (`dependency.channel_groups`) whose producer
    layers all carry a tfmot pruning wrapper; the wrappers are where the
    pruning policy's choice is recorded (and saved with the model).

    Args:
        model: a Functional model with pruning wrappers, or a `MultiTaskModel` on one.
        groups: its `channel_groups` (computed when not given).

    Returns:
        The list of those groups, in `groups` order.
    """
    base = _base_of(model)
    groups = channel_groups(base) if groups is None else groups
    wrapped = {wrapper.layer.name for wrapper in pruning_wrappers(base)}
    return [g for g in groups if g.prunable and set(g.family) <= wrapped]


def _producer_masks(model):
    return {wrapper.layer.name: wrapper.pruning_vars[0] for wrapper in pruning_wrappers(model)}


class RemovedGroups:
    r"""The removed channel groups of a model, read from its masks, and the hold that keeps them removed.

    A group of `pruned_groups` counts as removed when the mask column of
    every one of its producer units is all zero (in `sparsity_type="group"`
    only `prune_channel_groups` writes the masks). `hold` multiplies every
    weight entry of the removed groups (`dependency.group_slices`: the
    producers' kernel columns and biases, the members' BatchNormalization
    `gamma`, `beta`, `moving_mean` and DepthwiseConv2D kernel and bias
    slices) by 0, so each removed channel is exactly ``act(0)`` again after a
    training step moved them (the biases, `beta` and depthwise slices get
    gradients that no tfmot mask stops).

    Args:
        model: a model with pruning wrappers (Functional, or a `MultiTaskModel` on one).
        groups: its `channel_groups` (computed when not given).

    Attributes:
        removed: the indices (in `groups`) of the removed groups.
        groups: the `channel_groups` of the model.

    Example:

    >>> removed = RemovedGroups(model)
    >>> len(removed.removed)          # e.g. half the groups of every family
    >>> removed.hold()                # re-zeroes every weight entry of those groups
    """

    def __init__(self, model, groups=None):
        base = _base_of(model)
        self.groups = channel_groups(base) if groups is None else groups
        masks = _producer_masks(base)
        values = {name: mask.numpy() for name, (_, mask, _) in masks.items()}
        self.removed = [g.index for g in pruned_groups(base, self.groups)
                        if not any(values[name][..., unit].any() for name, unit in g.producers)]
        keeps = {}
        removed = [self.groups[k] for k in self.removed]
        for entries in group_slices(base, removed):
            for variable, index, _ in entries:
                if id(variable) not in keeps:
                    keeps[id(variable)] = (variable, np.ones(variable.shape, np.float32))
                keeps[id(variable)][1][index] = 0.0
        self._holds = [(variable, tf.constant(keep)) for variable, keep in keeps.values()]

    def hold(self):
        """Sets every weight entry of the removed groups to 0 (see the class docstring)."""
        for variable, keep in self._holds:
            variable.assign(variable * tf.cast(keep, variable.dtype))


def prune_channel_groups(model, fraction, scores=None, groups=None, ranking="per_family",
                         max_fraction=None):
    """Removes the lowest-scored channel groups of `pruned_groups`, masks included.

    `dependency.prune_groups` chooses and zeroes the groups (per family, each
    family loses ``round(fraction · n)`` of its ``n`` groups and keeps one;
    or ranked across the model, `ranking`), with every producer that is not
    wrapped excluded; then the producers' mask
    columns of the removed groups are set to 0, so that tfmot's wrappers keep
    them zero in every forward pass, and `RemovedGroups.hold` zeroes the rest.

    Args:
        model: a model with pruning wrappers around its Dense/Conv2D
            producers (holding their masks, e.g. `ReweightedL1Schedule` with
            `sparsity_type="group"`), or a `MultiTaskModel` on one.
        fraction: the fraction of each family's groups to remove, in `[0, 1)`.
        scores: one score per group of `groups` (lowest removed first);
            default the groups' ℓ2 norms (`dependency.group_norms`).
        groups: its `channel_groups` (computed when not given).
        ranking: `"per_family"`, `"global"` or `"global_cost"`
            (`dependency.prune_groups`). Defaults to `"per_family"`.
        max_fraction: with a global ranking, the most of a family's groups
            that may go (`dependency.prune_groups`). Defaults to `None`.

    Returns:
        `RemovedGroups` of `model` after the prune.

    Example:

    >>> removed = prune_channel_groups(wrapped, 0.5, ranking="global")
    >>> removed.removed                     # the indices of the removed groups
    """
    base = _base_of(model)
    groups = channel_groups(base) if groups is None else groups
    masks = _producer_masks(base)
    exclude = sorted({name for g in groups for name, _ in g.producers if name not in masks})
    removed = prune_groups(base, fraction, scores=scores, groups=groups, exclude=exclude,
                           ranking=ranking, max_fraction=max_fraction)
    new_masks = {}
    for k in removed:
        for name, unit in groups[k].producers:
            weight, mask, _ = masks[name]
            if name not in new_masks:
                new_masks[name] = (weight, mask, mask.numpy())
            new_masks[name][2][..., unit] = 0.0
    for weight, mask, value in new_masks.values():
        mask.assign(value)
        weight.assign(weight.numpy() * value)
    result = RemovedGroups(base, groups)
    result.hold()
    return result
