r"""Keras 3 step time: min-max / equal weighting on each back-end, and JAX / TensorFlow for the same model.

What is measured
----------------
In one process per back-end (`KERAS_BACKEND=jax`, then `tensorflow`), two
models identical but for the task weighting train on identical data:

- ``minmax``: `keras_minmax_mtl.keras3.MinMaxMultiTask(base)` (the defaults:
  projected ascent after every step, `normalize_losses="auto"`);
- ``ew``: `keras_minmax_mtl.keras3.MultiTaskModel(base_copy, EqualWeighting())`;

on the MultiDigits network (`benchmarks/keras3_network.py`, the layers of
`multi_digits_network`), Adam 1e-3, one sparse cross-entropy and accuracy per
task, batches of `--batch-size` from the train split, unshuffled. This is the
method of `benchmarks/step_time.py`: warm up, then `--repeats` rounds of one
block of `--steps` steps per model, the order alternating (minmax, ew),
(ew, minmax), ... so that a drift of the machine hits both; a block's
per-step time is its wall time / its steps; the garbage collector is off in a
block, which ends on a value read from the device (nothing pending).

Two ways to drive a block:

- ``fit``: `model.fit(x, y, batch_size, epochs=1, shuffle=False)` over
  exactly `--steps` batches: what users run (data adapter, callbacks,
  the JAX state sync at the end of the epoch included);
- ``train_function``: the compiled step alone, `model.train_function`
  (JAX: `(state, iterator) -> (logs, state)` on device-resident batches;
  TensorFlow: `(iterator) -> logs` on a cached `tf.data` iterator).

Reported per back-end and driver: the median per-step time of each model,
``ratio = median(minmax) / median(ew)`` (goal ≤ 1.03), the per-round ratios'
median and IQR and the same with process CPU time; then across back-ends
``jax / tensorflow`` per model and driver (the two processes ran one after
the other, so each had the machine to itself as far as the machine allowed).

How to run
----------
From the repository root (needs jax: ``pip install ".[keras3]"``)::

    nice -n 10 python benchmarks/keras3_step_time.py            # both back-ends
    python benchmarks/keras3_step_time.py --backend jax         # one, in this process

It prints a table and writes everything to ``--out`` (default
``benchmarks/results/keras3_step_time.json``).
"""
import argparse
import gc
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOAL = 1.03
DEFAULT_OUT = os.path.join("benchmarks", "results", "keras3_step_time.json")
BACKENDS = ("jax", "tensorflow")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=BACKENDS + ("both",), default="both",
                        help="back-end(s) to time; 'both' runs one process per back-end "
                             "(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="default: %(default)s")
    parser.add_argument("--steps", type=int, default=50, help="steps per block (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=11,
                        help="blocks per model and driver, alternating (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--out", default=DEFAULT_OUT, help="JSON file (default: %(default)s)")
    args = parser.parse_args(argv)
    for name in ("batch_size", "steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"argument --{name.replace('_', '-')}: must be >= 1. "
                         f"Received: {getattr(args, name)}")
    return args


def _iqr(values):
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return [q[0], q[2]]


def _summary(blocks, steps):
    """Per-step medians and ratios of `{model: [(wall, cpu), ...]}` (blocks in round order)."""
    per_step = {m: [w / steps for w, _ in b] for m, b in blocks.items()}
    cpu = {m: [c / steps for _, c in b] for m, b in blocks.items()}
    rounds = [a / b for a, b in zip(per_step["minmax"], per_step["ew"])]
    cpu_rounds = [a / b for a, b in zip(cpu["minmax"], cpu["ew"])]
    median = {m: statistics.median(v) for m, v in per_step.items()}
    return {"step_seconds": median,
            "ratio": median["minmax"] / median["ew"],
            "round_ratio_median": statistics.median(rounds), "round_ratio_iqr": _iqr(rounds),
            "cpu_ratio": statistics.median(cpu["minmax"]) / statistics.median(cpu["ew"]),
            "cpu_round_ratio_median": statistics.median(cpu_rounds),
            "blocks": {m: list(b) for m, b in blocks.items()}}


def _timed(run):
    gc.disable()
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        return time.perf_counter() - wall, time.process_time() - cpu
    finally:
        gc.enable()


