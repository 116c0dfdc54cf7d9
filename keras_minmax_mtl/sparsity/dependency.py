r"""Channel dependency groups: the channels of a Functional model that can only be removed together.

Removing output channel ``j`` of a convolution is only possible if every
layer that sees that channel can lose it too. In a residual block the two
inputs of an `Add` must lose the same channels; a `DepthwiseConv2D` or a
`BatchNormalization` has one channel out for each channel in; a
`Concatenate` stacks its inputs' channels at offsets; a squeeze-excite
`Multiply` scales channel ``j`` by channel ``j`` of another branch. This
module follows every channel of a Functional `tf_keras` model through such
layers (the idea of Torch-Pruning's DepGraph, Fang et al., CVPR 2023) and
groups the channels that are tied together.

**The graph.** Every tensor's last axis carries one channel id per channel.
A `Dense` or `Conv2D` (one group, channels last) *produces* fresh ids, one
per output unit, and *consumes* its input ids (kernel rows). Layers that
keep channels (`BatchNormalization`, `DepthwiseConv2D` — ``depth_multiplier``
outputs per input channel —, `ZeroPadding2D`, pooling, global pooling,
`Dropout`, element-wise activations, `ReLU`, `Flatten` — each channel
repeated once per position —, a `Reshape` that keeps the last axis) pass
them on; `Add` / `Subtract` / `Multiply` / `Average` / `Maximum` / `Minimum`
*merge* the ids of their inputs channel by channel (union-find), and
`Concatenate` on the last axis concatenates them. A **group** is one class
of merged ids: the producers' units that make it, the consumers' input
channels that read it, and the channel-keeping layers with weights
(`members`: BatchNormalization, DepthwiseConv2D) on the way. Nested
Functional models (a `tf_keras.applications` trunk called as ``h =
trunk(x)``) are entered (`trace_graph`); `inline_nested_models` rebuilds a
model that calls their layers in the outer graph.

**What cannot be cut.** A group is *unprunable*, and says why in its
`reason`, when one of its channels is a model input or reaches a model
output, passes a layer this module does not know (its channels may be
mixed), a `Reshape` that changes the channel axis, a grouped convolution or
a shared layer, or is produced by a layer whose activation is not
element-wise (e.g. softmax).

**Importance.** `group_norms` is the ℓ2 norm of every weight a group would
delete (the producers' kernel columns, the consumers' kernel rows, the
members' gamma and depthwise kernel slices),

.. math::  \|g\|_2 = \Big(\sum_{p \in g} p^2\Big)^{1/2};

`task_taylor_importance` is, per task ``t``, the first-order Taylor estimate
of the loss change if the group is removed (Molchanov et al., CVPR 2019),
summed over batches ``b``,

.. math::  I_t(g) = \sum_b \Big(\sum_{p \in g} p\, \frac{\partial L_{t,b}}{\partial p}\Big)^2 ,

and `group_scores` turns the per-task importances into one score per group:
each task's ``I_t`` is divided by its sum over groups (tasks of different
loss scales weigh alike), then ``rule="worst"`` takes the task that would
lose most, weighted by the min-max task weights ``w`` (``K w_t``, 1 for
equal weights), ``s(g) = \max_t K w_t Î_t(g)``, so a group one task alone
relies on scores high and is kept; ``rule="weighted"`` takes ``Σ_t w_t
Î_t(g)``.

**Removal.** `prune_groups` zeroes the lowest-scored groups: the producers'
kernel columns and biases, the members' gamma, beta and moving mean and the
depthwise kernel and bias slices, so that every channel of a removed group
is exactly ``act(0)`` at every position (0 for relu / linear) and
`keras_minmax_mtl.export.surgery.shrink` rebuilds the model without them.
`GroupL1Penalty` is the reweighted group-ℓ1 penalty with these groups as
the units, to train towards removable groups first.

Example:

>>> groups = channel_groups(model)                     # a Functional tf_keras model
>>> [g.producers for g in groups if g.prunable][:2]
[(('conv_a', 0), ('conv_b', 0)), (('conv_a', 1), ('conv_b', 1))]   # an Add ties them
>>> prune_groups(model, 0.5)                          # half the groups of every family
"""
import collections
import math
import numbers

import numpy as np
import tensorflow as tf

from keras_minmax_mtl.core.backend import (keras, loss_object, match_dtype_and_rank,
                                           require_functional, require_tf_keras_model)
from keras_minmax_mtl.core.outputs import keyed_by_task
from keras_minmax_mtl.sparsity.pruning import PruneLowMagnitude

__all__ = ["ELEMENTWISE_ACTIVATIONS", "MERGE_LAYERS", "PASS_THROUGH_LAYERS", "ChannelGroup",
           "unwrapped", "output_tasks", "group_slices",
           "trace_graph", "leaf_layers", "layer_calls", "inline_nested_models", "channel_groups", "group_families", "group_norms",
           "task_taylor_importance", "group_scores", "GROUP_RULES", "prune_groups",
           "RANKINGS", "group_costs",
           "GroupL1Penalty", "layer_kind", "activation_name", "is_unit_layer"]

#: Activations computed value by value, so that removing a unit leaves the others unchanged.
ELEMENTWISE_ACTIVATIONS = frozenset({
    "linear", "relu", "relu6", "sigmoid", "hard_sigmoid", "tanh", "elu", "selu", "softplus",
    "softsign", "swish", "silu", "gelu", "exponential", "mish", "leaky_relu"})

