"""`kmm export`, `kmm inspect` and `kmm train --export`: the command-line side of `keras_minmax_mtl.export`.

    kmm export runs/minmax-s0 --target micro --out deploy/
    kmm export runs/filter-pruned --target mobile --structured on
    kmm inspect deploy/model_micro.tflite
    kmm train --dataset multi_digits --epochs 20 --export mobile

`kmm export` reads what `kmm train` wrote (`model.keras`, loaded under
`pruning.prune_scope()`, and `metrics.json`, which says the dataset and seed):
the representative samples are the first `--samples` inputs of that
dataset's training split.
"""
import json
import pathlib

__all__ = ["add_commands", "add_train_option", "run_command", "export_after_training"]

#: `--structured` values and the `export_tflite(structured=...)` each stands for.
_STRUCTURED = {"auto": "auto", "on": True, "off": False}


def add_commands(commands):
    """Adds the `export` and `inspect` subcommands to the `kmm` subparsers."""
    from keras_minmax_mtl.targets import QUANTIZATIONS, TARGETS

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
                             "(keras_minmax_mtl.surgery.shrink): auto = for micro and edgetpu "
                             "when the model has removed units; on = required; off = never "
                             "(default: %(default)s)")
    export.add_argument("--out", type=pathlib.Path, default=None,
                        help="output folder (default: MODEL_DIR)")
    export.add_argument("--samples", type=int, default=256,
                        help="representative training samples (default: %(default)s)")
    inspect = commands.add_parser("inspect", help="size, sparsity, ops, inputs and outputs of a "
                                                  ".tflite file")
    inspect.add_argument("file", type=pathlib.Path, metavar="FILE.tflite")


def add_train_option(train_parser):
    """Adds `--export TARGET` to `kmm train`."""
    from keras_minmax_mtl.targets import TARGETS

    train_parser.add_argument("--export", default=None, choices=sorted(TARGETS),
                              help="after training, export the model for this target into --out")


def _training_inputs(dataset, seed, samples):
    from keras_minmax_mtl import datasets

    if dataset != "multi_digits":
        raise ValueError(f"No representative data for dataset {dataset!r}.")
    x, _ = datasets.load_multi_digits("train", seed=seed, num_examples=samples)
    return x


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
        rules = report["edgetpu"]["rules"]
        lines.append(f"  Edge TPU rules: {'all ops map' if rules['all_on_edgetpu'] else 'CPU ops: '}"
                     + ", ".join(f"{o['op']} ({o['layer']}): {o['reasons'][0]}"
                                 for o in rules["cpu_ops"]))
    return "\n".join(lines)


def export_after_training(model, out, target, dataset, seed, samples=256, quantization=None,
                          outputs=None, structured="auto"):
    """Exports a trained model into `out` (the `--export` of `kmm train`); returns the report.

    `structured` is passed to `export_tflite` (`"auto"`, `True` or `False`).
    """
    from keras_minmax_mtl.export import export_tflite

    path = pathlib.Path(out) / f"model_{target}.tflite"
    report = export_tflite(model, path, target=target, quantization=quantization,
                           representative_data=_training_inputs(dataset, seed, samples),
                           outputs=outputs, structured=structured)
    print(_summary(path, report))
    return report


def run_command(args):
    """Runs `kmm export` or `kmm inspect`; returns the report."""
    if args.command == "inspect":
        from keras_minmax_mtl.export import inspect_tflite

        report = inspect_tflite(args.file)
        print(json.dumps(report, indent=2))
        return report
    from keras_minmax_mtl._keras import keras
    from keras_minmax_mtl.pruning import prune_scope

    metrics = json.loads((args.model_dir / "metrics.json").read_text())
    with prune_scope():
        model = keras.models.load_model(args.model_dir / "model.keras")
    return export_after_training(model, args.out or args.model_dir, args.target,
                                 metrics["dataset"], metrics["seed"], args.samples,
                                 args.quantization, args.outputs,
                                 _STRUCTURED[args.structured])
