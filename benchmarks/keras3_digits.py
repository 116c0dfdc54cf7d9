r"""MultiDigits min-max on the Keras 3 path (JAX) against the tf_keras path: same settings, paired seeds.

For each seed, both paths train `MinMaxMultiTask` (projected ascent, the
defaults of both: `normalize_losses="auto"`) from the SAME initial weights
(`keras_minmax_mtl.data.multi_digits_network(seed)`, copied into the Keras 3
build of the same layers, `benchmarks/keras3_network.py`) on the SAME arrays
(`load_multi_digits("train"/"test", seed)`), with Adam(`--learning-rate`),
`--batch-size`, `--epochs`, `--step-size`, `--gamma`, one sparse
cross-entropy per task, shuffled by each framework's own seeded RNG. The
tf_keras path runs in one process, the Keras 3 path in another
(`KERAS_BACKEND=jax` by default).

Printed: the test accuracy of each task, their mean and the worst task, mean
± std over the seeds per path, and the Keras 3 − tf_keras difference with a
paired t-test over the seeds ("within noise" when p > 0.05). Everything goes
to ``--out`` (default ``benchmarks/results/keras3_digits.json``).

    nice -n 10 python benchmarks/keras3_digits.py --seeds 0 1 2 --epochs 10
"""
import argparse
import json
import os
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join("benchmarks", "results", "keras3_digits.json")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--step-size", type=float, default=0.02)
    parser.add_argument("--gamma", type=float, default=5.0)
    parser.add_argument("--train-examples", type=int, default=6000)
    parser.add_argument("--backend", choices=("jax", "tensorflow"), default="jax",
                        help="Keras 3 back-end (default: %(default)s)")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--worker", choices=("tf_keras", "keras3"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "train_examples"):
        if getattr(args, name) < 1:
            parser.error(f"argument --{name.replace('_', '-')}: must be >= 1. "
                         f"Received: {getattr(args, name)}")
    return args


def _data(seed, train_examples):
    from keras_minmax_mtl.data import load_multi_digits
    x, y = load_multi_digits("train", seed=seed, num_examples=train_examples)
    xt, yt = load_multi_digits("test", seed=seed)
    return x.astype("float32"), y, xt.astype("float32"), yt


def _fit_and_score(model, optimizer, tasks, seed, args, to_numpy):
    """Compiles, fits and evaluates `model` on the seed's data; the test accuracies and weights."""
    x, y, xt, yt = _data(seed, args.train_examples)
    model.compile(optimizer, loss="sparse_categorical_crossentropy",
                  metrics={t: ["accuracy"] for t in tasks})
    start = time.perf_counter()
    model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, shuffle=True, verbose=0)
    seconds = time.perf_counter() - start
    logs = model.evaluate(xt, yt, batch_size=args.batch_size, verbose=0, return_dict=True)
    return {"accuracy": {t: logs[f"{t}_accuracy"] for t in tasks},
            "task_weights": to_numpy(model.task_weights).tolist(), "train_seconds": seconds}


def tf_keras_worker(args):
    import numpy as np
    import keras_minmax_mtl as kmm
    from keras_minmax_mtl.core.backend import keras
    from keras_minmax_mtl.data import MULTI_DIGITS_TASKS
    from keras_minmax_mtl.data.networks import multi_digits_network

    results = {}
    for seed in args.seeds:
        keras.utils.set_random_seed(seed)
        base = multi_digits_network(seed=seed)
        np.savez(os.path.join(args.folder, f"init_{seed}.npz"), *base.get_weights())
        model = kmm.MinMaxMultiTask(base, step_size=args.step_size, gamma=args.gamma)
        results[seed] = _fit_and_score(model, keras.optimizers.Adam(args.learning_rate),
                                       MULTI_DIGITS_TASKS, seed, args, np.asarray)
    return results


