"""What every sparsity method shares: tfmot's pruning wrappers, found, measured and stripped.

The sparsity methods of the package (reweighted ℓ1, dynamic sparse training,
structured pruning) all train models whose layers are wrapped by
`tfmot.sparsity.keras.prune_low_magnitude`. This module finds those wrappers
through nested models and through `MultiTaskModel`, measures the sparsity that
was reached, and strips the wrappers from a *copy* (the user's model is never
changed), keeping the task weights of a `MultiTaskModel`.

Example:

>>> wrapped = tfmot.sparsity.keras.prune_low_magnitude(base, pruning_schedule=...)
>>> model = MinMaxMultiTask(wrapped)
>>> ... model.fit(..., callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
>>> sparsity_report(model)["overall"]["sparsity"]
0.9
>>> deployable = strip_pruning(model)      # a MinMaxMultiTask without wrappers
"""
import numpy as np
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (
    PruneLowMagnitude,
)

from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.core.multitask import MultiTaskModel

__all__ = [
    "PruneLowMagnitude",
    "pruning_wrappers",
    "masked_weights",
    "pruned_kernels",
    "sparsity_report",
    "strip_pruning",
    "has_update_pruning_step",
    "nonzero_kernel_count",
    "walk_layers",
    "short_name",
    "clone_nested",
    "calls_per_step",
    "check_single_step_execution",
]


def walk_layers(layer):
    """Yields `layer` and every layer under it, depth first, entering nested models.

    Enters nested Functional and Sequential models (a `tf_keras.applications`
    trunk called as a layer, ``h = trunk(inputs)``), the layer of a
    `PruneLowMagnitude` wrapper, and the base model of a `MultiTaskModel`
    (which is not yielded itself). A layer shared by two branches is yielded
    once.
    """
    seen = set()

    def walk(current):
        if isinstance(current, MultiTaskModel):
            yield from walk(current.base_model)
            return
        if id(current) in seen:
            return
        seen.add(id(current))
        yield current
        if isinstance(current, PruneLowMagnitude):
            yield from walk(current.layer)
            return
        for child in getattr(current, "layers", None) or []:
            yield from walk(child)

    yield from walk(layer)


_walk = walk_layers


def _is_graph_model(layer):
    return isinstance(layer, keras.Model) and (isinstance(layer, keras.Sequential)
                                               or getattr(layer, "_is_graph_network", False))


def clone_nested(model, clone_function):
    """Clones the Functional `model`, entering nested Functional/Sequential models.

    ``clone_function(layer)`` is called on every layer that is not itself a
    Functional or Sequential model (a nested model is cloned the same way,
    recursively, so the layers of a ``tf_keras.applications`` trunk called as
    a layer are reached), and returns the layer to use: the layer itself, a
    wrapper, or a copy. Like `keras.models.clone_model`, a layer called at
    several nodes (shared by two branches) is cloned once and stays shared.
    The clone's weights are new variables holding `model`'s values only where
    `clone_function` returns the original layer (or a wrapper of it).

    Raises:
        ValueError: for a nested subclassed model, which cannot be entered;
            the message names it.
    """
    def clone(layer):
        if isinstance(layer, keras.Model):
            if not _is_graph_model(layer):
                raise ValueError(
                    f"Layer {layer.name!r} of model {model.name!r} is a nested subclassed model "
                    f"(class {type(layer).__name__}), whose layers cannot be reached by cloning. "
                    f"Build it as a Functional or Sequential model, or wrap its layers yourself.")
            return keras.models.clone_model(layer, input_tensors=None, clone_function=clone)
        return clone_function(layer)

    return keras.models.clone_model(model, input_tensors=None, clone_function=clone)