#: Layers that combine their inputs channel by channel (the channels of all inputs are tied).
MERGE_LAYERS = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")

#: Layers without weights that keep every channel where it is (channels last).
PASS_THROUGH_LAYERS = ("MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D",
                       "GlobalMaxPooling2D", "Dropout", "SpatialDropout2D", "ZeroPadding2D",
                       "Activation", "ReLU", "LeakyReLU", "ELU", "Rescaling")

#: How `group_scores` combines the tasks' importances.
GROUP_RULES = ("worst", "weighted")

#: How `prune_groups` ranks the groups: within each family, or across the model.
RANKINGS = ("per_family", "global", "global_cost")


class ChannelGroup(collections.namedtuple(
        "ChannelGroup", ["index", "producers", "consumers", "members", "prunable", "reason"])):
    """One group of channels that are removed together.

    Attributes:
        index: the group's position in `channel_groups`' list.
        producers: `((layer name, unit), ...)`: the Dense/Conv2D output units
            that make the channel (several when an `Add` ties them).
        consumers: `((layer name, input channel), ...)`: the kernel rows of
            Dense/Conv2D layers that read it (a Dense after `Flatten` reads
            one row per position).
        members: `((layer name, channel), ...)`: BatchNormalization and
            DepthwiseConv2D channels on the way.
        prunable: whether the group can be removed.
        reason: why not (`None` for a prunable group).
    """

    @property
    def family(self):
        """The sorted names of the producer layers: groups of one family share their layers."""
        return tuple(sorted({name for name, _ in self.producers}))


def layer_kind(layer):
    """The class name of `layer`, as the error messages and the per-type fractions name it."""
    return type(layer).__name__


def activation_name(activation):
    """The registered name of a Keras activation function, or `None` for a custom one."""
    name = keras.activations.serialize(activation)
    return name if isinstance(name, str) else None


def is_unit_layer(layer):
    """A layer whose output units are its kernel's last axis: Dense, channels-last one-group Conv2D."""
    if type(layer) is keras.layers.Dense:
        return True
    return (type(layer) is keras.layers.Conv2D and layer.groups == 1
            and layer.data_format == "channels_last")


def unwrapped(layer):
    """The layer a tfmot `PruneLowMagnitude` wrapper holds, or `layer` itself (other wrappers kept)."""
    while isinstance(layer, PruneLowMagnitude):
        layer = layer.layer
    return layer


def output_tasks(model):
    """The task names of a Functional model's outputs, in the order of `model.outputs`.

    Dict outputs are named by their keys (in the order Keras flattens them,
    the order of `model.outputs`); lists, tuples and single outputs by their
    output layers (the layer inside a pruning wrapper). What
    `keras_minmax_mtl.core.multitask.MultiTaskModel` calls its task names.
    """
    structure = getattr(model, "_nested_outputs", None)
    if isinstance(structure, dict):
        return [str(key) for key in tf.nest.flatten({key: key for key in structure})]
    return [unwrapped(t._keras_history.layer).name for t in model.outputs]


def _copy_layer(layer):
    """A fresh copy of `layer` (same config) and the weights to give it once it is built."""
    return layer.__class__.from_config(layer.get_config()), layer.get_weights()


def _nested(layer):
    return isinstance(layer, keras.Model) and getattr(layer, "_is_graph_network", False)


def trace_graph(model, visit, inputs):
    """Runs `visit` over every layer call of a Functional `model`, entering nested Functional models.

    Nodes are visited in graph order; a nested model's node is replaced by
    its own nodes, so `visit` only sees leaf layers. What `visit` returns
    for a node's outputs is handed to the nodes that consume them.

    Args:
        model: a Functional `tf_keras` model.
        visit: ``visit(layer, node, values) -> [value per output]``, with
            `values` the values of the node's inputs (in `node.keras_inputs`
            order) and `node` the node in the graph that holds it.
        inputs: one value per input of `model`.

    Returns:
        The values of `model.outputs`.
    """
    values = {}
    for tensor, value in zip(model.inputs, inputs):
        values[str(id(tensor))] = value
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            layer = node.layer
            if isinstance(layer, keras.layers.InputLayer):
                continue
            given = [values[str(id(t))] for t in node.keras_inputs]
            if _nested(layer):
                outputs = trace_graph(layer, visit, given)
            else:
                outputs = visit(layer, node, given)
            for tensor, value in zip(tf.nest.flatten(node.outputs), outputs):
                values[str(id(tensor))] = value
    return [values[str(id(t))] for t in model.outputs]


def leaf_layers(model):
    """The layers of `model`, those of its nested Functional models (not their inputs) in their place."""
    found, seen = [], set()
    for layer in model.layers:
        inner = [leaf for leaf in leaf_layers(layer)
                 if not isinstance(leaf, keras.layers.InputLayer)] if _nested(layer) else [layer]
        for leaf in inner:
            if id(leaf) not in seen:
                seen.add(id(leaf))
                found.append(leaf)
    return found


