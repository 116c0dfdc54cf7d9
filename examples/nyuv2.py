"""NYUv2 end to end: min-max training, compression, TFLite export, Δm.

    python examples/nyuv2.py --data-dir /data/nyuv2 --compression reweighted_l1
    python examples/nyuv2.py --smoke          # tiny generated .npy folders, a few steps

Reads the MTAN pre-processed layout (`<data-dir>/train`, `<data-dir>/val`;
see `keras_minmax_mtl.data.nyuv2`), trains a small encoder-decoder with
three heads (`keras_minmax_mtl.data.networks.nyuv2_network`) with
`MinMaxMultiTask` on the standard losses (each divided by its first-step
value, `normalize_losses=True`, as the losses have different scales),
compresses it (reweighted ℓ1 or DST), exports it for mobile and prints the
nine metrics on `val` and Δm against the single-task SegNet numbers. `--smoke` writes a few random 32×32 examples in the same
layout to a temporary folder and runs the same code on them.
"""
import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np

import keras_minmax_mtl as kmm
from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.data import NYUV2_TASKS, nyuv2
from keras_minmax_mtl.data.networks import nyuv2_network
from keras_minmax_mtl.data.nyuv2_metrics import delta_m, metrics_from_logs, nyuv2_losses, nyuv2_metrics


def write_fake_nyuv2(root, sizes=None, shape=(32, 32), seed=0):
    """Writes random examples in the MTAN layout under `root` (one folder per split)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    for split, n in (sizes or {"train": 8, "val": 4}).items():
        for folder in ("image", "label", "depth", "normal"):
            (pathlib.Path(root) / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            normal = rng.normal(size=(h, w, 3))
            normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
            depth = rng.uniform(0.5, 5.0, size=(h, w, 1))
            depth[rng.random((h, w)) < 0.1] = 0.0
            label = rng.integers(-1, 13, size=(h, w)).astype(np.float32)
            for folder, array in (("image", rng.random((h, w, 3))), ("label", label),
                                  ("depth", depth), ("normal", normal)):
                np.save(pathlib.Path(root) / split / folder / f"{i}.npy", array.astype(np.float32))
    return pathlib.Path(root)


def compress(base, args, steps_per_epoch):
    import tensorflow_model_optimization as tfmot

    epochs = args.dense_epochs + args.reweighted_epochs + args.retrain_epochs
    if args.compression == "reweighted_l1":
        from keras_minmax_mtl.sparsity.reweighted import prune_reweighted_l1

        wrapped, callbacks = prune_reweighted_l1(
            base, args.sparsity, dense_steps=args.dense_epochs * steps_per_epoch,
            reweighted_steps=args.reweighted_epochs * steps_per_epoch, rho=args.rho)
    else:
        from keras_minmax_mtl.sparsity.dst import DynamicSparseTraining, prune_for_dst

        wrapped = prune_for_dst(base)
        callbacks = [tfmot.sparsity.keras.UpdatePruningStep(), DynamicSparseTraining(
            sparsity=args.sparsity, method="rigl", density="erk",
            update_every=max(1, steps_per_epoch // 2),
            end_step=max(1, epochs * steps_per_epoch * 3 // 4))]
    return wrapped, callbacks, epochs


def run(args, data_dir):
    keras.utils.set_random_seed(args.seed)
    train = nyuv2(data_dir, "train", batch_size=args.batch_size, seed=args.seed)
    val = nyuv2(data_dir, "val", batch_size=args.batch_size)
    image_shape = tuple(train.element_spec[0].shape[1:])
    steps_per_epoch = sum(1 for _ in train) if args.smoke else int(np.ceil(795 / args.batch_size))
    base = nyuv2_network(image_shape, filters=args.filters, seed=args.seed)
    wrapped, callbacks, epochs = compress(base, args, steps_per_epoch)
    beta = 50.0 if args.compression == "reweighted_l1" else 10.0
    # The three losses have different scales: divide each by its first-step value.
    model = kmm.MinMaxMultiTask(wrapped, step_size=1.0 / beta, gamma=5.0, normalize_losses=True)
    model.compile(optimizer=keras.optimizers.Adam(args.lr), loss=nyuv2_losses(),
                  metrics=nyuv2_metrics())
    start = time.perf_counter()
    model.fit(train, epochs=epochs, callbacks=callbacks, verbose=0 if args.smoke else 2)
    print(f"trained {epochs} epochs in {time.perf_counter() - start:.1f} s")
    scores = metrics_from_logs(model.evaluate(val, verbose=0, return_dict=True))
    score = delta_m(scores)

    from keras_minmax_mtl.export.tflite import export_tflite

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    exported = export_tflite(model, out / "nyuv2.tflite", target="mobile",
                             representative_data=val, num_samples=args.export_samples)
    print(f"exported in {time.perf_counter() - start:.1f} s: {exported['bytes']} bytes "
          f"({exported['storage']}), kernel sparsity "
          f"{exported['keras_sparsity']['overall']['sparsity']:.3f} -> {out / 'nyuv2.tflite'}")
    print("val: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()) + f"; Δm {score:+.2f} %")
    return {"metrics": scores, "delta_m": score, "export": exported,
            "task_weights": dict(zip(NYUV2_TASKS, model.task_weights.numpy().tolist()))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None,
                        help="folder holding the MTAN layout's train/ and val/")
    parser.add_argument("--smoke", action="store_true", help="tiny generated data, a few steps")
    parser.add_argument("--compression", choices=("reweighted_l1", "dst"), default="reweighted_l1")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--dense-epochs", type=int, default=40)
    parser.add_argument("--reweighted-epochs", type=int, default=20,
                        help="reweighted-l1 stage (with --compression dst: more sparse epochs)")
    parser.add_argument("--retrain-epochs", type=int, default=20)
    parser.add_argument("--rho", type=float, default=1e-5)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--filters", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--export-samples", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="nyuv2_out")
    args = parser.parse_args(argv)
    if args.smoke:
        args.dense_epochs, args.reweighted_epochs, args.retrain_epochs = 1, 1, 1
        args.batch_size, args.filters, args.export_samples = 4, [4], 4
        with tempfile.TemporaryDirectory() as tmp:
            if args.out == "nyuv2_out":
                args.out = tmp
            return run(args, write_fake_nyuv2(pathlib.Path(tmp) / "nyuv2"))
    if args.data_dir is None:
        parser.error("--data-dir is required (or use --smoke)")
    try:
        return run(args, args.data_dir)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
