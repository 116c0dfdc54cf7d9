r"""Export a (pruned) Keras 3 model to LiteRT with Keras 3's own exporter, verified by running the file.

`export_litert(model, path)`:

1. strips the `PruneMasked` wrappers on a copy (`keras3.pruning.strip`; the
   user's model is never changed) and takes the base model of a
   `MultiTaskModel`, with its outputs keyed by task name;
2. computes the Keras model's outputs on the samples and refuses NaN or ±inf;
3. converts with Keras 3's own `Model.export(..., format="litert")`
   (Keras 3.15: an `ExportArchive` SavedModel, then `tf.lite.TFLiteConverter`;
   TensorFlow back-end only), float or full int8 (`Optimize.DEFAULT`, the
   representative samples, int8 inputs and outputs), to a temporary file
   beside `path`;
4. runs that file in LiteRT (`keras_minmax_mtl.export.runtimes.run_litert`, the
   runner of the tf_keras path, outputs by signature name = task name) and
   compares every task: a float file must satisfy
   ``|y_litert − y_keras| ≤ tol·(1 + |y_keras|)``, an int8 file reports the
   top-1 agreement and, with `min_top1_agreement`, must reach it; NaN in the
   file's outputs always fails;
5. only then renames the temporary file to `path` (an existing `path` is
   replaced whole, atomically, never written in place). On any failure the
   temporary file is removed and `path` is untouched.

On JAX, Keras 3 has no LiteRT export: save the model (`.keras`), load it in a
process with `KERAS_BACKEND=tensorflow` and export there.

Example:

>>> report = export_litert(model, "out/model_int8.tflite", quantization="int8",
...                        representative_data=x_train[:256])
>>> report["bytes"], report["verification"]["tasks"]["sum"]["top1_agreement"]
"""
import os
import tempfile

import numpy as np

from keras_minmax_mtl.export import runtimes
from keras_minmax_mtl.keras3.backend import keras, require_functional, task_names
from keras_minmax_mtl.keras3.multitask import MultiTaskModel
from keras_minmax_mtl.keras3.pruning import sparsity_report, strip

__all__ = ["export_litert", "deployable_model", "ExportVerificationError", "QUANTIZATIONS"]

#: The `quantization` values of `export_litert`.
QUANTIZATIONS = ("float", "int8")


class ExportVerificationError(AssertionError):
    """The LiteRT file does not compute what the Keras model computes (nothing was written)."""


def deployable_model(model):
    """`(functional, tasks)`: a stripped Functional copy of `model` whose outputs are `{task: tensor}`."""
    if isinstance(model, MultiTaskModel):
        base, tasks = strip(model).base_model, list(model.task_names)
    else:
        require_functional(model, "model")
        base = strip(model)
        tasks = task_names(base)
    outputs = keras.tree.flatten(base.output)
    return keras.Model(base.inputs, dict(zip(tasks, outputs)), name=f"{base.name}_deployable"), tasks


def _samples(representative_data, model, num_samples, quantization):
    if len(model.inputs) != 1:
        raise ValueError(f"export_litert supports models with one input; this one has "
                         f"{len(model.inputs)}.")
    shape = tuple(model.inputs[0].shape[1:])
    if representative_data is None:
        if quantization == "int8":
            raise ValueError("Argument `representative_data` is required for quantization='int8' "
                             "(it calibrates the int8 ranges). Received: representative_data=None")
        rng = np.random.default_rng(0)
        return rng.standard_normal((num_samples,) + shape).astype("float32"), "seeded normal"
    data = np.asarray(representative_data)[:num_samples]
    if data.shape[1:] != shape or len(data) == 0:
        raise ValueError(f"Argument `representative_data` must hold samples of the input shape "
                         f"{(None,) + shape}. Received an array of shape {np.shape(representative_data)}.")
    if not np.all(np.isfinite(data)):
        raise ValueError("Argument `representative_data` must hold finite values (no NaN or ±inf).")
    return data.astype("float32"), "representative_data"


def _converter_arguments(quantization, samples):
    if quantization == "float":
        return {}
    import tensorflow as tf  # the TensorFlow back-end is running: already imported

    def representative():
        for i in range(len(samples)):
            yield [samples[i:i + 1]]

    return {"optimizations": [tf.lite.Optimize.DEFAULT],
            "representative_dataset": representative,
            "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
            "inference_input_type": tf.int8, "inference_output_type": tf.int8}