def layer_calls(model):
    """`{id(layer): number of calls}` of the leaf layers of `model` (see `trace_graph`)."""
    calls = collections.Counter()

    def count(layer, node, values):
        calls[id(layer)] += 1
        return [None] * len(tf.nest.flatten(node.outputs))

    trace_graph(model, count, [None] * len(model.inputs))
    return calls


def inline_nested_models(model, clone=None):
    """A copy of `model` in which the layers of every nested Functional model are called directly.

    A trunk called as a layer (``h = trunk(inputs)``, e.g. a
    `tf_keras.applications` model) hides its layers from the outer graph.
    The copy calls a fresh copy of every leaf layer (same config, same
    weights) on the outer tensors, so it computes exactly what `model`
    computes, with the same inputs, outputs, output names and layer names;
    only the nested models' own names disappear.

    Args:
        model: a Functional `tf_keras` model.
        clone: ``clone(layer) -> (new layer, weights)``, the copy of each leaf
            layer and the weights it gets once built (default: the same
            config and weights).

    Raises:
        ValueError: two leaf layers have the same name (e.g. two copies of
            one application), or an output of `model` is a nested model's
            output (its name would change); the message says which.
        TypeError: for subclassed and Keras 3 models.
    """
    require_functional(require_tf_keras_model(model, "model"), "model")
    clone = clone or _copy_layer
    for t in model.outputs:
        if _nested(t._keras_history.layer):
            raise ValueError(
                f"Cannot inline the nested model {t._keras_history.layer.name!r} of "
                f"{model.name!r}: it produces an output of the model, whose name would change. "
                "Give the output its own layer (e.g. a head) after the nested model.")
    names, copies = {}, {}

    def visit(layer, node, values):
        if names.setdefault(layer.name, layer) is not layer:
            raise ValueError(
                f"Cannot inline the nested models of {model.name!r}: two layers are named "
                f"{layer.name!r}. Rename them so that every name is unique across the nested "
                "models.")
        flat = list(node._flat_arguments)
        for (_, index), value in zip(node._keras_inputs_ids_and_indices, values):
            flat[index] = value
        args, kwargs = tf.nest.pack_sequence_as(
            (node.call_args, node.call_kwargs.values()), flat)
        kwargs = dict(zip(node.call_kwargs.keys(), kwargs))
        first = id(layer) not in copies
        if first:
            copies[id(layer)] = clone(layer)
        copy, weights = copies[id(layer)]
        outputs = copy(*args, **kwargs)
        if first and weights:
            copy.set_weights(weights)
        return tf.nest.flatten(outputs)

    inputs = [keras.Input(type_spec=t.type_spec, name=t._keras_history.layer.name)
              for t in model.inputs]
    outputs = trace_graph(model, visit, inputs)
    structure = tf.nest.pack_sequence_as(model._nested_outputs, outputs)
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], structure, name=model.name)


class _Ids:
    """Union-find over channel ids, with what each id is (producer unit or a reason it is fixed)."""

    def __init__(self):
        self.parent = []
        self.producer = []     # (layer name, unit) or None
        self.reasons = {}      # id -> reason it cannot be removed

    def fresh(self, count, producer=None, reason=None):
        start = len(self.parent)
        ids = np.arange(start, start + count)
        self.parent.extend(ids.tolist())
        self.producer.extend([None] * count if producer is None
                             else [(producer, u) for u in range(count)])
        if reason is not None:
            for i in ids:
                self.reasons[int(i)] = reason
        return ids

    def find(self, i):
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a, b):
        a, b = self.find(int(a)), self.find(int(b))
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    def fix(self, ids, reason):
        for i in np.asarray(ids).ravel():
            self.reasons.setdefault(int(i), reason)


def _channels(tensor):
    return int(tensor.shape[-1]) if tensor.shape.rank else 1


def channel_groups(model):
    """The channel groups of a Functional `model` (see the module docstring).

    Args:
        model: a Functional `tf_keras` model (nested Functional models are
            entered; tfmot `PruneLowMagnitude` wrappers are looked through:
            a wrapped layer is the layer it holds, under its own name).

    Returns:
        A list of `ChannelGroup`, ordered by the first producer's position in
        the graph; unprunable groups are included with their `reason`.
        Groups without a producer (the model inputs' channels) are left out.

    Example:

    >>> g = channel_groups(model)[0]          # conv -> BN -> relu -> depthwise -> 1x1 conv
    >>> g.producers, g.members[:2], g.consumers
    ((('conv', 0),), (('bn', 0), ('dw', 0)), (('pw', 0),))
    """
    require_functional(require_tf_keras_model(model, "model"), "model")
    ids = _Ids()
    consumers = collections.defaultdict(list)
    members = collections.defaultdict(list)
    calls = layer_calls(model)

    def visit(layer, node, inputs):
        shapes = [t.shape for t in node.keras_inputs]
        return _layer_ids(unwrapped(layer), inputs, shapes, tf.nest.flatten(node.outputs), ids,
                          consumers, members, calls[id(layer)])

    inputs = [ids.fresh(_channels(t), reason=(
        f"its channels are the model input {t._keras_history.layer.name!r}"))
        for t in model.inputs]
    outputs = trace_graph(model, visit, inputs)
    for t, state in zip(model.outputs, outputs):
        ids.fix(state, f"it reaches the model output {t._keras_history.layer.name!r}")

    classes = collections.defaultdict(list)
    for i in range(len(ids.parent)):
        classes[ids.find(i)].append(i)
    groups = []
    for root in sorted(classes):
        channel_ids = classes[root]
        producers = tuple(ids.producer[i] for i in channel_ids if ids.producer[i] is not None)
        if not producers:
            continue
        reasons = [ids.reasons[i] for i in channel_ids if i in ids.reasons]
        groups.append(ChannelGroup(
            len(groups), producers,
            tuple(sorted({c for i in channel_ids for c in consumers[i]})),
            tuple(sorted({m for i in channel_ids for m in members[i]})),
            not reasons, reasons[0] if reasons else None))
    return groups


