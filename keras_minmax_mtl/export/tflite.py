r"""Export a multi-task model to TFLite for phones, microcontrollers or the Coral Edge TPU, verified by running it.

`export_tflite` takes a `MinMaxMultiTask` (or any `MultiTaskModel`), or its
Functional base model, with or without tfmot pruning wrappers, and:

1. strips the pruning wrappers on a copy (the user's model is never changed)
   and takes the base model of a `MultiTaskModel`;
2. for full-int8 files (or `outputs="logits"`), drops the final softmax of
   each task head on the copy (`keras_minmax_mtl.export.logits`), so that int8 keeps
   the float model's top-1 decisions; the report's `output_forms` says what
   each task outputs;
3. converts it with a signature whose outputs are named after the tasks, with
   the batch fixed to 1 where the target needs it (`micro`, `edgetpu`);
4. runs the file in the runtime that will run it (LiteRT, or TFLite Micro for
   `micro`) on representative samples and compares every task's output with
   the Keras model: float files must agree within a stated tolerance,
   ``|y_tflite − y_keras| ≤ tol·(1 + |y_keras|)``; quantized files report the
   per-task top-1 agreement and the largest error;
5. only then writes the file, a JSON report beside it (`<stem>.json`) and the
   target's extra files (C array for `micro`, compiler log for `edgetpu`).
   On any error nothing is written.

Example:

>>> from keras_minmax_mtl.export.tflite import export_tflite
>>> report = export_tflite(model, "out/mobile.tflite", target="mobile",
...                        quantization="int8", representative_data=x_train[:256])
>>> report["bytes"]                                            # the file's size
>>> report["verification"]["tasks"]["sum"]["top1_agreement"]   # vs the Keras model
"""
import gzip
import json
import os
import pathlib
import shutil
import tempfile
import warnings

import numpy as np
import tensorflow as tf

from keras_minmax_mtl.sparsity import pruning
from keras_minmax_mtl.export import runtimes
from keras_minmax_mtl.export import surgery
from keras_minmax_mtl.export.deployable import deployable_model, output_tasks
from keras_minmax_mtl.export.edgetpu import op_layers
from keras_minmax_mtl.core.checks import is_real
from keras_minmax_mtl.core.logs import captured_output
from keras_minmax_mtl.export.logits import (OUTPUT_FORMS, unwrapped, floorable_outputs, logit_floors,
                                     softmax_outputs, without_softmax)
from keras_minmax_mtl.core.backend import keras, require_functional, require_tf_keras_model
from keras_minmax_mtl.core.multitask import MultiTaskModel
from keras_minmax_mtl.export.targets import TARGETS, get_target

__all__ = ["export_tflite", "inspect_tflite", "ExportVerificationError", "TARGETS"]


class ExportVerificationError(AssertionError):
    """The exported file does not compute what the Keras model computes (nothing was written)."""


def _by_output_name(model, outputs):
    """`{output name: value}` of a model's (possibly dict, list or single) outputs."""
    return dict(zip(model.output_names, tf.nest.flatten(outputs)))


def _layer_names(model):
    names = []
    for layer in model.layers:
        names.append(layer.name)
        while isinstance(layer, keras.layers.Wrapper):
            layer = layer.layer
            names.append(layer.name)
    return names


def _kernel_sparsity(model):
    """`sparsity_report` of the kernels, looking through quantization wrappers."""
    if not any(isinstance(layer, keras.layers.Wrapper) for layer in model.layers):
        return pruning.sparsity_report(model)
    layers = {}
    for wrapper in model.layers:
        layer = unwrapped(wrapper)
        # A quantization wrapper replaces `layer.kernel` by a fake-quantized
        # tensor and holds the kernel variable itself.
        kernels = [w for w in wrapper.weights if w.name.split(":")[0] == f"{layer.name}/kernel"]
        for kernel in kernels[:1]:
            values = kernel.numpy()
            zeros = int(np.count_nonzero(values == 0))
            layers[f"{layer.name}/kernel"] = {"size": int(values.size), "zeros": zeros,
                                              "sparsity": zeros / values.size}
    size = sum(r["size"] for r in layers.values())
    zeros = sum(r["zeros"] for r in layers.values())
    return {"layers": layers,
            "overall": {"size": size, "zeros": zeros, "sparsity": zeros / size if size else 0.0}}


