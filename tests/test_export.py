import json
import subprocess

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import keras_minmax_mtl as kmm
from keras_minmax_mtl import cli, pruning, qat, runtimes
from keras_minmax_mtl._keras import keras
from keras_minmax_mtl.edgetpu_rules import check_edgetpu
from keras_minmax_mtl.export import export_tflite, inspect_tflite
from keras_minmax_mtl.targets import MicroTarget
from tests.helpers import LOSSES, tiny_base_model, tiny_data

TASKS = ("a", "b")


def pruned_model(sparsity=0.75, seed=0):
    schedule = tfmot.sparsity.keras.ConstantSparsity(sparsity, begin_step=0, frequency=1)
    base = tfmot.sparsity.keras.prune_low_magnitude(tiny_base_model(TASKS, seed=seed),
                                                    pruning_schedule=schedule)
    model = kmm.MinMaxMultiTask(base, step_size=0.1)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss={t: LOSSES[t] for t in TASKS})
    x, y = tiny_data(n=48, tasks=TASKS)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0,
              callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    return model, x


@pytest.fixture(scope="module")
def trained():
    return pruned_model()


def keras_outputs(model, x):
    return {t: v.numpy() for t, v in pruning.strip_pruning(model)(x, training=False).items()}


def test_mobile_float_export_matches_keras_per_task_and_leaves_the_model_wrapped(trained, tmp_path):
    model, x = trained
    report = export_tflite(model, tmp_path / "m.tflite", target="mobile", representative_data=x)
    assert len(pruning.pruning_wrappers(model)) == 3  # the user's model is unchanged
    assert sorted(report["outputs"]) == ["a", "b"]
    assert report["bytes"] == (tmp_path / "m.tflite").stat().st_size
    assert report["bytes"] == min(report["bytes_by_storage"].values())
    assert report["keras_sparsity"]["layers"]["trunk/kernel"]["sparsity"] == 0.75
    got = runtimes.run_litert(tmp_path / "m.tflite", x)
    want = keras_outputs(model, x)
    for task in TASKS:
        np.testing.assert_allclose(got[task], want[task], atol=1e-5)
        assert report["verification"]["tasks"][task]["within_tolerance"]
    assert json.loads((tmp_path / "m.json").read_text())["outputs"] == report["outputs"]


def test_outputs_are_named_by_task_not_by_position(tmp_path):
    # Heads of different widths: a positional mix-up would give wrong shapes.
    inputs = keras.Input((6,), name="features")
    h = keras.layers.Dense(8, activation="relu", name="trunk")(inputs)
    outs = [keras.layers.Dense(n, name=t)(h) for t, n in (("z_last", 2), ("a_first", 5), ("m", 3))]
    model = keras.Model(inputs, outs)
    x = np.random.default_rng(1).normal(size=(16, 6)).astype(np.float32)
    export_tflite(model, tmp_path / "o.tflite", representative_data=x)
    got = runtimes.run_litert(tmp_path / "o.tflite", x)
    for task, want in zip(("z_last", "a_first", "m"), model.predict(x, verbose=0)):
        np.testing.assert_allclose(got[task], want, atol=1e-5)


def test_sparse_storage_is_kept_only_when_smaller_and_runs_without_xnnpack(tmp_path):
    model, x = pruned_model(sparsity=0.9)
    report = export_tflite(model, tmp_path / "s.tflite", sparse_storage=True,
                           representative_data=x, quantization="int8")
    assert report["storage"] == "sparse" and report["ops"]["DENSIFY"] >= 1
    assert runtimes.is_sparse_model(tmp_path / "s.tflite")
    dense = export_tflite(model, tmp_path / "d.tflite", sparse_storage=False,
                          representative_data=x, quantization="int8")
    assert "DENSIFY" not in dense["ops"]
    assert not runtimes.is_sparse_model(tmp_path / "d.tflite")


def test_micro_export_is_batch_one_int8_runs_in_tflite_micro_and_writes_c_that_compiles(
        trained, tmp_path):
    model, x = trained
    report = export_tflite(model, tmp_path / "u.tflite", target="micro", representative_data=x)
    assert model.base_model.input_shape == (None, 6)  # batch fixed on the copy only
    assert report["inputs"]["features"]["shape"] == [1, 6]
    assert report["inputs"]["features"]["dtype"] == "int8"
    assert report["verification"]["runtime"] == "tflite_micro"
    assert report["storage"] == "dense" and "DENSIFY" not in report["ops"]
    assert report["arena_bytes"] > 0
    # The arena the report names is the smallest with which TFLite Micro runs the model.
    assert report["arena_bytes"] % 16 == 0
    interpreter = runtimes.micro_interpreter(tmp_path / "u.tflite",
                                             arena_size=report["arena_bytes"])
    interpreter.set_input(np.zeros((1, 6), np.int8), 0)
    interpreter.invoke()
    with pytest.raises(runtimes.MicroOpError, match="could not load"):
        runtimes.micro_interpreter(tmp_path / "u.tflite", arena_size=report["arena_bytes"] - 16)
    for task in TASKS:
        assert report["verification"]["tasks"][task]["top1_agreement"] >= 0.9
    # int8 keeps the zeros of the pruned kernels.
    assert report["tflite_kernel_sparsity"]["kernels"][0]["sparsity"] == 0.75
    source = (tmp_path / "u.cc").read_text()
    assert "alignas(16)" in source and f"g_model_len = {report['bytes']};" in source
    for compiler, flags in (("g++", ["-std=c++11"]), ("gcc", ["-x", "c", "-std=c11"])):
        subprocess.run([compiler, *flags, "-c", str(tmp_path / "u.cc"), "-I", str(tmp_path),
                        "-o", str(tmp_path / f"u_{compiler}.o")], check=True)


