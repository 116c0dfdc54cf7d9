"""The one place of the Keras 3 path that imports `keras` (Keras 3), `register` and the model checks.

The path works on every back-end Keras 3 runs on (`KERAS_BACKEND`:
`tensorflow`, `jax`; `torch` is untested) and in a process where
`tensorflow_model_optimization` set `TF_USE_LEGACY_KERAS=1` (which only
turns `tf.keras` into `tf_keras`; `import keras` stays Keras 3). What cannot
work there is a model built with `tf.keras`: it is a `tf_keras` (Keras 2) model,
and it is refused with an error that names the cause.
"""
import os

import keras
from keras.src.models.functional import Functional  # the class of `keras.Model(inputs, outputs)`
# What Keras 3's `compile` makes of one output's loss spec (strings and functions wrapped in
# `LossFunctionWrapper`, "crossentropy" resolved from the shapes): the same object, so a task's
# loss is exactly the one a model compiled with that spec computes.
from keras.src.trainers.compile_utils import get_loss as loss_object

__all__ = ["keras", "PACKAGE", "register", "loss_object", "require_functional", "task_names", "legacy_keras_process"]

if not str(keras.__version__).startswith("3."):
    raise ImportError(
        "keras_minmax_mtl.keras3 needs Keras 3 (`pip install 'keras>=3'`). "
        f"Received: keras {keras.__version__}. For Keras 2 models use `keras_minmax_mtl` itself "
        "(the tf_keras path)."
    )

#: Package under which the Keras 3 classes are registered (apart from the tf_keras ones).
PACKAGE = "keras_minmax_mtl.keras3"


def register(cls):
    """Registers `cls` for Keras 3 serialization under `PACKAGE`."""
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)


def legacy_keras_process():
    """Whether `TF_USE_LEGACY_KERAS` is set in this process (tfmot sets it on import)."""
    return os.environ.get("TF_USE_LEGACY_KERAS", "").strip().lower() in ("1", "true", "yes")


def _is_tf_keras(obj):
    module = type(obj).__module__ or ""
    return module == "tf_keras" or module.startswith("tf_keras.") or module.startswith("keras.src.legacy")


def require_functional(model, argument="base_model"):
    """Returns `model` if it is a Functional Keras 3 model; raises `TypeError` naming the cause.

    Raises:
        TypeError: for a `tf_keras` (Keras 2) model, saying when `TF_USE_LEGACY_KERAS=1`
            made `tf.keras` mean `tf_keras` in this process; for a Keras 3 model that is
            not Functional (subclassed, Sequential); for anything else.
    """
    if isinstance(model, Functional):
        return model
    if _is_tf_keras(model):
        cause = (
            " This process has TF_USE_LEGACY_KERAS=1 (tensorflow_model_optimization sets it when "
            "imported), so `tf.keras` is tf_keras here: build the model with `import keras`, "
            "not `tf.keras`."
            if legacy_keras_process() else " Build the model with `import keras`."
        )
        raise TypeError(
            f"Argument `{argument}` must be a Keras 3 model (`import keras`) for "
            f"keras_minmax_mtl.keras3. Received a tf_keras (Keras 2) model: "
            f"{type(model).__module__}.{type(model).__name__}.{cause} For tf_keras models use "
            f"the tf_keras path, `keras_minmax_mtl.MinMaxMultiTask`."
        )
    if isinstance(model, keras.Model):
        raise TypeError(
            f"Argument `{argument}` must be a Functional Keras 3 model (built with "
            f"`keras.Model(inputs, outputs)`), whose outputs are named after the tasks. "
            f"Received a model of class {type(model).__name__}. Wrap its layers in a "
            f"Functional model."
        )
    raise TypeError(
        f"Argument `{argument}` must be a Functional `keras.Model`. "
        f"Received: {argument}={model!r} of type {type(model).__name__}."
    )


def task_names(model):
    """The task names of the Functional `model`, in the order of `model.outputs`.

    Dict outputs are named by their keys (in Keras' flattening order: sorted
    keys), list, tuple and single outputs by their output layers.

    Raises:
        ValueError: for nested output structures or repeated names.
    """
    structure = model.output
    if isinstance(structure, dict):
        values, names = list(structure.values()), sorted(str(k) for k in structure)
    else:
        values = list(structure) if isinstance(structure, (list, tuple)) else [structure]
        names = list(model.output_names)
    if any(isinstance(v, (dict, list, tuple)) for v in values):
        raise ValueError(
            "Argument `base_model` must have one output tensor per task: a dict {task: tensor}, "
            "a list or tuple of tensors, or one tensor. Received nested outputs: "
            f"{keras.tree.map_structure(lambda t: getattr(t, 'name', t), structure)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(
            "Argument `base_model` must have one uniquely named output per task. "
            f"Received output names: {names}"
        )
    return names