def _input_specs(model, batch_size, target):
    specs = []
    for tensor, name in zip(model.inputs, model.input_names):
        shape = tuple(tensor.shape[1:])
        if target.batch_size is not None and any(d is None for d in shape):
            raise ValueError(
                f"Target {target.name!r} needs static shapes, but input {name!r} has the shape "
                f"{(None,) + shape}. Build the model with a fixed input shape.")
        specs.append(tf.TensorSpec((batch_size,) + shape, tensor.dtype, name=name))
    return specs


def _samples(representative_data, model, num_samples):
    """Up to `num_samples` samples as `{input name: array}`, checked against the input shapes."""
    names = list(model.input_names)
    if isinstance(representative_data, tf.data.Dataset):
        parts, count = {name: [] for name in names}, 0
        for element in representative_data:
            if isinstance(element, tuple):
                element = element[0]
            element = element if isinstance(element, dict) else {names[0]: element}
            for name in names:
                parts[name].append(np.asarray(element[name]))
            count += len(parts[names[0]][-1])
            if count >= num_samples:
                break
        data = {name: np.concatenate(p)[:num_samples] for name, p in parts.items()}
    elif isinstance(representative_data, dict):
        data = {name: np.asarray(representative_data[name])[:num_samples] for name in names
                if name in representative_data}
    else:
        data = {names[0]: np.asarray(representative_data)[:num_samples]}
    for tensor, name in zip(model.inputs, names):
        want = tuple(tensor.shape[1:])
        if name not in data:
            raise ValueError(f"Argument `representative_data` lacks the model input {name!r}. "
                             f"Received keys: {sorted(data)}")
        got = data[name].shape[1:]
        if len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)):
            raise ValueError(
                "Argument `representative_data` must hold samples of the model's input shape "
                f"{(None,) + want} (for input {name!r}). Received an array of shape "
                f"{data[name].shape}.")
        if len(data[name]) == 0:
            raise ValueError("Argument `representative_data` holds no samples.")
        data[name] = data[name].astype(tensor.dtype.as_numpy_dtype)
    bad = _non_finite(data)
    if bad:
        raise ValueError(
            "Argument `representative_data` must hold finite values (no NaN or ±inf): they "
            "calibrate and verify the file. Received non-finite values in input "
            f"{_describe_non_finite(bad)}.")
    return data


def _convert(model, tasks, specs, quantization, sparse, samples, io_dtype, verbose=False):
    output_names = list(model.output_names)

    @tf.function(input_signature=specs)
    def serve(*inputs):
        outputs = model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)
        return {tasks[name]: out for name, out in zip(output_names, tf.nest.flatten(outputs))}

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], model)
    optimizations = []
    if quantization in ("dynamic", "int8"):
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    if quantization == "int8":
        batch = specs[0].shape[0] or 1
        n = len(next(iter(samples.values())))

        def representative():
            for start in range(0, n - batch + 1, batch):
                yield [samples[spec.name][start:start + batch] for spec in specs]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.as_dtype(io_dtype)
        converter.inference_output_type = tf.as_dtype(io_dtype)
    with captured_output(enabled=not verbose):
        return converter.convert()


