r"""Per-step training time of min-max weighting relative to equal weighting.

What is measured
----------------
Two models, identical except for the task-weighting strategy, are trained on
identical data in one process:

- ``minmax``: ``MinMaxMultiTask(base)`` (the library defaults: projected
  gradient ascent on the ``K`` task weights after every step);
- ``ew``: ``MultiTaskModel(base_copy, weighting=EqualWeighting())``.

``base`` and ``base_copy`` are two builds of ``multi_digits_network(seed=...)``
(their initial weights are checked to be equal). Both models are compiled
with the same optimizer type and learning rate and the same
``sparse_categorical_crossentropy`` loss and ``accuracy`` metric per task, and
each reads its own iterator over the same batches (the MultiDigits train
split, unshuffled, cached in memory and repeated; every batch is full, so
nothing retraces).

The headline number, as the issue defines it, is

    ratio = median over blocks of the per-step time (minmax)
            / median over blocks of the per-step time (ew)

where a block's per-step time is its wall time divided by its steps. The goal
is ``ratio <= 1.03``: the ascent only touches ``K`` scalars per step, so it
should be lost next to the network's forward and backward pass.

How it is timed
---------------
Each model's compiled train function, ``model.train_function(iterator)``, is
called directly: it is the ``tf.function`` that ``fit`` calls once per step
(``next(iterator)`` and ``train_step`` in one graph), without what surrounds
it in ``fit``. Of the three ways to drive training, it adds the least
framework noise:

- ``fit(steps_per_epoch=...)`` adds per-call costs (a ``DataHandler``, the
  callback list, the progress bar, the signature binding of
  ``MultiTaskModel.fit``) and per-step Python callback hooks. Both models
  would pay them, but they add noise;
- ``train_on_batch`` builds a new data adapter on every call, a Python cost
  that, for this small network, is larger than the step itself and would
  hide the difference;
- ``train_function(iterator)`` leaves one ``tf.function`` dispatch per call
  (one step per call with ``--steps-per-execution 1``, as ``fit`` does by
  default). Both models pay it, and so does every real training run.

Both models are first warmed up (``--warmup`` steps each: tracing, optimizer
slots, filling the data cache). Then ``--repeats`` rounds of two blocks of
``--steps`` steps run, with the order alternating ``(minmax, ew)``,
``(ew, minmax)``, ... so that a slow drift of the machine (another process,
frequency scaling) hits both models equally. Each block is timed with
``time.perf_counter``. The garbage collector is off during a block, and a
block ends by reading its last loss, so no work is still pending when the
clock stops. Every call is also timed on its own: eager execution is
synchronous, so a call returns only once its step has run.

Then ``--paired-steps`` steps per model run with the models alternating at
every single step (minmax, ew, ew, minmax, ...), and every step is timed.

Reported, per model and as a minmax/ew ratio (every raw timing is in the JSON):

- ``timing.ratio``: the headline above. ``paired_ratios`` are the
  ``--repeats`` ratios of the two blocks of one round. Their median and IQR
  give the spread. ``robust_*`` is the same with each block's *median* call
  time instead of its mean, and ``cpu_*`` uses the process's CPU time (all
  threads) instead of wall time;
- ``paired_steps``: the ratio of two adjacent steps, median and IQR over all
  pairs. Two adjacent steps see nearly the same machine, so this cancels most
  of the noise from other processes. It is the precise estimate on a busy
  machine. It is less like real training, because the two models take turns
  on the caches;
- ``graph_ops``: the number of ops in each traced train function. This count
  has no timing noise;
- ``ascent``: the ascent alone, for ``K`` tasks. That is
  ``ProjectedGradientAscent`` plus the assignment to the weight variable,
  timed per call of a ``tf.function`` (dispatch included) and per iteration
  of a compiled ``tf.while_loop`` (dispatch excluded, an empty iteration
  subtracted). It also times the whole ``on_step_end`` hook of
  ``MinMaxWeighting`` against ``EqualWeighting``'s.

How to run
----------
From the repository root::

    PYTHONPATH=. python benchmarks/step_time.py
    PYTHONPATH=. python benchmarks/step_time.py --steps 200 --repeats 21 --device /CPU:0

The defaults take about a minute on 2 CPU cores. The script prints a short
summary and writes everything to ``--out`` (default
``benchmarks/results/step_time.json``).

How to read it
--------------
A ratio above 1 is the relative extra cost of min-max per step. Trust it only
as far as its spread allows. On a quiet machine the block ratio and the
paired-step ratio agree. On a busy one (other processes on the same cores),
the blocks' IQR can be +-10% while the paired-step median moves by well under
1% from run to run, so read that one. If an IQR is wider than the gap
between the ratio and 1.03, the run cannot decide. Run again with more
``--repeats`` / ``--paired-steps``. The isolated ``ascent`` and
``on_step_end`` times, divided by the ew step time, bound from below what the
ascent itself costs. The rest of the difference is the extra ops the min-max
path adds to the step (``graph_ops``).
"""
import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Runnable as `python benchmarks/step_time.py` from a checkout without installing.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_minmax_mtl.core.backend import keras  # noqa: E402
from keras_minmax_mtl.weighting.ascent import ProjectedGradientAscent  # noqa: E402
from keras_minmax_mtl.data import multi_digits  # noqa: E402
from keras_minmax_mtl.weighting.minmax import MinMaxWeighting  # noqa: E402
from keras_minmax_mtl.core.multitask import MultiTaskModel  # noqa: E402
from keras_minmax_mtl.weighting.minmax import MinMaxMultiTask  # noqa: E402
from keras_minmax_mtl.core.arguments import non_negative_int, positive_int  # noqa: E402
from keras_minmax_mtl.data.networks import multi_digits_network  # noqa: E402
from keras_minmax_mtl.core.task_weighting import EqualWeighting, TrainingClock  # noqa: E402

