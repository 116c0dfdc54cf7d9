import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
r"""Step time of the reweighted stage relative to plain masked training, in one process.

Two `MinMaxMultiTask` models on `multi_digits_network(seed=0)` (identical
initial weights), both wrapped by `prune_reweighted_l1` (the same wrappers,
policy and schedule class):

- ``reweighted``: in the reweighted stage (penalty on, ``w^ref`` set, the
  prune far ahead);
- ``masked``: pruned at its first step to `--sparsity`, then masked
  retraining (penalty off): what tfmot's plain masked training costs.

Each model's compiled train function (one step per call, as `fit` runs it)
is called directly on its own iterator over the same cached batches. After
`--warmup` steps each, `--repeats` rounds of one block of `--steps` steps per
model run, the order alternating every round. Reported: the ratio of the
median per-step times (goal <= 1.15), and the median and IQR of the
per-round ratios. Saved to `benchmarks/results/reweighted_step_time.json`.

    python benchmarks/reweighted_step_time.py
"""
import argparse
import gc
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import keras_minmax_mtl as kmm  # noqa: E402
from keras_minmax_mtl.sparsity import pruning  # noqa: E402
from keras_minmax_mtl.core.backend import keras  # noqa: E402
from keras_minmax_mtl.data import multi_digits  # noqa: E402
from keras_minmax_mtl.data.networks import multi_digits_network  # noqa: E402
from keras_minmax_mtl.sparsity.reweighted import ReweightedL1Penalty, prune_reweighted_l1  # noqa: E402

TASKS = ("left", "right", "sum")


def build(kind, args):
    if kind == "reweighted":
        wrapped, _ = prune_reweighted_l1(multi_digits_network(seed=0), args.sparsity,
                                         dense_steps=0, reweighted_steps=10**9, rho=args.rho)
    else:
        wrapped, _ = prune_reweighted_l1(multi_digits_network(seed=0), args.sparsity,
                                         dense_steps=0, reweighted_steps=0, rho=args.rho)
    model = kmm.MinMaxMultiTask(wrapped)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss={t: "sparse_categorical_crossentropy" for t in TASKS},
                  metrics={t: ["accuracy"] for t in TASKS})
    for wrapper in pruning.pruning_wrappers(model):
        wrapper.pruning_step.assign(0)  # what UpdatePruningStep does at the start of fit
    penalty = ReweightedL1Penalty.of(wrapped)
    penalty.refresh()
    penalty.set_coefficient(args.rho if kind == "reweighted" else 0.0)
    data = (multi_digits("train", seed=0, batch_size=args.batch_size, shuffle=False)
            .unbatch().batch(args.batch_size, drop_remainder=True).cache().repeat())
    return model, iter(data), model.make_train_function()


def block(model, iterator, function, steps):
    gc.disable()
    start = time.perf_counter()
    for _ in range(steps):
        logs = function(iterator)
    float(logs["loss"])
    elapsed = time.perf_counter() - start
    gc.enable()
    return elapsed / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description="Reweighted-stage / masked-training step time.")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--rho", type=float, default=1e-5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent
                        / "results" / "reweighted_step_time.json")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    models = {kind: build(kind, args) for kind in ("reweighted", "masked")}
    for kind, (model, iterator, function) in models.items():
        block(model, iterator, function, args.warmup)
    rw_model = models["reweighted"][0]
    masked_model = models["masked"][0]
    assert float(ReweightedL1Penalty.of(rw_model.base_model).coefficient.numpy()) > 0
    assert pruning.sparsity_report(rw_model)["overall"]["sparsity"] == 0.0
    assert pruning.sparsity_report(masked_model)["overall"]["sparsity"] > args.sparsity - 0.01
    times = {"reweighted": [], "masked": []}
    for round_ in range(args.repeats):
        order = ("reweighted", "masked") if round_ % 2 == 0 else ("masked", "reweighted")
        for kind in order:
            times[kind].append(block(*models[kind], args.steps))
    ratio = float(np.median(times["reweighted"]) / np.median(times["masked"]))
    rounds = np.array(times["reweighted"]) / np.array(times["masked"])
    q1, med, q3 = np.percentile(rounds, [25, 50, 75])
    print(f"per-step time (median over {args.repeats} blocks of {args.steps} steps): "
          f"reweighted {np.median(times['reweighted']) * 1e3:.2f} ms, "
          f"masked {np.median(times['masked']) * 1e3:.2f} ms")
    print(f"ratio reweighted / masked = {ratio:.3f} (goal <= 1.15); per-round ratios: "
          f"median {med:.3f}, IQR [{q1:.3f}, {q3:.3f}]")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"arguments": {k: str(v) for k, v in vars(args).items()},
                                    "times": times, "ratio": ratio,
                                    "round_ratios": rounds.tolist()}, indent=2))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
