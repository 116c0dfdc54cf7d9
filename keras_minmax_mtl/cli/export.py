"""`kmm export`, `kmm inspect` and `kmm train --export`: the command-line side of `keras_minmax_mtl.export.tflite`.

    kmm export runs/minmax-s0 --target micro --out deploy/
    kmm export runs/filter-pruned --target mobile --structured on
    kmm inspect deploy/model_micro.tflite
    kmm train --dataset multi_digits --epochs 20 --export mobile

`kmm export` reads what `kmm train` wrote (`model.keras`, loaded with
`keras_minmax_mtl.loading.load_model`, which refuses files that name code
from outside tf_keras, tfmot and this package unless `--trust-model` is
given, and `metrics.json`, which says the dataset and seed): the
representative samples are the first `--samples` inputs of that dataset's
training split.

Bad arguments and unreadable files print one line ``kmm: error: ...`` and
exit with status 2 before anything is written; an export whose verification
fails prints ``kmm: error: ...`` and exits with status 1, writing nothing.
"""
import contextlib
import json
import pathlib
import sys

import numpy as np

from keras_minmax_mtl.cli.output import add_verbose_flag, import_tensorflow, show_logs

__all__ = ["add_commands", "add_train_option", "run_command", "export_after_training", "fail",
           "export_name", "output_mapping", "edgetpu_summary"]

#: `--structured` values and the `export_tflite(structured=...)` each stands for.
_STRUCTURED = {"auto": "auto", "on": True, "off": False}


def add_commands(commands):
    """Adds the `export` and `inspect` subcommands to the `kmm` subparsers."""
    from keras_minmax_mtl.export.targets import QUANTIZATIONS, TARGETS

    export = commands.add_parser(
        "export", help="export a `kmm train` model to TFLite, verified by running it",
        description="Export MODEL_DIR/model.keras to a .tflite file for a target, run it in the "
                    "target's runtime and compare it with the Keras model per task.")
    export.add_argument("model_dir", type=pathlib.Path, metavar="MODEL_DIR",
                        help="a folder written by `kmm train` (model.keras, metrics.json)")
    export.add_argument("--target", default="mobile", choices=sorted(TARGETS),
                        help="default: %(default)s")
    export.add_argument("--quantization", default=None, choices=list(QUANTIZATIONS),
                        help="default: float for mobile, int8 for micro and edgetpu")
    export.add_argument("--outputs", default=None, choices=["probabilities", "logits"],
                        help="task outputs of the file (default: logits for int8, dropping each "
                             "head's final softmax so int8 keeps the top-1 decision; "
                             "probabilities otherwise)")
    export.add_argument("--structured", default="auto", choices=sorted(_STRUCTURED),
                        help="remove the units of a structured-pruned model before converting "
                             "(keras_minmax_mtl.export.surgery.shrink): auto = for micro and edgetpu "
                             "when the model has removed units; on = required; off = never "
                             "(default: %(default)s)")
    export.add_argument("--out", type=pathlib.Path, default=None,
                        help="output folder (default: MODEL_DIR)")
    export.add_argument("--samples", type=int, default=256,
                        help="representative training samples (default: %(default)s)")
    export.add_argument("--trust-model", action="store_true",
                        help="load model.keras even if it names code from outside tf_keras, "
                             "tfmot and keras_minmax_mtl (a Lambda layer, a custom class): only "
                             "for files you would run as code (docs/security.md)")
    inspect = commands.add_parser("inspect", help="size, sparsity, ops, inputs and outputs of a "
                                                  ".tflite file")
    inspect.add_argument("file", type=pathlib.Path, metavar="FILE.tflite")
    for command in (export, inspect):
        add_verbose_flag(command)


def add_train_option(train_parser):
    """Adds `--export TARGET` to `kmm train`."""
    from keras_minmax_mtl.export.targets import TARGETS

    train_parser.add_argument("--export", default=None, choices=sorted(TARGETS),
                              help="after training, export the model for this target into --out")


#: The datasets `kmm export` takes representative samples from (their training split).
DATASETS = ("multi_digits", "multi_fashion")