DATASETS = ("multi_digits",)
GOAL = 1.03
DEFAULT_OUT = os.path.join("benchmarks", "results", "step_time.json")


# --------------------------------------------------------------------------- #
# Command line
# --------------------------------------------------------------------------- #
def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Per-step time ratio of MinMaxMultiTask / MultiTaskModel(EqualWeighting), "
                    "same model and data, interleaved in one process.")
    parser.add_argument("--dataset", choices=DATASETS, default="multi_digits",
                        help="benchmark data and network (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=64,
                        help="examples per step (default: %(default)s)")
    parser.add_argument("--steps", type=positive_int, default=100,
                        help="steps per timed block (default: %(default)s)")
    parser.add_argument("--repeats", type=positive_int, default=15,
                        help="timed blocks per model, interleaved (default: %(default)s)")
    parser.add_argument("--warmup", type=non_negative_int, default=50,
                        help="untimed steps per model before timing (default: %(default)s)")
    parser.add_argument("--paired-steps", type=non_negative_int, default=1000,
                        help="steps per model timed one by one, the models alternating at "
                             "every step (0 to skip) (default: %(default)s)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the initial weights and of the data (default: %(default)s)")
    parser.add_argument("--steps-per-execution", type=positive_int, default=1,
                        help="train steps per call of the train function, the `compile` "
                             "argument; 1 is what `fit` does by default (default: %(default)s)")
    parser.add_argument("--optimizer", default="adam",
                        help="optimizer of both models, a Keras name (default: %(default)s)")
    parser.add_argument("--learning-rate", type=float, default=1e-3,
                        help="learning rate of both optimizers (default: %(default)s)")
    parser.add_argument("--ascent-iterations", type=positive_int, default=2000,
                        help="calls per measurement of the isolated ascent (default: %(default)s)")
    parser.add_argument("--device", default=None,
                        help="TensorFlow device to run on, e.g. /CPU:0 or /GPU:0 "
                             "(default: whatever TensorFlow picks)")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help="JSON file for the results (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.steps % args.steps_per_execution:
        parser.error(f"--steps ({args.steps}) must be a multiple of --steps-per-execution "
                     f"({args.steps_per_execution})")
    if args.paired_steps % args.steps_per_execution:
        parser.error(f"--paired-steps ({args.paired_steps}) must be a multiple of "
                     f"--steps-per-execution ({args.steps_per_execution})")
    if args.warmup % args.steps_per_execution:
        parser.error(f"--warmup ({args.warmup}) must be a multiple of --steps-per-execution "
                     f"({args.steps_per_execution})")
    return args


