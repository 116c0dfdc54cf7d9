r"""Hybrid shared + per-task sparse compression (Xie, Sun, Huang, 2022), on tfmot's pruning wrappers.

Hard parameter sharing gives every task the same trunk weights. The hybrid
model gives each task ``t`` of ``K`` its own weights

.. math::

    W_t = W_{\text{shared}} + S_t, \qquad S_t \text{ sparse},

so a task can correct the shared trunk where it needs to, at the cost of the
non-zeros of ``S_t``. A hybrid layer computes, for task ``t``,

.. math::

    y_t = \sigma\left(x_t W_{\text{shared}} + x_t S_t + b_t\right)

as the *sum of two products* (``W_shared + S_t`` is never materialised), so
an exported TFLite file holds ``W_shared`` once and every ``S_t`` as its own
constant, which the converter stores sparse. With one shared input ``x`` the
product ``x W_shared`` is computed once.

The parts:

- `HybridDense` and `HybridConv2D`: the layers (tfmot `PrunableLayer`s whose
  prunable weights are ``W_shared`` and every ``S_t``);
- `hybrid_network`: converts a hard-sharing Functional network (such as
  `multi_digits_network`) into its hybrid form, ``S_t = 0``, so that it
  computes exactly what the base network computes;
- `equal_nonzero_budget` and `split_budget`: the budget of non-zero kernel
  weights, and its split between the shared weights and the ``S_t``;
- `prune_hybrid` and `HybridPruning`: tfmot wrappers (`HoldMasks`) and the
  callback that prunes by magnitude to exactly the budgeted counts (at one
  step, or gradually on tfmot's polynomial schedule), then holds the masks.

The min-max task weighting (`MinMaxMultiTask`) or any baseline trains the
hybrid model like any other Functional multi-task network.

**The equal-non-zero rule.** "Sparsity ``s``" of a hybrid model means: its
total count of non-zero kernel weights (``W_shared``, every ``S_t``, the task
layers) equals that of the standard network with its trunk and task-hidden
kernels at sparsity ``s`` and its output kernels dense,

.. math::

    N(s) = \operatorname{round}\big((1 - s)\,P_{\text{pruned}}\big) + P_{\text{out}},

which is what reweighted-ℓ1 pruning keeps at the same ``s`` (global
allocation) on the same base network.

Example:

>>> base = multi_digits_network(seed=0)
>>> hybrid = hybrid_network(base)
>>> budget = split_budget(hybrid, equal_nonzero_budget(base, 0.9), task_share=0.25)
>>> wrapped, callbacks = prune_hybrid(hybrid, budget["shared_sparsity"], budget["task_budget"],
...                                   prune_step=1001)
>>> model = MinMaxMultiTask(wrapped)
>>> model.compile(...); model.fit(train, epochs=20, callbacks=callbacks)
>>> deployable = strip_pruning(model)
"""

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from keras_minmax_mtl.core.checks import is_finite_real, is_int, is_real
from keras_minmax_mtl.core.backend import keras, register, require_functional
from keras_minmax_mtl.sparsity.dst import HoldMasks, prune_for_dst
from keras_minmax_mtl.sparsity.policy import (
    ancestors,
    head_kernel_count,
    layer_roles,
    prunable_kernel_count,
    refuse_nested_models,
)
from keras_minmax_mtl.sparsity.pruning import (
    PruneLowMagnitude,
    check_single_step_execution,
    masked_weights,
    pruning_wrappers,
)

__all__ = [
    "HybridDense",
    "HybridConv2D",
    "HybridPruning",
    "ALLOCATIONS",
    "hybrid_network",
    "hybrid_layers",
    "equal_nonzero_budget",
    "equivalent_sparsity",
    "split_budget",
    "prune_hybrid",
    "hybrid_at_sparsity",
    "kernel_nonzeros",
]

#: How a group's non-zero count is shared between its tensors: the same
#: density in every tensor, or one magnitude ranking over the group.
ALLOCATIONS = ("uniform", "global")

_CONVERTIBLE = (keras.layers.Dense, keras.layers.Conv2D)