def _training_inputs(dataset, seed, samples, data_dir=None):
    if dataset == "multi_digits":
        from keras_minmax_mtl.data.digits import load_multi_digits

        return load_multi_digits("train", seed=seed, num_examples=samples)[0]
    if dataset == "multi_fashion":
        from keras_minmax_mtl.data.fashion import load_multi_fashion

        return load_multi_fashion("train", seed=seed, num_examples=samples, data_dir=data_dir)[0]
    raise ValueError(f"No representative data for dataset {dataset!r}.")


def _summary(path, report):
    lines = [f"wrote {path} ({report['bytes']} bytes, gzip {report['gzip_bytes']}, "
             f"{report['quantization']}, {report['storage']} storage) for target {report['target']}"]
    for task, result in report["verification"]["tasks"].items():
        agreement = result.get("top1_agreement")
        lines.append(f"  {task} ({report['output_forms'][task]}): max |tflite - keras| = "
                     f"{result['max_abs_error']:.3g}"
                     + (f", top-1 agreement {agreement:.4f}, tied top values "
                        f"{result['top1_tie_fraction']:.4f}" if agreement is not None else ""))
    lines.append(f"  verified in {report['verification']['runtime']} on "
                 f"{report['verification']['samples']} samples")
    lines.extend(output_mapping(report))
    structured = report["structured"]
    if structured["applied"]:
        lines.append(f"  units removed (structured): weights {structured['params']['dense']} -> "
                     f"{structured['params']['shrunk']} parameters, int8 weight bytes "
                     f"{structured['int8_bytes']['dense']} -> {structured['int8_bytes']['shrunk']}")
    if "skipped" in structured:
        lines.append(f"  units not removed (structured auto): {structured['skipped']}")
    if "arena_bytes" in report:
        lines.append(f"  TFLite Micro arena: {report['arena_bytes']} bytes; C array: "
                     f"{report['c_array']['source']}, {report['c_array']['header']}")
    if "edgetpu" in report:
        lines.extend(edgetpu_summary(path, report["edgetpu"]))
    return "\n".join(lines)


#: How each `output_forms` value of the report reads on the console.
_FORMS = {"probabilities": "probabilities (the model's softmax)",
          "logits": "logits (the final softmax dropped: the same top-1)",
          "logits_above_floor": "logits above the floor t={floor:.4g}, max(z - t, 0) (the final "
                                "softmax dropped: the same top-1 where max z > t)",
          "as_model": "as the model computes it (no final softmax)"}


def output_mapping(report):
    """Console lines mapping each task to its output tensor in the file, and what it holds.

    A `.tflite` file's outputs are not in the Keras order and have opaque
    names (``StatefulPartitionedCall:1``); int8 files hold logits (or
    logits above a floor), quantized. One line per task, from the report of
    `export_tflite`: the position among the file's outputs, the tensor's
    name and index, dtype and shape, its form and, when quantized, how to
    dequantize it.
    """
    lines = ["  outputs by task (read them by signature name, not by position):"]
    for task, tensor in report["outputs"].items():
        form = report["output_forms"].get(task, "as_model")
        floor = report.get("logit_floors", {}).get(task)
        text = _FORMS.get(form, form).format(floor=floor if floor is not None else float("nan"))
        line = (f"    {task}: output {tensor['position']}, tensor {tensor['tensor']!r} (index "
                f"{tensor['index']}), {tensor['dtype']} {tensor['shape']}, {text}")
        quantization = tensor.get("quantization")
        if quantization and tensor["dtype"] in ("int8", "uint8"):
            zero = np.ravel(quantization["zero_point"])[0]
            line += (f"; value = {quantization['scale']:.6g} * (q {'+' if zero < 0 else '-'} "
                     f"{abs(int(zero))})")
        lines.append(line)
    return lines