# --------------------------------------------------------------------------- #
# Models and data
# --------------------------------------------------------------------------- #
def make_dataset(name, batch_size, seed):
    """Full batches of the train split, unshuffled, cached and repeated forever."""
    if name != "multi_digits":
        raise ValueError(f"Unknown dataset {name!r}; choose from {DATASETS}.")
    num_batches = max(1, 4096 // batch_size)
    dataset = multi_digits("train", seed=seed, num_examples=num_batches * batch_size,
                           batch_size=batch_size, shuffle=False)
    return dataset.cache().repeat().prefetch(tf.data.AUTOTUNE)


def make_network(name, seed):
    if name != "multi_digits":
        raise ValueError(f"Unknown dataset {name!r}; choose from {DATASETS}.")
    return multi_digits_network(seed=seed)


def compile_model(model, args):
    tasks = model.task_names
    optimizer = keras.optimizers.get(
        {"class_name": args.optimizer, "config": {"learning_rate": args.learning_rate}})
    model.compile(
        optimizer=optimizer,
        loss={t: "sparse_categorical_crossentropy" for t in tasks},
        metrics={t: ["accuracy"] for t in tasks},
        steps_per_execution=args.steps_per_execution,
    )
    model.make_train_function()
    return model


def build_models(args):
    """The two models to compare, with identical initial network weights."""
    base = make_network(args.dataset, args.seed)
    base_copy = make_network(args.dataset, args.seed)
    for a, b in zip(base.get_weights(), base_copy.get_weights()):
        if not np.array_equal(a, b):
            raise AssertionError("The two base networks do not start from identical weights.")
    minmax = compile_model(MinMaxMultiTask(base, name="minmax"), args)
    ew = compile_model(MultiTaskModel(base_copy, weighting=EqualWeighting(), name="ew"), args)
    return {"minmax": minmax, "ew": ew}


# --------------------------------------------------------------------------- #
# Timing
# --------------------------------------------------------------------------- #
def run_block(model, iterator, steps, steps_per_execution):
    """Runs `steps` train steps; returns the block's wall time, each call's wall
    time and the CPU time of the process (all threads) during the block, in seconds.

    A call of the train function returns once its step has run (eager execution
    is synchronous), so the time of each call is that of its step(s); the block
    ends by reading its last loss, so nothing is left pending when the clock stops.
    """
    calls = steps // steps_per_execution
    train_function = model.train_function
    call_seconds = [0.0] * calls
    clock = time.perf_counter
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        cpu_start = time.process_time()
        start = previous = clock()
        for i in range(calls):
            logs = train_function(iterator)
            now = clock()
            call_seconds[i] = now - previous
            previous = now
        float(logs["loss"])
        elapsed = clock() - start
        cpu = time.process_time() - cpu_start
    finally:
        if gc_was_enabled:
            gc.enable()
    return elapsed, call_seconds, cpu


def _paired_summary(prefix, ratios):
    """Median, quartiles and IQR of paired ratios, under keys starting with `prefix`."""
    q1, median, q3 = _quartiles(ratios)
    return {f"{prefix}paired_ratios": ratios, f"{prefix}paired_ratio_median": median,
            f"{prefix}paired_ratio_q1": q1, f"{prefix}paired_ratio_q3": q3,
            f"{prefix}paired_ratio_iqr": q3 - q1}


def _quartiles(values):
    q1, median, q3 = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75])
    return float(q1), float(median), float(q3)


