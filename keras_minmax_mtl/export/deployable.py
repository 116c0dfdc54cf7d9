"""What gets exported: the Functional model inside a multi-task model, and which task each output is.

`deployable_model` takes the base model of a `MultiTaskModel` and strips the
pruning wrappers on a copy; `output_tasks` names the task of every output.
The exporter (`keras_minmax_mtl.export.tflite`) and the layer surgery
(`keras_minmax_mtl.export.surgery`) both start from here.

Example:

>>> base, tasks = deployable_model(MinMaxMultiTask(base_model))
>>> tasks
{'left': 'left', 'right': 'right', 'sum': 'sum'}
"""
import tensorflow as tf

from keras_minmax_mtl.core.backend import require_functional, require_tf_keras_model
from keras_minmax_mtl.core.multitask import MultiTaskModel
from keras_minmax_mtl.export.logits import unwrapped
from keras_minmax_mtl.sparsity import pruning

__all__ = ["deployable_model", "output_tasks"]


def deployable_model(model):
    """The Functional model to export: base model of a `MultiTaskModel`, pruning stripped on a copy.

    Returns:
        `(functional_model, {output name: task name})` (see `output_tasks`).
    """
    require_tf_keras_model(model)
    base = model.base_model if isinstance(model, MultiTaskModel) else model
    require_functional(base)
    if pruning.pruning_wrappers(base):
        base = pruning.strip_pruning(base)
    return base, output_tasks(base)


def output_tasks(model):
    """`{output name: task name}` of a Functional model, in the order of `model.output_names`.

    The output names (`model.output_names`, the output layers' names) line
    up with `tf.nest.flatten(model(x))`. A model built with dict outputs,
    `keras.Model(x, {"a": head_a, "b": head_b})`, names its tasks by the dict
    keys (flattened in sorted key order, the order of `output_names`); a
    model with a list, a tuple or a single output names them by the output
    layers, with any wrapper (pruning, quantization) removed.

    Raises:
        ValueError: the outputs are nested deeper than one dict, list or tuple.

    Example:

    >>> output_tasks(keras.Model(x, {"b": Dense(2, name="head_b")(h),
    ...                              "a": Dense(3, name="head_a")(h)}))
    {'head_a': 'a', 'head_b': 'b'}
    """
    structure = model.output
    values = (list(structure.values()) if isinstance(structure, dict)
              else list(structure) if isinstance(structure, (list, tuple)) else [structure])
    if any(isinstance(v, (dict, list, tuple)) for v in values):
        raise ValueError(
            "Argument `model` must have one tensor per task: a dict, a list or a tuple of output "
            f"tensors, or one tensor. Received nested outputs: {tf.nest.map_structure(lambda t: t.name, structure)}")
    names = list(model.output_names)
    if isinstance(structure, dict):
        keys = sorted(structure)  # tf.nest.flatten's order, which output_names follows
        return dict(zip(names, keys))
    return {name: unwrapped(model.get_layer(name)).name for name in names}
