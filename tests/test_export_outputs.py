"""Export of every output form (dict, list, tuple, single, MultiTaskModel), non-finite values, file modes."""
import os
import stat

import numpy as np
import pytest

import keras_minmax_mtl as kmm
from keras_minmax_mtl.export import runtimes
from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.export.deployable import output_tasks
from keras_minmax_mtl.export.tflite import ExportVerificationError, export_tflite
from keras_minmax_mtl.export.targets import MobileTarget

X = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)


def heads():
    """A trunk and two heads of different widths (a positional mix-up changes the shapes)."""
    inputs = keras.Input((6,), name="features")
    h = keras.layers.Dense(8, activation="relu", name="trunk",
                           kernel_initializer=keras.initializers.GlorotUniform(seed=1))(inputs)
    head_a = keras.layers.Dense(3, activation="softmax", name="head_a",
                                kernel_initializer=keras.initializers.GlorotUniform(seed=2))(h)
    head_b = keras.layers.Dense(2, name="head_b",
                                kernel_initializer=keras.initializers.GlorotUniform(seed=3))(h)
    return inputs, head_a, head_b


def build(form):
    inputs, head_a, head_b = heads()
    if form == "dict":  # keys unlike the layer names, inserted out of order
        return keras.Model(inputs, {"b": head_b, "a": head_a}), {"a": head_a, "b": head_b}
    if form == "list":
        return keras.Model(inputs, [head_b, head_a]), {"head_b": 0, "head_a": 1}
    if form == "tuple":
        return keras.Model(inputs, (head_b, head_a)), {"head_b": 0, "head_a": 1}
    return keras.Model(inputs, head_a), {"head_a": None}


def keras_by_task(model, form, tasks):
    out = model.predict(X, verbose=0)
    if form == "dict":
        return {t: out[t] for t in tasks}
    if form == "single":
        return {"head_a": out}
    return {t: out[i] for t, i in tasks.items()}


def run_file(path, target):
    return runtimes.run_micro(path, X)[0] if target == "micro" else runtimes.run_litert(path, X)


def check_by_name(got, want, quantization):
    assert sorted(got) == sorted(want)
    for task, values in want.items():
        assert got[task].shape == values.shape, task
        if quantization == "float":
            np.testing.assert_allclose(got[task], values, atol=1e-5)
        else:  # int8 logits: the float model's decisions
            assert np.mean(got[task].argmax(-1) == values.argmax(-1)) >= 15 / 16, task


# dict outputs (issue 12) on every target; the other forms on TFLite Micro (the runtime that
# needs the file's signature to name outputs) and, for one, on LiteRT int8. A list on LiteRT float
# is `test_export.py::test_outputs_are_named_by_task_not_by_position`.
CASES = [("dict", "mobile", "float"), ("dict", "mobile", "int8"), ("dict", "micro", "int8"),
         ("dict", "edgetpu", "int8"), ("list", "micro", "int8"), ("tuple", "micro", "int8"),
         ("single", "micro", "int8"), ("single", "mobile", "int8")]


@pytest.mark.parametrize("form, target, quantization", CASES)
def test_every_output_form_exports_mapped_by_name(form, target, quantization, tmp_path):
    model, tasks = build(form)
    want = keras_by_task(model, form, tasks)
    assert sorted(output_tasks(model).values()) == sorted(want)
    path = tmp_path / "m.tflite"
    report = export_tflite(model, path, target=target, quantization=quantization,
                           representative_data=X)
    assert sorted(report["outputs"]) == sorted(want)
    check_by_name(run_file(path, target), want, quantization)


@pytest.mark.parametrize("form, target, quantization", [("dict", "micro", "int8"),
                                                        ("list", "edgetpu", "int8")])
def test_a_multitask_wrapper_exports_its_base_by_task_name(form, target, quantization, tmp_path):
    base, tasks = build(form)
    want = keras_by_task(base, form, tasks)
    path = tmp_path / "m.tflite"
    report = export_tflite(kmm.MultiTaskModel(base), path, target=target,
                           quantization=quantization, representative_data=X)
    assert sorted(report["outputs"]) == sorted(want)
    check_by_name(run_file(path, target), want, quantization)


def test_nested_outputs_are_refused_by_name():
    inputs, head_a, head_b = heads()
    model = keras.Model(inputs, {"a": [head_a, head_b]})
    with pytest.raises(ValueError, match="one tensor per task.*Received nested outputs"):
        output_tasks(model)


