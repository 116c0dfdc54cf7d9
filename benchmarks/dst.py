r"""Worst-task and mean accuracy of sparse multi-task training on MultiDigits.

Three runs per seed, all at the same sparsity (default 90 % of the hidden
layers' kernels, ERK densities, the task classifiers dense), same network,
data, optimizer (Adam) and number of epochs:

- ``minmax+rigl``: `MinMaxMultiTask(step_size=0.1, gamma=5)` (the paper's
  β = 10, γ = 5 with DST) + `DynamicSparseTraining(method="rigl")`;
- ``ew+rigl``: `MultiTaskModel(EqualWeighting())` + the same RigL callback;
- ``minmax+static``: min-max with the initial (random, ERK) masks never updated.

Prints per-run validation and test accuracy (and the training split's worst
task, to tell under-fitting from over-fitting), then mean ± std over seeds of
the worst-task and mean test accuracy and the final sparsity, and writes
`benchmarks/results/dst.json`.

Options tried (docs/dst.md, "Why DST from scratch lagged"): `--density er`
(Erdős–Rényi layer densities), `--learning-rate`, and the ablations
`--rescale-init` (each kept weight scaled by ``sqrt(fan_in / kept fan-in)``) and
`--keep-slots` (grown weights keep their optimizer slots).

    PYTHONPATH=. python benchmarks/dst.py --seeds 0 1 2 --epochs 20
    PYTHONPATH=. python benchmarks/dst.py --seeds 0 1 2 --epochs 20 --runs minmax+rigl --learning-rate 1e-2
"""
import argparse
import json
import os
import pathlib
import time

import numpy as np

RUNS = ("minmax+rigl", "ew+rigl", "minmax+static")


def initial_masks(model, sparsity, density, seed, rescale=False):
    """`dst.initialize_masks`, then (`rescale`, an ablation) each kept weight rescaled.

    `rescale` multiplies each kept weight of output unit ``j`` by ``sqrt(fan_in / kept_j)``, so
    that a unit's pre-activation variance at initialisation is that of the dense layer.
    """
    from keras_minmax_mtl.sparsity import dst

    dst.initialize_masks(model, sparsity, density, seed=seed)
    if rescale:
        for _, weight, mask in dst.wrapped_kernels(model):
            units = mask.numpy().reshape(-1, mask.shape[-1])  # (fan_in, output units)
            scale = np.sqrt(units.shape[0] / np.maximum(units.sum(axis=0), 1))
            weight.assign(weight.numpy() * mask.numpy() * scale)


def keep_optimizer_slots():
    """Ablation: grown weights keep their optimizer slots (the library resets them to 0)."""
    from keras_minmax_mtl.sparsity import dst

    original = dst.set_mask
    dst.set_mask = lambda weight, mask, new, optimizer=None: original(weight, mask, new, None)


