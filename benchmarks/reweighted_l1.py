r"""Reweighted-ℓ1 pruning on multi_digits: min-max vs equal weighting, next to dense.

For every seed, the same network (`multi_digits_network(seed)`) and data
(`multi_digits(seed)`) are trained with

- ``dense``: no pruning, `--dense-epochs + --reweighted-epochs +
  --retrain-epochs` epochs (the same length as a pruned run);
- each `--sparsities` value: `prune_reweighted_l1` (dense, reweighted,
  hard prune of the trunk and task-hidden kernels, masked retraining),

each with ``minmax`` (`MinMaxMultiTask`, paper defaults β=50, γ=5) and
``ew`` (`MultiTaskModel(EqualWeighting())`); Adam, same learning rate. It
prints, per configuration, the achieved sparsity of the prunable weights
(mean over seeds, to 0.1 %), and test worst-task and mean accuracy as
mean ± std over seeds. With `--select-rho r1 r2 ...` it first picks ρ on the
*validation* split (seed 0, min-max, at `--select-at` sparsity, default the
smallest of `--sparsities`; worst-task accuracy, then mean), then runs the
table with it. Everything is saved to
`benchmarks/results/reweighted_l1.json`.

    python benchmarks/reweighted_l1.py --seeds 0 1 2 --sparsities 0.9 0.975 --select-rho 1e-6 1e-5 1e-4
"""
import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # a script, not the library
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import keras_minmax_mtl as kmm  # noqa: E402
from keras_minmax_mtl.sparsity import pruning  # noqa: E402
from keras_minmax_mtl.core.backend import keras  # noqa: E402
from keras_minmax_mtl.data import multi_digits  # noqa: E402
from keras_minmax_mtl.data.networks import multi_digits_network  # noqa: E402
from keras_minmax_mtl.sparsity.reweighted import prune_reweighted_l1  # noqa: E402

TASKS = ("left", "right", "sum")