def _eager_outputs(model, inputs, batch_size=256):
    """`model`'s outputs on the list `inputs`, called eagerly batch by batch, as numpy arrays.

    Eagerly every op runs on its own, so a NaN propagates as IEEE arithmetic
    says; in `predict`'s graph a fused MatMul + BiasAdd + ReLU kernel can map
    NaN to 0 on some CPUs (seen with oneDNN on AVX-512), and a model with NaN
    weights would then look finite.
    """
    parts = []
    for start in range(0, len(inputs[0]), batch_size):
        batch = [x[start:start + batch_size] for x in inputs]
        out = model(batch if len(batch) > 1 else batch[0], training=False)
        parts.append(tf.nest.map_structure(np.asarray, out))
    return tf.nest.map_structure(lambda *arrays: np.concatenate(arrays), *parts)


def _keras_outputs(model, tasks, samples, what="the Keras model"):
    """`{task: array}` of `model` on the samples; raises if a value or a weight is not finite."""
    inputs = [samples[name] for name in model.input_names]
    outputs = _eager_outputs(model, inputs)
    outputs = {tasks[name]: np.asarray(out) for name, out in _by_output_name(model, outputs).items()}
    bad = _non_finite(outputs)
    weights = [w.name for w in model.weights if not np.all(np.isfinite(w.numpy()))]
    if bad or weights:
        found = (f"computes non-finite outputs (NaN or ±inf) on the representative samples: "
                 f"{_describe_non_finite(bad)}. " if bad else
                 "computes finite outputs on the representative samples, which cannot be "
                 "trusted: ")
        raise ExportVerificationError(
            f"{what[0].upper()}{what[1:]} {found}"
            + (f"Its weights {weights} hold NaN or ±inf. " if weights else "")
            + "Nothing was written.")
    return outputs


def _non_finite(arrays):
    """`{name: (non-finite count, size, first sample index)}` of the arrays that hold NaN or ±inf."""
    bad = {}
    for name, values in arrays.items():
        values = np.asarray(values)
        if values.dtype.kind not in "fc":
            continue
        finite = np.isfinite(values).reshape(len(values), -1) if values.ndim else np.isfinite(values)
        if not np.all(finite):
            first = int(np.argmin(finite.all(axis=-1))) if values.ndim else 0
            bad[name] = (int(finite.size - np.count_nonzero(finite)), int(finite.size), first)
    return bad


def _describe_non_finite(bad):
    return "; ".join(f"{name!r}: {count} of {size} values, first in sample {first}"
                     for name, (count, size, first) in bad.items())


_STRUCTURED = ("auto", True, False)


def _structured(base, structured, target):
    """`(shrunk model or None, the report's "structured" entry)` for `export_tflite`."""
    if not (isinstance(structured, bool) or structured == "auto"):
        raise ValueError(f"Argument `structured` must be one of {list(_STRUCTURED)}. "
                         f"Received: structured={structured!r}")
    entry = {"mode": structured, "applied": False}
    if structured is False or (structured == "auto" and not target.structured_auto):
        return None, entry
    removed = surgery.removed_units(base)
    if not removed:
        wrapped = [layer.name for layer in base.layers if isinstance(layer, keras.layers.Wrapper)]
        if structured is True and wrapped:
            raise ValueError(
                "Argument `structured=True` cannot shrink quantization-aware (wrapped) layers "
                f"{wrapped}. Shrink the pruned model first (`keras_minmax_mtl.export.surgery.shrink`), "
                "then fine-tune it with quantization-aware training, or export with "
                "structured=False.")
        if structured is True:
            sparsity = pruning.sparsity_report(base)["overall"]["sparsity"]
            raise ValueError(
                "Argument `structured=True` needs a model with removed units (a hidden Dense "
                "kernel column or Conv2D filter that is all zero), but this model has none: its "
                f"kernels are {sparsity:.1%} zeros, spread over the units (unstructured "
                "sparsity), which no layer surgery can remove. Prune whole units with "
                "`prune_reweighted_l1(..., sparsity_type=\"filter\")` (`kmm train --pruning "
                "reweighted_l1 --sparsity-type filter`), or export with structured=False.")
        return None, entry
    try:
        shrunk = surgery.shrink(base)
    except ValueError as error:
        if structured is True:
            raise
        # "auto": a layer the surgery cannot cut; export as before, and say why.
        warnings.warn(f"export_tflite(structured='auto') did not remove units: {error}")
        entry["skipped"] = str(error)
        return None, entry
    report = surgery.shrink_report(base, shrunk)
    entry.update({
        "applied": True,
        "removed_units": removed,
        "kept_constant": report["kept_constant"],
        "units": {name: e["units"] for name, e in report["layers"].items()
                  if e["units"]["before"] is not None},
        **{key: {"dense": value["before"], "shrunk": value["after"]}
           for key, value in report["total"].items()},
    })
    return shrunk, entry


