"""Accuracy of a channel-group-pruned, shrunk residual trunk against the dense one (MultiDigits or MultiFashion), min-max vs EW.

The network: a small trunk of the kinds `channel_groups` ties (a residual
block with an `Add`; an inverted-residual block with `ZeroPadding2D`, a
`DepthwiseConv2D`, a squeeze-excite `Multiply` and a projected shortcut
`Add`), on MultiDigits' 12×16 canvases, max-pooled to 3×4 and flattened
(the heads must see where a digit is: left, right), with a softmax head per
task. For
each weighting (`--weightings`) and seed:

1. dense training for `--epochs` (Adam 1e-3, batch 64; BatchNorm momentum
   0.9, so that its moving statistics follow a few hundred steps);
2. the per-task Taylor importance of every group on `--importance-batches`
   training batches (`task_taylor_importance`), scored by the worst task
   under the model's task weights (`group_scores(rule="worst")`; min-max's
   learned weights, or equal weights for EW);
3. `prune_groups(--fraction)` (in every family), `shrink`, and `--finetune`
   epochs of training of the shrunk model under the same weighting
   (min-max restarts at equal weights).

With `--method stages` the library's three stages run instead
(`prune_reweighted_l1(..., sparsity_type="group", group_score="worst")`):
`--epochs` dense, `--reweighted` epochs with the reweighted group-ℓ1
penalty (`--rho`), the prune of `--fraction` of every family (worst-task
Taylor scores on `--importance-batches` training batches, under the task
weights of that moment) and `--finetune` epochs of masked retraining; the
dense accuracy is measured at the end of the dense stage and the shrunk
model is `shrink` of the retrained one (no pruned-before-fine-tuning column).

`--dataset multi_fashion` uses MultiFashion's two classification tasks
(`left`, `right`; its `ink` regression is left out) on 36×36 canvases,
max-pooled to 18×18 first.

Printed per weighting: mean ± std over seeds of the test worst-task and mean
accuracy of the dense model, of the pruned model before fine-tuning, and of
the shrunk fine-tuned model, and the parameter ratio shrunk / dense.

    nice -n 10 env PYTHONPATH=. python benchmarks/groups_accuracy.py --seeds 3
    nice -n 10 env PYTHONPATH=. python benchmarks/groups_accuracy.py --dataset multi_fashion --method stages
"""
import argparse
import json
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import _runs  # noqa: E402
from keras_minmax_mtl.core.backend import keras  # noqa: E402
from keras_minmax_mtl.data import load_multi_digits  # noqa: E402
from keras_minmax_mtl.data.digits import MULTI_DIGITS_TASKS  # noqa: E402
from keras_minmax_mtl.data.fashion import load_multi_fashion  # noqa: E402
from keras_minmax_mtl.export.surgery import shrink  # noqa: E402
from keras_minmax_mtl.sparsity.dependency import (  # noqa: E402
    channel_groups,
    group_scores,
    prune_groups,
    task_taylor_importance,
)
from keras_minmax_mtl.sparsity.pruning import strip_pruning  # noqa: E402
from keras_minmax_mtl.sparsity.reweighted import prune_reweighted_l1  # noqa: E402

#: The classification tasks and their classes, per dataset.
TASKS = {"multi_digits": MULTI_DIGITS_TASKS, "multi_fashion": {"left": 10, "right": 10}}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weightings", nargs="+", default=["minmax", "ew"], choices=["minmax", "ew"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--finetune", type=int, default=5)
    p.add_argument("--fraction", type=float, default=0.5)
    p.add_argument("--importance-batches", type=int, default=8)
    p.add_argument("--train-examples", type=int, default=None)
    p.add_argument("--test-examples", type=int, default=None)
    p.add_argument("--dataset", default="multi_digits", choices=sorted(TASKS))
    p.add_argument("--method", default="once", choices=["once", "stages"])
    p.add_argument("--reweighted", type=int, default=2)
    p.add_argument("--rho", type=float, default=1e-3)
    p.add_argument("--out", type=pathlib.Path,
                   default=pathlib.Path("benchmarks/results/groups_accuracy.json"))
    return p.parse_args(argv)