def calls_per_step(model):
    """`{id(layer): (layer, n)}`: how many times one forward pass of `model` calls each layer.

    Counts the nodes of the Functional graph, multiplied through nested
    models (a trunk called twice calls each of its layers twice). tfmot's
    wrappers advance their `pruning_step` at every training call, so a
    wrapper with ``n > 1`` (a layer shared by two branches) counts ``n``
    per training step.
    """
    counts = {}

    def visit(graph, factor):
        for nodes in getattr(graph, "_nodes_by_depth", {}).values():
            for node in nodes:
                layer = node.layer
                if isinstance(layer, keras.layers.InputLayer):
                    continue
                entry = counts.setdefault(id(layer), [layer, 0])
                entry[1] += factor
                if _is_graph_model(layer):
                    visit(layer, factor)
                elif isinstance(layer, PruneLowMagnitude) and _is_graph_model(layer.layer):
                    visit(layer.layer, factor)

    visit(model.base_model if isinstance(model, MultiTaskModel) else model, 1)
    return {key: (layer, n) for key, (layer, n) in counts.items()}


def check_single_step_execution(model, owner):
    """Raises `ValueError` unless `model` runs one training step per execution.

    A callback that acts between training steps (a mask update, a penalty
    switch) sees one batch hook per *execution*: with
    ``compile(steps_per_execution=N)``, ``N > 1``, it would count executions,
    not steps. `owner` names the callback in the message.
    """
    executions = getattr(model, "_steps_per_execution", None)
    if executions is not None and int(executions.numpy()) != 1:
        raise ValueError(
            f"`{owner}` acts between training steps and needs `compile(steps_per_execution=1)`: "
            f"with N > 1 steps per execution its batch hooks run once per N steps, so its "
            f"updates would be counted in executions, not steps. Received: "
            f"steps_per_execution={int(executions.numpy())}")


def pruning_wrappers(model):
    """The `PruneLowMagnitude` wrappers of `model`, in layer order.

    Enters nested models and the base model of a `MultiTaskModel`.
    """
    return [layer for layer in _walk(model) if isinstance(layer, PruneLowMagnitude)]


def masked_weights(model):
    """`{variable.ref(): masked value}` for every pruned weight of `model`.

    The value is ``weight · mask`` as a NumPy array: what the layer computes
    with, whether or not the last mask update has been written to the weight.
    """
    values = {}
    for wrapper in pruning_wrappers(model):
        for weight, mask, _ in wrapper.pruning_vars:
            values[weight.ref()] = weight.numpy() * mask.numpy()
    return values


def short_name(weight):
    """The last part of a variable's name, e.g. ``"kernel"`` for ``"dense/kernel:0"``."""
    return weight.name.split("/")[-1].split(":")[0]




def pruned_kernels(model):
    """`[(layer, name, values)]`: the weights `sparsity_report` counts, in layer order.

    With pruning wrappers: every weight a `PruneLowMagnitude` wrapper prunes,
    as ``weight · mask`` (`layer` is the wrapped layer, `name` is
    ``"{layer name}/{weight name}"``). Without wrappers (e.g. after
    `strip_pruning`): the kernel of every Dense and convolution layer, and
    the prunable weights of layers without a kernel that declare them (tfmot
    `PrunableLayer`s such as `keras_minmax_mtl.sparsity.hybrid.HybridDense`).
    """
    found = []
    wrappers = pruning_wrappers(model)
    if wrappers:
        for wrapper in wrappers:
            for weight, mask, _ in wrapper.pruning_vars:
                found.append((wrapper.layer,
                              f"{wrapper.layer.name}/{short_name(weight)}",
                              weight.numpy() * mask.numpy()))
    else:
        for layer in _walk(model):
            kernel = getattr(layer, "kernel", None)
            if isinstance(layer, keras.Model):
                continue
            if kernel is not None:
                found.append((layer, f"{layer.name}/kernel", kernel.numpy()))
            elif hasattr(layer, "get_prunable_weights"):  # e.g. the hybrid layers
                for weight in layer.get_prunable_weights():
                    found.append((layer, f"{layer.name}/{short_name(weight)}", weight.numpy()))
    return found