class _HybridLayer(keras.layers.Layer, tfmot.sparsity.keras.PrunableLayer):
    """What `HybridDense` and `HybridConv2D` share: the weights, the per-task sums, the config.

    A subclass defines `_kernel_shape(input_dim)`, `_units()` (the output
    channels), `_product(x, kernel)` and `_output_shape(input_shape)`.
    """

    def __init__(self, num_tasks, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", task_kernel_initializer="zeros",
                 bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if not is_int(num_tasks) or num_tasks < 1:
            raise ValueError(f"Argument `num_tasks` must be an integer >= 1. "
                             f"Received: num_tasks={num_tasks!r}")
        self.num_tasks = int(num_tasks)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.task_kernel_initializer = keras.initializers.get(task_kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.shared_kernel = None
        self.task_kernels = []
        self.task_biases = []

    def _input_shapes(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and input_shape \
                and isinstance(input_shape[0], (list, tuple, tf.TensorShape)):
            shapes = [tf.TensorShape(s) for s in input_shape]
            if len(shapes) != self.num_tasks:
                raise ValueError(
                    f"Layer {self.name!r} takes one shared input or a list of num_tasks="
                    f"{self.num_tasks} per-task inputs. Received a list of {len(shapes)} inputs.")
            return shapes
        return [tf.TensorShape(input_shape)]

    def build(self, input_shape):
        shapes = self._input_shapes(input_shape)
        dims = {s[-1] for s in shapes}
        if len(dims) != 1 or None in dims:
            raise ValueError(f"Layer {self.name!r} needs inputs with one known last dimension. "
                             f"Received input shapes {[tuple(s) for s in shapes]}.")
        shape = self._kernel_shape(int(dims.pop()))
        self.shared_kernel = self.add_weight("shared_kernel", shape=shape,
                                             initializer=self.kernel_initializer)
        self.task_kernels = [self.add_weight(f"task_kernel_{t}", shape=shape,
                                             initializer=self.task_kernel_initializer)
                             for t in range(self.num_tasks)]
        self.task_biases = [self.add_weight(f"task_bias_{t}", shape=(self._units(),),
                                            initializer=self.bias_initializer)
                            for t in range(self.num_tasks)] if self.use_bias else []
        super().build(input_shape)

    def call(self, inputs):
        per_task = isinstance(inputs, (list, tuple))
        if per_task and len(inputs) != self.num_tasks:
            raise ValueError(
                f"Layer {self.name!r} takes one shared input or a list of num_tasks="
                f"{self.num_tasks} per-task inputs. Received a list of {len(inputs)} inputs.")
        shared = None if per_task else self._product(inputs, self.shared_kernel)
        outputs = []
        for t in range(self.num_tasks):
            x = inputs[t] if per_task else inputs
            y = (self._product(x, self.shared_kernel) if per_task else shared) \
                + self._product(x, self.task_kernels[t])
            if self.use_bias:
                y = tf.nn.bias_add(y, self.task_biases[t])
            outputs.append(self.activation(y))
        return outputs

    def compute_output_shape(self, input_shape):
        shapes = self._input_shapes(input_shape)
        if len(shapes) == 1:
            shapes = shapes * self.num_tasks
        return [self._output_shape(s) for s in shapes]

    def get_prunable_weights(self):
        """``[W_shared, S_1, …, S_K]`` (tfmot's `PrunableLayer` interface)."""
        return [self.shared_kernel, *self.task_kernels]

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_tasks": self.num_tasks,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "task_kernel_initializer": keras.initializers.serialize(self.task_kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        })
        return config


@register
class HybridDense(_HybridLayer):
    r"""A Dense layer with one shared kernel and one sparse-prunable kernel per task.

    For task ``t`` of `num_tasks`:

    .. math:: y_t = \sigma(x_t W_{\text{shared}} + x_t S_t + b_t)

    computed as the sum of the two products. The input is either one tensor
    ``x`` shared by every task (then ``x W_shared`` is computed once) or a
    list of `num_tasks` tensors ``x_t``; the output is always a list of
    `num_tasks` tensors. Weights: `shared_kernel`, `task_kernel_{t}` and
    `task_bias_{t}`; the prunable weights (tfmot `PrunableLayer`) are the
    shared kernel and every task kernel.

    Args:
        units: positive output width.
        num_tasks: the number of tasks ``K``, `>= 1`.
        activation: applied to every task's output. Defaults to `None`.
        use_bias: whether every task has a bias ``b_t``. Defaults to `True`.
        kernel_initializer: of ``W_shared``. Defaults to `"glorot_uniform"`.
        task_kernel_initializer: of every ``S_t``. Defaults to `"zeros"`.
        bias_initializer: of every ``b_t``. Defaults to `"zeros"`.

    Example:

    >>> layer = HybridDense(4, num_tasks=3, activation="relu")
    >>> left, right, total = layer(tf.ones((2, 5)))      # three (2, 4) tensors
    """

    def __init__(self, units, num_tasks, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", task_kernel_initializer="zeros",
                 bias_initializer="zeros", **kwargs):
        if not is_int(units) or units < 1:
            raise ValueError(f"Argument `units` must be an integer >= 1. Received: units={units!r}")
        self.units = int(units)
        super().__init__(num_tasks, activation=activation, use_bias=use_bias,
                         kernel_initializer=kernel_initializer,
                         task_kernel_initializer=task_kernel_initializer,
                         bias_initializer=bias_initializer, **kwargs)

    def _kernel_shape(self, input_dim):
        return (input_dim, self.units)

    def _units(self):
        return self.units

    def _product(self, x, kernel):
        if x.shape.rank == 2:
            return tf.matmul(x, kernel)
        return tf.tensordot(x, kernel, [[x.shape.rank - 1], [0]])

    def _output_shape(self, input_shape):
        return input_shape[:-1].concatenate([self.units])

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@register
class HybridConv2D(_HybridLayer):
    r"""A 2-D convolution with one shared kernel and one sparse-prunable kernel per task.

    For task ``t`` of `num_tasks`:

    .. math:: y_t = \sigma(x_t \ast W_{\text{shared}} + x_t \ast S_t + b_t)

    computed as the sum of two convolutions. Inputs, outputs and weights as in
    `HybridDense`; channels last only.

    Args:
        filters: positive number of output channels.
        kernel_size: an integer or a pair.
        num_tasks: the number of tasks ``K``, `>= 1`.
        strides: an integer or a pair. Defaults to `1`.
        padding: `"valid"` or `"same"`. Defaults to `"valid"`.
        dilation_rate: an integer or a pair. Defaults to `1`.
        activation: Defaults to `None`.
        use_bias: Defaults to `True`.
        kernel_initializer: of ``W_shared``. Defaults to `"glorot_uniform"`.
        task_kernel_initializer: of every ``S_t``. Defaults to `"zeros"`.
        bias_initializer: of every ``b_t``. Defaults to `"zeros"`.

    Example:

    >>> layer = HybridConv2D(8, 3, num_tasks=2, padding="same", activation="relu")
    >>> a, b = layer(tf.ones((1, 12, 16, 1)))             # two (1, 12, 16, 8) tensors
    """

    def __init__(self, filters, kernel_size, num_tasks, strides=1, padding="valid",
                 dilation_rate=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", task_kernel_initializer="zeros",
                 bias_initializer="zeros", **kwargs):
        if not is_int(filters) or filters < 1:
            raise ValueError(f"Argument `filters` must be an integer >= 1. "
                             f"Received: filters={filters!r}")
        self.filters = int(filters)
        self.kernel_size = self._pair(kernel_size, "kernel_size")
        self.strides = self._pair(strides, "strides")
        self.dilation_rate = self._pair(dilation_rate, "dilation_rate")
        if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
            raise ValueError(f"Argument `padding` must be 'valid' or 'same'. "
                             f"Received: padding={padding!r}")
        self.padding = padding.lower()
        super().__init__(num_tasks, activation=activation, use_bias=use_bias,
                         kernel_initializer=kernel_initializer,
                         task_kernel_initializer=task_kernel_initializer,
                         bias_initializer=bias_initializer, **kwargs)

    @staticmethod
    def _pair(value, name):
        pair = (value, value) if is_int(value) else tuple(value) \
            if isinstance(value, (list, tuple)) else None
        if pair is None or len(pair) != 2 or not all(is_int(v) and v >= 1 for v in pair):
            raise ValueError(f"Argument `{name}` must be a positive integer or a pair of them. "
                             f"Received: {name}={value!r}")
        return tuple(int(v) for v in pair)

    def _kernel_shape(self, input_dim):
        return (*self.kernel_size, input_dim, self.filters)

    def _units(self):
        return self.filters

    def _product(self, x, kernel):
        return tf.nn.convolution(x, kernel, strides=self.strides, padding=self.padding.upper(),
                                 dilations=self.dilation_rate)

    def _output_shape(self, input_shape):
        space = []
        for size, k, s, d in zip(input_shape[1:3], self.kernel_size, self.strides,
                                 self.dilation_rate):
            if size is None:
                space.append(None)
            elif self.padding == "same":
                space.append(-(-size // s))
            else:
                space.append(-(-(size - (k - 1) * d) // s))
        return tf.TensorShape([input_shape[0], *space, self.filters])

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "strides": self.strides,
                "padding": self.padding, "dilation_rate": self.dilation_rate}


# ----------------------------------------------------------------- conversion
class _PerTask:
    """K tensors, one per task path (a leaf for `tf.nest`)."""

    def __init__(self, tensors):
        self.tensors = list(tensors)


def _check_convertible(layer):
    config = layer.get_config()
    extras = [key for key in ("kernel_regularizer", "bias_regularizer", "activity_regularizer",
                              "kernel_constraint", "bias_constraint") if config.get(key)]
    if extras:
        raise ValueError(
            f"Layer {layer.name!r} has {extras}, which the hybrid layers do not carry over. "
            f"Build the base network without them. Received: "
            f"{ {key: config[key] for key in extras} }")
    if isinstance(layer, keras.layers.Conv2D):
        if type(layer) is not keras.layers.Conv2D or config.get("data_format") == "channels_first" \
                or config.get("groups", 1) != 1:
            raise ValueError(
                f"Layer {layer.name!r} must be a plain channels-last `Conv2D` with groups=1 to "
                f"become a `HybridConv2D`. Received: {type(layer).__name__}, "
                f"data_format={config.get('data_format')!r}, groups={config.get('groups')!r}")
    elif type(layer) is not keras.layers.Dense:
        raise ValueError(f"Layer {layer.name!r} must be a `Dense` or `Conv2D` layer to become a "
                         f"hybrid layer. Received: {type(layer).__name__}")


def _hybrid_from(layer, num_tasks):
    config = layer.get_config()
    common = dict(num_tasks=num_tasks, activation=config["activation"],
                  use_bias=config["use_bias"], kernel_initializer=config["kernel_initializer"],
                  bias_initializer=config["bias_initializer"], name=layer.name)
    if isinstance(layer, keras.layers.Conv2D):
        return HybridConv2D(config["filters"], config["kernel_size"], strides=config["strides"],
                            padding=config["padding"], dilation_rate=config["dilation_rate"],
                            **common)
    return HybridDense(config["units"], **common)


def _clone(layer):
    return layer.__class__.from_config(layer.get_config())


def hybrid_layers(model):
    """The `HybridDense` and `HybridConv2D` layers of `model` (looking through pruning wrappers)."""
    found = []
    for layer in model.layers:
        inner = layer.layer if isinstance(layer, PruneLowMagnitude) else layer
        if isinstance(inner, _HybridLayer):
            found.append(inner)
    return found


def hybrid_network(base_model, layer_names=None, name=None):
    """Converts a hard-sharing Functional network into its hybrid form; `base_model` is unchanged.

    Every chosen layer (by default, every `Dense` and `Conv2D` layer of the
    trunk, i.e. that every task output depends on) becomes a `HybridDense` or
    `HybridConv2D` with ``W_shared`` = its kernel, ``b_t`` = its bias and
    ``S_t = 0``. From the first hybrid layer on, the network runs one path
    per task: the parameter-free layers (pooling, flatten, …) are applied on
    every path, the layers of a task (its hidden and output layers) on that
    task's path. All the other layers are copies of the base's, with its
    weights, and keep their names, so the outputs are named after the tasks
    and the result goes straight into `MultiTaskModel` / `MinMaxMultiTask`.
    The hybrid network computes exactly what `base_model` computes until
    the ``S_t`` change.

    Args:
        base_model: a built Functional `tf_keras` multi-task model whose
            output layers are named after the tasks.
        layer_names: names of the `Dense`/`Conv2D` layers to convert. Every
            one must be called once in the graph. Defaults to `None`: every
            trunk `Dense` and `Conv2D` layer.
        name: of the new model. Defaults to `None`: `f"{base_model.name}_hybrid"`.

    Returns:
        An uncompiled Functional `tf_keras` model.

    Raises:
        TypeError: for Keras 3 and subclassed models.
        ValueError: for unknown or unconvertible layer names, layers called
            more than once, and layers with weights that would have to be
            shared between the task paths (e.g. a `BatchNormalization` after
            the first hybrid layer in the trunk).

    Example:

    >>> hybrid = hybrid_network(multi_digits_network(seed=0))
    >>> [type(layer).__name__ for layer in hybrid_layers(hybrid)]
    ['HybridConv2D', 'HybridConv2D', 'HybridDense']
    """
    require_functional(base_model, "base_model")
    refuse_nested_models(base_model, "The hybrid strategy (`hybrid_network`)")
    roles = layer_roles(base_model)
    convertible = [layer.name for layer in base_model.layers if isinstance(layer, _CONVERTIBLE)]
    if layer_names is None:
        layer_names = [n for n in convertible if roles.get(n) == "trunk"]
        if not layer_names:
            raise ValueError(f"Argument `base_model` has no trunk Dense or Conv2D layer to convert "
                             f"(roles: {roles}). Received model {base_model.name!r}.")
    if isinstance(layer_names, str):
        layer_names = [layer_names]
    layer_names = list(layer_names)
    unknown = sorted(set(layer_names) - set(convertible))
    if unknown or not layer_names:
        raise ValueError(f"Argument `layer_names` must name Dense or Conv2D layers of the model "
                         f"{convertible}. Received: layer_names={layer_names!r}")
    output_layers = [t._keras_history.layer for t in base_model.outputs]
    num_tasks = len(output_layers)
    tasks_of = {}
    for index, output in enumerate(output_layers):
        for key in ancestors(output):
            tasks_of.setdefault(key, set()).add(index)
    for layer_name in layer_names:
        layer = base_model.get_layer(layer_name)
        _check_convertible(layer)
        if len(layer._inbound_nodes) != 1:
            raise ValueError(
                f"Layer {layer_name!r} is called {len(layer._inbound_nodes)} times in the graph "
                f"(e.g. once per task input); `hybrid_network` converts layers called once. "
                f"Received: layer_names={layer_names!r}")

    new_layers, values, hybrids = {}, {}, {}
    inputs = []
    for tensor, input_name in zip(base_model.inputs, base_model.input_names):
        new = keras.Input(shape=tensor.shape[1:], dtype=tensor.dtype, name=input_name)
        inputs.append(new)
        values[id(tensor)] = new

    def lookup(structure, task=None):
        def get(item):
            if id(item) not in values:  # not a tensor of the base graph
                return item
            value = values[id(item)]
            if isinstance(value, _PerTask) and task is not None:
                return value.tensors[task]
            return value
        return tf.nest.map_structure(get, structure)

    for depth in sorted(base_model._nodes_by_depth, reverse=True):
        for node in base_model._nodes_by_depth[depth]:
            if node.is_input:
                continue
            layer = node.layer
            args, kwargs = lookup((node.call_args, node.call_kwargs))
            flat = tf.nest.flatten((args, kwargs))
            per_task = any(isinstance(v, _PerTask) for v in flat)
            if layer.name in layer_names:
                first = args[0]
                hybrid = hybrids[layer.name] = _hybrid_from(layer, num_tasks)
                outputs = _PerTask(hybrid(first.tensors if isinstance(first, _PerTask) else first))
            elif per_task:
                owners = tasks_of.get(id(layer), set())
                clone = new_layers.setdefault(layer.name, _clone(layer))
                if len(owners) == 1:
                    task_args, task_kwargs = lookup((node.call_args, node.call_kwargs),
                                                    task=next(iter(owners)))
                    outputs = clone(*task_args, **task_kwargs)
                elif not layer.weights:
                    outputs = _PerTask(clone(*lookup(node.call_args, task=t),
                                             **lookup(node.call_kwargs, task=t))
                                       for t in range(num_tasks))
                else:
                    raise ValueError(
                        f"Layer {layer.name!r} ({type(layer).__name__}) has weights and is shared "
                        f"by several tasks after a hybrid layer; its weights cannot be shared "
                        f"between the task paths. Convert it too (Dense/Conv2D), or convert only "
                        f"layers after it. Received: layer_names={layer_names!r}")
            else:
                clone = new_layers.setdefault(layer.name, _clone(layer))
                outputs = clone(*args, **kwargs)
            for tensor, value in zip(tf.nest.flatten(node.outputs),
                                     [outputs] if isinstance(outputs, _PerTask)
                                     else tf.nest.flatten(outputs)):
                values[id(tensor)] = value

    outputs = []
    for index, tensor in enumerate(base_model.outputs):
        value = values[id(tensor)]
        outputs.append(value.tensors[index] if isinstance(value, _PerTask) else value)
    model = keras.Model(inputs, outputs, name=name or f"{base_model.name}_hybrid")
    for layer_name, clone in new_layers.items():
        clone.set_weights(base_model.get_layer(layer_name).get_weights())
    for layer_name, hybrid in hybrids.items():
        kernel, *bias = base_model.get_layer(layer_name).get_weights()
        hybrid.shared_kernel.assign(kernel)
        for task_kernel in hybrid.task_kernels:
            task_kernel.assign(np.zeros_like(kernel))
        for task_bias in hybrid.task_biases:
            task_bias.assign(bias[0])
    return model


# --------------------------------------------------------------------- budget
def _kernel_size(layer):
    return int(np.prod(layer.kernel.shape))


def equal_nonzero_budget(base_model, sparsity):
    r"""The non-zero kernel weights of `base_model` pruned to `sparsity` the standard way.

    .. math:: N(s) = \operatorname{round}\big((1 - s)\,P_{\text{pruned}}\big) + P_{\text{out}}

    where ``P_pruned`` counts the kernels that `MultiTaskPruningPolicy()`
    prunes (trunk and task-hidden layers) and ``P_out`` the kernels of the
    output layers, which stay dense. It is the count of non-zero kernel
    weights reweighted-ℓ1 pruning (global allocation) keeps at `sparsity`, and
    the budget a hybrid model at "sparsity `s`" gets.

    Args:
        base_model: the standard (hard-sharing) Functional network.
        sparsity: in `[0, 1)`.

    Returns:
        The integer ``N(s)``.

    Example:

    >>> equal_nonzero_budget(multi_digits_network(), 0.9)
    12168
    """
    if not is_real(sparsity) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"Argument `sparsity` must be in [0, 1). Received: sparsity={sparsity!r}")
    p_pruned, p_out = _standard_sizes(base_model)
    return int(round((1.0 - float(sparsity)) * p_pruned)) + p_out


def _standard_sizes(base_model):
    """`(P_pruned, P_out)` of a standard network (see `equal_nonzero_budget`)."""
    require_functional(base_model, "base_model")
    refuse_nested_models(base_model, "The hybrid strategy's budget (`equal_nonzero_budget`)")
    return prunable_kernel_count(base_model), head_kernel_count(base_model)


def equivalent_sparsity(base_model, nonzeros):
    r"""The sparsity ``s`` of the standard network with `nonzeros` non-zero kernel weights.

    The inverse of `equal_nonzero_budget`:
    ``s = 1 − (nonzeros − P_out) / P_pruned``; what a hybrid model with
    `nonzeros` non-zero kernel weights is compared at.

    Example:

    >>> equivalent_sparsity(base, kernel_nonzeros(model)["total"])
    0.9
    """
    p_pruned, p_out = _standard_sizes(base_model)
    return 1.0 - (int(nonzeros) - p_out) / p_pruned


def _groups(hybrid_model):
    """`(shared, task, dense)` sizes: lists of `(name, size)` of the hybrid model's kernels.

    `shared` holds every kernel `prune_hybrid` prunes that is not an ``S_t``
    (the ``W_shared`` and the task-hidden kernels), `task` every ``S_t``,
    `dense` the output layers' kernels. Raises a `ValueError` for a model
    without hybrid layers.
    """
    require_functional(hybrid_model, "hybrid_model")
    outputs = set(hybrid_model.output_names)
    shared, task, dense = [], [], []
    for layer in hybrid_model.layers:
        inner = layer.layer if isinstance(layer, PruneLowMagnitude) else layer
        if isinstance(inner, _HybridLayer):
            shared.append((f"{inner.name}/shared_kernel", int(np.prod(inner.shared_kernel.shape))))
            task += [(f"{inner.name}/task_kernel_{t}", int(np.prod(k.shape)))
                     for t, k in enumerate(inner.task_kernels)]
        elif getattr(inner, "kernel", None) is not None and not isinstance(inner, keras.Model):
            (dense if layer.name in outputs else shared).append(
                (f"{inner.name}/kernel", _kernel_size(inner)))
    if not task:
        raise ValueError(f"Argument `hybrid_model` has no hybrid layers. Convert it with "
                         f"`hybrid_network` first. Received model {hybrid_model.name!r}.")
    return shared, task, dense


def split_budget(hybrid_model, total_nonzeros, task_share):
    r"""Splits a total non-zero budget `N` between the shared kernels and the ``S_t``.

    The output layers' kernels stay dense (``P_out`` non-zeros); of the rest,

    .. math::

        n_{\text{task}} = \operatorname{round}\big(\tau\,(N - P_{\text{out}})\big),\qquad
        n_{\text{shared}} = N - P_{\text{out}} - n_{\text{task}}

    where ``τ`` is `task_share`: the ``S_t`` of all layers and tasks together
    get ``n_task`` non-zeros, the ``W_shared`` and the task-hidden kernels
    ``n_shared``. ``τ = 0`` is standard pruning of the base network.

    Args:
        hybrid_model: a model from `hybrid_network` (wrapped or not).
        total_nonzeros: ``N``, an integer, e.g. `equal_nonzero_budget(base, s)`.
        task_share: ``τ``, in `[0, 1)`.

    Returns:
        `{"shared_sparsity", "task_budget", "shared_nonzeros", "dense_nonzeros"}`:
        the first two are the arguments of `prune_hybrid` that keep exactly
        ``n_shared`` and ``n_task`` non-zeros.

    Raises:
        ValueError: if `task_share` is outside `[0, 1)`, `N` is not an integer,
            or the split is impossible: ``N − P_out`` leaves a shared kernel
            with no non-zero, or ``n_task`` exceeds the size of the ``S_t``.

    Example:

    >>> split_budget(hybrid, 12168, task_share=0.25)["task_budget"]
    2730
    """
    if not is_real(task_share) or not 0.0 <= task_share < 1.0:
        raise ValueError(f"Argument `task_share` must be in [0, 1) (1 would leave W_shared with "
                         f"no non-zeros). Received: task_share={task_share!r}")
    if not is_int(total_nonzeros):
        raise ValueError(f"Argument `total_nonzeros` must be an integer. "
                         f"Received: total_nonzeros={total_nonzeros!r}")
    shared, task, dense = _groups(hybrid_model)
    p_out = sum(size for _, size in dense)
    rest = int(total_nonzeros) - p_out
    n_task = int(round(task_share * rest))
    n_shared = rest - n_task
    if n_shared < len(shared):
        raise ValueError(
            f"Argument `total_nonzeros` must leave every shared kernel at least one non-zero: "
            f"N - P_out - n_task = {total_nonzeros} - {p_out} - {n_task} = {n_shared} < "
            f"{len(shared)} shared kernels. Received: total_nonzeros={total_nonzeros!r}, "
            f"task_share={task_share!r}")
    task_size = sum(size for _, size in task)
    if n_task > task_size:
        raise ValueError(
            f"Argument `task_share` gives the S_t n_task = round(task_share * (N - P_out)) = "
            f"{n_task} non-zeros, more than their {task_size} weights. Received: "
            f"task_share={task_share!r}, total_nonzeros={total_nonzeros!r}")
    shared_size = sum(size for _, size in shared)
    return {"shared_sparsity": 1.0 - n_shared / shared_size, "task_budget": n_task,
            "shared_nonzeros": n_shared, "dense_nonzeros": p_out}


def _shared_count(shared_sparsity, shared):
    size = sum(s for _, s in shared)
    if not is_real(shared_sparsity) or not 0.0 <= shared_sparsity < 1.0:
        raise ValueError(f"Argument `shared_sparsity` must be in [0, 1). "
                         f"Received: shared_sparsity={shared_sparsity!r}")
    count = int(round((1.0 - float(shared_sparsity)) * size))
    if count < len(shared):
        raise ValueError(
            f"Argument `shared_sparsity` must leave every shared kernel at least one non-zero: "
            f"round((1 - shared_sparsity) * {size}) = {count} < {len(shared)} shared kernels "
            f"{[n for n, _ in shared]}. Received: shared_sparsity={shared_sparsity!r}")
    return count


def _task_count(task_budget, task, trunk_size):
    task_size = sum(s for _, s in task)
    if is_int(task_budget):
        count = int(task_budget)
    elif is_finite_real(task_budget):
        count = int(round(float(task_budget) * trunk_size))
    else:
        count = -1
    if not 0 <= count <= task_size:
        raise ValueError(
            f"Argument `task_budget` must be a count of non-zeros in [0, {task_size}] (the size "
            f"of all S_t) or a fraction of the {trunk_size} shared trunk weights in "
            f"[0, {task_size / trunk_size:g}]. Received: task_budget={task_budget!r}")
    return count


# -------------------------------------------------------------------- pruning
def _allocate(values, total, minimum, allocation):
    """Non-zero counts per tensor summing to `total`, each `>= minimum`, by `allocation`."""
    sizes = np.array([v.size for v in values])
    counts = np.full(len(values), minimum, dtype=np.int64)
    rest = int(total) - minimum * len(values)
    if rest <= 0:
        return counts
    if allocation == "uniform":
        room = sizes - minimum
        quota = rest * room / room.sum()
        extra = np.floor(quota).astype(np.int64)
        order = np.argsort(-(quota - extra), kind="stable")
        extra[order[:rest - int(extra.sum())]] += 1
        return counts + extra
    magnitudes = []
    for v in values:  # each tensor's `minimum` largest weights are reserved; rank the others
        flat = np.sort(np.abs(v.ravel()))[::-1]
        magnitudes.append(flat[minimum:])
    owner = np.repeat(np.arange(len(values)), [m.size for m in magnitudes])
    order = np.argsort(-np.concatenate(magnitudes), kind="stable")[:rest]
    return counts + np.bincount(owner[order], minlength=len(values))


def _top_mask(value, count):
    flat = np.abs(value.ravel())
    mask = np.zeros(flat.size, dtype=value.dtype)
    mask[np.argsort(-flat, kind="stable")[:count]] = 1
    return mask.reshape(value.shape)


class HybridPruning(keras.callbacks.Callback):
    r"""Prunes the wrapped kernels of a hybrid model by magnitude to exact non-zero counts.

    Two groups of kernels, held by tfmot `PruneLowMagnitude` wrappers with the
    `HoldMasks` schedule (tfmot applies the masks, this callback sets them):
    the **task** group (every ``S_t``) keeps `task_nonzeros` non-zeros, the
    **shared** group (every other wrapped kernel: ``W_shared`` and the
    task-hidden kernels) keeps `shared_nonzeros`. At every prune step ``k``
    (tfmot's 1-based step count) each group keeps

    .. math::

        n_k = n + \operatorname{round}\Big((n_0 - n)
              \big(1 - \tfrac{k - k_0}{k_1 - k_0}\big)^3\Big)

    weights (``n_0`` its size, ``n`` its target, ``k_0`` = `prune_step`,
    ``k_1`` = `end_step`; tfmot's `PolynomialDecay` from sparsity 0), the
    largest-magnitude ones of the weights still active. Prune steps: `prune_step`,
    then every `frequency` steps, and `end_step`. With `end_step=None` the
    prune is one-shot at `prune_step`. After the last prune the masks are held.
    The group's count is shared between its tensors by `allocation`:
    `"uniform"` (same density, largest remainders) or `"global"` (one
    magnitude ranking); every shared kernel keeps at least one weight.

    Args:
        shared_nonzeros: the shared group's final non-zero count.
        task_nonzeros: the task group's final non-zero count.
        prune_step: the first (or only) prune step, `>= 1`.
        end_step: the last prune step, `> prune_step`, or `None` (one-shot).
            Defaults to `None`.
        frequency: steps between gradual prunes, `>= 1`. Defaults to `100`.
        allocation: `"uniform"` or `"global"`. Defaults to `"uniform"`.

    Attributes:
        history: one dict per prune: `step`, and the `shared` and `task` counts kept.

    Example:

    >>> wrapped, callbacks = prune_hybrid(hybrid, 0.95, 1000, prune_step=501)
    >>> model.fit(train, callbacks=callbacks)   # [UpdatePruningStep(), HybridPruning(...)]
    """

    def __init__(self, shared_nonzeros, task_nonzeros, prune_step, end_step=None,
                 frequency=100, allocation="uniform"):
        super().__init__()
        for name, value in (("shared_nonzeros", shared_nonzeros),
                            ("task_nonzeros", task_nonzeros)):
            if not is_int(value) or value < 0:
                raise ValueError(f"Argument `{name}` must be an integer >= 0. "
                                 f"Received: {name}={value!r}")
        if not is_int(prune_step) or prune_step < 1:
            raise ValueError(f"Argument `prune_step` must be an integer >= 1 (tfmot's first "
                             f"training step is 1). Received: prune_step={prune_step!r}")
        if end_step is not None and (not is_int(end_step) or end_step <= prune_step):
            raise ValueError(f"Argument `end_step` must be None or an integer > prune_step="
                             f"{prune_step}. Received: end_step={end_step!r}")
        if not is_int(frequency) or frequency < 1:
            raise ValueError(f"Argument `frequency` must be an integer >= 1. "
                             f"Received: frequency={frequency!r}")
        if allocation not in ALLOCATIONS:
            raise ValueError(f"Argument `allocation` must be one of {list(ALLOCATIONS)}. "
                             f"Received: allocation={allocation!r}")
        self.shared_nonzeros = int(shared_nonzeros)
        self.task_nonzeros = int(task_nonzeros)
        self.prune_step = int(prune_step)
        self.end_step = None if end_step is None else int(end_step)
        self.frequency = int(frequency)
        self.allocation = allocation
        self.history = []
        self.step = None

    @property
    def prune_steps(self):
        """The steps at which masks change."""
        if self.end_step is None:
            return (self.prune_step,)
        steps = set(range(self.prune_step, self.end_step, self.frequency)) | {self.end_step}
        return tuple(sorted(steps))

    def _target(self, size, final, step):
        if self.end_step is None:
            return final
        progress = (step - self.prune_step) / (self.end_step - self.prune_step)
        return final + int(round((size - final) * (1.0 - progress) ** 3))

    def on_train_begin(self, logs=None):
        check_single_step_execution(self.model, "HybridPruning")
        wrappers = pruning_wrappers(self.model)
        other = sorted(w.layer.name for w in wrappers if not isinstance(w.pruning_schedule,
                                                                          HoldMasks))
        if not wrappers or other:
            raise ValueError(
                "`HybridPruning` needs a model whose wrapped layers all use `HoldMasks` (so "
                "tfmot does not overwrite its masks); wrap the hybrid model with "
                f"`prune_hybrid`. Layers with other schedules: {other}; wrappers found: "
                f"{len(wrappers)}.")
        self._groups = {"shared": [], "task": []}
        for wrapper in wrappers:
            for weight, mask, _ in wrapper.pruning_vars:
                is_task = isinstance(wrapper.layer, _HybridLayer) and any(
                    weight is k for k in wrapper.layer.task_kernels)
                self._groups["task" if is_task else "shared"].append((weight, mask))
        for group, final in (("shared", self.shared_nonzeros), ("task", self.task_nonzeros)):
            tensors = self._groups[group]
            size = sum(int(np.prod(w.shape)) for w, _ in tensors)
            minimum = len(tensors) if group == "shared" else 0
            if not minimum <= final <= size:
                raise ValueError(
                    f"Argument `{group}_nonzeros` must be in [{minimum}, {size}] for this model "
                    f"(its {len(tensors)} {group} kernels; each shared kernel keeps >= 1). "
                    f"Received: {group}_nonzeros={final}")
        # The step is read at the first batch, after every callback's `on_train_begin`
        # (a `BackupAndRestore` listed after this one has restored `pruning_step` by then).
        self._wrappers = wrappers
        self.step = None
        self._prune_at = frozenset(self.prune_steps)

    def on_train_batch_begin(self, batch, logs=None):
        if self.step is None:
            self.step = max(int(self._wrappers[0].pruning_step.numpy()), 0)
        step = self.step + 1
        if step not in self._prune_at:  # built once in on_train_begin, not every batch
            return
        record = {"step": step}
        for group, final in (("shared", self.shared_nonzeros), ("task", self.task_nonzeros)):
            tensors = self._groups[group]
            values = [w.numpy() * m.numpy() for w, m in tensors]
            target = self._target(sum(v.size for v in values), final, step)
            counts = _allocate(values, target, 1 if group == "shared" else 0, self.allocation)
            for (weight, mask), value, count in zip(tensors, values, counts):
                new = _top_mask(value, int(count))
                mask.assign(new)
                weight.assign(value * new)
            record[group] = int(counts.sum())
        self.history.append(record)

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1


def prune_hybrid(hybrid_model, shared_sparsity, task_budget, prune_step, end_step=None,
                 frequency=100, allocation="uniform"):
    """Wraps a hybrid model for pruning to a budget; returns the copy and the callbacks to fit it.

    The hybrid layers and the task-hidden `Dense`/`Conv` layers of a copy of
    `hybrid_model` are wrapped by tfmot's `PruneLowMagnitude` with the
    `HoldMasks` schedule (`dst.prune_for_dst`); the output layers stay dense.
    `HybridPruning` then prunes by magnitude at `prune_step` (or gradually
    until `end_step`) so that exactly

    - ``round((1 − shared_sparsity) · P_shared)`` weights of the ``W_shared``
      and task-hidden kernels (``P_shared`` weights together) and
    - `task_budget` weights of all the ``S_t`` together

    are non-zero. Train densely before `prune_step` (the ``S_t`` start at 0
    and need training to have magnitudes to rank).

    Args:
        hybrid_model: a model from `hybrid_network` (not changed).
        shared_sparsity: in `[0, 1)`.
        task_budget: the non-zeros of all ``S_t``: an integer count, or a
            float fraction of the shared trunk's weights (the ``W_shared``
            sizes), at most the number of tasks.
        prune_step: the step of the (first) prune, `>= 1`.
        end_step: the step of the last prune for gradual pruning. Defaults
            to `None`: one-shot.
        frequency: steps between gradual prunes. Defaults to `100`.
        allocation: `"uniform"` or `"global"`. Defaults to `"uniform"`.

    Returns:
        `(wrapped_model, [UpdatePruningStep(), HybridPruning(...)])`.

    Raises:
        ValueError: for a model without hybrid layers, and for budgets that
            cannot be met (negative, larger than the ``S_t``, or leaving a
            shared kernel with no non-zero).

    Example:

    >>> wrapped, callbacks = prune_hybrid(hybrid, shared_sparsity=0.95, task_budget=0.01,
    ...                                   prune_step=501)
    """
    require_functional(hybrid_model, "hybrid_model")
    shared, task, _ = _groups(hybrid_model)
    trunk_size = sum(size for name, size in shared if name.endswith("/shared_kernel"))
    shared_count = _shared_count(shared_sparsity, shared)
    task_count = _task_count(task_budget, task, trunk_size)
    callback = HybridPruning(shared_count, task_count, prune_step, end_step=end_step,
                             frequency=frequency, allocation=allocation)
    wrapped = prune_for_dst(hybrid_model)
    return wrapped, [tfmot.sparsity.keras.UpdatePruningStep(), callback]


def hybrid_at_sparsity(base_model, sparsity, task_share, prune_step, end_step=None,
                       frequency=100, allocation="uniform"):
    """`hybrid_network`, `split_budget` at the equal-non-zero budget of `sparsity`, `prune_hybrid`.

    The one call behind `kmm train --pruning hybrid` and the `hybrid`
    compression of the benchmarks: the hybrid form of `base_model` (not
    changed), wrapped to keep exactly `equal_nonzero_budget(base_model,
    sparsity)` non-zero kernel weights, `task_share` of them (after the
    output layers) in the ``S_t``.

    Args:
        base_model: the standard Functional network.
        sparsity: in `[0, 1)`.
        task_share: in `[0, 1)`.
        prune_step, end_step, frequency, allocation: as in `prune_hybrid`.

    Returns:
        `(wrapped_model, callbacks, split)`, `split` being `split_budget`'s
        dict with the total budget under `"total_nonzeros"`.

    Example:

    >>> wrapped, callbacks, split = hybrid_at_sparsity(base, 0.9, 0.25, prune_step=941)
    """
    total = equal_nonzero_budget(base_model, sparsity)
    network = hybrid_network(base_model)
    split = split_budget(network, total, task_share)
    wrapped, callbacks = prune_hybrid(network, split["shared_sparsity"], split["task_budget"],
                                      prune_step, end_step=end_step, frequency=frequency,
                                      allocation=allocation)
    return wrapped, callbacks, {**split, "total_nonzeros": total}


def kernel_nonzeros(model):
    """`{"shared", "task", "dense", "total"}`: non-zero kernel weights of a (hybrid) model.

    Counts ``weight · mask`` for wrapped kernels, the weights themselves
    otherwise; `task` is every ``S_t``, `dense` the output layers' kernels,
    `shared` every other `Dense`/`Conv`/hybrid shared kernel. Works on
    Functional models and on `MultiTaskModel`s around them.

    Example:

    >>> kernel_nonzeros(model)["total"] == equal_nonzero_budget(base, 0.9)
    True
    """
    base = getattr(model, "base_model", model)
    masked = masked_weights(base)
    outputs = set(base.output_names)
    counts = {"shared": 0, "task": 0, "dense": 0}

    def count(weight):
        value = masked.get(weight.ref())
        return int(np.count_nonzero(weight.numpy() if value is None else value))

    for layer in base.layers:
        inner = layer.layer if isinstance(layer, PruneLowMagnitude) else layer
        if isinstance(inner, _HybridLayer):
            counts["shared"] += count(inner.shared_kernel)
            counts["task"] += sum(count(k) for k in inner.task_kernels)
        elif getattr(inner, "kernel", None) is not None and not isinstance(inner, keras.Model):
            counts["dense" if layer.name in outputs else "shared"] += count(inner.kernel)
    counts["total"] = sum(counts.values())
    return counts