def edgetpu_summary(path, edgetpu):
    """What the Edge TPU export did: whether `edgetpu_compiler` ran, and what the rules check found."""
    rules, compiler = edgetpu["rules"], edgetpu["compiler"]
    ops = len(rules["ops"])
    if not compiler.get("found"):
        lines = [f"  Edge TPU: edgetpu_compiler was not found on PATH, so {path.name} is not "
                 "compiled (an Edge TPU runs only a compiled file: run `edgetpu_compiler "
                 f"{path.name}` where it is installed); checked instead: the compiler's "
                 "documented rules (int8 ops it supports, static shapes, tensors <= 3-D), "
                 "op by op"]
    elif compiler.get("compiled") and compiler.get("returncode") == 0:
        lines = [f"  Edge TPU: compiled by edgetpu_compiler into {compiler['compiled']} "
                 f"(log: {compiler['log']})"]
    else:
        lines = [f"  Edge TPU: edgetpu_compiler failed (exit status {compiler.get('returncode')}, "
                 f"no compiled file; log: {compiler['log']}); {path.name} is not compiled"]
    if rules["all_on_edgetpu"]:
        lines.append(f"  Edge TPU rules: all {ops} ops would map to the Edge TPU")
    else:
        lines.append(f"  Edge TPU rules: {len(rules['cpu_ops'])} of {ops} ops would run on the CPU: "
                     + ", ".join(f"{o['op']} ({o['layer']}): {o['reasons'][0]}"
                                 for o in rules["cpu_ops"]))
    return lines


def export_after_training(model, out, target, dataset, seed, samples=256, quantization=None,
                          outputs=None, structured="auto", verbose=False, data_dir=None):
    """Exports a trained model into `out` (the `--export` of `kmm train`); returns the report.

    `structured` is passed to `export_tflite` (`"auto"`, `True` or `False`), and
    `verbose` (show the converter's log). A
    failed verification (`ExportVerificationError`, `MicroOpError`) prints one
    line ``kmm: error: ...`` and exits with status 1, a refused argument
    (`ValueError`) with status 2; nothing is written either way.
    """
    from keras_minmax_mtl.export.tflite import ExportVerificationError, export_tflite
    from keras_minmax_mtl.export.runtimes import MicroOpError

    path = pathlib.Path(out) / export_name(target)
    try:
        report = export_tflite(model, path, target=target, quantization=quantization,
                               representative_data=_training_inputs(dataset, seed, samples,
                                                                    data_dir),
                               outputs=outputs, structured=structured, verbose=verbose)
    except (ExportVerificationError, MicroOpError) as error:
        fail(f"the export failed its verification, nothing was written: {error}", status=1)
    except ValueError as error:
        fail(error)
    print(_summary(path, report))
    return report


def export_name(target):
    """The file name `kmm export` writes for `target`: ``model_<target>.tflite``.

    For `edgetpu` it is ``model_edgetpu_uncompiled.tflite``: the converted
    full-int8 file, which an Edge TPU runs only once `edgetpu_compiler` has
    compiled it (into ``model_edgetpu.tflite``, written beside it when the
    compiler is installed; `keras_minmax_mtl.export.targets.compiled_name`).
    """
    return "model_edgetpu_uncompiled.tflite" if target == "edgetpu" else f"model_{target}.tflite"


def fail(message, status=2):
    """Prints one line ``kmm: error: message`` to stderr and exits with `status`."""
    print("kmm: error: " + " ".join(str(message).split()), file=sys.stderr)
    raise SystemExit(status)