def run(args, seed, weighting, sparsity, rho, split):
    keras.utils.set_random_seed(seed)
    train = multi_digits("train", seed=seed, num_examples=args.train_examples,
                         batch_size=args.batch_size)
    evaluation = multi_digits(split, seed=seed, batch_size=args.batch_size)
    base = multi_digits_network(seed=seed)
    steps = int(train.cardinality())
    epochs = args.dense_epochs + args.reweighted_epochs + args.retrain_epochs
    callbacks = []
    if sparsity is not None:
        base, callbacks = prune_reweighted_l1(
            base, sparsity, dense_steps=args.dense_epochs * steps,
            reweighted_steps=args.reweighted_epochs * steps, rho=rho, epsilon=args.epsilon,
            allocation=args.allocation)
    if weighting == "minmax":
        model = kmm.MinMaxMultiTask(base, step_size=0.02, gamma=5.0)
    else:
        model = kmm.MultiTaskModel(base, weighting=kmm.EqualWeighting())
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                  loss={t: "sparse_categorical_crossentropy" for t in TASKS},
                  metrics={t: ["accuracy"] for t in TASKS})
    start = time.perf_counter()
    model.fit(train, epochs=epochs, callbacks=callbacks, verbose=0)
    seconds = time.perf_counter() - start
    result = model.evaluate(evaluation, verbose=0, return_dict=True)
    accuracy = {t: float(result[f"{t}_accuracy"]) for t in TASKS}
    # Measured on the prunable (wrapped) kernels: the trunk and task-hidden layers.
    report = pruning.sparsity_report(model) if sparsity is not None else None
    return {
        "seed": seed, "weighting": weighting, "sparsity_target": sparsity, "rho": rho,
        "split": split, "accuracy": accuracy, "worst": min(accuracy.values()),
        "mean": float(np.mean(list(accuracy.values()))),
        "achieved_sparsity": report["overall"]["sparsity"] if report else 0.0,
        "layers": {k: v["sparsity"] for k, v in report["layers"].items()} if report else {},
        "task_weights": [float(v) for v in np.asarray(model.task_weights)],
        "train_seconds": seconds,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description="Reweighted-l1 pruning on multi_digits: min-max vs EW, next to dense.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.975])
    parser.add_argument("--rho", type=float, default=1e-5)
    parser.add_argument("--select-rho", type=float, nargs="*", default=[])
    parser.add_argument("--epsilon", type=float, default=1e-6)
    parser.add_argument("--select-at", type=float, default=None,
                        help="sparsity at which rho is selected (default: the smallest)")
    parser.add_argument("--allocation", default="uniform", choices=["uniform", "global"])
    parser.add_argument("--dense-epochs", type=int, default=10)
    parser.add_argument("--reweighted-epochs", type=int, default=5)
    parser.add_argument("--retrain-epochs", type=int, default=5)
    parser.add_argument("--train-examples", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--out", type=pathlib.Path,
                        default=pathlib.Path(__file__).parent / "results" / "reweighted_l1.json")
    args = parser.parse_args(argv)
    print(f"multi_digits, {args.train_examples} training examples, allocation {args.allocation}, "
          f"{args.dense_epochs}+{args.reweighted_epochs}+{args.retrain_epochs} epochs, "
          f"batch {args.batch_size}, Adam {args.learning_rate}", flush=True)

    selection = []
    rho = args.rho
    if args.select_rho:
        sparsity = args.select_at if args.select_at is not None else min(args.sparsities)
        for candidate in args.select_rho:
            r = run(args, 0, "minmax", sparsity, candidate, "validation")
            selection.append(r)
            print(f"  rho={candidate:g} (validation, seed 0, minmax, {sparsity:.1%}): worst "
                  f"{r['worst']:.4f}, mean {r['mean']:.4f}, achieved {r['achieved_sparsity']:.2%}",
                  flush=True)
        rho = max(selection, key=lambda r: (r["worst"], r["mean"]))["rho"]
        print(f"chosen rho = {rho:g} (best validation worst-task accuracy)", flush=True)

    runs = []
    for sparsity in [None, *args.sparsities]:
        for weighting in ("minmax", "ew"):
            for seed in args.seeds:
                r = run(args, seed, weighting, sparsity, rho, "test")
                runs.append(r)
                print(f"  {weighting:6s} {'dense' if sparsity is None else f'{sparsity:.1%}':>6s} "
                      f"seed {seed}: worst {r['worst']:.4f} mean {r['mean']:.4f} "
                      f"achieved {r['achieved_sparsity']:.2%} ({r['train_seconds']:.0f}s)",
                      flush=True)

    print()
    print(f"{'config':<14} {'weighting':<9} {'achieved sparsity':>18} "
          f"{'worst-task acc (test)':>22} {'mean acc (test)':>17}")
    rows = []
    for sparsity in [None, *args.sparsities]:
        for weighting in ("minmax", "ew"):
            group = [r for r in runs if r["sparsity_target"] == sparsity and r["weighting"] == weighting]
            worst = np.array([r["worst"] for r in group]) * 100
            mean = np.array([r["mean"] for r in group]) * 100
            achieved = np.mean([r["achieved_sparsity"] for r in group]) * 100
            name = "dense" if sparsity is None else f"{sparsity:.1%} sparse"
            rows.append({"config": name, "weighting": weighting, "achieved": achieved,
                         "worst_mean": worst.mean(), "worst_std": worst.std(),
                         "mean_mean": mean.mean(), "mean_std": mean.std()})
            print(f"{name:<14} {weighting:<9} {achieved:17.1f}% {worst.mean():14.2f} ± {worst.std():4.2f}"
                  f" {mean.mean():9.2f} ± {mean.std():4.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "arguments": {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()},
        "rho": rho, "selection": selection, "runs": runs, "table": rows}, indent=2))
    print(f"\nsaved {args.out}")


if __name__ == "__main__":
    main()