def _layer_ids(layer, inputs, shapes, outputs, ids, consumers, members, calls):
    """The channel ids of `layer`'s outputs; records its consumers, members and fixed ids."""
    kind = layer_kind(layer)
    shared = calls > 1
    if shared:
        for state in inputs:
            ids.fix(state, f"it passes the shared layer {layer.name!r} (called {calls} times)")
    if is_unit_layer(layer):
        for row, i in enumerate(inputs[0]):
            consumers[int(i)].append((layer.name, row))
        units = int(layer.kernel.shape[-1])
        reason = None
        if activation_name(layer.activation) not in ELEMENTWISE_ACTIVATIONS:
            reason = (f"its producer {layer.name!r} has the activation "
                      f"{activation_name(layer.activation)!r}, which is not element-wise")
        if shared:
            reason = f"its producer {layer.name!r} is a shared layer (called {calls} times)"
        return [ids.fresh(units, producer=layer.name, reason=reason)]
    if kind == "DepthwiseConv2D" and layer.data_format == "channels_last":
        state = inputs[0]
        for j, i in enumerate(state):
            members[int(i)].append((layer.name, j))
        return [np.repeat(state, layer.depth_multiplier)]
    if kind == "BatchNormalization":
        axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        if list(axis) in ([len(shapes[0]) - 1], [-1]):
            for j, i in enumerate(inputs[0]):
                members[int(i)].append((layer.name, j))
            return [inputs[0]]
    elif kind == "Activation" and activation_name(layer.activation) not in \
            ELEMENTWISE_ACTIVATIONS:
        pass
    elif kind == "Rescaling" and (np.ndim(layer.scale) or np.ndim(layer.offset)):
        pass
    elif kind in PASS_THROUGH_LAYERS and getattr(layer, "data_format", "channels_last") in (
            "channels_last", None):
        return [inputs[0]]
    elif kind == "Flatten" and layer.data_format == "channels_last" and \
            None not in tuple(shapes[0][1:-1]):
        return [np.tile(inputs[0], int(np.prod(shapes[0][1:-1])))]
    elif kind == "Reshape" and shapes[0][-1] is not None and \
            tuple(layer.target_shape)[-1] == shapes[0][-1]:
        return [inputs[0]]
    elif kind in MERGE_LAYERS and len({len(s) for s in inputs}) == 1:
        for state in inputs[1:]:
            for a, b in zip(inputs[0], state):
                ids.union(a, b)
        return [inputs[0]]
    elif kind == "Concatenate" and layer.axis in (-1, len(outputs[0].shape) - 1):
        return [np.concatenate(inputs)]
    if kind == "Reshape":
        reason = f"the Reshape {layer.name!r} changes the channel axis"
    elif kind in MERGE_LAYERS:
        reason = f"the {kind} {layer.name!r} broadcasts inputs of different channel counts"
    else:
        reason = (f"it passes the layer {layer.name!r} ({kind}), whose channels cannot be "
                  "cut")
    for state in inputs:
        ids.fix(state, reason)
    return [ids.fresh(_channels(t), reason=reason) for t in outputs]


def group_families(groups):
    """`{family: [group index, ...]}` of the prunable groups (a family shares its producer layers)."""
    families = collections.defaultdict(list)
    for group in groups:
        if group.prunable:
            families[group.family].append(group.index)
    return dict(families)


def _layers_by_name(model):
    return {unwrapped(layer).name: unwrapped(layer) for layer in leaf_layers(model)}


def _slices(group, layers):
    """`[(variable, index)]`: every weight entry of `group` that shapes its channel's value.

    The index selects the channel in the variable (a tuple for numpy).
    """
    found = []
    for name, unit in group.producers:
        layer = layers[name]
        found.append((layer.kernel, (Ellipsis, unit), "kernel"))
        if layer.use_bias:
            found.append((layer.bias, (unit,), "bias"))
    for name, channel in group.members:
        layer = layers[name]
        if layer_kind(layer) == "DepthwiseConv2D":
            found.append((layer.depthwise_kernel, (slice(None), slice(None), channel),
                          "kernel"))
            if layer.use_bias:
                m = layer.depth_multiplier
                found.append((layer.bias, (slice(channel * m, (channel + 1) * m),), "bias"))
        else:
            for attribute in ("gamma", "beta", "moving_mean"):
                variable = getattr(layer, attribute, None)
                if variable is not None:
                    found.append((variable, (channel,), attribute))
    return found