def run_one(name, seed, args):
    import tensorflow_model_optimization as tfmot

    import keras_minmax_mtl as kmm
    from keras_minmax_mtl import data as datasets
    from keras_minmax_mtl.sparsity import dst
    from keras_minmax_mtl.data import networks
    from keras_minmax_mtl.sparsity import pruning
    from keras_minmax_mtl.core.backend import keras

    keras.utils.set_random_seed(seed)
    data = {split: datasets.multi_digits(split, seed=seed, batch_size=args.batch_size,
                                         num_examples=args.train_examples if split == "train" else None)
            for split in ("train", "validation", "test")}
    base = dst.prune_for_dst(networks.multi_digits_network(seed=seed))
    if name.startswith("minmax"):
        model = kmm.MinMaxMultiTask(base, step_size=args.step_size, gamma=args.gamma)
    else:
        model = kmm.MultiTaskModel(base, weighting=kmm.EqualWeighting())
    tasks = model.task_names
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                  loss={t: "sparse_categorical_crossentropy" for t in tasks},
                  metrics={t: ["accuracy"] for t in tasks})
    callbacks = [tfmot.sparsity.keras.UpdatePruningStep()]
    callback = None
    # The masks are set here (before `fit`) for the static run and for the ablations; the
    # callback then keeps them (it only draws masks when every mask is all ones).
    masks_now = not name.endswith("rigl") or args.rescale_init
    if masks_now:
        initial_masks(model, args.sparsity, args.density, seed, rescale=args.rescale_init)
    if name.endswith("rigl"):
        callback = dst.DynamicSparseTraining(
            args.sparsity, method="rigl", density=args.density, update_every=args.update_every,
            drop_fraction=args.drop_fraction, seed=seed)
        callbacks.append(callback)
    start = time.perf_counter()
    model.fit(data["train"], epochs=args.epochs, callbacks=callbacks, verbose=0)
    seconds = time.perf_counter() - start
    result = {"run": name, "seed": seed, "train_seconds": seconds}
    for split in ("train", "validation", "test"):
        logs = model.evaluate(data[split], verbose=0, return_dict=True)
        accuracy = {t: float(logs[f"{t}_accuracy"]) for t in tasks}
        result[split] = {"accuracy": accuracy, "worst": min(accuracy.values()),
                         "mean": float(np.mean(list(accuracy.values())))}
    result["sparsity"] = pruning.sparsity_report(model)["overall"]["sparsity"]
    result["updates"] = len(callback.history) if callback else 0
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-examples", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--density", default="erk", choices=["erk", "er", "uniform"])  # densities.DISTRIBUTIONS
    parser.add_argument("--update-every", type=int, default=100)
    parser.add_argument("--drop-fraction", type=float, default=0.3)
    parser.add_argument("--rescale-init", action="store_true",
                        help="ablation: scale each kept weight by sqrt(fan_in / kept fan_in)")
    parser.add_argument("--keep-slots", action="store_true",
                        help="ablation: do not reset the optimizer slots of grown weights")
    parser.add_argument("--step-size", type=float, default=0.1)
    parser.add_argument("--gamma", type=float, default=5.0)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results/dst.json"))
    args = parser.parse_args()
    if args.keep_slots:
        keep_optimizer_slots()
    results = []
    for seed in args.seeds:
        for name in args.runs:
            r = run_one(name, seed, args)
            results.append(r)
            print(f"{name:<14} seed {seed}: val worst {r['validation']['worst']:.4f} mean "
                  f"{r['validation']['mean']:.4f} (train worst {r['train']['worst']:.4f}) | test worst "
                  f"{r['test']['worst']:.4f} mean "
                  f"{r['test']['mean']:.4f} | sparsity {r['sparsity']:.4f} | updates {r['updates']} "
                  f"| {r['train_seconds']:.0f}s", flush=True)
    print(f"\n{len(args.seeds)} seeds, {args.epochs} epochs, sparsity {args.sparsity}, {args.density}")
    print(f"{'run':<14}  {'worst-task test acc':>20}  {'mean test acc':>16}  {'sparsity':>8}")
    summary = {}
    for name in args.runs:
        rs = [r for r in results if r["run"] == name]
        worst = [r["test"]["worst"] for r in rs]
        mean = [r["test"]["mean"] for r in rs]
        summary[name] = {"worst_mean": float(np.mean(worst)), "worst_std": float(np.std(worst)),
                         "mean_mean": float(np.mean(mean)), "mean_std": float(np.std(mean)),
                         "sparsity": float(np.mean([r["sparsity"] for r in rs]))}
        s = summary[name]
        print(f"{name:<14}  {s['worst_mean']:.4f} ± {s['worst_std']:.4f}     "
              f"{s['mean_mean']:.4f} ± {s['mean_std']:.4f}  {s['sparsity']:8.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"arguments": {k: str(v) for k, v in vars(args).items()},
                                    "runs": results, "summary": summary}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
