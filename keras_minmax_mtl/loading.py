r"""Loading model files from users: the configuration is checked before anything is deserialized.

`tf_keras.models.load_model` is not a sandbox, even with its default
`safe_mode=True`: a `Lambda` layer whose function is an importable callable
(`pydoc.pipepager`, `os.system`, ...) is imported and called while the model
is built, and any `module` named in the file's config is imported to find a
class or function. `load_model` here reads the configuration of the file
first (the `config.json` of a `.keras` zip archive, the `model_config` and
`training_config` of an `.h5` file), without deserializing anything, and
refuses, naming the object and why:

- `Lambda` layers (they call a Python function named by the file) and
  serialized Python bytecode (`"__lambda__"`);
- any class or function whose `module` is outside `tf_keras`/`keras`,
  `tensorflow_model_optimization` and `keras_minmax_mtl`, or whose
  `registered_name` is another package's (``"Package>Name"``), or a
  module-less name that resolves to a registered object of another package;
- `TFOpLambda` layers (TensorFlow functions named by the file) outside the
  pure-computation functions in `TF_OP_PREFIXES`/`TF_OPS`;
- SavedModel folders (their TensorFlow graphs are not inspected).

``trusted=True`` (`kmm export --trust-model`) skips these checks: use it
only for files you would run as code. Damaged files (empty, truncated, not a
zip or HDF5 file, no or unreadable `config.json`) raise `ModelFileError`
naming the file. The threat model is in `docs/security.md`.

Example:

>>> from keras_minmax_mtl.loading import load_model
>>> model = load_model("runs/minmax-s0/model.keras")        # refuses a Lambda layer
>>> model = load_model("my_own.keras", trusted=True)        # a file you wrote yourself
"""
import json
import pathlib
import zipfile

__all__ = ["load_model", "register_all", "check_model_config", "read_model_config",
           "ModelFileError", "UntrustedModelError", "ALLOWED_PACKAGES", "TF_OP_PREFIXES", "TF_OPS"]

#: Top-level packages whose classes and functions a file may name.
ALLOWED_PACKAGES = ("keras", "tf_keras", "tensorflow_model_optimization", "keras_minmax_mtl")
#: `TFOpLambda` functions (names under `tf.`) allowed by prefix: pure tensor computations.
TF_OP_PREFIXES = ("math.", "nn.", "__operators__.", "linalg.")
#: `TFOpLambda` functions allowed by their full name.
TF_OPS = frozenset({
    "reshape", "concat", "stack", "unstack", "transpose", "expand_dims", "squeeze", "cast",
    "identity", "split", "gather", "gather_nd", "tile", "pad", "clip_by_value", "where", "shape",
    "ones_like", "zeros_like", "one_hot", "broadcast_to", "reverse", "slice", "strided_slice",
    "image.resize", "compat.v1.transpose", "compat.v1.squeeze", "compat.v1.gather",
})
#: The tf_keras modules whose functions `"module": "builtins"` names in a config.
_BUILTIN_MODULES = ("activations", "constraints", "initializers", "losses", "metrics",
                    "optimizers", "regularizers")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


class ModelFileError(ValueError):
    """A model file is missing, damaged, truncated or not a Keras model file (names the file)."""


class UntrustedModelError(ValueError):
    """A model file names code outside tf_keras, tfmot and this package (names the object)."""


def register_all():
    """Registers every serializable class of the package with Keras; returns the modules.

    The classes register themselves when their module is imported
    (`keras_minmax_mtl.core.backend.register`), and the top-level package
    imports nothing until a name is used, so a file saved by the package loads
    only once these modules are imported. `load_model` calls this, and so
    does importing `tf_keras_minmax_mtl`, the module path `tf_keras` imports
    for a class the package saved: `tf_keras.models.load_model` needs no scope.
    Importing the sparsity modules imports tfmot.

    Returns:
        The modules that register classes, in import order
        (`tests/test_loading.py` checks that no registering module is missing).

    Example:

    >>> register_all()
    >>> tf_keras.saving.get_registered_object("keras_minmax_mtl>ReweightedL1Schedule")
    <class 'keras_minmax_mtl.sparsity.reweighted.ReweightedL1Schedule'>
    """
    from keras_minmax_mtl.core import multitask, task_weighting
    from keras_minmax_mtl.data import nyuv2_metrics
    from keras_minmax_mtl.sparsity import dst, hybrid, mask_updaters, reweighted
    from keras_minmax_mtl.weighting import ascent, dwa, minmax, uncertainty

    return (multitask, task_weighting, ascent, minmax, uncertainty, dwa, mask_updaters, reweighted,
            dst, hybrid, nyuv2_metrics)