def time_training(models, iterators, args):
    order = list(models)  # ["minmax", "ew"]
    if args.warmup:
        for name in order:
            run_block(models[name], iterators[name], args.warmup, args.steps_per_execution)
    blocks = {name: [] for name in order}
    calls = {name: [] for name in order}
    cpu_blocks = {name: [] for name in order}
    for r in range(args.repeats):
        for name in (order if r % 2 == 0 else order[::-1]):
            seconds, call_seconds, cpu = run_block(models[name], iterators[name], args.steps,
                                                   args.steps_per_execution)
            blocks[name].append(seconds)
            calls[name].append(call_seconds)
            cpu_blocks[name].append(cpu)
    spe = args.steps_per_execution
    # Per block: the mean step time (block wall time / steps) and the median step
    # time (median call time / steps per call, robust to a step preempted by
    # another process).
    block_mean = {name: [s / args.steps for s in blocks[name]] for name in order}
    block_median = {name: [statistics.median(c) / spe for c in calls[name]] for name in order}
    median = {name: statistics.median(block_mean[name]) for name in order}
    robust = {name: statistics.median(block_median[name]) for name in order}
    paired = [m / e for m, e in zip(block_mean["minmax"], block_mean["ew"])]
    paired_robust = [m / e for m, e in zip(block_median["minmax"], block_median["ew"])]
    cpu_step = {name: [c / args.steps for c in cpu_blocks[name]] for name in order}
    cpu_median = {name: statistics.median(cpu_step[name]) for name in order}
    paired_cpu = [m / e for m, e in zip(cpu_step["minmax"], cpu_step["ew"])]
    ms = lambda values: [1e3 * v for v in values]  # noqa: E731
    return {
        "graph_ops": {name: graph_ops(models[name], iterators[name]) for name in order},
        "block_seconds": blocks,
        "call_ms": {name: [ms(c) for c in calls[name]] for name in order},
        "block_mean_step_ms": {name: ms(block_mean[name]) for name in order},
        "block_median_step_ms": {name: ms(block_median[name]) for name in order},
        "median_step_ms": {name: 1e3 * median[name] for name in order},
        "min_block_step_ms": {name: 1e3 * min(block_mean[name]) for name in order},
        "ratio": median["minmax"] / median["ew"],
        **_paired_summary("", paired),
        "extra_ms_per_step": 1e3 * (median["minmax"] - median["ew"]),
        "robust_step_ms": {name: 1e3 * robust[name] for name in order},
        "robust_ratio": robust["minmax"] / robust["ew"],
        **_paired_summary("robust_", paired_robust),
        "robust_extra_ms_per_step": 1e3 * (robust["minmax"] - robust["ew"]),
        "block_cpu_seconds": cpu_blocks,
        "cpu_step_ms": {name: 1e3 * cpu_median[name] for name in order},
        "cpu_ratio": cpu_median["minmax"] / cpu_median["ew"],
        **_paired_summary("cpu_", paired_cpu),
    }


def time_paired_steps(models, iterators, args):
    """Alternates single calls, minmax then ew then ew then minmax..., timing each.

    Two adjacent calls see nearly the same machine, so the ratio of a pair
    cancels most of the noise from other processes. This is the most
    precise estimate on a busy machine. It is less like real training, because
    the two models take turns on the caches at every step.
    """
    calls = args.paired_steps // args.steps_per_execution
    spe = args.steps_per_execution
    order = list(models)
    seconds = {name: [0.0] * calls for name in order}
    functions = {name: models[name].train_function for name in order}
    clock = time.perf_counter
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(calls):
            for name in (order if i % 2 == 0 else order[::-1]):
                start = clock()
                functions[name](iterators[name])
                seconds[name][i] = (clock() - start) / spe
    finally:
        if gc_was_enabled:
            gc.enable()
    minmax, ew = np.asarray(seconds["minmax"]), np.asarray(seconds["ew"])
    return {
        "steps": calls * spe,
        "step_ms": {name: [1e3 * v for v in seconds[name]] for name in order},
        "median_step_ms": {"minmax": 1e3 * float(np.median(minmax)),
                           "ew": 1e3 * float(np.median(ew))},
        "ratio_of_medians": float(np.median(minmax) / np.median(ew)),
        "ratio_of_means": float(minmax.mean() / ew.mean()),
        **_paired_summary("", (minmax / ew).tolist()),
        "extra_us_per_step": 1e6 * float(np.median(minmax) - np.median(ew)),
    }


def graph_ops(model, iterator):
    """Number of ops of the traced train function (its graph and nested functions).

    A noise-free view of how much more work a step does; counted before Grappler
    simplifies the graph (it folds EW's constant weights away, for instance).
    """
    concrete = model.train_function.get_concrete_function(iterator)
    graph_def = concrete.graph.as_graph_def()
    return len(graph_def.node) + sum(len(f.node_def) for f in graph_def.library.function)


