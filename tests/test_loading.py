"""keras_minmax_mtl.loading: model files are checked before anything in them is deserialized."""
import json
import pathlib
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


# --- every file `kmm train` writes loads with plain tf_keras, ready to evaluate (issue 14) ---

TINY_RUN = ["--epochs", "1", "--train-examples", "64", "--test-examples", "32", "--seed", "3"]
TINY_REWEIGHTED = ["--pruning", "reweighted_l1", "--sparsity", "0.5", "--dense-epochs", "1",
                   "--reweighted-epochs", "1", "--retrain-epochs", "1",
                   "--train-examples", "64", "--test-examples", "32", "--seed", "3"]

#: Run in a fresh interpreter: plain `tf_keras.models.load_model` after `import keras_minmax_mtl`.
FRESH_LOAD = r"""
import json, sys
import tf_keras, keras_minmax_mtl
heavy = sorted(m for m in sys.modules
               if m.startswith(("tensorflow_model_optimization", "ai_edge_litert", "tflite_micro")))
from keras_minmax_mtl.data import multi_digits
test = multi_digits("test", seed=3, num_examples=32, batch_size=64)
results = {"heavy_modules_after_import": heavy, "registered_before_loading": sorted(
    n for n in tf_keras.saving.get_custom_objects() if n.endswith(("MultiTask", "Schedule")))}
for path in sys.argv[2:]:  # first: nothing of the package is registered yet
    model = tf_keras.models.load_model(path)
    results[path] = {"class": type(model).__name__,
                     "metrics": model.evaluate(test, verbose=0, return_dict=True),
                     "task_weights": model.task_weights.numpy().tolist()}
import numpy as np
before = np.load(sys.argv[1])
for name in ("minmax", "reweighted"):  # saved before the layout move, module paths of then
    model = tf_keras.models.load_model(sys.argv[1].replace("before_move_outputs.npz",
                                                           f"{name}_before_move.keras"))
    out = model.predict(before["x"], verbose=0)
    results[name] = {"a": out["a"].tolist(), "b": out["b"].tolist(),
                     "w": model.task_weights.numpy().tolist()}
print("RESULTS" + json.dumps(results))
"""


