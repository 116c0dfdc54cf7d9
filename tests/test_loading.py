"""keras_minmax_mtl.loading: model files are checked before anything in them is deserialized."""
import json
import time
import zipfile

import numpy as np
import pytest

import keras_minmax_mtl as kmm
from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.loading import ModelFileError, UntrustedModelError, load_model
from tests.helpers import tiny_base_model


def passthrough(x, cmd=None):
    """A module-level function for a Lambda layer (the tampered file points it elsewhere)."""
    return x


def saved(tmp_path, lambda_layer=False):
    inputs = keras.Input((6,), name="features")
    h = keras.layers.Dense(4, name="trunk")(inputs)
    if lambda_layer:
        h = keras.layers.Lambda(passthrough, arguments={"cmd": "true"}, name="evil")(h)
    outputs = keras.layers.Dense(2, name="head")(h)
    path = tmp_path / "model.keras"
    keras.Model(inputs, outputs).save(path)
    return path


def rewrite_config(path, change):
    """Rewrites the config.json of a .keras archive with `change(config)`."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    change(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def layer(config, name):
    return next(entry for entry in config["config"]["layers"] if entry["config"]["name"] == name)


def pipepager_lambda(marker):
    """A Lambda layer pointed at `pydoc.pipepager`, whose `cmd` runs in a shell: `touch marker`."""
    def change(config):
        entry = layer(config, "evil")["config"]
        entry["function_type"] = "function"
        entry["function"] = {"module": "pydoc", "class_name": "function", "config": "pipepager",
                             "registered_name": "pipepager"}
        entry["arguments"] = {"cmd": f"touch {marker}"}
    return change


def wait_for(path, seconds=5.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end and not path.exists():
        time.sleep(0.05)
    return path.exists()


def test_a_lambda_that_would_run_a_shell_command_is_refused_before_it_runs(tmp_path):
    path = saved(tmp_path, lambda_layer=True)
    marker = tmp_path / "MARKER"
    rewrite_config(path, pipepager_lambda(marker))
    with pytest.raises(UntrustedModelError,
                       match=r"Lambda layer 'evil'.*calls the Python function pydoc.pipepager.*"
                             r"would run code from the file.*trusted=True"):
        load_model(path)
    assert not wait_for(marker, 0.5)
    # The payload is real: tf_keras' own loader, with its default safe_mode=True, runs it.
    with pytest.raises(Exception):
        keras.models.load_model(path)
    assert wait_for(marker)


def rename_module(module, class_name):
    def change(config):
        entry = layer(config, "trunk")
        entry["module"], entry["class_name"], entry["registered_name"] = module, class_name, None
    return change


def os_system_activation(config):
    layer(config, "trunk")["config"]["activation"] = {
        "module": "os", "class_name": "function", "config": "system", "registered_name": "system"}


def foreign_registered_name(config):
    entry = layer(config, "trunk")
    entry["module"], entry["registered_name"] = None, "evil_package>Dense"


def builtins_function(config):
    layer(config, "trunk")["config"]["activation"] = {
        "module": "builtins", "class_name": "function", "config": "exec",
        "registered_name": "exec"}


@pytest.mark.parametrize("change, message", [
    (rename_module("evil_module.layers", "Evil"),
     r"names the class evil_module.layers.Evil \(at .*trunk.*\).*outside the packages "
     r"\['keras', 'tf_keras', 'tensorflow_model_optimization', 'keras_minmax_mtl'\]"),
    (rename_module("subprocess", "Popen"), r"the class subprocess.Popen .*module 'subprocess'"),
    (rename_module("keras_minmax_mtl_fake", "Dense"), r"class keras_minmax_mtl_fake.Dense"),
    (os_system_activation, r"names the function os.system \(at .*trunk.*activation"),
    (builtins_function, r"names the function builtins.exec"),
    (foreign_registered_name, r"registered object 'evil_package>Dense'.*package 'evil_package'"),
])
def test_classes_and_functions_from_other_modules_are_refused_by_name(tmp_path, change, message):
    path = saved(tmp_path)
    rewrite_config(path, change)
    with pytest.raises(UntrustedModelError, match=message):
        load_model(path)


def test_a_tf_op_outside_tensor_computations_is_refused(tmp_path):
    import tensorflow as tf

    inputs = keras.Input((3,), name="x")
    model = keras.Model(inputs, tf.math.multiply(inputs, 2.0))
    model.save(tmp_path / "op.keras")
    assert load_model(tmp_path / "op.keras")(np.ones((1, 3))).numpy().tolist() == [[2.0] * 3]

    def write_file(config):
        entry = next(e for e in config["config"]["layers"] if e["class_name"] == "TFOpLambda")
        entry["config"]["function"] = "io.write_file"
    rewrite_config(tmp_path / "op.keras", write_file)
    with pytest.raises(UntrustedModelError, match=r"TFOpLambda layer 'tf.math.multiply' .*"
                                                  r"calling tf.io.write_file"):
        load_model(tmp_path / "op.keras")


def test_trusted_true_loads_a_lambda_and_the_packages_own_models_load_without_it(tmp_path):
    path = saved(tmp_path, lambda_layer=True)
    with pytest.raises(UntrustedModelError, match="Lambda layer 'evil'"):
        load_model(path)
    x = np.ones((2, 6), np.float32)
    np.testing.assert_allclose(load_model(path, trusted=True)(x), keras.models.load_model(
        path, safe_mode=False)(x))
    import tensorflow_model_optimization as tfmot

    schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=0, frequency=1)
    base = tfmot.sparsity.keras.prune_low_magnitude(tiny_base_model(("a", "b")),
                                                    pruning_schedule=schedule)
    model = kmm.MinMaxMultiTask(base, step_size=0.1)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.save(tmp_path / "pruned.keras")
    loaded = load_model(tmp_path / "pruned.keras")
    assert type(loaded) is kmm.MinMaxMultiTask and loaded.task_names == ["a", "b"]
    with pytest.raises(ValueError, match="Argument `trusted` must be True or False. "
                                         "Received: trusted='yes'"):
        load_model(tmp_path / "pruned.keras", trusted="yes")


def truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def random_bytes(path):
    path.write_bytes(np.random.default_rng(0).bytes(2000))


def empty(path):
    path.write_bytes(b"")


def no_config(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", "{}")


def bad_json(path):
    rewrite_config(path, lambda config: None)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["config.json"] = b"{not json"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


@pytest.mark.parametrize("damage, message", [
    (truncated, r"model.keras' is not a valid .keras archive: it is not a zip file \(\d+ bytes; "
                r"empty, truncated"),
    (random_bytes, r"model.keras' is not a valid .keras archive: it is not a zip file \(2000"),
    (empty, r"model.keras' is not a valid .keras archive: it is not a zip file \(0 bytes"),
    (no_config, r"model.keras' is not a valid .keras archive: it has no config.json"),
    (bad_json, r"model.keras' is not a valid .keras archive: its config.json is not JSON"),
])
def test_damaged_keras_files_name_the_file_and_what_is_wrong(tmp_path, damage, message):
    path = saved(tmp_path)
    damage(path)
    with pytest.raises(ModelFileError, match=message):
        load_model(path)
    with pytest.raises(ModelFileError, match=message):
        load_model(path, trusted=True)


def test_h5_files_are_checked_and_savedmodel_folders_need_trust(tmp_path):
    inputs = keras.Input((6,), name="features")
    h = keras.layers.Lambda(passthrough, name="evil")(keras.layers.Dense(4, name="trunk")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(h))
    model.save(tmp_path / "m.h5")
    with pytest.raises(UntrustedModelError, match="Lambda layer 'evil'"):
        load_model(tmp_path / "m.h5")
    (tmp_path / "bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(ModelFileError, match=r"bad.h5' is not a readable HDF5 \(.h5\) file"):
        load_model(tmp_path / "bad.h5")
    (tmp_path / "saved_model").mkdir()
    with pytest.raises(UntrustedModelError, match=r"saved_model' is a folder \(a SavedModel\).*"
                                                  r"not inspected"):
        load_model(tmp_path / "saved_model")
    with pytest.raises(ModelFileError, match=r"missing.keras' does not exist"):
        load_model(tmp_path / "missing.keras")
    with pytest.raises(ModelFileError, match=r"must be a .keras archive or an .h5 file.*'.pt'"):
        (tmp_path / "m.pt").write_bytes(b"x")
        load_model(tmp_path / "m.pt")