def network(seed, dataset="multi_digits"):
    keras.utils.set_random_seed(seed)
    layers = keras.layers

    def conv_bn(x, filters, kernel, name, relu=True, padding="same"):
        x = layers.Conv2D(filters, kernel, padding=padding, use_bias=False, name=name)(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x) if relu else x

    if dataset == "multi_fashion":
        image = keras.Input((36, 36, 1), name="image")
        stem = conv_bn(layers.MaxPooling2D(2, name="pool0")(image), 16, 3, "stem")   # 18x18
    else:
        image = keras.Input((12, 16, 1), name="image")
        stem = conv_bn(image, 16, 3, "stem")
    h = conv_bn(conv_bn(stem, 16, 3, "r_a"), 16, 3, "r_b", relu=False)
    h = layers.ReLU(name="r_out")(layers.Add(name="r_add")([stem, h]))
    h = layers.MaxPooling2D(2, name="pool")(h)                                  # 6x8x16
    e = conv_bn(h, 64, 1, "expand")
    e = layers.DepthwiseConv2D(3, use_bias=False, name="dw")(
        layers.ZeroPadding2D(1, name="pad")(e))
    e = layers.ReLU(name="dw_relu")(layers.BatchNormalization(momentum=0.9, name="dw_bn")(e))
    s = layers.Reshape((1, 1, 64), name="se_shape")(layers.GlobalAveragePooling2D(name="se_pool")(e))
    s = layers.Conv2D(16, 1, activation="relu", name="se_reduce")(s)
    s = layers.Conv2D(64, 1, activation="sigmoid", name="se_expand")(s)
    e = conv_bn(layers.Multiply(name="se_mul")([e, s]), 32, 1, "project", relu=False)
    shortcut = conv_bn(h, 32, 1, "shortcut", relu=False)
    h = layers.ReLU(name="b_out")(layers.Add(name="b_add")([shortcut, e]))
    h = layers.Flatten(name="flat")(layers.MaxPooling2D(2, name="pool2")(h))      # 3x4x32, kept
    outputs = [layers.Dense(n, activation="softmax", name=task)(h)
               for task, n in TASKS[dataset].items()]
    return keras.Model(image, outputs, name="groups_net")


def compiled(weighting, base):
    model = _runs.build_model(weighting, base)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss={t: "sparse_categorical_crossentropy" for t in model.task_names},
                  metrics={t: ["accuracy"] for t in model.task_names})
    return model


def accuracy(base, x, y):
    predictions = base.predict(x, batch_size=256, verbose=0)
    per_task = {t: float(np.mean(np.argmax(p, -1) == y[t]))
                for t, p in zip(base.output_names, predictions)}
    return {"tasks": per_task, "worst": min(per_task.values()),
            "mean": float(np.mean(list(per_task.values())))}


