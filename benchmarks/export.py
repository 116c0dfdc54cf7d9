"""File sizes and per-task accuracy of TFLite exports of a 90 %-sparse multi_digits model.

The sparse model is made with tfmot's own `prune_low_magnitude` (polynomial
decay from 0 to `--sparsity`, then held) on `multi_digits_network` wrapped in
`MinMaxMultiTask`, fine-tuned from a trained dense model: either a `kmm train`
output folder (`--model-dir`) or one trained here (`--dense-epochs`). Then:

- the dense model, float, dense storage: the baseline file;
- the sparse model for `mobile` (float and int8; sparse storage when smaller);
- the sparse model for `micro` (dense full-int8, batch 1).

Every file is run on the whole test split in the runtime that will run it
(LiteRT; TFLite Micro for micro) and its per-task accuracy is compared with
the sparse Keras model's. Full-int8 files output logits by default (the
final softmax of each head is dropped on the exported copy; `--outputs
probabilities` keeps it): top-1 agreement is the argmax of the file against
the argmax of the Keras model, which a softmax does not change; `ties max` is
the largest per-task fraction of test samples whose top output value is shared
by two or more classes in the file.

    PYTHONPATH=. python benchmarks/export.py --model-dir runs/dense --prune-epochs 60 --learning-rate 3e-3
"""
import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402

import keras_minmax_mtl as kmm  # noqa: E402
from keras_minmax_mtl.sparsity.scope import prune_scope
from keras_minmax_mtl import data as datasets  # noqa: E402
from keras_minmax_mtl.data import networks
from keras_minmax_mtl.sparsity import pruning
from keras_minmax_mtl.export import runtimes
from keras_minmax_mtl.core.backend import keras  # noqa: E402
from keras_minmax_mtl.export.tflite import export_tflite  # noqa: E402


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=pathlib.Path, default=None,
                   help="a `kmm train` output folder (model.keras); default: train one here")
    p.add_argument("--dense-epochs", type=int, default=30)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--prune-epochs", type=int, default=60)
    p.add_argument("--prune-end-fraction", type=float, default=0.6,
                   help="the schedule reaches the target sparsity after this fraction of steps")
    p.add_argument("--learning-rate", type=float, default=3e-3,
                   help="fine-tuning learning rate (dense training uses 1e-3)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--outputs", default=None, choices=["probabilities", "logits"],
                   help="export_tflite(outputs=...); default: its default (logits for int8)")
    p.add_argument("--work", type=pathlib.Path, default=pathlib.Path("benchmarks/results/export"))
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results/export.json"))
    return p.parse_args()


def compile_model(model, lr):
    tasks = model.task_names
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss={t: "sparse_categorical_crossentropy" for t in tasks},
                  metrics={t: ["accuracy"] for t in tasks})


def accuracy(outputs, labels):
    return {t: float(np.mean(outputs[t].argmax(-1) == labels[t])) for t in labels}


