"""`prune_scope`: the custom objects a model saved with its pruning wrappers needs to load.

It imports every sparsity module that registers classes (the schedules of
reweighted ℓ1 and DST, the hybrid layers), so it sits above them all.

Example:

>>> with prune_scope():
...     model = tf_keras.models.load_model("pruned.keras")
"""
from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.core.serialization import custom_objects
from keras_minmax_mtl.sparsity import dst, hybrid, reweighted
from keras_minmax_mtl.sparsity.pruning import PruneLowMagnitude

__all__ = ["prune_scope", "REGISTERING_MODULES"]

#: The sparsity modules whose classes `prune_scope` holds (imported here, registered on import).
REGISTERING_MODULES = (dst, hybrid, reweighted)


def prune_scope():
    """A custom-object scope with tfmot's pruning classes and the package's classes.

    The package's classes are those registered with `keras_minmax_mtl.core.backend.register`
    (every class of the core, the weightings and the sparsity modules), under
    their registered names and their bare class names (tfmot's wrapper looks its
    pruning schedule up by class name).

    Needed to load a model saved while it still has pruning wrappers:

    >>> with prune_scope():
    ...     model = tf_keras.models.load_model("pruned.keras")
    """
    objects = dict(custom_objects())
    objects.update({name.split(">", 1)[1]: obj for name, obj in list(objects.items())})
    objects["PruneLowMagnitude"] = PruneLowMagnitude
    return keras.saving.custom_object_scope(objects)