def _compare(reference, got, quantization, tolerance):
    """`runtimes.compare_outputs`, after checking that every task's output is there and finite."""
    for task in reference:
        if task not in got:
            raise ExportVerificationError(f"The LiteRT file has no output {task!r}; its outputs "
                                          f"are {sorted(got)}. Nothing was written.")
        if not np.all(np.isfinite(np.asarray(got[task]))):
            raise ExportVerificationError(f"The LiteRT file computes NaN or ±inf for task {task!r}. "
                                          f"Nothing was written.")
    return runtimes.compare_outputs(reference, got, quantization, tolerance)


def export_litert(model, path, quantization="float", representative_data=None, num_samples=256,
                  float_tolerance=1e-4, min_top1_agreement=None):
    r"""Exports `model` to the LiteRT file `path`, verified in LiteRT before it is written.

    Args:
        model: a Keras 3 `MultiTaskModel` (e.g. `MinMaxMultiTask`) or a Functional
            model with one input, with or without `PruneMasked` wrappers. Not changed.
        path: the file to write, ending with `.tflite`; its folder must exist.
        quantization: `"float"` or `"int8"` (full integer, int8 inputs and
            outputs, calibrated on `representative_data`). Defaults to `"float"`.
        representative_data: an array of input samples: the int8 calibration
            and the verification. Required for int8; a float file is verified on
            `num_samples` seeded standard-normal inputs without it. Defaults to `None`.
        num_samples: at most this many samples are used. Defaults to `256`.
        float_tolerance: a float file must satisfy
            ``|y_litert − y_keras| ≤ tol·(1 + |y_keras|)``. Defaults to `1e-4`.
        min_top1_agreement: for int8, every classification task's top-1
            agreement with Keras must be at least this. Defaults to `None`
            (reported, not enforced).

    Returns:
        The report: `path`, `bytes`, `quantization`, `tasks`, `sparsity` (of the
        Keras kernels), `verification` (`samples`, `source`, per task
        `max_abs_error`, `mean_abs_error`, `top1_agreement`, `within_tolerance`).

    Raises:
        ValueError: bad arguments, or a back-end other than TensorFlow.
        ExportVerificationError: the Keras model or the file computes NaN/±inf, the
            float file is outside the tolerance, or the int8 agreement is too low
            (nothing written).
    """
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"export_litert needs the TensorFlow back-end (Keras 3's LiteRT export runs there). "
            f"Received back-end {keras.backend.backend()!r}: save the model (`model.save("
            f"'model.keras')`), load it in a process with KERAS_BACKEND=tensorflow and export there.")
    path = os.fspath(path)
    if not path.endswith(".tflite"):
        raise ValueError(f"Argument `path` must end with '.tflite'. Received: path={path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"Argument `path` must be in an existing folder. Received: path={path!r}")
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"Argument `quantization` must be one of {list(QUANTIZATIONS)}. "
                         f"Received: quantization={quantization!r}")
    if min_top1_agreement is not None and not 0 <= min_top1_agreement <= 1:
        raise ValueError(f"Argument `min_top1_agreement` must be in [0, 1]. "
                         f"Received: min_top1_agreement={min_top1_agreement!r}")
    deployable, tasks = deployable_model(model)
    samples, source = _samples(representative_data, deployable, num_samples, quantization)
    reference = {t: np.asarray(v) for t, v in deployable.predict(samples, verbose=0).items()}
    bad = sorted(t for t, v in reference.items() if not np.all(np.isfinite(v)))
    if bad:
        raise ExportVerificationError(f"The Keras model computes NaN or ±inf for tasks {bad} on the "
                                      f"samples. Nothing was written.")
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.",
                                         suffix=".tflite")
    os.close(handle)
    try:
        deployable.export(temporary, format="litert", verbose=False,
                          **_converter_arguments(quantization, samples))
        got = runtimes.run_litert(temporary, samples)
        results = _compare(reference, got, quantization, float_tolerance)
        if quantization == "float":
            outside = {t: r["max_abs_error"] for t, r in results.items() if not r["within_tolerance"]}
            if outside:
                raise ExportVerificationError(
                    f"The float LiteRT file disagrees with the Keras model beyond "
                    f"{float_tolerance}·(1+|y|) on tasks {outside}. Nothing was written.")
        elif min_top1_agreement is not None:
            low = {t: r["top1_agreement"] for t, r in results.items()
                   if r.get("top1_agreement", 1.0) < min_top1_agreement}
            if low:
                raise ExportVerificationError(
                    f"The int8 LiteRT file agrees with the Keras top-1 on fewer than "
                    f"{min_top1_agreement} of the samples for tasks {low}. Nothing was written.")
        size = os.path.getsize(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return {"path": path, "bytes": size, "quantization": quantization, "tasks": tasks,
            "sparsity": sparsity_report(model)["overall"],
            "verification": {"samples": len(samples), "source": source, "tasks": results}}