def _check_shrunk(reference, got, tolerance):
    """The largest |shrunk − original| Keras output; raises beyond ``tol·(1 + |y|)``."""
    comparison = runtimes.compare_outputs(reference, got, "float", tolerance)
    bad = {t: r["max_abs_error"] for t, r in comparison.items() if not r["within_tolerance"]}
    if bad:
        raise ExportVerificationError(
            f"The shrunk model (units removed) disagrees with the original Keras model beyond "
            f"{tolerance}·(1+|y|) on tasks {bad}. Nothing was written; export with "
            "structured=False.")
    return max(r["max_abs_error"] for r in comparison.values())


def export_tflite(model, path, target="mobile", representative_data=None, quantization=None,
                  sparse_storage="auto", num_samples=256, float_tolerance=1e-4,
                  min_top1_agreement=None, outputs=None, structured="auto", floor_margin=0.1,
                  verbose=False):
    r"""Exports `model` to a `.tflite` file for `target`, verified by running it.

    Args:
        model: a `MultiTaskModel` (e.g. `MinMaxMultiTask`) or a Functional
            `tf_keras` model, with or without tfmot pruning wrappers, or a
            quantization-aware model from `keras_minmax_mtl.export.qat`. It is not
            changed.
        path: the file to write; must end with `.tflite`. The report goes to
            the same path with `.json`, and target files beside it.
        target: `"mobile"`, `"micro"`, `"edgetpu"` or an `ExportTarget`.
            Defaults to `"mobile"`.
        representative_data: input samples (an array, a dict keyed by input
            name, or a `tf.data.Dataset` of `x` or `(x, y)` batches). Used for
            int8 calibration and for the verification. Required for int8;
            without it a float or dynamic-range file is verified on
            `num_samples` seeded standard-normal inputs (the report says so).
            Defaults to `None`.
        quantization: `"float"`, `"dynamic"` (int8 weights, float
            activations) or `"int8"` (full integer, int8 inputs and outputs).
            Defaults to `None`: the target's first choice (`"float"` for
            mobile, `"int8"` for micro and edgetpu).
        sparse_storage: `"auto"` converts with and without
            `EXPERIMENTAL_SPARSITY` and keeps the smaller file; `True` or
            `False` forces one (micro and edgetpu accept only `False`: their
            runtimes have no `DENSIFY`). Defaults to `"auto"` for mobile.
        num_samples: how many representative samples to use. Defaults to `256`.
        float_tolerance: a float file must satisfy
            ``|y_tflite − y_keras| ≤ tol·(1 + |y_keras|)`` for every output
            value. Defaults to `1e-4`.
        min_top1_agreement: if set, every classification task of a quantized
            file must agree with the Keras top-1 on at least this fraction of
            the samples. Defaults to `None` (reported, not enforced).
        outputs: `"probabilities"` keeps every task head as the model computes
            it; `"logits"` drops the final softmax of each head that ends with
            one (on the copy), so the file outputs logits. The argmax, hence
            every top-1 decision of the float model, is the same; but a
            full-int8 softmax output has the step 1/256, and the top classes
            of an unsure head tie there, while int8 logits keep them apart.
            For `quantization="int8"` a head whose softmax is the activation
            of a layer with a bias outputs ``max(z − t, 0)`` instead, with a
            floor ``t`` just below the smallest top logit ``max_k z`` of the
            samples (`logits.logit_floors`, `floor_margin` of their spread): the
            int8 scale then covers the logits that can win rather than the
            whole range with its long negative tail; the argmax is that of
            ``z`` whenever ``max z > t``.
            Defaults to `None`: `"logits"` for `quantization="int8"`,
            `"probabilities"` otherwise (float activations lose nothing).
            The report's `output_forms` says what each task's output is
            (`"probabilities"`, `"logits"`, `"logits_above_floor"` or
            `"as_model"`) and `logit_floors` the floors ``t``.
        structured: whether to convert a copy without the removed units of a
            structured-pruned model (`keras_minmax_mtl.export.surgery.shrink`: a
            hidden Dense kernel column or Conv2D filter that is all zero is
            dropped and the next layers cut to match, giving the same
            outputs with fewer weights and operations). `"auto"` does so on
            every target when the model has removed units
            (`surgery.has_structured_sparsity`); where the surgery
            cannot cut a layer, `"auto"` exports unshrunk with a warning and
            the report's `structured["skipped"]` says why. `True` requires
            removed units and a model the surgery can cut (a `ValueError`
            otherwise); `False` never shrinks.
            The shrunk model's outputs are checked against the original's
            (within ``float_tolerance·(1 + |y|)``), and the file is verified
            against the original model. Defaults to `"auto"`.
        floor_margin: how far below the smallest top logit of the samples
            the int8 logit floor goes, as a fraction of their spread (the
            `margin` of `logits.logit_floors`), a number `>= 0`. Defaults to
            `0.1` (checked on the validation split: `benchmarks/floor_margin.py`).
        verbose: let the TFLite converter print its log (its MLIR passes and
            ``fully_quantize: ...`` lines, written from C++ to the process's
            stdout and stderr). Defaults to `False`: the log is captured
            (`keras_minmax_mtl.core.logs.captured_output`) and printed only
            if the conversion fails.

    Returns:
        The report (also written as JSON): `bytes`, `gzip_bytes`, `storage`,
        `sparsity` (per-layer and overall, of the Keras kernels), `ops`,
        `inputs`, `outputs` (keyed by task name), `output_forms` (per task:
        `"probabilities"` or `"logits"` for heads that end with a softmax,
        `"as_model"` for the others), `verification`, `structured` (`mode`,
        `applied`; `skipped` where "auto" could not shrink; when applied
        `removed_units`, `kept_constant`, `units` per layer, `params`,
        `float32_bytes` and `int8_bytes` of the weights `dense` vs `shrunk`,
        and `keras_max_abs_difference`; always `file_bytes`), and the
        target's entries (`arena_bytes` and `c_array` for micro, `edgetpu`).

    Raises:
        ValueError: unknown target, bad path, int8 without representative
            data, samples of the wrong shape, dynamic shapes for micro/edgetpu,
            `structured=True` for a model without removed units, a layer the
            surgery cannot cut (`keras_minmax_mtl.export.surgery.shrink`).
        ExportVerificationError: the file's outputs disagree with Keras (or
            the shrunk model's with the original's).
        keras_minmax_mtl.export.runtimes.MicroOpError: TFLite Micro lacks an op
            (named with its layer).
    """
    target = get_target(target)
    path = pathlib.Path(path)
    if path.suffix != ".tflite":
        raise ValueError(f"Argument `path` must end with '.tflite'. Received: path={str(path)!r}")
    quantization = target.check_quantization(quantization)
    if sparse_storage == "auto" and "auto" not in target.sparse_storage:
        sparse_storage = target.sparse_storage[0]
    sparse_storage = target.check_sparse_storage(sparse_storage)
    if quantization == "int8" and representative_data is None:
        raise ValueError(
            "Argument `representative_data` is required for quantization='int8' (it calibrates "
            "the activation ranges and verifies the file). Pass a few hundred training inputs, "
            "or use quantization='float' or 'dynamic' (target 'mobile').")
    if outputs is None:
        outputs = "logits" if quantization == "int8" else "probabilities"
    if outputs not in OUTPUT_FORMS:
        raise ValueError(f"Argument `outputs` must be one of {list(OUTPUT_FORMS)} or None. "
                         f"Received: outputs={outputs!r}")
    if not is_real(floor_margin) or not floor_margin >= 0:
        raise ValueError(f"Argument `floor_margin` must be a number >= 0. "
                         f"Received: floor_margin={floor_margin!r}")
    if not isinstance(num_samples, int) or num_samples <= 0:
        raise ValueError(f"Argument `num_samples` must be an integer > 0. "
                         f"Received: num_samples={num_samples!r}")

    if not isinstance(verbose, bool):
        raise ValueError(f"Argument `verbose` must be True or False. Received: verbose={verbose!r}")
    base, tasks = deployable_model(model)
    stripped = base  # its kernels and layer names; the copies below have the same names
    shrunk, structured_report = _structured(base, structured, target)
    if representative_data is None:
        rng = np.random.default_rng(0)
        samples = {name: rng.standard_normal((num_samples,) + tuple(t.shape[1:])).astype(
            t.dtype.as_numpy_dtype) for t, name in zip(base.inputs, base.input_names)}
        sample_source = "seeded standard-normal inputs (no representative_data given)"
    else:
        samples = _samples(representative_data, base, num_samples)
        sample_source = "representative_data"
    floors = {}
    if outputs == "logits":
        logits_model, forms = without_softmax(base)
        if quantization == "int8" and floorable_outputs(base):
            # Floor the int8 logits just below the smallest top logit of the samples, so
            # that the int8 range covers the logits that can win (see `logits.without_softmax`).
            reference = _keras_outputs(logits_model, tasks, samples)
            floors = logit_floors({n: reference[tasks[n]] for n in floorable_outputs(base)},
                                  margin=floor_margin)
            logits_model, forms = without_softmax(base, floors)
        base = logits_model
        if shrunk is not None:
            shrunk = without_softmax(shrunk, floors)[0]
    else:
        forms = {name: "probabilities" if has else "as_model"
                 for name, has in softmax_outputs(base).items()}
    output_forms = {tasks[name]: form for name, form in forms.items()}
    # `base` is the model the file is checked against (the original, masked model) and
    # `converted` the one converted: the shrunk copy where units were removed.
    converted = base if shrunk is None else shrunk
    reference = _keras_outputs(base, tasks, samples)
    if shrunk is not None:
        structured_report["keras_max_abs_difference"] = _check_shrunk(
            reference, _keras_outputs(shrunk, tasks, samples), float_tolerance)
    specs = _input_specs(converted, target.batch_size, target)

    candidates = {}
    if sparse_storage in ("auto", False):
        candidates["dense"] = _convert(converted, tasks, specs, quantization, False, samples,
                                       target.io_dtype, verbose)
    if sparse_storage in ("auto", True):
        candidates["sparse"] = _convert(converted, tasks, specs, quantization, True, samples,
                                        target.io_dtype, verbose)
    storage = min(candidates, key=lambda k: len(candidates[k]))
    content = candidates[storage]
    if storage == "sparse" and not runtimes.is_sparse_model(content):
        storage = "dense"  # the converter found nothing worth storing sparse

    layer_names = _layer_names(stripped)
    with tempfile.TemporaryDirectory() as work:
        work = pathlib.Path(work)
        staged = work / path.name
        staged.write_bytes(content)
        outputs, run_info = target.run(staged, samples, layer_names)
        missing = sorted(set(reference) - set(outputs))
        if missing:
            raise ExportVerificationError(f"The exported file has no outputs for tasks {missing}.")
        bad = _non_finite({task: outputs[task] for task in reference})
        if bad:
            raise ExportVerificationError(
                f"The TFLite file computes non-finite outputs (NaN or ±inf) in "
                f"{run_info.get('runtime', 'its runtime')} where the Keras model's are finite, "
                f"for task {_describe_non_finite(bad)}. Nothing was written.")
        comparison = runtimes.compare_outputs(reference, outputs, quantization, float_tolerance)
        if quantization == "float":
            bad = [t for t, r in comparison.items() if not r["within_tolerance"]]
            if bad:
                raise ExportVerificationError(
                    f"The float file disagrees with the Keras model beyond the tolerance "
                    f"{float_tolerance}·(1+|y|) on tasks {bad}: {comparison}. Nothing was written.")
        if min_top1_agreement is not None:
            bad = {t: r["top1_agreement"] for t, r in comparison.items()
                   if r.get("top1_agreement", 1.0) < min_top1_agreement}
            if bad:
                raise ExportVerificationError(
                    f"Top-1 agreement with the Keras model is below min_top1_agreement="
                    f"{min_top1_agreement} on {bad}. Nothing was written.")

        report = inspect_tflite(content, layer_names=layer_names)
        report.update({
            "file": path.name,
            "target": target.name,
            "target_config": target.get_config(),
            "quantization": quantization,
            "storage": storage,
            "output_forms": output_forms,
            "logit_floors": {tasks[name]: t for name, t in floors.items()},
            "floor_margin": floor_margin if floors else None,
            "bytes_by_storage": {k: len(v) for k, v in candidates.items()},
            "keras_sparsity": _kernel_sparsity(stripped),
            "structured": {**structured_report, "file_bytes": len(content)},
            "verification": {
                "samples": len(next(iter(samples.values()))),
                "reference": ("the Keras model with the final softmax dropped (logits; "
                              "max(logits - floor, 0) where logit_floors has a floor)"
                              if outputs == "logits" else "the Keras model"),
                "sample_source": sample_source,
                "tolerance": (f"|y_tflite - y_keras| <= {float_tolerance} * (1 + |y_keras|)"
                              if quantization == "float" else None),
                "tasks": comparison,
                **run_info,
            },
        })
        if "arena_bytes" in run_info:
            report["arena_bytes"] = run_info["arena_bytes"]
        extra, files = target.extra_files(staged, content, layer_names, work)
        report.update(extra)
        report_name = path.with_suffix(".json").name
        (work / report_name).write_text(json.dumps(report, indent=2))
        files = {path.name: staged, report_name: work / report_name, **files}
        _publish(files, path.parent)
    return report


