"""The whole pipeline on the shipped MultiDigits data: min-max training, compression, TFLite export.

    python examples/multi_digits.py --compression reweighted_l1 --target mobile --out runs/example
    python examples/multi_digits.py --compression dst --target micro --out runs/example-dst
    python examples/multi_digits.py --smoke          # tiny sizes, 1-2 epochs: checks that it runs

1. builds the data (`multi_digits`) and the seeded network (`multi_digits_network`);
2. compresses it to `--sparsity` of the trunk and task-hidden kernels:
   - `reweighted_l1`: `prune_reweighted_l1(allocation="global", rho=1e-4)`,
     10 dense + 5 reweighted + 5 masked-retraining epochs (the settings chosen
     on the validation split, docs/results.md);
   - `dst`: `prune_for_dst` + `DynamicSparseTraining(method="rigl",
     density="erk")`, 20 epochs sparse from the start;
3. trains `MinMaxMultiTask` (β = 50 with reweighted ℓ1, β = 10 with DST; γ = 5),
   recording the task weights, and prints the per-task test accuracy;
4. exports the trained model with `export_tflite(..., target=--target)`
   (verified against the Keras model by the exporter) into `--out`, with
   `task_weights.png`.
"""
import argparse
import pathlib

import numpy as np
import tensorflow_model_optimization as tfmot

import keras_minmax_mtl as kmm
from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.core.callbacks import TaskWeightHistory
from keras_minmax_mtl.data import load_multi_digits, multi_digits
from keras_minmax_mtl.sparsity.dst import DynamicSparseTraining, prune_for_dst
from keras_minmax_mtl.export.tflite import export_tflite
from keras_minmax_mtl.data.networks import multi_digits_network
from keras_minmax_mtl.cli.plots import plot_task_weights
from keras_minmax_mtl.sparsity.pruning import sparsity_report
from keras_minmax_mtl.sparsity.reweighted import prune_reweighted_l1


def compress(base, compression, sparsity, steps, smoke, seed):
    """The wrapped network, its callbacks and the number of epochs."""
    if compression == "reweighted_l1":
        dense, reweighted, retrain = (1, 1, 1) if smoke else (10, 5, 5)
        network, callbacks = prune_reweighted_l1(
            base, sparsity, dense_steps=dense * steps, reweighted_steps=reweighted * steps,
            rho=1e-4, allocation="global")
        return network, callbacks, dense + reweighted + retrain, 0.02
    epochs = 2 if smoke else 20
    callback = DynamicSparseTraining(sparsity, method="rigl", density="erk",
                                     update_every=1 if smoke else 100, seed=seed)
    return (prune_for_dst(base), [tfmot.sparsity.keras.UpdatePruningStep(), callback],
            epochs, 0.1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compression", default="reweighted_l1", choices=["reweighted_l1", "dst"])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--target", default="mobile", choices=["mobile", "micro"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/example-multi-digits"))
    parser.add_argument("--smoke", action="store_true",
                        help="256 training and test examples, 2-3 epochs: checks the pipeline runs")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    keras.utils.set_random_seed(args.seed)
    size = 256 if args.smoke else None
    train = multi_digits("train", seed=args.seed, num_examples=size, batch_size=64)
    test = multi_digits("test", seed=args.seed, num_examples=size, batch_size=256)
    steps = int(train.cardinality())

    network, callbacks, epochs, step_size = compress(
        multi_digits_network(seed=args.seed), args.compression, args.sparsity, steps, args.smoke,
        args.seed)
    model = kmm.MinMaxMultiTask(network, step_size=step_size, gamma=5.0)
    tasks = model.task_names
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss={t: "sparse_categorical_crossentropy" for t in tasks},
                  metrics={t: ["accuracy"] for t in tasks})
    weights = TaskWeightHistory()
    print(f"training MinMaxMultiTask with {args.compression} to {args.sparsity:.0%} sparsity, "
          f"{epochs} epochs of {steps} steps")
    model.fit(train, epochs=epochs, callbacks=[weights, *callbacks], verbose=2)

    result = model.evaluate(test, verbose=0, return_dict=True)
    accuracy = {t: float(result[f"{t}_accuracy"]) for t in tasks}
    sparsity = sparsity_report(model)["overall"]["sparsity"]
    for task in tasks:
        print(f"{task:>6}  test accuracy {accuracy[task]:.4f}"
              + ("  <- worst" if accuracy[task] == min(accuracy.values()) else ""))
    print(f"sparsity of the compressed kernels: {sparsity:.2%}; final task weights "
          f"{ {t: round(float(w), 3) for t, w in zip(tasks, np.asarray(model.task_weights))} }")
    plot_task_weights(weights.history, tasks, args.out / "task_weights.png",
                      title=f"min-max task weights ({args.compression})", steps_per_epoch=steps)

    samples, _ = load_multi_digits("train", seed=args.seed, num_examples=64 if args.smoke else 256)
    path = args.out / f"model_{args.target}.tflite"
    report = export_tflite(model, path, target=args.target, representative_data=samples)
    print(f"wrote {path}: {report['bytes']} bytes, {report['quantization']}, "
          f"{report['storage']} storage, verified on {report['verification']['samples']} samples "
          f"in {report['verification']['runtime']}")
    return {"accuracy": accuracy, "sparsity": sparsity, "export": report, "path": path,
            "task_weights": weights.history}


if __name__ == "__main__":
    main()