def _per_call_us(fn, calls, rounds=5):
    """Median over `rounds` of the mean time of one `fn()` call, in microseconds."""
    fn()  # trace
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return 1e6 * statistics.median(times)


def _per_iteration_us(loop, iterations, rounds=5):
    """Median over `rounds` of the time of one iteration of a compiled loop, in µs."""
    n = tf.constant(iterations)
    float(loop(n))  # trace
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        float(loop(n))
        times.append((time.perf_counter() - start) / iterations)
    return 1e6 * statistics.median(times)


def time_ascent(num_tasks, iterations):
    """The ascent step alone, K scalars, as context for the per-step difference."""
    rule = ProjectedGradientAscent()
    weights = tf.Variable(tf.fill([num_tasks], 1.0 / num_tasks))
    losses = tf.constant(np.linspace(2.0, 3.0, num_tasks), tf.float32)

    @tf.function
    def empty_call():
        return tf.constant(0.0)

    @tf.function
    def ascent_call():
        weights.assign(rule(weights.read_value(), losses))
        return tf.constant(0.0)

    @tf.function
    def empty_loop(n):
        total = tf.constant(0.0)
        for _ in tf.range(n):
            weights.assign(weights.read_value())
            total += 1.0
        return total

    @tf.function
    def ascent_loop(n):
        total = tf.constant(0.0)
        for _ in tf.range(n):
            weights.assign(rule(weights.read_value(), losses))
            total += 1.0
        return total

    # The whole end-of-step hook of each strategy, inside a compiled loop.
    minmax_w = MinMaxWeighting(name="bench_minmax")
    minmax_w.build((num_tasks,))
    ew_w = EqualWeighting(name="bench_ew")
    ew_w.build((num_tasks,))
    step = tf.Variable(0, dtype=tf.int64)

    def hook_loop(weighting):
        @tf.function
        def loop(n):
            total = tf.constant(0.0)
            for _ in tf.range(n):
                clock = TrainingClock(step=step.read_value(), epoch=tf.constant(0, tf.int64),
                                      epoch_start=tf.constant(False))
                # Not converted: the hooks have no tensor-dependent Python control flow
                # (and autograph cannot convert a docstring-only body such as EW's).
                tf.autograph.experimental.do_not_convert(weighting.on_step_end)(losses, clock)
                step.assign_add(1)
                total += tf.reduce_sum(tf.convert_to_tensor(weighting.task_weights))
            return total
        return loop

    empty_call_us = _per_call_us(empty_call, iterations)
    ascent_call_us = _per_call_us(ascent_call, iterations)
    empty_iter_us = _per_iteration_us(empty_loop, iterations)
    ascent_iter_us = _per_iteration_us(ascent_loop, iterations)
    minmax_hook_us = _per_iteration_us(hook_loop(minmax_w), iterations)
    ew_hook_us = _per_iteration_us(hook_loop(ew_w), iterations)
    return {
        "num_tasks": num_tasks,
        "iterations": iterations,
        "empty_tf_function_call_us": empty_call_us,
        "ascent_tf_function_call_us": ascent_call_us,
        "ascent_call_minus_empty_call_us": ascent_call_us - empty_call_us,
        "empty_loop_iteration_us": empty_iter_us,
        "ascent_loop_iteration_us": ascent_iter_us,
        "ascent_in_loop_us": ascent_iter_us - empty_iter_us,
        "minmax_on_step_end_loop_iteration_us": minmax_hook_us,
        "ew_on_step_end_loop_iteration_us": ew_hook_us,
        "on_step_end_difference_us": minmax_hook_us - ew_hook_us,
    }


# --------------------------------------------------------------------------- #
# Environment and report
# --------------------------------------------------------------------------- #
def _device_of(model):
    devices = sorted({v.device for v in model.trainable_variables})
    return ", ".join(d for d in devices if d) or "(unplaced)"


def environment(args, models):
    import tf_keras

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "requested_device": args.device,
        "device": _device_of(models["minmax"]),
        "logical_devices": [d.name for d in tf.config.list_logical_devices()],
    }