def worker(args):
    """Times both models on this process's back-end; returns the results."""
    import numpy as np
    import keras

    sys.path.insert(0, os.path.join(_ROOT, "benchmarks"))
    sys.path.insert(0, _ROOT)
    from keras3_network import TASKS, network
    from keras_minmax_mtl.data import load_multi_digits
    from keras_minmax_mtl.keras3 import EqualWeighting, MinMaxMultiTask, MultiTaskModel

    backend = keras.backend.backend()
    n = args.steps * args.batch_size
    x, labels = load_multi_digits("train", seed=args.seed, num_examples=n)
    x = x.astype("float32")
    y = [labels[t] for t in TASKS]
    models = {"minmax": MinMaxMultiTask(network(args.seed)),
              "ew": MultiTaskModel(network(args.seed), weighting=EqualWeighting())}
    same = all(np.array_equal(a, b) for a, b in zip(models["minmax"].base_model.get_weights(),
                                                     models["ew"].base_model.get_weights()))
    for model in models.values():
        model.compile(keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                      metrics={t: ["accuracy"] for t in TASKS})

    def fit_block(model):
        def run():
            model.fit(x, y, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0)
        return run

    # ---- inner train function
    if backend == "jax":
        import jax

        batches = [(keras.ops.convert_to_tensor(x[i:i + args.batch_size]),
                    [keras.ops.convert_to_tensor(v[i:i + args.batch_size]) for v in y])
                   for i in range(0, n, args.batch_size)]
        states = {}

        def inner_block(name):
            model = models[name]

            def run():
                state = states[name]
                iterator = itertools.cycle(batches)
                for _ in range(args.steps):
                    logs, state = model.train_function(state, iterator)
                states[name] = state
                jax.block_until_ready(logs["loss"])
            return run

        def prepare_inner(name):
            model = models[name]
            model.make_train_function()
            states[name] = ([v.value for v in model.trainable_variables],
                            [v.value for v in model.non_trainable_variables],
                            [v.value for v in model.optimizer.variables],
                            [v.value for v in model.metrics_variables])
    else:
        import tensorflow as tf

        data = tf.data.Dataset.from_tensor_slices((x, tuple(y))).batch(args.batch_size)
        data = data.cache().repeat()
        iterators = {}

        def inner_block(name):
            model = models[name]

            def run():
                for _ in range(args.steps):
                    logs = model.train_function(iterators[name])
                float(logs["loss"])
            return run

        def prepare_inner(name):
            models[name].make_train_function()
            iterators[name] = iter(data)

    results = {"backend": backend, "keras": keras.__version__, "same_initial_weights": same,
               "batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats,
               "python": platform.python_version(), "cpus": os.cpu_count()}
    for name in models:  # warm-up: compile and run a block of each
        fit_block(models[name])()
    blocks = {"minmax": [], "ew": []}
    for r in range(args.repeats):
        for name in (("minmax", "ew") if r % 2 == 0 else ("ew", "minmax")):
            blocks[name].append(_timed(fit_block(models[name])))
    results["fit"] = _summary(blocks, args.steps)
    for name in models:
        prepare_inner(name)
        inner_block(name)()
    blocks = {"minmax": [], "ew": []}
    for r in range(args.repeats):
        for name in (("minmax", "ew") if r % 2 == 0 else ("ew", "minmax")):
            blocks[name].append(_timed(inner_block(name)))
    results["train_function"] = _summary(blocks, args.steps)
    return results


def main(argv=None):
    args = parse_args(argv)
    if args.backend != "both":
        os.environ["KERAS_BACKEND"] = args.backend  # before `import keras` (in `worker`)
        by_backend = {args.backend: worker(args)}
    else:
        by_backend = {}
        for backend in BACKENDS:
            out = f"{args.out}.{backend}.json"
            env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
                       PYTHONPATH=os.pathsep.join(p for p in [_ROOT, os.environ.get("PYTHONPATH")] if p))
            command = [sys.executable, os.path.abspath(__file__), "--backend", backend,
                       "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                       "--repeats", str(args.repeats), "--seed", str(args.seed), "--out", out]
            subprocess.run(command, env=env, check=True)
            with open(out) as f:
                by_backend[backend] = json.load(f)["by_backend"][backend]
            os.remove(out)
    combined = {"goal": GOAL, "by_backend": by_backend}
    if len(by_backend) == 2:
        combined["jax_over_tensorflow"] = {
            driver: {m: by_backend["jax"][driver]["step_seconds"][m]
                     / by_backend["tensorflow"][driver]["step_seconds"][m] for m in ("minmax", "ew")}
            for driver in ("fit", "train_function")}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(combined, f, indent=1)
    print(f"{'back-end':<11} {'driver':<15} {'minmax ms':>10} {'ew ms':>8} {'ratio':>7} "
          f"{'round IQR':>15} {'cpu ratio':>9}")
    for backend, r in by_backend.items():
        for driver in ("fit", "train_function"):
            d = r[driver]
            print(f"{backend:<11} {driver:<15} {1e3 * d['step_seconds']['minmax']:>10.3f} "
                  f"{1e3 * d['step_seconds']['ew']:>8.3f} {d['ratio']:>7.3f} "
                  f"{d['round_ratio_iqr'][0]:>7.3f}-{d['round_ratio_iqr'][1]:<7.3f} "
                  f"{d['cpu_ratio']:>9.3f}")
    if "jax_over_tensorflow" in combined:
        for driver, ratios in combined["jax_over_tensorflow"].items():
            print(f"jax / tensorflow step time, {driver}: minmax {ratios['minmax']:.3f}, "
                  f"ew {ratios['ew']:.3f}")
    print(f"goal: minmax / ew <= {GOAL}; written to {args.out}")


if __name__ == "__main__":
    main()
