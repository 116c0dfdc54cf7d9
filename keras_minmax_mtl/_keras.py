"""The one place that imports Keras 2 (`tf_keras`); every other module gets Keras from here.

The TF Model Optimization Toolkit only works with Keras 2, which TensorFlow 2.16+
ships as the separate `tf_keras` package. Every model of this package is a
`tf_keras` model, and objects of Keras 3 (`import keras`) are refused with an
error that says how to rebuild them.
"""
import tf_keras as keras

__all__ = ["keras", "PACKAGE", "register", "require_tf_keras_model", "require_functional"]

#: Name under which every serializable class of the package is registered.
PACKAGE = "keras_minmax_mtl"


def register(cls):
    """Registers `cls` for Keras serialization under the package name."""
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)


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