def _publish(files, directory):
    """Moves staged files into `directory`, each by an atomic rename of a same-folder copy.

    The copies are created with mode ``0o666`` less the umask, as `open` would
    create them (not `tempfile.mkstemp`'s private ``0o600``): a deployable file
    is readable by whoever the user's umask allows.
    """
    directory.mkdir(parents=True, exist_ok=True)
    pending = []
    try:
        for name, source in files.items():
            temporary = _new_file(directory, f".{name}.", ".tmp")
            pending.append((temporary, directory / name))
            shutil.copyfile(source, temporary)
        for temporary, final in pending:
            os.replace(temporary, final)
    finally:
        for temporary, _ in pending:
            if os.path.exists(temporary):
                os.remove(temporary)


def _new_file(directory, prefix, suffix):
    """Creates an empty file with a fresh random name in `directory`, mode 0o666 less the umask."""
    import secrets

    for _ in range(100):
        path = directory / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"Could not create a temporary file in {directory}.")


def inspect_tflite(model, layer_names=()):
    """Size, sparsity, ops, inputs and outputs of a `.tflite` file.

    Args:
        model: a path or the bytes of a `.tflite` file.
        layer_names: Keras layer names, to name the layer of each op.
            Defaults to `()`: the layers are read from the file's tensor
            names (`keras_minmax_mtl.export.edgetpu.op_layers`; `None` for an
            op whose tensors do not name one).

    Returns:
        `{"bytes", "gzip_bytes", "sparse_tensors", "ops" (counts by op),
        "op_list" ([{"op", "layer"}]), "inputs", "outputs",
        "tflite_kernel_sparsity" (zeros of the dense constant kernels, per
        op and overall)}`. `outputs` is keyed by signature name (the task
        names for files written by `export_tflite`) and maps each to its
        tensor: `tensor` (the file's opaque name, e.g.
        ``"StatefulPartitionedCall:1"``), `index`, `position` (its place in
        the subgraph's outputs, the order a runtime that reads outputs by
        position sees: not the Keras order), `op` (the op that computes it:
        `SOFTMAX` for probabilities), `shape`, `dtype` and `quantization`.

    Raises:
        keras_minmax_mtl.export.runtimes.TFLiteFileError: the file is missing, damaged,
            truncated or not a TFLite model (the message names it).
    """
    content = runtimes.read_tflite(model)
    details = runtimes.model_details(model)
    layers = op_layers(details, layer_names)
    counts = {}
    for op in details["ops"]:
        counts[op["op"]] = counts.get(op["op"], 0) + 1

    def describe(index):
        t = details["tensors"][index]
        return {"shape": t["shape"], "dtype": t["dtype"], "quantization": t["quantization"]}

    producers = {o: op["op"] for op in details["ops"] for o in op["outputs"]}

    def describe_output(index):
        return {"tensor": details["tensors"][index]["name"], "index": index,
                "position": details["outputs"].index(index) if index in details["outputs"] else None,
                "op": producers.get(index), **describe(index)}

    signature = details["signature"] or {"inputs": {}, "outputs": {}}
    kernels = _kernel_zeros(content, details, layers)
    return {
        "bytes": len(content),
        "gzip_bytes": len(gzip.compress(bytes(content), mtime=0)),
        "sparse_tensors": sum(t["sparse"] for t in details["tensors"].values()),
        "ops": counts,
        "op_list": [{"op": op["op"], "layer": layer} for op, layer in zip(details["ops"], layers)],
        "inputs": {name: describe(i) for name, i in signature["inputs"].items()},
        "outputs": {name: describe_output(i) for name, i in signature["outputs"].items()},
        "tflite_kernel_sparsity": kernels,
    }