def _package(module):
    return module.split(".", 1)[0]


def _allowed_module(module):
    return isinstance(module, str) and _package(module) in ALLOWED_PACKAGES


def _where(path):
    return " > ".join(path) if path else "the top level"


def _describe_function(config):
    """A short description of the function a `Lambda` layer names."""
    function = config.get("function")
    if config.get("function_type") == "lambda":
        return "serialized as Python bytecode (a lambda)"
    if isinstance(function, dict):
        inner = function.get("config")
        if function.get("class_name") == "__lambda__":
            return "Python bytecode (a lambda)"
        return f"{function.get('module')}.{inner}" if isinstance(inner, str) else repr(function)
    module = config.get("module")
    return f"{module}.{function}" if module else repr(function)


def _check_node(node, path, custom_objects):
    """Raises `UntrustedModelError` if one config dict names code that may not run."""
    from keras_minmax_mtl.core.backend import keras

    class_name = node.get("class_name")
    config = node.get("config") if isinstance(node.get("config"), dict) else {}
    name = config.get("name")
    label = f"{class_name} {name!r}" if name else repr(class_name)
    where = f" (at {_where(path)})"
    if class_name == "Lambda":
        raise UntrustedModelError(
            f"The model file has a Lambda layer {name!r}{where}, which calls the Python function "
            f"{_describe_function(config)} named by the file when the model is built or run: "
            "loading it would run code from the file. Load it with trusted=True "
            "(`kmm export --trust-model`) only if you trust whoever wrote the file.")
    if class_name == "__lambda__":
        raise UntrustedModelError(
            f"The model file holds serialized Python bytecode (a lambda){where}, which loading "
            "would run. Load it with trusted=True only if you trust whoever wrote the file.")
    if class_name in ("TFOpLambda", "SlicingOpLambda"):
        function = config.get("function")
        if not isinstance(function, str) or not (function.startswith(TF_OP_PREFIXES)
                                                 or function in TF_OPS):
            raise UntrustedModelError(
                f"The model file has a {class_name} layer {name!r}{where} calling tf.{function}, "
                "which is not one of the tensor computations allowed without trust "
                f"(tf.{'*, tf.'.join(TF_OP_PREFIXES)}* and {sorted(TF_OPS)}). Load it with "
                "trusted=True only if you trust whoever wrote the file.")
    module = node.get("module")
    registered = node.get("registered_name")
    function_name = node.get("config") if class_name == "function" else None
    if custom_objects and ((isinstance(registered, str) and registered in custom_objects)
                           or (isinstance(function_name, str) and function_name in custom_objects)):
        return  # resolved to an object the caller passed (Keras looks these up first)
    if module is not None:
        if module == "builtins" and class_name == "function" and isinstance(function_name, str):
            if any(getattr(getattr(keras, m, None), function_name, None) is not None
                   for m in _BUILTIN_MODULES):
                return  # tf_keras resolves these names in its own modules first
        if not _allowed_module(module):
            what = (f"the function {module}.{function_name}" if class_name == "function"
                    else f"the class {module}.{class_name}")
            raise UntrustedModelError(
                f"The model file names {what}{where} ({label}), outside the packages "
                f"{list(ALLOWED_PACKAGES)}: loading it would import and run code from module "
                f"{module!r}. Load it with trusted=True (`kmm export --trust-model`) only if you "
                "trust whoever wrote the file, and with `custom_objects` for your own classes.")
    if isinstance(registered, str) and ">" in registered and not (
            _package(registered.split(">", 1)[0]) in ALLOWED_PACKAGES):
        raise UntrustedModelError(
            f"The model file names the registered object {registered!r}{where} ({label}) of "
            f"package {registered.split('>', 1)[0]!r}, outside {list(ALLOWED_PACKAGES)}. Load it "
            "with trusted=True only if you trust whoever wrote the file.")
    if module is None and isinstance(class_name, str) and class_name != "function":
        obj = keras.saving.get_registered_object(registered or class_name,
                                                 custom_objects=custom_objects)
        owner = getattr(obj, "__module__", None)
        if obj is not None and owner is not None and not _allowed_module(owner) and not (
                custom_objects and (registered or class_name) in custom_objects):
            raise UntrustedModelError(
                f"The model file names {class_name!r}{where}, registered in this process by "
                f"module {owner!r}, outside {list(ALLOWED_PACKAGES)}. Load it with trusted=True "
                "only if you trust whoever wrote the file.")