def group_slices(model, groups):
    """`[[(variable, index, what), ...] per group]`: the weight entries that make each group's channels.

    The producers' kernel columns (`what="kernel"`) and biases (`"bias"`),
    the members' BatchNormalization `"gamma"`, `"beta"` and `"moving_mean"`
    entries and DepthwiseConv2D kernel and bias slices: what `prune_groups`
    zeroes (and a reweighted-ℓ1 run in `sparsity_type="group"` holds at
    zero). `index` selects the group's entries of `variable` (a NumPy index).
    Pruning wrappers are looked through.
    """
    layers = _layers_by_name(model)
    return [_slices(group, layers) for group in groups]


def group_norms(model, groups=None):
    r"""The ℓ2 norm of every weight each group would delete: ``‖g‖₂`` (see the module docstring).

    Counted: the producers' kernel columns, the consumers' kernel rows, the
    members' BatchNormalization gamma and DepthwiseConv2D kernel slices (not
    biases, beta or moving statistics).

    Returns:
        A float64 array, one norm per group of `groups` (default
        `channel_groups(model)`), 0 for a group whose weights are all zero.
    """
    groups = channel_groups(model) if groups is None else groups
    layers = _layers_by_name(model)
    cache = {}

    def values(variable):
        if id(variable) not in cache:
            cache[id(variable)] = variable.numpy().astype(np.float64)
        return cache[id(variable)]

    norms = np.zeros(len(groups))
    for k, group in enumerate(groups):
        total = 0.0
        for variable, index, what in _slices(group, layers):
            if what in ("kernel", "gamma"):
                total += float(np.sum(values(variable)[index] ** 2))
        for name, row in group.consumers:
            total += float(np.sum(values(layers[name].kernel)[..., row, :] ** 2))
        norms[k] = math.sqrt(total)
    return norms


def task_taylor_importance(model, groups, batches, losses):
    r"""Per task and group, the Taylor estimate ``I_t(g)`` of the loss change if `g` is removed.

    ``I_t(g) = Σ_b (Σ_{p ∈ g} p · ∂L_{t,b}/∂p)²`` over the batches ``b``,
    with ``p`` the weight entries that make the group's channels
    (producers' kernel columns and biases, members' gamma, beta and
    depthwise slices; Molchanov et al., 2019).

    Args:
        model: the Functional model (tfmot pruning wrappers are looked through).
        groups: its `channel_groups`.
        batches: an iterable of `(x, y)` with `y` a dict `{task: labels}`
            keyed by the task names (or a list in their order).
        losses: `{task: loss}`: a Keras loss (string, function or object)
            per task, computed as `compile` computes it (`(N,)` labels of an
            `(N, 1)` output are aligned, not broadcast). The task names are
            the keys of dict outputs, else the output layers' names
            (`output_tasks`).

    Returns:
        `(task names, array of shape (tasks, groups))`.
    """
    layers = _layers_by_name(model)
    tasks = output_tasks(model)
    if not isinstance(losses, dict) or set(losses) != set(tasks):
        raise ValueError(f"Argument `losses` must be a dict with one loss per output "
                         f"{tasks}. Received: losses={losses!r}")
    functions = {t: loss_object(losses[t]) for t in tasks}
    slices = [_slices(group, layers) for group in groups]
    variables = list({id(v): v for s in slices for v, _, _ in s}.values())
    position = {id(v): k for k, v in enumerate(variables)}
    importance = np.zeros((len(tasks), len(groups)))
    for x, y in batches:
        y = y if isinstance(y, dict) else dict(zip(tasks, y))
        with tf.GradientTape(persistent=True) as tape:
            predicted = keyed_by_task(model(x, training=False), tasks)
            task_losses = []
            for t in tasks:  # labels aligned with the outputs as `compile` aligns them
                labels, outputs, _ = match_dtype_and_rank(tf.convert_to_tensor(y[t]),
                                                          predicted[t], None)
                task_losses.append(tf.reduce_mean(functions[t](labels, outputs)))
        for t, loss in enumerate(task_losses):
            grads = tape.gradient(loss, variables)
            products = [np.zeros(v.shape) if g is None else (v.numpy() * g.numpy())
                        for v, g in zip(variables, grads)]
            for k, entries in enumerate(slices):
                total = sum(float(np.sum(products[position[id(v)]][index]))
                            for v, index, _ in entries)
                importance[t, k] += total ** 2
        del tape
    return tasks, importance


def group_scores(importance, task_weights=None, rule="worst"):
    r"""One score per group from per-task importances: ``max_t K w_t Î_t(g)`` or ``Σ_t w_t Î_t(g)``.

    ``Î_t = I_t / Σ_g I_t(g)`` (each task's importances sum to 1).

    Args:
        importance: an array `(tasks, groups)` (e.g. `task_taylor_importance`).
        task_weights: the task weights on the simplex (e.g. a
            `MinMaxMultiTask`'s `task_weights`); default equal weights.
        rule: `"worst"` (the task that would lose most) or `"weighted"`.

    Example:

    >>> group_scores(np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]))   # task 1 alone needs group 1
    array([0.5, 0.5, 0.5])
    """
    if rule not in GROUP_RULES:
        raise ValueError(f"Argument `rule` must be one of {list(GROUP_RULES)}. "
                         f"Received: rule={rule!r}")
    importance = np.asarray(importance, np.float64)
    if importance.ndim != 2:
        raise ValueError("Argument `importance` must have shape (tasks, groups). Received: "
                         f"shape={importance.shape}")
    tasks = importance.shape[0]
    weights = (np.full(tasks, 1.0 / tasks) if task_weights is None
               else np.asarray(task_weights, np.float64).reshape(-1))
    if weights.shape != (tasks,) or np.any(weights < 0) or not np.isclose(weights.sum(), 1.0):
        raise ValueError(f"Argument `task_weights` must be {tasks} non-negative numbers that sum "
                         f"to 1. Received: task_weights={task_weights!r}")
    totals = importance.sum(axis=1, keepdims=True)
    normalised = np.divide(importance, totals, out=np.zeros_like(importance),
                           where=totals > 0)
    if rule == "worst":
        return np.max(tasks * weights[:, None] * normalised, axis=0)
    return weights @ normalised