_KERNEL_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"}


def _kernel_zeros(content, details, layers):
    """Zero fraction of the constant weight input of every conv / fully-connected op.

    Sparse-stored kernels are counted from the dense tensor the `DENSIFY` op
    produces at run time, which TFLite does not expose before invoking: they
    are reported as `"stored sparse"` instead.
    """
    interpreter = runtimes.inspect_interpreter(content)
    interpreter.allocate_tensors()
    produced = {o for op in details["ops"] for o in op["outputs"]}
    densified = {o for op in details["ops"] if op["op"] == "DENSIFY" for o in op["outputs"]}
    per_op, size, zeros = [], 0, 0
    for op, layer in zip(details["ops"], layers):
        if op["op"] not in _KERNEL_OPS or len(op["inputs"]) < 2:
            continue
        index = op["inputs"][1]
        if index in densified or details["tensors"][index]["sparse"]:
            per_op.append({"op": op["op"], "layer": layer, "stored": "sparse"})
            continue
        if index in produced:
            continue
        values = interpreter.get_tensor(index)
        z = int(np.count_nonzero(values == 0))
        per_op.append({"op": op["op"], "layer": layer, "size": int(values.size), "zeros": z,
                       "sparsity": z / values.size})
        size += values.size
        zeros += z
    return {"kernels": per_op, "overall": {"size": int(size), "zeros": zeros,
                                           "sparsity": zeros / size if size else None}}