def test_every_file_kmm_train_writes_loads_with_plain_tf_keras_ready_to_evaluate(tmp_path):
    import os
    import subprocess
    import sys

    from keras_minmax_mtl.cli import main as cli
    from tests.helpers import REPO_ROOT

    runs = {"dense": TINY_RUN, "reweighted_l1": TINY_REWEIGHTED}
    files = {}
    for name, argv in runs.items():
        assert cli.main(["train", *argv, "--out", str(tmp_path / name)]) == 0
        written = sorted(p.name for p in (tmp_path / name).glob("*.keras"))
        files[name] = [str(tmp_path / name / f) for f in written]
    assert [pathlib.Path(f).name for f in files["dense"]] == ["model.keras"]
    assert [pathlib.Path(f).name for f in files["reweighted_l1"]] == ["model.keras",
                                                                        "model_stripped.keras"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    before = REPO_ROOT / "tests" / "data" / "before_move_outputs.npz"
    done = subprocess.run([sys.executable, "-c", FRESH_LOAD, str(before), *files["dense"],
                           *files["reweighted_l1"]], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.split("RESULTS", 1)[1])
    assert results.pop("heavy_modules_after_import") == []
    assert results.pop("registered_before_loading") == []  # so the module paths were used
    expected = np.load(before)
    for name, prefix in (("minmax", "minmax"), ("reweighted", "pruned")):
        got = results.pop(name)
        np.testing.assert_allclose(got["a"], expected[f"{prefix}_a"], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got["b"], expected[f"{prefix}_b"], rtol=1e-6, atol=1e-7)
        if prefix == "minmax":
            np.testing.assert_array_equal(got["w"], expected["minmax_w"])
    for name in runs:
        reported = json.loads((tmp_path / name / "metrics.json").read_text())
        for path in files[name]:
            got = results[path]
            assert got["class"] == "MinMaxMultiTask", path
            for task in reported["tasks"]:
                assert got["metrics"][f"{task}_accuracy"] == pytest.approx(
                    reported["test_accuracy"][task], abs=1e-7), (path, task)
                assert got["metrics"][f"{task}_loss"] == pytest.approx(
                    reported["test_loss"][task], rel=1e-5), (path, task)
            np.testing.assert_allclose(got["task_weights"],
                                       list(reported["final_task_weights"].values()), rtol=1e-6)


def test_models_saved_before_the_layout_move_load_with_the_same_outputs_and_task_weights():
    from tests.helpers import REPO_ROOT

    data = REPO_ROOT / "tests" / "data"
    expected = np.load(data / "before_move_outputs.npz")
    minmax = load_model(data / "minmax_before_move.keras")
    assert type(minmax) is kmm.MinMaxMultiTask and minmax.task_names == ["a", "b"]
    np.testing.assert_array_equal(minmax.task_weights.numpy(), expected["minmax_w"])
    pruned = load_model(data / "reweighted_before_move.keras")
    assert type(pruned) is kmm.MultiTaskModel
    assert type(pruned.weighting) is kmm.DynamicWeightAverage
    schedules = [w.pruning_schedule for w in pruned.base_model.layers
                 if hasattr(w, "pruning_schedule")]
    assert schedules and all(type(s) is kmm.ReweightedL1Schedule for s in schedules)
    # The weights load exactly (the task weights above); the outputs are recomputed, and CPUs
    # differ in the last bits of float32 (oneDNN's AVX-512 kernels: up to 1.2e-7 here).
    for model, prefix in ((minmax, "minmax"), (pruned, "pruned")):
        out = model.predict(expected["x"], verbose=0)
        np.testing.assert_allclose(out["a"], expected[f"{prefix}_a"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out["b"], expected[f"{prefix}_b"], rtol=1e-5, atol=1e-6)


def test_register_all_imports_every_module_that_registers_a_class():
    import ast

    from keras_minmax_mtl.loading import register_all
    from tests.helpers import REPO_ROOT

    registering = set()
    keras3 = REPO_ROOT / "keras_minmax_mtl" / "keras3"  # registers with Keras 3, not tf_keras
    for path in (REPO_ROOT / "keras_minmax_mtl").rglob("*.py"):
        if keras3 in path.parents:
            continue
        tree = ast.parse(path.read_text())
        decorated = any(isinstance(d, ast.Name) and d.id == "register"
                        or isinstance(d, ast.Call) and getattr(d.func, "id", None) == "register"
                        for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
                        for d in node.decorator_list)
        called = any(isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register"
                     for node in ast.walk(tree))
        if (decorated or called) and path.name != "backend.py":
            registering.add(".".join(path.relative_to(REPO_ROOT).with_suffix("").parts))
    assert len(registering) >= 10 and registering <= {m.__name__ for m in register_all()}


def test_tf_keras_minmax_mtl_is_the_module_path_tf_keras_imports_for_the_packages_classes():
    import importlib

    import tf_keras_minmax_mtl
    from keras_minmax_mtl.weighting import minmax

    # tf_keras/src/saving/serialization_lib.py: `if module.startswith("keras"): module = "tf_" + module`
    assert importlib.import_module("tf_keras_minmax_mtl.weighting.minmax") is minmax
    legacy = importlib.import_module("tf_keras_minmax_mtl.multitask")  # the layout before the move
    assert legacy.MinMaxMultiTask is kmm.MinMaxMultiTask
    assert legacy.MultiTaskModel is kmm.MultiTaskModel
    assert legacy.ReweightedL1Schedule is kmm.ReweightedL1Schedule
    assert set(tf_keras_minmax_mtl.LEGACY_MODULES) >= {"multitask", "dwa", "reweighted"}
    assert keras.saving.get_custom_objects()["PruneLowMagnitude"] is \
        importlib.import_module("keras_minmax_mtl.sparsity.pruning").PruneLowMagnitude