def _check_fraction(fraction, name):
    if (not isinstance(fraction, numbers.Real) or isinstance(fraction, bool)
            or not 0.0 <= fraction < 1.0):
        raise ValueError(f"Argument `{name}` must be in [0, 1). Received: {name}={fraction!r}")
    return float(fraction)


def group_costs(model, groups=None):
    """The number of parameters each group deletes on its own: ``c(g)``, the unit of ``ranking="global_cost"``.

    Counted: the producers' kernel columns and biases, the consumers' kernel
    rows (a `Dense` after `Flatten` has one row per position), the members'
    depthwise kernel and bias slices and their BatchNormalization entries
    (gamma, beta, moving mean and variance). When two removed groups meet in
    one kernel (the row of one, the column of the other) the entry they
    share is counted in both, so the parameters `shrink` removes are at most
    the sum of the removed groups' costs.

    Returns:
        An int64 array, one count per group of `groups` (default
        `channel_groups(model)`).

    Example:

    >>> group_costs(model)[0]      # Dense(4) on 1 input, read by a Dense(2): 1 + 1 + 2
    4
    """
    groups = channel_groups(model) if groups is None else groups
    layers = _layers_by_name(model)
    costs = np.zeros(len(groups), np.int64)
    for k, group in enumerate(groups):
        total = 0
        for name, _ in group.producers:
            layer = layers[name]
            total += int(np.prod(layer.kernel.shape[:-1])) + int(bool(layer.use_bias))
        for name, _ in group.consumers:
            shape = layers[name].kernel.shape
            total += int(np.prod(shape)) // int(shape[-2])
        for name, _ in group.members:
            layer = layers[name]
            if layer_kind(layer) == "DepthwiseConv2D":
                m = layer.depth_multiplier
                total += int(np.prod(layer.depthwise_kernel.shape[:2])) * m
                total += m if layer.use_bias else 0
            else:
                total += len(layer.weights)
        costs[k] = total
    return costs


def _check_ranking(ranking, max_fraction, largest):
    """Validates `ranking` and `max_fraction`; returns ``m``, the cap on a family's fraction (`None`: per family)."""
    if not isinstance(ranking, str) or ranking not in RANKINGS:
        raise ValueError(f"Argument `ranking` must be one of {list(RANKINGS)}. "
                         f"Received: ranking={ranking!r}")
    if ranking == "per_family":
        if max_fraction is not None:
            raise ValueError(
                "Argument `max_fraction` caps a family's share of a global ranking; with "
                "ranking='per_family' every family loses `fraction` already. Received: "
                f"max_fraction={max_fraction!r} with ranking='per_family'")
        return None
    if max_fraction is None:
        return 1.0
    if (not isinstance(max_fraction, numbers.Real) or isinstance(max_fraction, bool)
            or not 0.0 < max_fraction <= 1.0):
        raise ValueError("Argument `max_fraction` must be in (0, 1]. Received: "
                         f"max_fraction={max_fraction!r}")
    if max_fraction < largest:
        raise ValueError(
            f"Argument `max_fraction` must be >= the largest fraction to remove ({largest}), "
            "or no family could give its share. Received: "
            f"max_fraction={max_fraction!r}")
    return float(max_fraction)


