"""The module path `tf_keras` imports for a class saved by `keras_minmax_mtl`.

A `.keras` file names each object by its registered name
(``"keras_minmax_mtl>MinMaxMultiTask"``) and by the module that defined it
(``"keras_minmax_mtl.weighting.minmax"``). `tf_keras.models.load_model`
looks the registered name up first; when the class is not registered yet
(the top-level `keras_minmax_mtl` imports nothing until a name is used) it
imports the module, but it reads every module path that starts with
``keras`` as one of its own and imports ``"tf_" + module`` instead
(`tf_keras/src/saving/serialization_lib.py`, `_retrieve_class_or_fn`):
this package.

Importing it registers every serializable class of `keras_minmax_mtl`
(`keras_minmax_mtl.loading.register_all`, which imports tfmot) and makes each
imported module of the package importable under this name as well (the same
module objects, nothing copied). The flat module names of the layout before
issue 14 (``keras_minmax_mtl.multitask``, ...) name a module holding every
registered class by its class name, so files saved before the move load too.
tfmot does not register its pruning wrapper, which `tf_keras` then
resolves to the string ``"PruneLowMagnitude"`` (the ``'str' object is not
callable`` of a pruned model loaded without `prune_scope`); it is added to
Keras' global custom objects under that name, as `prune_scope` does in a
scope. After that first lookup every nested object (the pruning schedules,
which tfmot resolves by registered name only) is found by its registered
name.
So `tf_keras.models.load_model` loads every file `kmm train` writes, ready to
`evaluate`, without a scope and whatever was imported before.

Nothing else imports this package.
"""
import sys
import types

from keras_minmax_mtl.core.backend import PACKAGE, keras
from keras_minmax_mtl.core.serialization import custom_objects
from keras_minmax_mtl.loading import register_all
from keras_minmax_mtl.sparsity.pruning import PruneLowMagnitude

__all__ = ["LEGACY_MODULES"]

#: The modules of the flat layout before issue 14 that defined registered classes.
LEGACY_MODULES = ("multitask", "minmax", "weighting", "uncertainty", "dwa", "ascent",
                  "reweighted", "dst", "hybrid", "nyuv2", "pruning", "structured")

register_all()
keras.saving.get_custom_objects().setdefault("PruneLowMagnitude", PruneLowMagnitude)
_legacy = types.ModuleType(f"{__name__}.legacy",
                           "Every registered class of the package, by its class name.")
_legacy.__dict__.update({name.split(">", 1)[1]: obj for name, obj in custom_objects().items()})
for _name, _module in list(sys.modules.items()):
    if _name.startswith(PACKAGE + "."):
        sys.modules.setdefault("tf_" + _name, _module)
for _name in LEGACY_MODULES:
    sys.modules.setdefault(f"{__name__}.{_name}", _legacy)