def summary(result):
    cfg, env, t, a = result["config"], result["environment"], result["timing"], result["ascent"]
    p = result["paired_steps"]
    ms = t["median_step_ms"]

    def verdict(ratio):
        return f"meets the goal <= {GOAL}" if ratio <= GOAL else f"MISSES the goal <= {GOAL}"

    lines = [
        f"step time, {cfg['dataset']}: K={cfg['num_tasks']} tasks, batch {cfg['batch_size']}, "
        f"steps_per_execution={cfg['steps_per_execution']}; TF {env['tensorflow']} "
        f"(tf_keras {env['tf_keras']}), {env['cpu_count']} CPUs, device {env['device']}",
        f"interleaved blocks ({cfg['repeats']} x {cfg['steps']} steps per model):",
        f"  ew {ms['ew']:.3f} ms/step, minmax {ms['minmax']:.3f} ms/step (median over blocks)",
        f"  ratio minmax/ew = {t['ratio']:.4f} ({verdict(t['ratio'])}); extra "
        f"{1e3 * t['extra_ms_per_step']:.0f} us/step",
        f"  spread, ratios of the {cfg['repeats']} paired blocks: median "
        f"{t['paired_ratio_median']:.4f}, IQR {t['paired_ratio_iqr']:.4f} "
        f"[{t['paired_ratio_q1']:.4f}, {t['paired_ratio_q3']:.4f}]",
    ]
    if p:
        lines += [
            f"alternating single steps ({p['steps']} per model):",
            f"  ew {p['median_step_ms']['ew']:.3f} ms/step, minmax "
            f"{p['median_step_ms']['minmax']:.3f} ms/step (median)",
            f"  ratio of paired steps: median {p['paired_ratio_median']:.4f} "
            f"({verdict(p['paired_ratio_median'])}), IQR {p['paired_ratio_iqr']:.4f}; "
            f"ratio of medians {p['ratio_of_medians']:.4f}, of means {p['ratio_of_means']:.4f}",
        ]
    lines += [
        f"train graph ops: ew {t['graph_ops']['ew']}, minmax {t['graph_ops']['minmax']}",
        f"ascent alone (K={a['num_tasks']}): {a['ascent_in_loop_us']:.1f} us per update in a "
        f"compiled loop, {a['ascent_tf_function_call_us']:.0f} us per tf.function call "
        f"({a['empty_tf_function_call_us']:.0f} us for an empty one); on_step_end, minmax - ew: "
        f"{a['on_step_end_difference_us']:.1f} us",
    ]
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    # The input pipelines stay on the host, wherever the models run.
    iterators = {name: iter(make_dataset(args.dataset, args.batch_size, args.seed))
                 for name in ("minmax", "ew")}
    device_scope = tf.device(args.device) if args.device else contextlib.nullcontext()
    with device_scope:
        models = build_models(args)
        print(f"timing {args.repeats} x {args.steps} steps per model on {_device_of(models['ew'])} "
              f"(TF {tf.__version__}, {os.cpu_count()} CPUs)...", flush=True)
        timing = time_training(models, iterators, args)
        paired_steps = time_paired_steps(models, iterators, args) if args.paired_steps else None
        ascent = time_ascent(models["minmax"].num_tasks, args.ascent_iterations)
    result = {
        "benchmark": "step_time",
        "goal_ratio": GOAL,
        "meets_goal": timing["ratio"] <= GOAL,
        "meets_goal_paired_steps": (paired_steps["paired_ratio_median"] <= GOAL
                                    if paired_steps else None),
        "config": {
            "dataset": args.dataset,
            "tasks": list(models["minmax"].task_names),
            "num_tasks": models["minmax"].num_tasks,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "paired_steps": args.paired_steps,
            "seed": args.seed,
            "steps_per_execution": args.steps_per_execution,
            "optimizer": args.optimizer,
            "learning_rate": args.learning_rate,
            "method": "model.train_function(iterator), interleaved blocks",
            "models": {
                "minmax": "MinMaxMultiTask(base) (defaults: projected ascent, step_size=0.02, "
                          "gamma=5.0, update_every=1)",
                "ew": "MultiTaskModel(base_copy, weighting=EqualWeighting())",
            },
        },
        "environment": environment(args, models),
        "timing": timing,
        "paired_steps": paired_steps,
        "ascent": ascent,
    }
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(summary(result))
    print(f"results written to {args.out}")
    return result


if __name__ == "__main__":
    main()
