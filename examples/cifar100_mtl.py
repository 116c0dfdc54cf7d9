"""Multi-task CIFAR-100 end to end: min-max training, compression, TFLite export.

    python examples/cifar100_mtl.py --data-dir ~/tensorflow_datasets --compression reweighted_l1
    python examples/cifar100_mtl.py --smoke          # tiny generated data, a few steps

20 tasks (the superclasses), each a 5-way problem; every step sees one batch
of every task (`keras_minmax_mtl.data.cifar100_mtl`). Training uses
`"train[:90%]"`, validation `"train[90%:]"` (for choosing hyper-parameters)
and the final figures `"test"`. `--data-dir` must hold a prepared TFDS
`cifar100` (nothing is downloaded). `--smoke` generates a small CIFAR-shaped
data set that follows the official hierarchy and serves it through
`tfds.testing.mock_data`, so the very same loader code runs.
"""
import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

import keras_minmax_mtl as kmm
from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.data import CIFAR100_TASKS, cifar100_fine_to_task, cifar100_mtl
from keras_minmax_mtl.data.networks import cifar100_mtl_network


def fake_cifar100(per_fine_class=4, seed=0):
    """A `tfds.testing.mock_data` `as_dataset_fn` serving random images with hierarchy-consistent labels."""
    coarse, _ = cifar100_fine_to_task()

    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        rng = np.random.default_rng([seed, len(str(split))])
        fine = np.tile(np.arange(100), per_fine_class).astype(np.int64)
        images = rng.integers(0, 256, size=(len(fine), 32, 32, 3), dtype=np.uint8)
        return tf.data.Dataset.from_tensor_slices({
            "id": np.array([b"fake"] * len(fine)), "image": images,
            "label": fine, "coarse_label": coarse[fine].astype(np.int64)})
    return as_dataset


def compress(base, args, steps_per_epoch):
    """The model to fit, its callbacks and the number of epochs, for `--compression`."""
    import tensorflow_model_optimization as tfmot

    if args.compression == "reweighted_l1":
        from keras_minmax_mtl.sparsity.reweighted import prune_reweighted_l1

        wrapped, callbacks = prune_reweighted_l1(
            base, args.sparsity, dense_steps=args.dense_epochs * steps_per_epoch,
            reweighted_steps=args.reweighted_epochs * steps_per_epoch, rho=args.rho)
        epochs = args.dense_epochs + args.reweighted_epochs + args.retrain_epochs
    else:
        from keras_minmax_mtl.sparsity.dst import DynamicSparseTraining, prune_for_dst

        wrapped = prune_for_dst(base)
        epochs = args.dense_epochs + args.reweighted_epochs + args.retrain_epochs
        callbacks = [tfmot.sparsity.keras.UpdatePruningStep(), DynamicSparseTraining(
            sparsity=args.sparsity, method="rigl", density="erk",
            update_every=max(1, steps_per_epoch // 2), end_step=max(1, epochs * steps_per_epoch * 3 // 4))]
    return wrapped, callbacks, epochs


def run(args, data_dir):
    keras.utils.set_random_seed(args.seed)
    tasks = tuple(args.tasks or CIFAR100_TASKS)
    train = cifar100_mtl(data_dir, "train[:90%]", batch_size=args.batch_size,
                         shuffle=True, seed=args.seed, tasks=tasks)
    val = None if args.smoke else cifar100_mtl(data_dir, "train[90%:]", batch_size=256,
                                               tasks=tasks)
    test = cifar100_mtl(data_dir, "test", batch_size=256, tasks=tasks)
    steps_per_epoch = int(train.cardinality())
    base = cifar100_mtl_network(trunk_filters=args.filters, trunk_units=args.trunk_units,
                                head_units=args.head_units, seed=args.seed,
                                tasks=tasks)
    wrapped, callbacks, epochs = compress(base, args, steps_per_epoch)
    # β = 50, γ = 5 (the paper's values with pruning); β = 10 with DST.
    beta = 50.0 if args.compression == "reweighted_l1" else 10.0
    model = kmm.MinMaxMultiTask(wrapped, step_size=1.0 / beta, gamma=5.0)
    model.compile(optimizer=keras.optimizers.Adam(args.lr),
                  loss={t: "sparse_categorical_crossentropy" for t in tasks},
                  metrics={t: ["accuracy"] for t in tasks})
    start = time.perf_counter()
    model.fit(train, epochs=epochs, validation_data=val, callbacks=callbacks,
              verbose=2 if not args.smoke else 0)
    print(f"trained {epochs} epochs in {time.perf_counter() - start:.1f} s")
    results = model.evaluate(test, verbose=0, return_dict=True)
    accuracies = {t: results[f"{t}_accuracy"] for t in tasks}

    from keras_minmax_mtl.export.tflite import export_tflite
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    exported = export_tflite(model, out / "cifar100_mtl.tflite", target="mobile",
                             representative_data=test, num_samples=args.export_samples)
    print(f"exported in {time.perf_counter() - start:.1f} s")
    print(f"test accuracy: mean {np.mean(list(accuracies.values())):.4f}, "
          f"worst {min(accuracies.values()):.4f} ({min(accuracies, key=accuracies.get)})")
    print(f"exported {exported['bytes']} bytes ({exported['storage']}), kernel sparsity "
          f"{exported['keras_sparsity']['overall']['sparsity']:.3f} -> {out / 'cifar100_mtl.tflite'}")
    return {"accuracy": accuracies, "worst": min(accuracies.values()),
            "task_weights": dict(zip(tasks, model.task_weights.numpy().tolist())),
            "export": exported}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="TFDS data folder with cifar100 prepared")
    parser.add_argument("--smoke", action="store_true", help="tiny generated data, a few steps")
    parser.add_argument("--compression", choices=("reweighted_l1", "dst"), default="reweighted_l1")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--dense-epochs", type=int, default=10)
    parser.add_argument("--reweighted-epochs", type=int, default=5,
                        help="reweighted-l1 stage (with --compression dst: more sparse epochs)")
    parser.add_argument("--retrain-epochs", type=int, default=5)
    parser.add_argument("--rho", type=float, default=1e-5)
    parser.add_argument("--batch-size", type=int, default=32, help="images per task per step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--filters", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--trunk-units", type=int, default=128)
    parser.add_argument("--head-units", type=int, default=64)
    parser.add_argument("--export-samples", type=int, default=256)
    parser.add_argument("--tasks", nargs="+", default=None, choices=CIFAR100_TASKS,
                        help="a subset of the 20 tasks (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="cifar100_mtl_out")
    args = parser.parse_args(argv)
    if args.smoke:
        import tensorflow_datasets as tfds

        args.dense_epochs, args.reweighted_epochs, args.retrain_epochs = 1, 1, 1
        args.batch_size, args.filters, args.trunk_units, args.head_units = 4, [8], 16, 8
        args.export_samples = 8
        args.tasks = args.tasks or list(CIFAR100_TASKS[:3])
        with tempfile.TemporaryDirectory() as tmp, \
                tfds.testing.mock_data(as_dataset_fn=fake_cifar100()):
            if args.out == "cifar100_mtl_out":
                args.out = tmp
            return run(args, pathlib.Path(tmp) / "tfds")
    if args.data_dir is None:
        parser.error("--data-dir is required (or use --smoke)")
    try:
        return run(args, args.data_dir)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