def keras3_worker(args):
    import numpy as np
    import keras

    sys.path.insert(0, os.path.join(_ROOT, "benchmarks"))
    from keras3_network import TASKS, network
    from keras_minmax_mtl.keras3 import MinMaxMultiTask

    results = {}
    for seed in args.seeds:
        keras.utils.set_random_seed(seed)
        base = network(seed)
        saved = np.load(os.path.join(args.folder, f"init_{seed}.npz"))
        weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        shapes = [w.shape for w in base.get_weights()]
        if shapes != [w.shape for w in weights]:
            raise RuntimeError(f"The Keras 3 network's weights {shapes} do not match the "
                               f"tf_keras network's {[w.shape for w in weights]}.")
        base.set_weights(weights)
        model = MinMaxMultiTask(base, step_size=args.step_size, gamma=args.gamma)
        results[seed] = _fit_and_score(model, keras.optimizers.Adam(args.learning_rate), TASKS,
                                       seed, args, keras.ops.convert_to_numpy)
        results[seed]["backend"] = keras.backend.backend()
    return results


def _run_worker(args, worker, folder):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(p for p in [_ROOT, os.environ.get("PYTHONPATH")] if p))
    if worker == "keras3":
        env["KERAS_BACKEND"] = args.backend
        env.pop("TF_USE_LEGACY_KERAS", None)
    command = [sys.executable, os.path.abspath(__file__), "--worker", worker, "--folder", folder,
               "--seeds", *map(str, args.seeds), "--epochs", str(args.epochs),
               "--batch-size", str(args.batch_size), "--learning-rate", str(args.learning_rate),
               "--step-size", str(args.step_size), "--gamma", str(args.gamma),
               "--train-examples", str(args.train_examples)]
    subprocess.run(command, env=env, check=True)
    with open(os.path.join(folder, f"{worker}.json")) as f:
        return {int(k): v for k, v in json.load(f).items()}


def _summaries(run):
    """Per seed: the tasks' accuracies, their mean and the worst."""
    rows = {}
    for seed, r in run.items():
        acc = dict(r["accuracy"])
        acc["mean"] = sum(r["accuracy"].values()) / len(r["accuracy"])
        acc["worst"] = min(r["accuracy"].values())
        rows[seed] = acc
    return rows


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        result = (tf_keras_worker if args.worker == "tf_keras" else keras3_worker)(args)
        with open(os.path.join(args.folder, f"{args.worker}.json"), "w") as f:
            json.dump(result, f)
        return
    import tempfile
    import numpy as np
    from scipy import stats

    with tempfile.TemporaryDirectory() as folder:
        runs = {w: _run_worker(args, w, folder) for w in ("tf_keras", "keras3")}
    rows = {w: _summaries(r) for w, r in runs.items()}
    columns = list(next(iter(rows["tf_keras"].values())))
    table = {}
    print(f"MultiDigits test accuracy, min-max, seeds {args.seeds}, {args.epochs} epochs, "
          f"batch {args.batch_size}, Adam {args.learning_rate}, step size {args.step_size}, "
          f"gamma {args.gamma}; Keras 3 on {args.backend}")
    print(f"{'':<7} {'tf_keras':>15} {'keras3':>15} {'difference':>17} {'paired t p':>10}")
    for c in columns:
        a = np.array([rows["tf_keras"][s][c] for s in args.seeds])
        b = np.array([rows["keras3"][s][c] for s in args.seeds])
        diff = b - a
        p = float(stats.ttest_rel(b, a).pvalue) if len(args.seeds) > 1 and diff.std() > 0 else 1.0
        table[c] = {"tf_keras": a.tolist(), "keras3": b.tolist(), "p": p,
                    "within_noise": bool(p > 0.05)}
        print(f"{c:<7} {a.mean():>8.4f} ± {a.std(ddof=1) if len(a) > 1 else 0:.4f} "
              f"{b.mean():>8.4f} ± {b.std(ddof=1) if len(b) > 1 else 0:.4f} "
              f"{diff.mean():>+9.4f} ± {diff.std(ddof=1) if len(diff) > 1 else 0:.4f} {p:>10.3f}")
    seconds = {w: sum(r[s]["train_seconds"] for s in args.seeds) for w, r in runs.items()}
    print(f"training time (fit, all seeds): tf_keras {seconds['tf_keras']:.1f} s, "
          f"keras3 {seconds['keras3']:.1f} s")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"settings": {k: v for k, v in vars(args).items() if k not in ("worker", "folder")},
                   "runs": runs, "table": table, "train_seconds": seconds}, f, indent=1)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
