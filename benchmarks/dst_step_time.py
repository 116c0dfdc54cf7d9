r"""Training time with `DynamicSparseTraining` (RigL, update every 100 steps) / with a static mask.

Two models in one process, identical except for the callback: the same
`multi_digits_network(seed)` wrapped by `prune_for_dst` at the same sparsity
and ERK densities, `MinMaxMultiTask(step_size=0.1, gamma=5)`, Adam, the same
data. ``static`` trains with its initial masks and `UpdatePruningStep` only;
``dst`` also has `DynamicSparseTraining(method="rigl", update_every=100)` with
`end_step` beyond the run, so it keeps updating.

The time is measured by `fit` itself (the callbacks are part of the cost), as
per-epoch wall times recorded by a callback. The first epoch of every `fit`
(tracing) is dropped. Rounds of `fit(epochs=--epochs)` alternate
``dst, static, static, dst, ...``. Headline:

    ratio = median epoch time (dst) / median epoch time (static)

Goal: ratio <= 1.10. Writes `benchmarks/results/dst_step_time.json`.

    PYTHONPATH=. python benchmarks/dst_step_time.py
"""
import argparse
import gc
import json
import os
import pathlib
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per fit; the first is dropped")
    parser.add_argument("--update-every", type=int, default=100)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path,
                        default=pathlib.Path("benchmarks/results/dst_step_time.json"))
    args = parser.parse_args()

    import tensorflow as tf
    import tensorflow_model_optimization as tfmot

    import keras_minmax_mtl as kmm
    from keras_minmax_mtl import data as datasets
    from keras_minmax_mtl.sparsity import dst
    from keras_minmax_mtl.data import networks
    from keras_minmax_mtl.core.backend import keras

    keras.utils.set_random_seed(args.seed)
    train = datasets.multi_digits("train", seed=args.seed, batch_size=args.batch_size,
                                  shuffle=False).cache()
    steps = int(train.cardinality().numpy())

    def build():
        base = dst.prune_for_dst(networks.multi_digits_network(seed=args.seed))
        model = kmm.MinMaxMultiTask(base, step_size=0.1, gamma=5.0)
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss={t: "sparse_categorical_crossentropy" for t in model.task_names},
                      metrics={t: ["accuracy"] for t in model.task_names})
        dst.initialize_masks(model, args.sparsity, "erk", seed=args.seed)
        return model

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    models = {"dst": build(), "static": build()}
    rigl = dst.DynamicSparseTraining(args.sparsity, method="rigl", density="erk",
                                     update_every=args.update_every, end_step=10 ** 9)
    times = {"dst": [], "static": []}
    order = ["dst", "static"]
    for round_ in range(args.rounds):
        for name in (order if round_ % 2 == 0 else order[::-1]):
            timer = EpochTimer()
            callbacks = [tfmot.sparsity.keras.UpdatePruningStep(), timer]
            if name == "dst":
                callbacks.insert(1, rigl)
            gc.collect()
            models[name].fit(train, epochs=args.epochs, callbacks=callbacks, verbose=0)
            times[name].extend(timer.times[1:])
    per_step = {k: float(np.median(v)) / steps for k, v in times.items()}
    ratio = per_step["dst"] / per_step["static"]
    print(f"device: {tf.config.list_logical_devices()[0].name}, {steps} steps per epoch, "
          f"{len(times['dst'])} timed epochs per model, {len(rigl.history)} mask updates")
    print(f"{'model':<8} {'median ms/step':>15}")
    for name in ("static", "dst"):
        print(f"{name:<8} {1000 * per_step[name]:15.3f}")
    print(f"ratio dst/static = {ratio:.3f} (goal <= 1.10)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"arguments": {k: str(v) for k, v in vars(args).items()},
                                    "epoch_times": times, "per_step_s": per_step, "ratio": ratio,
                                    "updates": len(rigl.history)}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
