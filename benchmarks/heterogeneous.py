"""Losses of different scales on MultiFashion: does min-max starve a task, and what fixes it?

MultiFashion (keras_minmax_mtl.data.fashion) has two 10-way classifications
(`left`, `right`; cross-entropy ≈ 2.3 at the start) and a regression (`ink`,
L1 in percent of an item's area ≈ 57 at the start). One network, same data and initial weights
per seed, Adam; only the weighting differs:

- `ew`: equal weighting (`MultiTaskModel`, scale="num_tasks": the plain sum);
- `minmax_raw`: `MinMaxMultiTask(normalize_losses=False)` (the paper's rule on raw losses);
- `minmax_normalized`: `normalize_losses=True`;
- `minmax_auto`: the default, `normalize_losses="auto"`;
- `minmax_scales`: `normalize_losses=False, loss_scales={"ink": 1/25}` (a fixed
  multiplier that brings the first L1 near the cross-entropies).

Prints a markdown table (test accuracy of left/right, test MAE of ink, final
task weights; mean over seeds) and saves every run as JSON.

    python benchmarks/heterogeneous.py --seeds 2 --epochs 5      # the table of docs/results.md
    python benchmarks/heterogeneous.py --smoke                   # a few seconds, tiny sizes
"""
import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from keras_minmax_mtl.core.arguments import positive_int  # noqa: E402

CONFIGS = {
    "ew": dict(weighting="ew"),
    "minmax_raw": dict(weighting="minmax", normalize_losses=False),
    "minmax_normalized": dict(weighting="minmax", normalize_losses=True),
    "minmax_auto": dict(weighting="minmax", normalize_losses="auto"),
    "minmax_scales": dict(weighting="minmax", normalize_losses=False, loss_scales={"ink": 1 / 25}),
}
LOSSES = {"left": "sparse_categorical_crossentropy", "right": "sparse_categorical_crossentropy",
          "ink": "mae"}
METRICS = {"left": ["accuracy"], "right": ["accuracy"], "ink": ["mae"]}


def run(name, seed, epochs, train_examples, test_examples, data_dir):
    import keras_minmax_mtl as kmm
    from keras_minmax_mtl.core.backend import keras
    from keras_minmax_mtl.data.fashion import multi_fashion
    from keras_minmax_mtl.data.networks import multi_fashion_network

    config = CONFIGS[name]
    keras.utils.set_random_seed(seed)
    train = multi_fashion("train", seed=seed, num_examples=train_examples, batch_size=64,
                          data_dir=data_dir)
    test = multi_fashion("test", seed=seed, num_examples=test_examples, batch_size=256,
                         data_dir=data_dir)
    base = multi_fashion_network(seed=seed)
    if config["weighting"] == "ew":
        model = kmm.MultiTaskModel(base, scale="num_tasks")
    else:
        model = kmm.MinMaxMultiTask(base, step_size=0.02, gamma=5.0, scale="num_tasks",
                                    normalize_losses=config["normalize_losses"],
                                    loss_scales=config.get("loss_scales"))
    model.compile(keras.optimizers.Adam(1e-3), loss=LOSSES, metrics=METRICS)
    start = time.perf_counter()
    model.fit(train, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - start
    logs = model.evaluate(test, verbose=0, return_dict=True)
    return {"config": name, "seed": seed, "epochs": epochs, "train_examples": train_examples,
            "left_accuracy": logs["left_accuracy"], "right_accuracy": logs["right_accuracy"],
            "ink_mae": logs["ink_mae"], "task_weights": model.task_weights.numpy().tolist(),
            "normalized": bool(model.normalizes_losses()) if hasattr(model, "normalizes_losses")
            else False, "fit_seconds": seconds}


def table(results):
    lines = ["| weighting | left acc | right acc | ink MAE (%) | final task weights (left, right, ink) |",
             "|---|---|---|---|---|"]
    for name in CONFIGS:
        rows = [r for r in results if r["config"] == name]
        if not rows:
            continue
        mean = lambda key: np.mean([r[key] for r in rows])  # noqa: E731
        weights = np.mean([r["task_weights"] for r in rows], axis=0)
        lines.append(f"| `{name}` | {mean('left_accuracy'):.3f} | {mean('right_accuracy'):.3f} | "
                     f"{mean('ink_mae'):.1f} | [{', '.join(f'{w:.2f}' for w in weights)}] |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=positive_int, default=2)
    parser.add_argument("--epochs", type=positive_int, default=5)
    parser.add_argument("--train-examples", type=positive_int, default=20000)
    parser.add_argument("--test-examples", type=positive_int, default=10000)
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: Debian's)")
    parser.add_argument("--out", default="benchmarks/results/heterogeneous")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one seed, one epoch")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.epochs, args.train_examples, args.test_examples = 1, 1, 256, 256
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in range(args.seeds):
        for name in CONFIGS:
            path = out / f"{name}-s{seed}-e{args.epochs}-n{args.train_examples}.json"
            if path.exists() and not args.smoke:
                result = json.loads(path.read_text())
            else:
                result = run(name, seed, args.epochs, args.train_examples, args.test_examples,
                             args.data_dir)
                path.write_text(json.dumps(result, indent=1))
            results.append(result)
            print(f"{name} seed {seed}: left {result['left_accuracy']:.3f} right "
                  f"{result['right_accuracy']:.3f} ink MAE {result['ink_mae']:.1f} weights "
                  f"{np.round(result['task_weights'], 3).tolist()}", flush=True)
    text = table(results)
    print(text)
    (out / "table.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