def _existing_file_above(path):
    """The nearest existing ancestor of `path` (or `path`) that is not a folder, or `None`."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def _check_export_arguments(args):
    """`(metrics, output path)` of `kmm export`, or `fail` naming the bad flag or file."""
    from keras_minmax_mtl.export.targets import TARGETS

    model_dir = args.model_dir
    if not model_dir.exists():
        fail(f"argument MODEL_DIR: no folder {str(model_dir)!r} (a folder written by `kmm train`)")
    if not model_dir.is_dir():
        fail(f"argument MODEL_DIR: {str(model_dir)!r} is a file, not a folder written by "
             "`kmm train`")
    for name in ("model.keras", "metrics.json"):
        if not (model_dir / name).is_file():
            fail(f"argument MODEL_DIR: {str(model_dir)!r} has no {name} (a folder written by "
                 "`kmm train` holds model.keras and metrics.json)")
    try:
        metrics = json.loads((model_dir / "metrics.json").read_text())
    except (ValueError, UnicodeDecodeError) as error:
        fail(f"argument MODEL_DIR: {str(model_dir / 'metrics.json')!r} is not JSON ({error})")
    if not isinstance(metrics, dict) or not all(k in metrics for k in ("dataset", "seed")):
        fail(f"argument MODEL_DIR: {str(model_dir / 'metrics.json')!r} lacks the keys 'dataset' "
             "and 'seed' that `kmm train` writes")
    if metrics["dataset"] not in DATASETS:
        fail(f"argument MODEL_DIR: {str(model_dir / 'metrics.json')!r} names the dataset "
             f"{metrics['dataset']!r}, for which `kmm export` has no representative data "
             f"(it has for: {', '.join(DATASETS)})")
    if args.samples <= 0:
        fail(f"--samples must be an integer > 0, received {args.samples}")
    allowed = TARGETS[args.target].quantizations
    if args.quantization is not None and args.quantization not in allowed:
        fail(f"--quantization {args.quantization} is not available for --target {args.target} "
             f"(choose from {', '.join(allowed)})")
    out = args.out or model_dir
    blocking = _existing_file_above(out)
    if blocking is not None:
        fail(f"--out {str(out)!r} must be a folder, but {str(blocking)!r} is a file")
    path = out / export_name(args.target)
    for existing in (path, path.with_suffix(".json")):
        if existing.is_dir():
            fail(f"--out {str(out)!r}: {str(existing)!r} is a folder; the export would replace it")
    return metrics, path


def run_command(args):
    """Runs `kmm export` or `kmm inspect`; returns the report.

    Errors print one line ``kmm: error: ...`` and raise `SystemExit` (2 for bad
    arguments and files, 1 for a failed verification); nothing is written.
    """
    from keras_minmax_mtl.export.runtimes import TFLiteFileError, read_tflite

    if args.command == "inspect":
        try:
            read_tflite(args.file)  # a missing or foreign file is refused before TensorFlow loads
            import_tensorflow(show_logs(args))
            from keras_minmax_mtl.export.tflite import inspect_tflite

            report = inspect_tflite(args.file)
        except TFLiteFileError as error:
            fail(f"argument FILE.tflite: {error}")
        print(json.dumps(report, indent=2))
        return report
    from keras_minmax_mtl.loading import ModelFileError, UntrustedModelError, load_model

    metrics, path = _check_export_arguments(args)
    with contextlib.ExitStack() as locks:
        _lock_run_folders(locks, args.model_dir, path.parent)
        metrics, path = _check_export_arguments(args)  # again, under the locks
        import_tensorflow(show_logs(args))
        try:
            model = load_model(args.model_dir / "model.keras", trusted=args.trust_model)
        except (UntrustedModelError, ModelFileError) as error:
            fail(error)
        return export_after_training(model, path.parent, args.target, metrics["dataset"],
                                     metrics["seed"], args.samples, args.quantization,
                                     args.outputs, _STRUCTURED[args.structured],
                                     verbose=show_logs(args),
                                     data_dir=(metrics.get("arguments") or {}).get("data_dir"))


def _lock_run_folders(locks, model_dir, out):
    """Holds (in `locks`) the lock of `model_dir` and of `out` if it is another run folder.

    A `kmm train` or `kmm compress` replacing either folder meanwhile would swap
    the run being read, or the folder being written into; one that holds a lock
    is refused by name (`FolderLock`), and a run started during the export is.
    """
    from keras_minmax_mtl.cli.run_folder import FolderLock, RunFolderError

    folders = [("argument MODEL_DIR", model_dir, "wait for it to end")]
    if out.resolve() != model_dir.resolve() and (out / "metrics.json").is_file():
        folders.append(("--out", out, "wait for it to end or choose another --out"))
    for flag, folder, advice in folders:
        try:
            locks.enter_context(FolderLock(folder, "export", advice=advice))
        except RunFolderError as error:
            fail(f"{flag}: {error}")
        except OSError as error:
            fail(f"{flag}: cannot lock {str(folder)!r}: {error.strerror}")