def prune_groups(model, fraction, scores=None, groups=None, exclude=(), policy=None,
                 ranking="per_family", max_fraction=None):
    r"""Zeroes the lowest-scored groups of `model`, per family or ranked across the model, in place.

    Every channel of a removed group then outputs exactly ``act(0)``
    everywhere (see the module docstring), which
    `keras_minmax_mtl.export.surgery.shrink` removes. A depthwise
    convolution is never pruned on its own: its channels are members of the
    group of the 1×1 (pointwise) convolution that produces them. A family
    (the groups sharing their producer layers, e.g. the expansion channels
    of one inverted-residual block, or every channel tied by a residual
    stage's `Add`s) always keeps at least one group.

    **Per family** (``ranking="per_family"``, the default): a family ``F``
    of ``n_F`` groups with fraction ``f_F`` loses its
    ``min(round(f_F n_F), n_F − 1)`` lowest-scored groups, so every family
    shrinks alike.

    **Global** (``ranking="global"``): the scores are made comparable across
    families by dividing each by its family's mean (Torch-Pruning's default
    ``"mean"`` normaliser of group importance, used by its
    ``global_pruning``),

    .. math::  \hat s(g) = s(g) \,/\, \bar s_F, \qquad
               \bar s_F = \tfrac{1}{n_F} \textstyle\sum_{h \in F} s(h)

    (``ŝ = 0`` for a family whose scores are all 0), and
    ``ranking="global_cost"`` divides that by the parameters the group
    deletes, ``ŝ(g) / c(g)`` (`group_costs`: importance per parameter, so
    the groups of wide, expensive layers go first). The families with the
    same fraction ``f`` form one pool ``P`` (one pool when `fraction` is a
    number), which loses its ``K_P = round(f Σ_{F∈P} n_F)`` groups of lowest
    ``ŝ`` (ties by index), skipping the groups of a family that has reached
    its cap ``min(n_F − 1, ⌊m n_F⌋)``, ``m`` = `max_fraction`. So a family
    can lose from none to all but one of its groups; fewer than ``K_P``
    go only when the caps add up to less. Within a family the order is the
    per-family one (``ŝ`` is ``s`` scaled).

    Args:
        model: a Functional model (nested models are entered; their
            layers' weights are changed). Pruning wrappers are looked
            through, but their masks are not changed: for a wrapped model,
            `sparsity.structured.prune_channel_groups` zeroes the masks too.
        fraction: the fraction of the groups to remove, in `[0, 1)` (of each
            family, or of the pool with a global ranking), or a dict of
            fractions keyed by producer layer name or layer class name
            (`{"Dense": 0.25, "Conv2D": 0.5, "Conv1": 0.0}`; a name wins over
            a class; a family takes the largest fraction of its producers;
            producers not named keep all their groups).
        scores: one score per group of `groups` (lowest removed first);
            default `group_norms`. A global ranking needs them finite and
            >= 0.
        groups: `channel_groups(model)` (computed when not given).
        exclude: producer layer names whose groups are kept (e.g. the stem
            convolution; the heads are model outputs and are never pruned).
        policy: a `keras_minmax_mtl.sparsity.policy.MultiTaskPruningPolicy`:
            a family is pruned only if the policy prunes every one of its
            producers (by role: trunk, task-hidden; and its `exclude`).
        ranking: `"per_family"`, `"global"` or `"global_cost"` (see above).
            Defaults to `"per_family"`.
        max_fraction: with a global ranking, the largest fraction of any one
            family that may go, in `(0, 1]` and >= every fraction (like
            Torch-Pruning's ``max_pruning_ratio``). Defaults to `None`: all
            but one group.

    Returns:
        The sorted indices of the removed groups.

    Raises:
        ValueError: a fraction outside `[0, 1)`, `scores` of the wrong
            shape, an unknown `ranking`, `max_fraction` outside `(0, 1]`,
            below a fraction or given with ``ranking="per_family"``, or
            negative or non-finite scores with a global ranking.

    Example:

    >>> # Dense "h1" (4 units, on 1 input) -> Dense "h2" (2 units) -> heads: families
    >>> # h1 = groups 0-3 (cost 4 each), h2 = groups 4, 5 (cost 7 each)
    >>> prune_groups(model, 0.5, scores=[1, 1, 1, 5, 0.8, 1.2])                    # per family
    [0, 1, 4]
    >>> prune_groups(model, 0.5, scores=[1, 1, 1, 5, 0.8, 1.2], ranking="global")  # s / mean
    [0, 1, 2]
    >>> prune_groups(model, 0.5, scores=[1] * 6, ranking="global_cost")  # h2 keeps one
    [0, 1, 4]
    """
    fractions = (fraction if isinstance(fraction, dict) else None)
    if fractions is None:
        _check_fraction(fraction, "fraction")
    else:
        for name, value in fractions.items():
            _check_fraction(value, f"fraction[{name!r}]")
    cap = _check_ranking(ranking, max_fraction, fraction if fractions is None
                         else max(fractions.values(), default=0.0))
    groups = channel_groups(model) if groups is None else groups
    scores = group_norms(model, groups) if scores is None else np.asarray(scores, np.float64)
    if scores.shape != (len(groups),):
        raise ValueError(f"Argument `scores` must have one score per group ({len(groups)}). "
                         f"Received: shape={scores.shape}")
    bad = [k for k, g in enumerate(groups) if g.prunable and cap is not None
           and not (math.isfinite(scores[k]) and scores[k] >= 0)]
    if bad:
        raise ValueError(
            f"Argument `scores` must be finite and >= 0 with ranking={ranking!r} (each "
            "family's scores are divided by their mean). Received: "
            f"scores[{bad[0]}]={float(scores[bad[0]])!r}")
    exclude = set([exclude] if isinstance(exclude, str) else exclude)
    originals = _layers_by_name(model)
    allowed = None
    if policy is not None:
        policy.ensure_model_supports_pruning(model)
        allowed = set(policy.prunable_layer_names(model))
    removed = []
    pools = collections.defaultdict(list)     # fraction -> [members of a family, ...]
    for family, members in group_families(groups).items():
        if exclude & set(family) or (allowed is not None and not set(family) <= allowed):
            continue
        f = (fraction if fractions is None
             else max([fractions.get(name, fractions.get(layer_kind(originals[name]), 0.0))
                       for name in family]))
        if cap is None:
            count = int(math.floor(f * len(members) + 0.5))
            count = min(count, len(members) - 1)
            order = sorted(members, key=lambda k: (scores[k], k))
            removed.extend(order[:count])
        else:
            pools[float(f)].append(members)
    costs = group_costs(model, groups) if ranking == "global_cost" else None
    for f, families in pools.items():
        removed.extend(_rank_globally(families, f, cap, scores, costs))
    removed.sort()
    arrays = {}
    for k in removed:
        for variable, index, _ in _slices(groups[k], originals):
            if id(variable) not in arrays:
                arrays[id(variable)] = (variable, variable.numpy())
            arrays[id(variable)][1][index] = 0
    for variable, value in arrays.values():
        variable.assign(value)
    return removed


