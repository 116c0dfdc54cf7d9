"""The one place that imports Keras 2 (`tf_keras`); every other module gets Keras from here.

The TF Model Optimization Toolkit only works with Keras 2, which TensorFlow 2.16+
ships as the separate `tf_keras` package. Every model of this package is a
`tf_keras` model, and objects of Keras 3 (`import keras`) are refused with an
error that says how to rebuild them.
"""
import tf_keras as keras
# Keras' own loss machinery, which `compile` uses and the package reuses so that a task's
# loss is exactly the one `tf_keras` computes for the same `compile(loss=...)` spec.
from tf_keras.src.engine.compile_utils import match_dtype_and_rank
from tf_keras.src.losses import LossFunctionWrapper
from tf_keras.src.utils import losses_utils

__all__ = ["keras", "PACKAGE", "register", "require_tf_keras_model", "require_functional",
           "loss_object", "losses_utils", "match_dtype_and_rank"]

#: Name under which every serializable class of the package is registered.
PACKAGE = "keras_minmax_mtl"


def register(cls):
    """Registers `cls` for Keras serialization under the package name."""
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)


def loss_object(spec):
    """The `keras.losses.Loss` that `compile(loss=spec)` makes of one output's loss `spec`.

    Strings and functions are wrapped in Keras' `LossFunctionWrapper`, whose
    `call` aligns the labels with the predictions (`(N,)` labels for an
    `(N, 1)` output are reshaped, not broadcast to `(N, N)`); `Loss` objects
    are used as they are. This is what `tf_keras`'s loss container does.

    Raises:
        ValueError: if `spec` names no loss or is not callable.
    """
    loss = keras.losses.get(spec)
    if isinstance(loss, keras.losses.Loss):
        return loss
    if not callable(loss):
        raise ValueError(f"A loss must be a string, a function or a `keras.losses.Loss`. "
                         f"Received: {spec!r}")
    name = getattr(loss, "__name__", None) or type(loss).__name__
    return LossFunctionWrapper(loss, name=name)


def _is_keras3(obj):
    module = type(obj).__module__ or ""
    return module == "keras" or module.startswith("keras.")


def require_tf_keras_model(model, argument="model"):
    """Raises a clear error unless `model` is a `tf_keras.Model`.

    Args:
        model: the object to check.
        argument: the argument name to put in the message.

    Raises:
        TypeError: for Keras 3 models and for anything that is not a Keras 2 model.
    """
    if isinstance(model, keras.Model):
        return model
    if _is_keras3(model):
        raise TypeError(
            f"Argument `{argument}` must be a Keras 2 model built with `tf_keras` "
            f"(`import tf_keras as keras`); the TF Model Optimization Toolkit does not "
            f"support Keras 3. Received a Keras 3 object: {type(model).__module__}."
            f"{type(model).__name__}. Rebuild it with `tf_keras` layers and models."
        )
    raise TypeError(
        f"Argument `{argument}` must be a `tf_keras.Model`. "
        f"Received: {argument}={model!r} of type {type(model).__name__}."
    )


def require_functional(model, argument="model"):
    """Raises a clear error unless `model` is a Functional (or Sequential) `tf_keras` model.

    Functional models have named outputs (the task names) and can be cloned and
    wrapped by `tfmot`; subclassed models cannot.
    """
    require_tf_keras_model(model, argument)
    if not getattr(model, "_is_graph_network", False):
        raise TypeError(
            f"Argument `{argument}` must be a Functional `tf_keras` model (built with "
            f"`keras.Model(inputs, outputs)`), whose output layers are named after the "
            f"tasks. Received a subclassed model of class {type(model).__name__}. "
            f"Build the network as a Functional model, or wrap its layers in one."
        )
    return model