def test_micro_names_the_op_and_layer_it_lacks(tmp_path):
    model, x = pruned_model(sparsity=0.9)
    export_tflite(model, tmp_path / "s.tflite", sparse_storage=True, quantization="int8",
                  representative_data=x)
    layers = [l.name for l in model.base_model.layers] + ["trunk", "a", "b"]
    with pytest.raises(runtimes.MicroOpError, match=r"DENSIFY \(layer 'trunk'\)"):
        MicroTarget().run(tmp_path / "s.tflite", x, layers)


def test_edgetpu_rules_pass_int8_batch_one_and_name_float_ops_with_layers(trained, tmp_path):
    model, x = trained
    report = export_tflite(model, tmp_path / "e.tflite", target="edgetpu", representative_data=x)
    rules = report["edgetpu"]["rules"]
    assert rules["all_on_edgetpu"], rules["cpu_ops"]
    assert [o["op"] for o in rules["ops"]].count("FULLY_CONNECTED") == 3
    assert report["edgetpu"]["compiler"] == {"found": False} or report["edgetpu"]["compiler"]["found"]
    export_tflite(model, tmp_path / "f.tflite", target="mobile", sparse_storage=False,
                  representative_data=x)
    layers = ["trunk", "a", "b"]
    check = check_edgetpu(tmp_path / "f.tflite", layers)
    first = check["cpu_ops"][0]
    assert (first["op"], first["layer"]) == ("FULLY_CONNECTED", "trunk")
    assert any("float32, not int8/uint8" in r for r in first["reasons"])
    assert any("dynamic shape" in r for r in first["reasons"])
    assert not check["all_on_edgetpu"] and len(check["cpu_ops"]) == len(check["ops"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(target="phone"), r"one of \['edgetpu', 'micro', 'mobile'\].*target='phone'"),
    (dict(target="micro"), r"`representative_data` is required for quantization='int8'"),
    (dict(target="micro", quantization="float"), r"one of \['int8'\] for target 'micro'"),
    (dict(representative_data=np.zeros((4, 5), np.float32)),
     r"input shape \(None, 6\).*Received an array of shape \(4, 5\)"),
    (dict(target="edgetpu", sparse_storage=True, representative_data=np.zeros((4, 6))),
     r"`sparse_storage` must be one of \[False\]"),
])
def test_bad_input_is_refused_and_nothing_is_written(trained, tmp_path, kwargs, message):
    model, _ = trained
    with pytest.raises(ValueError, match=message):
        export_tflite(model, tmp_path / "out" / "x.tflite", **kwargs)
    assert not (tmp_path / "out").exists()


def test_a_path_without_tflite_suffix_is_refused(trained, tmp_path):
    with pytest.raises(ValueError, match=r"must end with '.tflite'. Received: path="):
        export_tflite(trained[0], tmp_path / "model.bin")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_verification_leaves_nothing_behind(trained, tmp_path):
    model, x = trained
    with pytest.raises(AssertionError, match="min_top1_agreement=1.01"):
        export_tflite(model, tmp_path / "q.tflite", quantization="dynamic", representative_data=x,
                      min_top1_agreement=1.01)
    assert list(tmp_path.iterdir()) == []


def test_prune_preserving_qat_keeps_int8_kernels_as_sparse_as_float(trained, tmp_path):
    model, x = trained
    _, y = tiny_data(n=48, tasks=TASKS)
    qmodel = qat.prune_preserving_qat(model)
    assert type(qmodel) is kmm.MinMaxMultiTask and qmodel.task_names == list(TASKS)
    np.testing.assert_array_equal(qmodel.task_weights.numpy(), model.task_weights.numpy())
    qmodel.compile(optimizer=keras.optimizers.Adam(0.05), loss={t: LOSSES[t] for t in TASKS})
    qmodel.fit(x, y, batch_size=8, epochs=2, verbose=0)
    report = export_tflite(qmodel, tmp_path / "q.tflite", target="micro", representative_data=x)
    assert report["keras_sparsity"]["layers"]["trunk/kernel"]["sparsity"] == 0.75
    assert report["tflite_kernel_sparsity"]["overall"]["sparsity"] == 0.75
    assert len(pruning.pruning_wrappers(model)) == 3


def test_inspect_reports_size_ops_and_task_outputs(trained, tmp_path):
    model, x = trained
    export_tflite(model, tmp_path / "m.tflite", sparse_storage=False, representative_data=x)
    report = inspect_tflite(tmp_path / "m.tflite")
    assert report["bytes"] == (tmp_path / "m.tflite").stat().st_size
    assert 0 < report["gzip_bytes"] < report["bytes"]
    assert report["ops"]["FULLY_CONNECTED"] == 3 and report["ops"]["SOFTMAX"] == 2
    assert report["outputs"]["a"]["shape"] == [-1, 3]
    assert report["tflite_kernel_sparsity"]["kernels"][0]["sparsity"] == 0.75


def test_cli_train_export_then_export_and_inspect(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--epochs", "1", "--train-examples", "64", "--test-examples", "32",
                     "--verbose", "0", "--out", str(run), "--export", "micro"]) == 0
    assert (run / "model_micro.tflite").exists() and (run / "model_micro.cc").exists()
    assert cli.main(["export", str(run), "--target", "mobile", "--out", str(tmp_path / "d")]) == 0
    report = json.loads((tmp_path / "d" / "model_mobile.json").read_text())
    assert sorted(report["outputs"]) == ["left", "right", "sum"]
    capsys.readouterr()
    assert cli.main(["inspect", str(tmp_path / "d" / "model_mobile.tflite")]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"]["sum"]["shape"] == [-1, 19]
    with pytest.raises(SystemExit):
        cli.main(["export", str(run), "--target", "phone"])