def sparsity_report(model):
    """Per-layer and overall sparsity of the pruned weights of `model`.

    Counts the zeros of ``weight · mask`` of every weight a `PruneLowMagnitude`
    wrapper prunes (the kernels; biases are never pruned by tfmot). A model
    without wrappers (e.g. after `strip_pruning`) is measured on the kernels of
    its Dense and convolution layers instead, and on the prunable weights of
    layers that declare them (tfmot `PrunableLayer`s such as
    `keras_minmax_mtl.sparsity.hybrid.HybridDense`; see `pruned_kernels`).

    Returns:
        `{"layers": {name: {"size", "zeros", "sparsity"}}, "overall": {...}}`,
        where the overall sparsity is the fraction of zeros among all the
        counted weights together.
    """
    report = {}
    for _, name, values in pruned_kernels(model):
        zeros = int(np.count_nonzero(values == 0))
        report[name] = {"size": int(values.size), "zeros": zeros,
                        "sparsity": zeros / values.size if values.size else 0.0}
    size = sum(r["size"] for r in report.values())
    zeros = sum(r["zeros"] for r in report.values())
    return {"layers": report,
            "overall": {"size": size, "zeros": zeros, "sparsity": zeros / size if size else 0.0}}


def nonzero_kernel_count(model):
    """The number of non-zero kernel weights of `model`: every layer's `kernel`, outputs included.

    Layers without a `kernel` that declare prunable weights (tfmot
    `PrunableLayer`s such as the hybrid layers) count those.

    Counts ``weight · mask`` for the kernels under pruning wrappers (what
    the layers compute with) and the plain kernel elsewhere (dense output
    heads, unwrapped layers); biases are not counted. Enters nested models
    and the base model of a `MultiTaskModel`.

    Example:

    >>> nonzero_kernel_count(strip_pruning(model)) == nonzero_kernel_count(model)
    True
    """
    masked = masked_weights(model)
    total = 0
    for layer in _walk(model):
        if isinstance(layer, (keras.Model, PruneLowMagnitude)):
            continue
        kernel = getattr(layer, "kernel", None)
        if kernel is not None:
            kernels = [kernel]
        elif hasattr(layer, "get_prunable_weights"):  # e.g. the hybrid layers' W_shared and S_t
            kernels = layer.get_prunable_weights()
        else:
            continue
        for weight in kernels:
            value = masked.get(weight.ref())
            total += int(np.count_nonzero(weight.numpy() if value is None else value))
    return total


def _strip_functional(model):
    """A new Functional model without pruning wrappers, holding the masked weights."""
    masked = masked_weights(model)
    # tfmot's strip_pruning returns a model that shares the wrapped layers (and
    # their variables) with `model`: read the values, then rebuild a copy.
    shared = tfmot.sparsity.keras.strip_pruning(model)
    values = [masked.get(v.ref(), None) for v in shared.weights]
    values = [v.numpy() if value is None else value for v, value in zip(shared.weights, values)]
    copy = keras.models.clone_model(shared)
    copy.set_weights(values)
    return copy


def strip_pruning(model):
    """Returns a copy of `model` without pruning wrappers; `model` is unchanged.

    Accepts a Functional model or a `MultiTaskModel` (such as
    `MinMaxMultiTask`). For the latter the copy is a model of the same class
    and configuration whose base model is stripped, with the task-weighting
    state (task weights, DWA history, UW log-variances) and the step and epoch
    counters copied over. The copy is not compiled.

    Raises:
        TypeError: for subclassed models (tfmot cannot rebuild them) and for
            objects that are not `tf_keras` models.
    """
    if isinstance(model, MultiTaskModel):
        return model.with_base_model(_strip_functional(model.base_model))
    if not isinstance(model, keras.Model) or not getattr(model, "_is_graph_network", False):
        raise TypeError(
            "Argument `model` must be a Functional `tf_keras` model or a `MultiTaskModel`. "
            f"Received: {type(model).__module__}.{type(model).__name__}"
        )
    return _strip_functional(model)


def has_update_pruning_step(callbacks):
    """Whether `callbacks` (a list, or `None`) holds tfmot's `UpdatePruningStep`."""
    return any(isinstance(c, tfmot.sparsity.keras.UpdatePruningStep) for c in callbacks or [])
