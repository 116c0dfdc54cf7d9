import json
import subprocess

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import keras_minmax_mtl as kmm
from keras_minmax_mtl.sparsity import pruning
from keras_minmax_mtl.export import qat
from keras_minmax_mtl.export import runtimes
from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.export.edgetpu import check_edgetpu
from keras_minmax_mtl.export.tflite import export_tflite, inspect_tflite
from keras_minmax_mtl.export.targets import MicroTarget
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
    # int8 sparse weights: opened without XNNPack, which fails to prepare some of them.
    assert not runtimes.runs_in_xnnpack(runtimes.load_interpreter(tmp_path / "s.tflite"))
    dense = export_tflite(model, tmp_path / "d.tflite", sparse_storage=False,
                          representative_data=x, quantization="int8")
    assert "DENSIFY" not in dense["ops"]
    assert not runtimes.is_sparse_model(tmp_path / "d.tflite")


def test_micro_export_is_batch_one_int8_runs_in_tflite_micro_and_writes_c_that_compiles(
        trained, tmp_path):
    model, x = trained
    # structured=False: this 75 %-sparse trunk has all-zero kernel columns, which the default
    # ("auto") would remove (tests/test_surgery.py); here the zeros must reach the file.
    report = export_tflite(model, tmp_path / "u.tflite", target="micro", representative_data=x,
                           structured=False)
    assert model.base_model.input_shape == (None, 6)  # batch fixed on the copy only
    assert report["inputs"]["features"]["shape"] == [1, 6]
    assert report["inputs"]["features"]["dtype"] == "int8"
    assert report["verification"]["runtime"] == "tflite_micro"
    # int8 files output logits by default: the heads' softmax is dropped on the copy only.
    assert report["output_forms"] == {"a": "logits_above_floor", "b": "logits_above_floor"}
    assert "SOFTMAX" not in report["ops"] and sorted(report["logit_floors"]) == ["a", "b"]
    assert model.base_model.get_layer("prune_low_magnitude_a").layer.activation.__name__ == "softmax"
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
    assert report["output_forms"] == {"a": "logits_above_floor", "b": "logits_above_floor"}
    stripped = pruning.strip_pruning(model)
    logits = export_tflite(stripped, tmp_path / "s.tflite", quantization="int8",
                           representative_data=x)
    assert logits["output_forms"] == {"a": "logits_above_floor", "b": "logits_above_floor"}
    assert "SOFTMAX" not in logits["ops"]
    assert stripped.base_model.get_layer("a").get_config()["activation"] == "softmax"
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
    (dict(floor_margin=-0.1), r"`floor_margin` must be a number >= 0. Received: floor_margin=-0.1"),
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
    # structured=False: the 75 %-pruned trunk has an all-zero unit, which "auto" would remove.
    export_tflite(model, tmp_path / "m.tflite", sparse_storage=False, structured=False,
                  representative_data=x)
    report = inspect_tflite(tmp_path / "m.tflite")
    assert report["bytes"] == (tmp_path / "m.tflite").stat().st_size
    assert 0 < report["gzip_bytes"] < report["bytes"]
    assert report["ops"]["FULLY_CONNECTED"] == 3 and report["ops"]["SOFTMAX"] == 2
    assert report["outputs"]["a"]["shape"] == [-1, 3]
    assert report["tflite_kernel_sparsity"]["kernels"][0]["sparsity"] == 0.75


def near_tie_model():
    """Task "t": 19 classes; classes 0 and 1 have logits 0.5 ∓ 0.01·s, the others 0.

    For s = +1 class 1 wins by a logit gap of 0.02, i.e. by 0.0016 in
    probability, less than the int8 softmax step 1/256: the int8
    probabilities of classes 0 and 1 tie and the argmax says 0. The int8
    logits (range [0, 0.51], step 0.002) keep the gap. Task "r" is a
    regression head (no softmax). Returns the model and 64 samples, half with
    s = +1.
    """
    inputs = keras.Input((2,), name="features")
    head = keras.layers.Dense(19, activation="softmax", name="t")
    reg = keras.layers.Dense(1, name="r")
    model = keras.Model(inputs, [head(inputs), reg(inputs)])
    kernel = np.zeros((2, 19), np.float32)
    kernel[0, :2] = [-0.01, 0.01]
    bias = np.zeros(19, np.float32)
    bias[:2] = 0.5
    head.set_weights([kernel, bias])
    reg.set_weights([np.array([[0.0], [1.0]], np.float32), np.zeros(1, np.float32)])
    s = np.repeat([1.0, -1.0], 32).astype(np.float32)
    u = np.linspace(-1, 1, 64).astype(np.float32)
    return model, np.stack([s, u], axis=1)