def run_stages(weighting, seed, args, data):
    """The three stages of `prune_reweighted_l1(..., sparsity_type="group")` (see the docstring)."""
    (x, y), (x_test, y_test) = data
    base = network(seed, args.dataset)
    steps = -(-len(x) // 64)
    batches = [(x[i:i + 64], {t: y[t][i:i + 64] for t in y})
               for i in range(0, 64 * args.importance_batches, 64)]
    wrapped, callbacks = prune_reweighted_l1(
        base, args.fraction, dense_steps=args.epochs * steps,
        reweighted_steps=args.reweighted * steps, rho=args.rho, sparsity_type="group",
        group_score="worst", score_data=batches)
    model = compiled(weighting, wrapped)
    model.fit(x, y, epochs=args.epochs, batch_size=64, verbose=0, callbacks=callbacks)
    dense = accuracy(strip_pruning(model).base_model, x_test, y_test)
    model.fit(x, y, epochs=args.epochs + args.reweighted + args.finetune,
              initial_epoch=args.epochs, batch_size=64, verbose=0, callbacks=callbacks)
    stages = callbacks[1]
    small = shrink(model)
    shrunk = accuracy(small, x_test, y_test)
    masked = strip_pruning(model).base_model
    gap = max(float(np.max(np.abs(a - b))) for a, b in zip(
        masked.predict(x_test[:256], verbose=0), small.predict(x_test[:256], verbose=0)))
    prunable = sum(g.prunable for g in stages.groups)
    result = {"weighting": weighting, "seed": seed, "dense": dense, "shrunk_finetuned": shrunk,
              "removed_groups": len(stages.removed.removed), "groups": prunable,
              "task_weights": np.asarray(model.task_weights).tolist(),
              "max_shrunk_minus_masked": gap,
              "params": {"dense": base.count_params(), "shrunk": small.count_params()}}
    print(f"{weighting} seed {seed}: worst/mean dense {dense['worst']:.4f}/{dense['mean']:.4f}, "
          f"shrunk after the stages {shrunk['worst']:.4f}/{shrunk['mean']:.4f}; params "
          f"{base.count_params()} -> {small.count_params()}; {len(stages.removed.removed)} of "
          f"{prunable} prunable groups removed; max |shrunk - masked| {gap:.2e}", flush=True)
    return result


def run(weighting, seed, args, data):
    if args.method == "stages":
        return run_stages(weighting, seed, args, data)
    (x, y), (x_test, y_test) = data
    base = network(seed, args.dataset)
    model = compiled(weighting, base)
    model.fit(x, y, epochs=args.epochs, batch_size=64, verbose=0)
    dense = accuracy(base, x_test, y_test)
    weights = (np.asarray(model.task_weights.numpy()) if weighting == "minmax" else None)
    groups = channel_groups(base)
    batches = [(x[i:i + 64], {t: y[t][i:i + 64] for t in y})
               for i in range(0, 64 * args.importance_batches, 64)]
    losses = {t: "sparse_categorical_crossentropy" for t in base.output_names}
    _, importance = task_taylor_importance(base, groups, batches, losses)
    scores = group_scores(importance, weights, rule="worst")
    removed = prune_groups(base, args.fraction, scores=scores, groups=groups)
    pruned = accuracy(base, x_test, y_test)
    small = shrink(base)
    tuned = compiled(weighting, small)
    tuned.fit(x, y, epochs=args.finetune, batch_size=64, verbose=0)
    shrunk = accuracy(small, x_test, y_test)
    result = {"weighting": weighting, "seed": seed, "dense": dense, "pruned": pruned,
              "shrunk_finetuned": shrunk, "removed_groups": len(removed),
              "groups": len(groups), "task_weights": None if weights is None else weights.tolist(),
              "params": {"dense": base.count_params(), "shrunk": small.count_params()}}
    print(f"{weighting} seed {seed}: worst/mean dense {dense['worst']:.4f}/{dense['mean']:.4f}, "
          f"pruned {pruned['worst']:.4f}/{pruned['mean']:.4f}, shrunk+finetuned "
          f"{shrunk['worst']:.4f}/{shrunk['mean']:.4f}; params {base.count_params()} -> "
          f"{small.count_params()}; {len(removed)} of {len(groups)} groups removed", flush=True)
    return result


def main(argv=None):
    args = parse(argv)
    load = load_multi_fashion if args.dataset == "multi_fashion" else load_multi_digits
    x, y = load("train", seed=0, num_examples=args.train_examples)
    x_test, y_test = load("test", seed=0, num_examples=args.test_examples)
    tasks = list(TASKS[args.dataset])
    data = ((x, {t: y[t] for t in tasks}), (x_test, {t: y_test[t] for t in tasks}))
    runs = [run(w, seed, args, data) for w in args.weightings for seed in range(args.seeds)]
    name = {"multi_digits": "MultiDigits", "multi_fashion": "MultiFashion (left, right)"}
    how = ("the three stages of sparsity_type='group'" if args.method == "stages"
           else "pruned once, then fine-tuned")
    print(f"\n{name[args.dataset]} test accuracy (%), mean ± std over {args.seeds} seeds; "
          f"{args.fraction:.0%} of every group family removed, scored by the worst task; "
          f"{how}:\n")
    print("| weighting | dense worst | dense mean | pruned worst (no fine-tuning) | "
          "shrunk + fine-tuned worst | shrunk + fine-tuned mean | params shrunk / dense |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for w in args.weightings:
        rows = [r for r in runs if r["weighting"] == w]
        cell = {k: _runs.mean_std([100 * r[a][b] for r in rows]) for k, (a, b) in {
            "dense_worst": ("dense", "worst"), "dense_mean": ("dense", "mean"),
            "pruned_worst": ("pruned", "worst"), "shrunk_worst": ("shrunk_finetuned", "worst"),
            "shrunk_mean": ("shrunk_finetuned", "mean")}.items()
            if all(a in r for r in rows)}
        cell["params_ratio"] = _runs.mean_std(
            [r["params"]["shrunk"] / r["params"]["dense"] for r in rows])
        summary[w] = cell

        def f(c, d=2):
            return f"{c['mean']:.{d}f} ± {c['std']:.{d}f}"
        pruned = f(cell["pruned_worst"]) if "pruned_worst" in cell else "—"
        print(f"| {w} | {f(cell['dense_worst'])} | {f(cell['dense_mean'])} | "
              f"{pruned} | {f(cell['shrunk_worst'])} | {f(cell['shrunk_mean'])} | "
              f"{f(cell['params_ratio'], 3)} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"arguments": {k: str(v) for k, v in vars(args).items()},
                                    "runs": runs, "summary": summary}, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