def _rank_globally(families, fraction, cap, scores, costs):
    """The groups one pool of families loses under a global ranking (see `prune_groups`)."""
    normalised, family_of, room = {}, {}, []
    for f, members in enumerate(families):
        mean = float(np.mean(scores[members]))
        for k in members:
            value = scores[k] / mean if mean > 0 else 0.0
            normalised[k] = value if costs is None else value / max(int(costs[k]), 1)
            family_of[k] = f
        room.append(min(len(members) - 1, int(math.floor(cap * len(members) + 1e-9))))
    budget = int(math.floor(fraction * len(normalised) + 0.5))
    chosen = []
    for k in sorted(normalised, key=lambda k: (normalised[k], k)):
        if len(chosen) == budget:
            break
        if room[family_of[k]] > 0:
            room[family_of[k]] -= 1
            chosen.append(k)
    return chosen


class GroupL1Penalty:
    r"""The reweighted group-ℓ1 penalty over dependency groups, a callable for `model.add_loss`.

    .. math::  \rho \sum_g \frac{\|g\|_2}{\|g^{\text{ref}}\|_2 + \varepsilon}

    over the prunable groups, with ``‖g‖₂`` the norm of `group_norms` (every
    producer kernel column, consumer kernel row, member gamma and depthwise
    kernel slice of the group), computed with one segment sum per variable.
    ``‖g^ref‖₂`` starts at 1 (a plain group lasso); `refresh` sets it to the
    current norms (Guo et al.'s reweighting, with the group as the unit), so
    small groups are pushed to zero harder. After training, `prune_groups`
    with its default ℓ2 scores removes the smallest groups.

    Args:
        model: a Functional model (tfmot pruning wrappers are looked through).
        rho: the penalty's weight ``ρ`` (> 0).
        groups: its `channel_groups` (computed when not given).
        epsilon: the ``ε`` of the reweighting (> 0).

    Example:

    >>> penalty = GroupL1Penalty(base, rho=1e-4)
    >>> base.add_loss(penalty)       # MultiTaskModel adds the base's losses to the objective
    >>> penalty.refresh()            # e.g. at 1/3 and 2/3 of the reweighted stage
    """

    def __init__(self, model, rho, groups=None, epsilon=1e-6):
        for name, value in (("rho", rho), ("epsilon", epsilon)):
            if (not isinstance(value, numbers.Real) or isinstance(value, bool)
                    or not math.isfinite(value) or value <= 0):
                raise ValueError(f"Argument `{name}` must be a finite number > 0. "
                                 f"Received: {name}={value!r}")
        groups = channel_groups(model) if groups is None else groups
        self.groups = [g for g in groups if g.prunable]
        self.rho, self.epsilon = float(rho), float(epsilon)
        count = len(self.groups)
        layers = _layers_by_name(model)
        segments = {}   # (id(variable), axis) -> [variable, axis, array of group ids]

        def add(variable, axis, channel, group):
            entry = segments.get((id(variable), axis))
            if entry is None:
                entry = segments[(id(variable), axis)] = [
                    variable, axis, np.full(variable.shape[axis], count, np.int32)]
            entry[2][channel] = group

        for k, group in enumerate(self.groups):
            for name, unit in group.producers:
                kernel = layers[name].kernel
                add(kernel, len(kernel.shape) - 1, unit, k)
            for name, row in group.consumers:
                kernel = layers[name].kernel
                add(kernel, len(kernel.shape) - 2, row, k)
            for name, channel in group.members:
                layer = layers[name]
                if layer_kind(layer) == "DepthwiseConv2D":
                    add(layer.depthwise_kernel, 2, channel, k)
                elif getattr(layer, "gamma", None) is not None:
                    add(layer.gamma, 0, channel, k)
        self._terms = [(v, axis, tf.constant(ids)) for v, axis, ids in segments.values()]
        self.reference = tf.Variable(tf.ones([count]), trainable=False,
                                     name="group_l1_reference")

    def norms(self):
        """The current ``‖g‖₂`` of the prunable groups (a tensor; 0 with a zero gradient at 0)."""
        count = len(self.groups)
        total = tf.zeros([count + 1])
        for variable, axis, ids in self._terms:
            rank = len(variable.shape)
            squares = tf.reduce_sum(tf.square(variable),
                                    axis=[a for a in range(rank) if a != axis])
            total += tf.math.unsorted_segment_sum(squares, ids, count + 1)
        total = total[:count]
        positive = total > 0
        return tf.where(positive, tf.sqrt(tf.where(positive, total, tf.ones_like(total))),
                        tf.zeros_like(total))

    def __call__(self):
        return self.rho * tf.reduce_sum(self.norms() / (self.reference + self.epsilon))

    def refresh(self):
        """Sets the reference norms ``‖g^ref‖₂`` to the current ones."""
        self.reference.assign(self.norms())
