"""Loading saved models: the package's registered classes, as a dict or a scope.

Every serializable class of the package is registered under the name
``keras_minmax_mtl`` when the package is imported, so `tf_keras.models.load_model`
restores saved models without further arguments. For code that passes
`custom_objects` explicitly (or loads with other registries cleared), use:

>>> with keras_minmax_mtl.custom_object_scope():
...     model = tf_keras.models.load_model("run/model.keras")
"""
from keras_minmax_mtl.core.backend import PACKAGE, keras

__all__ = ["custom_objects", "custom_object_scope"]


def custom_objects():
    """Returns `{registered name: class}` for every class the package registered."""
    registered = keras.saving.get_custom_objects()
    return {name: obj for name, obj in registered.items() if name.startswith(PACKAGE + ">")}


def custom_object_scope():
    """A `tf_keras.saving.custom_object_scope` with the package's classes."""
    objects = custom_objects()
    objects.update({name.split(">", 1)[1]: obj for name, obj in list(objects.items())})
    return keras.saving.custom_object_scope(objects)