def test_int8_probabilities_tie_on_near_ties_and_logits_keep_the_top1_decision(tmp_path):
    model, x = near_tie_model()
    keras_top1 = model.predict(x, verbose=0)[0].argmax(-1)
    np.testing.assert_array_equal(keras_top1, np.repeat([1, 0], 32))
    probabilities = export_tflite(model, tmp_path / "p.tflite", quantization="int8",
                                  representative_data=x, outputs="probabilities")
    assert probabilities["output_forms"] == {"t": "probabilities", "r": "as_model"}
    tasks = probabilities["verification"]["tasks"]
    assert tasks["t"]["top1_agreement"] == 0.5 and tasks["t"]["top1_tie_fraction"] == 1.0
    assert "top1_tie_fraction" not in tasks["r"]
    for target in ("mobile", "micro", "edgetpu"):
        report = export_tflite(model, tmp_path / f"{target}.tflite", target=target,
                               quantization="int8", representative_data=x)
        assert report["output_forms"] == {"t": "logits_above_floor", "r": "as_model"}, target
        # Top logits are 0.51 everywhere, the median logit 0: t = 0.51 - 0.1 * 0.51.
        assert report["logit_floors"] == {"t": pytest.approx(0.459, abs=1e-6)}
        assert report["floor_margin"] == 0.1
        assert "SOFTMAX" not in report["ops"] and "SOFTMAX" in probabilities["ops"]
        tasks = report["verification"]["tasks"]
        assert tasks["t"]["top1_agreement"] == 1.0 and tasks["t"]["top1_tie_fraction"] == 0.0
        assert tasks["r"]["max_abs_error"] < 0.02, target
    wider = export_tflite(model, tmp_path / "wide.tflite", quantization="int8",
                          representative_data=x, floor_margin=0.5)
    assert wider["logit_floors"] == {"t": pytest.approx(0.51 - 0.5 * 0.51, abs=1e-6)}
    run = runtimes.run_micro(tmp_path / "micro.tflite", x)[0]["t"]
    np.testing.assert_array_equal(run.argmax(-1), keras_top1)
    assert model.get_layer("t").get_config()["activation"] == "softmax"  # the model is unchanged


def test_float_export_keeps_probabilities_by_default_and_logits_match_keras_logits(tmp_path):
    model, x = near_tie_model()
    report = export_tflite(model, tmp_path / "p.tflite", representative_data=x)
    assert report["output_forms"]["t"] == "probabilities" and report["ops"]["SOFTMAX"] == 1
    report = export_tflite(model, tmp_path / "l.tflite", representative_data=x, outputs="logits")
    assert report["output_forms"]["t"] == "logits" and "SOFTMAX" not in report["ops"]
    assert report["verification"]["tasks"]["t"]["within_tolerance"]
    kernel, bias = model.get_layer("t").get_weights()
    np.testing.assert_allclose(runtimes.run_litert(tmp_path / "l.tflite", x)["t"],
                               x @ kernel + bias, atol=1e-6)
    with pytest.raises(ValueError, match=r"`outputs` must be one of \['probabilities', "
                                         r"'logits'\] or None. Received: outputs='scores'"):
        export_tflite(model, tmp_path / "x.tflite", representative_data=x, outputs="scores")


def test_logits_copy_handles_softmax_layers_wrappers_and_refuses_a_shared_softmax():
    from keras_minmax_mtl.export.logits import without_softmax

    inputs = keras.Input((4,), name="features")
    z = keras.layers.Dense(3, name="z")(inputs)
    outs = [keras.layers.Softmax(name="s")(z),
            keras.layers.Activation("softmax", name="a")(keras.layers.Dense(2, name="d")(inputs))]
    model = keras.Model(inputs, outs)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    copy, forms = without_softmax(model)
    assert forms == {"s": "logits", "a": "logits"} and copy.output_names == ["s", "a"]
    got = copy(x)
    np.testing.assert_allclose(got[0], model.get_layer("z")(x), atol=1e-6)
    np.testing.assert_allclose(got[1], model.get_layer("d")(x), atol=1e-6)
    # Quantization-aware heads: softmax of the copy's logits is the model's output.
    qmodel = qat.prune_preserving_qat(tiny_base_model(TASKS))
    qcopy, forms = without_softmax(qmodel)
    assert forms == {"quant_a": "logits", "quant_b": "logits"}
    xq, _ = tiny_data(n=8, tasks=TASKS)
    for want, have in zip(qmodel(xq, training=False), qcopy(xq, training=False)):
        np.testing.assert_allclose(keras.activations.softmax(have), want, atol=1e-6)
    p = keras.layers.Dense(3, activation="softmax", name="p")(inputs)
    shared = keras.Model(inputs, [p, keras.layers.Dense(1, name="q")(p)])
    with pytest.raises(ValueError, match=r"Cannot output logits for 'p': its layer also feeds \['q'\]"):
        without_softmax(shared)


def test_floored_logits_are_relu_of_logits_minus_the_floor_and_floors_are_below_every_top():
    from keras_minmax_mtl.export.logits import logit_floors, without_softmax

    model, x = near_tie_model()
    copy, forms = without_softmax(model, floors={"t": 0.3})
    assert forms == {"t": "logits_above_floor", "r": "as_model"}
    kernel, bias = model.get_layer("t").get_weights()
    np.testing.assert_allclose(copy(x)[0], np.maximum(x @ kernel + bias - 0.3, 0), atol=1e-6)
    assert logit_floors({"t": np.array([[0.0, 2.0], [1.0, 0.0]])}) == {"t": pytest.approx(0.85)}
    with pytest.raises(ValueError, match=r"`floors` names 'r'.*can be floored: \['t'\]"):
        without_softmax(model, floors={"r": 0.0})


def test_float_sparse_files_run_in_xnnpack(trained, tmp_path):
    # XNNPack densifies float32 DENSIFY weights once, when the interpreter is built, and takes
    # its sparse path where the graph allows (int8 sparse files: test_sparse_storage_is_kept_...).
    model, x = trained
    path = tmp_path / "float.tflite"
    export_tflite(model, path, sparse_storage=True, representative_data=x)
    assert runtimes.is_sparse_model(path)
    assert runtimes.runs_in_xnnpack(runtimes.load_interpreter(path))
    assert not runtimes.runs_in_xnnpack(runtimes.load_interpreter(path, default_delegates=False))
    got, want = runtimes.run_litert(path, x), keras_outputs(model, x)
    for task in TASKS:
        np.testing.assert_allclose(got[task], want[task], atol=1e-5)