def check_model_config(config, custom_objects=None):
    """Checks a model file's configuration (nested dicts and lists) before it is deserialized.

    Args:
        config: the parsed `config.json` of a `.keras` archive (or an `.h5`
            file's `model_config`).
        custom_objects: `{name: object}` the caller will pass to the loader;
            names resolved through it are the caller's own objects and allowed.
            Defaults to `None`.

    Raises:
        UntrustedModelError: a `Lambda` layer, serialized bytecode, a
            `TFOpLambda` outside the allowed tensor functions, or a class or
            function outside `ALLOWED_PACKAGES`, named with its layer and
            where it is in the config.
    """
    stack = [(config, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            if "class_name" in node or "module" in node:
                _check_node(node, path, custom_objects)
            inner = node.get("config") if isinstance(node.get("config"), dict) else {}
            label = inner.get("name") or node.get("class_name")
            for key, value in node.items():
                if isinstance(value, (dict, list)):
                    stack.append((value, path + ((f"{label}.{key}" if label else key),)))
        elif isinstance(node, list):
            for value in node:
                if isinstance(value, (dict, list)):
                    stack.append((value, path))


def _damaged(path, what):
    return ModelFileError(f"Model file {str(path)!r} {what}")


def _keras_archive_config(path):
    if not zipfile.is_zipfile(path):
        raise _damaged(path, "is not a valid .keras archive: it is not a zip file "
                             f"({path.stat().st_size} bytes; empty, truncated or another format).")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "config.json" not in names:
                raise _damaged(path, f"is not a valid .keras archive: it has no config.json "
                                     f"(members: {sorted(names)[:10]}).")
            bad = archive.testzip()
            if bad is not None:
                raise _damaged(path, f"is damaged: the member {bad!r} of the archive fails its "
                                     "checksum (truncated or corrupted).")
            text = archive.read("config.json")
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise _damaged(path, f"is not a valid .keras archive (truncated or corrupted): "
                             f"{error}") from error
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise _damaged(path, f"is not a valid .keras archive: its config.json is not JSON "
                             f"({error}).") from error


def _h5_config(path):
    with open(path, "rb") as f:
        head = f.read(8)
    if head != _HDF5_SIGNATURE:
        raise _damaged(path, "is not a valid HDF5 (.h5) model file: it does not start with the "
                             f"HDF5 signature ({path.stat().st_size} bytes; empty, truncated or "
                             "another format).")
    import h5py

    try:
        with h5py.File(path, "r") as f:
            attrs = {key: f.attrs.get(key) for key in ("model_config", "training_config")}
    except OSError as error:
        raise _damaged(path, f"is not a readable HDF5 (.h5) file (truncated or corrupted): "
                             f"{error}") from error
    if attrs["model_config"] is None:
        raise _damaged(path, "holds no model_config: it is a weights file, not a saved model.")
    configs = {}
    for key, value in attrs.items():
        if value is not None:
            try:
                configs[key] = json.loads(value.decode() if isinstance(value, bytes) else value)
            except (ValueError, UnicodeDecodeError) as error:
                raise _damaged(path, f"has a {key} that is not JSON ({error}).") from error
    return configs


def read_model_config(path):
    """The configuration of a model file, read without deserializing anything.

    Args:
        path: a `.keras` archive or an `.h5` file.

    Returns:
        The parsed `config.json` of a `.keras` archive, or
        `{"model_config": ..., "training_config": ...}` of an `.h5` file.

    Raises:
        ModelFileError: the file is missing, not a file, damaged, truncated or
            of another format (the message names the file).
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise ModelFileError(f"Model file {str(path)!r} does not exist.")
    if path.is_dir():
        raise ModelFileError(f"Model file {str(path)!r} is a folder (a SavedModel?), not a "
                             ".keras or .h5 file.")
    if path.suffix == ".keras":
        return _keras_archive_config(path)
    if path.suffix in (".h5", ".hdf5"):
        return _h5_config(path)
    raise ModelFileError(f"Model file {str(path)!r} must be a .keras archive or an .h5 file "
                         f"(or a SavedModel folder with trusted=True). Received the suffix "
                         f"{path.suffix!r}.")


def _scopes(config):
    """tfmot's pruning and quantization scopes where the config names their classes."""
    import contextlib

    text = json.dumps(config)
    stack = contextlib.ExitStack()
    if "tensorflow_model_optimization" in text or "PruneLowMagnitude" in text:
        from keras_minmax_mtl.sparsity.scope import prune_scope

        stack.enter_context(prune_scope())
        if "quantiz" in text.lower():
            from keras_minmax_mtl.export.qat import quantize_scope

            stack.enter_context(quantize_scope())
    return stack


def load_model(path, trusted=False, custom_objects=None, compile=True):
    """Loads a `tf_keras` model file after checking that it names no code from outside.

    Args:
        path: a `.keras` archive (what `kmm train` writes), an `.h5` file,
            or (only with `trusted=True`) a SavedModel folder.
        trusted: `True` skips the checks of the configuration (`Lambda`
            layers, classes and functions from other packages, SavedModel
            folders) and loads with `safe_mode=False`: only for files you
            would run as code. Damaged files are refused either way.
            Defaults to `False`.
        custom_objects: your own classes and functions, `{name: object}`,
            passed to Keras; the names the file resolves through them are
            allowed. Defaults to `None`.
        compile: passed to `tf_keras.models.load_model`. Defaults to `True`.

    Returns:
        The model. Pruning wrappers and quantization-aware layers of tfmot
        load without a scope (the loader opens tfmot's scopes as needed).

    Raises:
        ModelFileError: the file is missing, damaged, truncated or of another
            format (the message names the file and what is wrong).
        UntrustedModelError: the file names code outside `ALLOWED_PACKAGES`
            (the message names the layer or object and why it is refused).

    Example:

    >>> model = load_model("runs/minmax-s0/model.keras")
    """
    from keras_minmax_mtl.core.backend import keras

    if not isinstance(trusted, bool):
        raise ValueError(f"Argument `trusted` must be True or False. Received: trusted={trusted!r}")
    path = pathlib.Path(path)
    if path.is_dir():
        if not trusted:
            raise UntrustedModelError(
                f"Model path {str(path)!r} is a folder (a SavedModel): its TensorFlow graphs and "
                "Keras metadata are not inspected by this loader. Save the model as .keras, or "
                "load it with trusted=True only if you trust whoever wrote it.")
        register_all()
        return keras.models.load_model(str(path), custom_objects=custom_objects,
                                       compile=compile)
    config = read_model_config(path)
    if not trusted:
        check_model_config(config, custom_objects)
    register_all()
    with _scopes(config):
        try:
            return keras.models.load_model(str(path), custom_objects=custom_objects,
                                           compile=compile, safe_mode=not trusted)
        except OSError as error:  # e.g. the weights inside the archive are unreadable
            raise _damaged(path, f"could not be read: {error}") from error