def main():
    args = parse()
    keras.utils.set_random_seed(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    data = {s: datasets.load_multi_digits(s, seed=args.seed) for s in ("train", "validation", "test")}
    x_train, y_train = data["train"]
    if args.model_dir is not None:
        with prune_scope():
            dense = keras.models.load_model(args.model_dir / "model.keras")
        source = f"kmm train output {args.model_dir}"
    else:
        dense = kmm.MinMaxMultiTask(networks.multi_digits_network(seed=args.seed))
        compile_model(dense, 1e-3)
        dense.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.dense_epochs,
                  validation_data=data["validation"], verbose=2)
        source = f"trained here, {args.dense_epochs} epochs"
    tasks = dense.task_names

    steps = args.prune_epochs * int(np.ceil(len(x_train) / args.batch_size))
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        0.0, args.sparsity, begin_step=0, end_step=int(steps * args.prune_end_fraction), frequency=50)
    base = keras.models.clone_model(dense.base_model)
    base.set_weights(dense.base_model.get_weights())
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(base, pruning_schedule=schedule)
    config = dense.get_config()
    sparse = kmm.MinMaxMultiTask(wrapped, **{k: config[k] for k in (
        "step_size", "gamma", "update_every", "update_on", "ascent", "scale", "normalize_losses")})
    compile_model(sparse, args.learning_rate)
    start = time.perf_counter()
    sparse.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.prune_epochs,
               validation_data=data["validation"], verbose=2,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    prune_seconds = time.perf_counter() - start
    sparsity = pruning.sparsity_report(sparse)["overall"]["sparsity"]
    stripped = pruning.strip_pruning(sparse)
    stripped.base_model.save(args.work / "sparse_base.keras")  # for inspecting the exports later

    x_test, y_test = data["test"]
    x_val, y_val = data["validation"]
    keras_acc, keras_out = {}, {}
    for name, model in (("dense", dense), ("sparse", stripped)):
        out = model.predict(x_test, batch_size=256, verbose=0)
        keras_out[name] = {t: np.asarray(out[t]) for t in tasks}
        keras_acc[name] = accuracy(keras_out[name], y_test)
    val_out = stripped.predict(x_val, batch_size=256, verbose=0)
    val_acc = accuracy({t: np.asarray(val_out[t]) for t in tasks}, y_val)

    rep = x_train[:256]
    exports = {
        "dense_float": (dense, dict(target="mobile", quantization="float", sparse_storage=False)),
        "mobile_float": (sparse, dict(target="mobile", quantization="float")),
        "mobile_int8": (sparse, dict(target="mobile", quantization="int8")),
        "micro_int8": (sparse, dict(target="micro")),
    }
    files = {}
    for name, (model, kwargs) in exports.items():
        path = args.work / f"{name}.tflite"
        report = export_tflite(model, path, representative_data=rep, outputs=args.outputs,
                               **kwargs)
        if kwargs["target"] == "micro":
            out, _ = runtimes.run_micro(path, x_test)
            runtime = "tflite_micro"
        else:
            out = runtimes.run_litert(path, x_test)
            runtime = runtimes.litert_package()
        source_model = "dense" if name == "dense_float" else "sparse"
        reference = keras_acc[source_model]
        acc = accuracy(out, y_test)
        # Top-1 agreement of the file with the Keras model it came from, on the test split.
        agreement = {t: float(np.mean(out[t].argmax(-1) == keras_out[source_model][t].argmax(-1)))
                     for t in tasks}
        ties = {t: float(np.mean(np.sum(out[t] == out[t].max(-1, keepdims=True), -1) > 1))
                for t in tasks}
        files[name] = {"path": str(path), "bytes": report["bytes"], "gzip_bytes": report["gzip_bytes"],
                       "output_forms": report["output_forms"], "top1_tie_fraction": ties,
                       "storage": report["storage"], "runtime": runtime,
                       "arena_bytes": report.get("arena_bytes"), "test_accuracy": acc,
                       "keras_test_accuracy": reference, "top1_agreement": agreement,
                       "accuracy_gap_points": {t: 100 * (acc[t] - reference[t]) for t in tasks}}
    base_bytes = files["dense_float"]["bytes"]
    for f in files.values():
        f["bytes_ratio_to_dense_float"] = f["bytes"] / base_bytes

    print(f"\nmodel: {source}; pruned with tfmot prune_low_magnitude to {sparsity:.4f} sparsity "
          f"({args.prune_epochs} epochs, {prune_seconds:.0f} s)")
    print(f"Keras test accuracy  dense: {keras_acc['dense']}\n"
          f"                    sparse: {keras_acc['sparse']}   (validation: {val_acc})")
    header = f"{'file':<13}{'bytes':>9}{'/dense':>8}{'storage':>8}  {'runtime':<15}" + "".join(
        f"{t + ' acc':>10}{'Δpt':>7}" for t in tasks) + f"{'agree min':>11}{'ties max':>10}  outputs"
    print(header)
    for name, f in files.items():
        print(f"{name:<13}{f['bytes']:>9}{f['bytes_ratio_to_dense_float']:>8.3f}{f['storage']:>8}  "
              f"{f['runtime']:<15}" + "".join(
                  f"{f['test_accuracy'][t]:>10.4f}{f['accuracy_gap_points'][t]:>7.2f}" for t in tasks)
              + f"{min(f['top1_agreement'].values()):>11.4f}"
              + f"{max(f['top1_tie_fraction'].values()):>10.4f}  "
              + ",".join(sorted(set(f["output_forms"].values()))))
    print("goals: mobile/dense <= 0.35, micro/dense <= 0.30, |Δpt| <= 1 and int8 top-1 "
          "agreement >= 0.99 (vs the Keras model the file came from); micro arena bytes:",
          files["micro_int8"]["arena_bytes"])
    result = {"source": source, "arguments": {k: str(v) for k, v in vars(args).items()},
              "sparsity": sparsity, "keras_test_accuracy": keras_acc,
              "sparse_validation_accuracy": val_acc, "files": files}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