def nan_model():
    model, _ = build("dict")
    kernel = model.get_layer("trunk").kernel
    values = kernel.numpy()
    values[0, 0] = np.nan
    kernel.assign(values)
    return model


@pytest.fixture(scope="module")
def good_export(tmp_path_factory):
    """`{file name: bytes}` of a mobile float export of the "dict" model."""
    directory = tmp_path_factory.mktemp("good")
    export_tflite(build("dict")[0], directory / "m.tflite", sparse_storage=False,
                  representative_data=X)
    return {p.name: p.read_bytes() for p in directory.iterdir()}


@pytest.mark.parametrize("target, quantization", [("mobile", "int8"), ("mobile", "float"),
                                                  ("micro", "int8")])
def test_a_nan_model_fails_verification_and_an_earlier_export_stays(target, quantization,
                                                                     tmp_path, good_export):
    path = tmp_path / "m.tflite"
    for name, data in good_export.items():
        (tmp_path / name).write_bytes(data)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ExportVerificationError,
                       match=r"The Keras model computes non-finite outputs \(NaN or ±inf\).*"
                             r"'a': 48 of 48 values, first in sample 0.*'b': 32 of 32 values.*"
                             r"weights \['trunk/kernel:0'\] hold NaN.*Nothing was written"):
        export_tflite(nan_model(), path, target=target, quantization=quantization,
                      representative_data=X)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_non_finite_representative_data_is_refused_naming_the_input(tmp_path):
    model, _ = build("dict")
    x = X.copy()
    x[3, 2] = np.inf
    x[5, 0] = np.nan
    with pytest.raises(ValueError, match=r"`representative_data` must hold finite values.*"
                                         r"input 'features': 2 of 96 values, first in sample 3"):
        export_tflite(model, tmp_path / "m.tflite", quantization="int8", representative_data=x)
    assert list(tmp_path.iterdir()) == []


class NaNFileTarget(MobileTarget):
    """LiteRT results with one NaN in task "b": what a file that computes NaN returns."""

    def run(self, path, x, layer_names):
        outputs, info = super().run(path, x, layer_names)
        outputs["b"] = outputs["b"].copy()
        outputs["b"][7, 1] = np.nan
        return outputs, info


@pytest.mark.parametrize("quantization", ["int8"])
def test_non_finite_tflite_outputs_fail_verification_naming_the_task(quantization, tmp_path):
    model, _ = build("dict")
    with pytest.raises(ExportVerificationError,
                       match=r"The TFLite file computes non-finite outputs .* in "
                             r"(ai_edge_litert|tflite_runtime|tf.lite) where the Keras model's "
                             r"are finite, for task 'b': 1 of 32 values, first in sample 7"):
        export_tflite(model, tmp_path / "m.tflite", target=NaNFileTarget(),
                      quantization=quantization, representative_data=X)
    assert list(tmp_path.iterdir()) == []


def test_exported_files_respect_the_umask_also_when_overwritten(tmp_path):
    model, _ = build("single")
    old = os.umask(0o027)
    try:
        export_tflite(model, tmp_path / "m.tflite", sparse_storage=False, representative_data=X)
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        assert modes == {"m.tflite": 0o640, "m.json": 0o640}
        os.umask(0o022)
        export_tflite(model, tmp_path / "m.tflite", sparse_storage=False, representative_data=X)
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        assert modes == {"m.tflite": 0o644, "m.json": 0o644}
    finally:
        os.umask(old)


@pytest.mark.parametrize("damage, message", [
    (lambda data: b"", r"m.tflite' is empty \(0 bytes\): not a TFLite model"),
    (lambda data: np.random.default_rng(0).bytes(500),
     r"m.tflite' is not a TFLite model: it lacks the 'TFL3' identifier at bytes 4-8 \(500 bytes"),
    (lambda data: data[:len(data) // 2],
     r"m.tflite' is not a valid TFLite model \(damaged or truncated, \d+ bytes\)"),
])
def test_damaged_tflite_files_are_refused_naming_the_file(damage, message, tmp_path,
                                                          good_export):
    from keras_minmax_mtl.export.tflite import inspect_tflite

    path = tmp_path / "m.tflite"
    path.write_bytes(damage(good_export["m.tflite"]))
    for read in (runtimes.load_interpreter, inspect_tflite, runtimes.micro_interpreter,
                 lambda p: runtimes.run_litert(p, X)):
        with pytest.raises(runtimes.TFLiteFileError, match=message):
            read(path)
    with pytest.raises(runtimes.TFLiteFileError, match=r"missing.tflite' does not exist"):
        runtimes.load_interpreter(tmp_path / "missing.tflite")
