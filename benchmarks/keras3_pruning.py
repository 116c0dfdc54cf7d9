"""Magnitude pruning to 90 % on a Keras 3 multi-task model, and its LiteRT file verified.

A small multi_digits network built with `import keras` (Keras 3, TensorFlow
back-end: Keras 3's LiteRT export runs there), the same layers as
`keras_minmax_mtl.data.networks.multi_digits_network` (two 3x3 convolutions, a
shared Dense, one hidden Dense and one softmax per task), trained with
`keras_minmax_mtl.keras3.MinMaxMultiTask`:

1. dense: `--dense-epochs` epochs;
2. pruned: the dense model's copy with its hidden Conv2D/Dense layers in
   `PruneMasked` (the task output layers stay dense), `--prune-epochs` more
   epochs with `UpdateMasks(PolynomialDecay(0, 0.9, 0, 60 % of the steps,
   frequency = steps/10))`, min-max still on;
3. the pruned model stripped and exported with `export_litert` to float and full
   int8 (calibrated on 256 training canvases), each file verified in LiteRT, then
   run on the whole test split: test accuracy per task and top-1 agreement with
   the Keras model.

Prints one JSON document and writes it to `benchmarks/results/keras3_pruning.json`.

    nice -n 10 env PYTHONPATH=. KERAS_BACKEND=tensorflow python benchmarks/keras3_pruning.py
"""
import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def network(keras, tasks, seed):
    """Keras 3 twin of `multi_digits_network`: seeded Glorot kernels, zero biases."""
    layers, init = keras.layers, keras.initializers.GlorotUniform
    counter = iter(range(100))

    def k():
        return init(seed=seed * 100 + next(counter))

    x = keras.Input((12, 16, 1), name="image")
    h = layers.Conv2D(16, 3, activation="relu", padding="same", kernel_initializer=k(), name="trunk_conv1")(x)
    h = layers.Conv2D(32, 3, activation="relu", padding="same", kernel_initializer=k(), name="trunk_conv2")(h)
    h = layers.MaxPooling2D(2, name="trunk_pool")(h)
    h = layers.Flatten(name="trunk_flatten")(h)
    h = layers.Dense(64, activation="relu", kernel_initializer=k(), name="trunk_dense")(h)
    outputs = {}
    for task, classes in tasks.items():
        t = layers.Dense(32, activation="relu", kernel_initializer=k(), name=f"{task}_hidden")(h)
        outputs[task] = layers.Dense(classes, activation="softmax", kernel_initializer=k(), name=task)(t)
    return keras.Model(x, outputs, name="multi_digits_keras3")


def accuracies(predictions, labels):
    return {t: float(np.mean(np.argmax(predictions[t], -1) == labels[t])) for t in labels}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense-epochs", type=int, default=6)
    parser.add_argument("--prune-epochs", type=int, default=5)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "keras3_pruning.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    from keras_minmax_mtl.data.digits import MULTI_DIGITS_TASKS, load_multi_digits
    from keras_minmax_mtl.export.runtimes import run_litert
    from keras_minmax_mtl.keras3 import MinMaxMultiTask
    from keras_minmax_mtl.keras3.export import export_litert
    from keras_minmax_mtl.keras3.pruning import UpdateMasks, prune_model, sparsity_report, strip
    from keras_minmax_mtl.keras3.schedules import PolynomialDecay

    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    x_train, y_train = load_multi_digits("train", seed=args.seed)
    x_test, y_test = load_multi_digits("test", seed=args.seed)
    tasks = dict(MULTI_DIGITS_TASKS)
    batch = 64
    steps_per_epoch = -(-len(x_train) // batch)

    def compiled(base):
        model = MinMaxMultiTask(base, step_size=0.02, gamma=5.0)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        return model

    dense = compiled(network(keras, tasks, args.seed))
    dense.fit(x_train, y_train, batch_size=batch, epochs=args.dense_epochs, verbose=0)
    dense_accuracy = accuracies(dense.predict(x_test, verbose=0), y_test)

    pruned = compiled(prune_model(dense.base_model))
    pruned.weighting.task_weights.assign(keras.ops.convert_to_numpy(dense.task_weights))
    total = steps_per_epoch * args.prune_epochs
    schedule = PolynomialDecay(0.0, args.sparsity, begin_step=0, end_step=int(0.6 * total),
                               frequency=max(1, steps_per_epoch // 10))
    callback = UpdateMasks(schedule)
    pruned.fit(x_train, y_train, batch_size=batch, epochs=args.prune_epochs, verbose=0,
               callbacks=[callback])
    keras_test = pruned.predict(x_test, verbose=0)
    pruned_accuracy = accuracies(keras_test, y_test)
    report = sparsity_report(pruned)
    stripped = strip(pruned)
    stripped_test = stripped.predict(x_test, verbose=0)

    files = {}
    with tempfile.TemporaryDirectory() as folder:
        for quantization in ("float", "int8"):
            path = os.path.join(folder, f"pruned_{quantization}.tflite")
            exported = export_litert(pruned, path, quantization=quantization,
                                     representative_data=x_train[:256])
            litert = run_litert(path, x_test)
            files[quantization] = {
                "bytes": exported["bytes"],
                "verification_on_256_training_samples": exported["verification"]["tasks"],
                "test_accuracy": accuracies(litert, y_test),
                "test_top1_agreement_with_keras": {
                    t: float(np.mean(np.argmax(litert[t], -1) == np.argmax(keras_test[t], -1)))
                    for t in tasks},
            }
    result = {
        "backend": keras.backend.backend(), "keras": keras.__version__, "seed": args.seed,
        "train_examples": len(x_train), "test_examples": len(x_test),
        "dense_epochs": args.dense_epochs, "prune_epochs": args.prune_epochs,
        "schedule": schedule.get_config(), "mask_updates": len(callback.history),
        "target_sparsity": args.sparsity,
        "achieved_sparsity": report["overall"], "layer_sparsity": {
            n: round(r["sparsity"], 4) for n, r in report["layers"].items()},
        "test_accuracy": {"dense": dense_accuracy, "pruned": pruned_accuracy},
        "worst_task_accuracy": {"dense": min(dense_accuracy.values()),
                                "pruned": min(pruned_accuracy.values())},
        "task_weights": keras.ops.convert_to_numpy(pruned.task_weights).round(4).tolist(),
        "strip_max_abs_difference": max(float(np.abs(stripped_test[t] - keras_test[t]).max())
                                        for t in tasks),
        "litert": files,
        "seconds": round(time.perf_counter() - start, 1),
    }
    text = json.dumps(result, indent=1)
    print(text)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
