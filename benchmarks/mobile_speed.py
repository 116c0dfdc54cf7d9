r"""LiteRT latency of sparse and structured-pruned mobile files against the dense file, in one process.

For each model of `--models`, every compression option is exported with
`export_tflite(target="mobile")` (verified in LiteRT against its Keras model)
and timed with batch-1 invokes, blocks of `--invokes` alternating between all
the files `--repeats` times, in this process; the ratio is the median
per-sample CPU time of this process (`time.process_time`; LiteRT runs one
thread, so this leaves out the time other jobs of a busy machine held the
core) over the dense float file's (with XNNPack, as a phone runs it). Wall
times are printed beside them. Each file is opened with `runtimes.load_interpreter`'s rule (LiteRT's
default delegate, XNNPack, unless a weight is stored sparse in int8); the
rows `... no XNNPack` open a file without it (what `load_interpreter` did for
every sparse file before).

Models (untrained weights: latency depends on the shapes and the zeros, not
on the values; the masks are those of one tfmot magnitude-pruning step,
computed in NumPy, see `pruned`):

- `mnv2_app`: `tf_keras.applications.MobileNetV2(alpha=0.35, weights=None,
  input_shape=(96, 96, 3), include_top=False, pooling="avg")` + 2 Dense heads;
- `mnv2_xnnpack`: the same network with the padding XNNPack's sparse path
  takes (`ZeroPadding2D(1)` + `"valid"` stride-2 convolutions,
  `GlobalAveragePooling2D(keepdims=True)`; `mnv2_xnnpack` below);
- `multi_digits`: `multi_digits_network(seed=0)` (mostly Dense weights).

Options: `unstructured` (every trunk/task-hidden Dense and Conv2D kernel,
`MultiTaskPruningPolicy`), `1x1` (the 1×1 convolutions only:
`XNNPackSparsePolicy` where the graph allows, else the same layers by
`exclude`), `block_4x1` / `block_1x4` / `block_16x1` (Dense kernels only,
tfmot `block_size`; Keras kernels are (inputs, units), TFLite's
(units, inputs), so Keras (4, 1) is TFLite's 1×4 block), all at
`--sparsity`, stored sparse (`EXPERIMENTAL_SPARSITY`); and `structured_50`
(multi_digits: half the units of every hidden layer removed, as
`benchmarks/micro_latency.py` does; exported with `structured=True`, the
shrunk dense model). `--int8` adds full-int8 rows for multi_digits.

`--accuracy-seeds S ...` measures instead the accuracy of the fastest option,
structured removal, on multi_digits: per seed, a dense min-max run and a
min-max run of reweighted ℓ1 in filter mode with half of every hidden layer's
units removed (`filter_l1` of `benchmarks/_runs.py`, `--epochs` epochs each),
both exported for mobile (float; the filter run with `structured=True`),
each file scored on the test split in LiteRT, and the two trained files
timed against each other as above.

    PYTHONPATH=. nice -n 10 python benchmarks/mobile_speed.py --int8
    PYTHONPATH=. nice -n 10 python benchmarks/mobile_speed.py --accuracy-seeds 0 1
"""
import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from keras_minmax_mtl.core.backend import keras  # noqa: E402
from keras_minmax_mtl.data.networks import multi_digits_network  # noqa: E402
from keras_minmax_mtl.export import runtimes  # noqa: E402
from keras_minmax_mtl.export.tflite import export_tflite  # noqa: E402
from keras_minmax_mtl.sparsity.policy import (MultiTaskPruningPolicy,  # noqa: E402
                                              XNNPackSparsePolicy, is_one_by_one_conv)
from keras_minmax_mtl.sparsity.pruning import sparsity_report  # noqa: E402
from micro_latency import remove_units_by_hand  # noqa: E402

MODELS = ("multi_digits", "mnv2_app", "mnv2_xnnpack")


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--invokes", type=int, default=50, help="timed invokes per block")
    p.add_argument("--repeats", type=int, default=9, help="blocks per file")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--int8", action="store_true", help="add full-int8 rows for multi_digits")
    p.add_argument("--accuracy-seeds", type=int, nargs="+", default=None,
                   help="measure the accuracy of structured removal on multi_digits instead")
    p.add_argument("--epochs", type=int, default=20, help="epochs of each accuracy run")
    p.add_argument("--work", type=pathlib.Path, default=pathlib.Path("benchmarks/results/mobile"))
    p.add_argument("--out", type=pathlib.Path,
                   default=pathlib.Path("benchmarks/results/mobile_speed.json"))
    return p.parse_args()


def _divisible(v, d=8):
    n = max(d, int(v + d / 2) // d * d)
    return n + d if n < 0.9 * v else n


def mnv2_xnnpack(alpha=0.35, input_shape=(96, 96, 3), heads=(("a", 10), ("b", 5))):
    """MobileNetV2 (Sandler et al. 2018) with symmetric padding, the layout XNNPack's sparse path takes.

    The blocks, widths (`alpha`), BatchNorm and ReLU6 of
    `tf_keras.applications.MobileNetV2`, but every stride-2 convolution is
    `ZeroPadding2D(1)` + `padding="valid"` (tf_keras pads them (0, 1), which
    XNNPack runs dense), and the pooling keeps its dimensions
    (`GlobalAveragePooling2D(keepdims=True)`, then `Flatten`) before the heads.
    """
    layers = keras.layers
    inputs = keras.Input(input_shape, name="image")
    x = layers.ZeroPadding2D(1, name="stem_pad")(inputs)
    x = layers.Conv2D(_divisible(32 * alpha), 3, strides=2, padding="valid", use_bias=False,
                      name="stem")(x)
    x = layers.ReLU(6.0, name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
    channels, block = x.shape[-1], 0
    for expansion, width, repeats, first_stride in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2),
                                                    (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                                                    (6, 320, 1, 1)):
        for i in range(repeats):
            stride, out, p = first_stride if i == 0 else 1, _divisible(width * alpha), f"block{block}_"
            y = x
            if expansion != 1:
                y = layers.Conv2D(channels * expansion, 1, use_bias=False, name=p + "expand")(y)
                y = layers.ReLU(6.0, name=p + "expand_relu")(
                    layers.BatchNormalization(name=p + "expand_bn")(y))
            if stride == 2:
                y = layers.ZeroPadding2D(1, name=p + "pad")(y)
                y = layers.DepthwiseConv2D(3, strides=2, padding="valid", use_bias=False,
                                           name=p + "depthwise")(y)
            else:
                y = layers.DepthwiseConv2D(3, padding="same", use_bias=False,
                                           name=p + "depthwise")(y)
            y = layers.ReLU(6.0, name=p + "depthwise_relu")(
                layers.BatchNormalization(name=p + "depthwise_bn")(y))
            y = layers.Conv2D(out, 1, use_bias=False, name=p + "project")(y)
            y = layers.BatchNormalization(name=p + "project_bn")(y)
            if stride == 1 and channels == out:
                y = layers.Add(name=p + "add")([x, y])
            x, channels, block = y, out, block + 1
    x = layers.Conv2D(1280, 1, use_bias=False, name="last_conv")(x)
    x = layers.ReLU(6.0, name="last_relu")(layers.BatchNormalization(name="last_bn")(x))
    x = layers.Flatten(name="flatten")(layers.GlobalAveragePooling2D(keepdims=True,
                                                                     name="pool")(x))
    return keras.Model(inputs, [layers.Dense(n, name=t)(x) for t, n in heads],
                       name="mnv2_xnnpack")


def mnv2_app():
    inputs = keras.Input((96, 96, 3), name="image")
    trunk = keras.applications.MobileNetV2(alpha=0.35, weights=None, input_tensor=inputs,
                                           include_top=False, pooling="avg")
    return keras.Model(inputs, [keras.layers.Dense(10, name="a")(trunk.output),
                                keras.layers.Dense(5, name="b")(trunk.output)], name="mnv2_app")


BUILDERS = {"mnv2_app": mnv2_app, "mnv2_xnnpack": mnv2_xnnpack,
            "multi_digits": lambda: multi_digits_network(seed=0)}


def pruned(base, policy, sparsity, block_size=(1, 1)):
    """`base` with the layers `policy` prunes masked to `sparsity` by magnitude, as tfmot does.

    tfmot's `ConstantSparsity` step, without its training graph: per layer,
    the `sparsity` fraction of the kernel with the smallest |w| (with
    `block_size`, of the blocks with the smallest mean |w|, tfmot's "AVG"
    block pooling of a 2-D kernel) is set to zero.
    """
    policy.ensure_model_supports_pruning(base)
    names = set(policy.prunable_layer_names(base))
    for layer in base.layers:
        if layer.name not in names:
            continue
        weights = layer.get_weights()
        kernel = weights[0]
        rows, cols = block_size
        if (rows, cols) == (1, 1):
            scores, shape = np.abs(kernel), kernel.shape
        else:
            shape = (kernel.shape[0] // rows, rows, kernel.shape[1] // cols, cols)
            scores = np.abs(kernel).reshape(shape).mean(axis=(1, 3))
        keep = np.ones(scores.size, bool)
        keep[np.argsort(scores, axis=None, kind="stable")[:int(round(sparsity * scores.size))]] = 0
        keep = keep.reshape(scores.shape)
        if (rows, cols) != (1, 1):
            keep = np.repeat(np.repeat(keep, rows, axis=0), cols, axis=1)
        weights[0] = kernel * keep
        layer.set_weights(weights)
    return base


def options(name, sparsity):
    """`{option: (Keras model, export_tflite keyword arguments)}` for model `name`."""
    base = BUILDERS[name]()
    found = {"dense": (base, {"sparse_storage": False})}
    sparse = {"sparse_storage": True}
    layers = [layer for layer in base.layers if layer.weights]
    found["unstructured"] = (pruned(BUILDERS[name](), MultiTaskPruningPolicy(), sparsity), sparse)
    if any(is_one_by_one_conv(layer) for layer in layers):
        if name == "mnv2_xnnpack":
            policy = XNNPackSparsePolicy()
        else:  # XNNPackSparsePolicy refuses this graph: the same layers, named by `exclude`
            policy = MultiTaskPruningPolicy(exclude=[layer.name for layer in layers
                                                     if not is_one_by_one_conv(layer)])
        found["1x1"] = (pruned(BUILDERS[name](), policy, sparsity), sparse)
    if name == "multi_digits":
        no_convs = [layer.name for layer in layers if isinstance(layer, keras.layers.Conv2D)]
        for block in ((4, 1), (1, 4), (16, 1)):
            found[f"block_{block[0]}x{block[1]}"] = (
                pruned(BUILDERS[name](), MultiTaskPruningPolicy(exclude=no_convs), sparsity,
                       block_size=block), sparse)
        half = BUILDERS[name]()
        remove_units_by_hand(half, 0.5)
        found["structured_50"] = (half, {"structured": True, "sparse_storage": False})
    return found


def per_sample_seconds(interpreter, value, invokes):
    """`(wall, CPU)` seconds per invoke: `time.perf_counter` and this process's `time.process_time`.

    With one LiteRT thread the process's CPU time is the time the invokes
    computed, without the time other processes of a busy machine held the
    core; the ratios use it.
    """
    runner = interpreter.get_signature_runner()
    name = next(iter(runner.get_input_details()))
    runner(**{name: value})  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(invokes):
        runner(**{name: value})
    return (time.perf_counter() - wall) / invokes, (time.process_time() - cpu) / invokes


def feed(interpreter, sample):
    detail = next(iter(interpreter.get_signature_runner().get_input_details().values()))
    scale, zero = detail["quantization"]
    value = sample if not scale else np.clip(np.round(sample / scale + zero), -128, 127)
    return value.astype(detail["dtype"])


def measure(name, args):
    shape = tuple(BUILDERS[name]().input_shape[1:])
    rng = np.random.default_rng(0)
    x = rng.random((32,) + shape, dtype=np.float32)
    found = options(name, args.sparsity)
    work = args.work / name
    files, rows = {}, {}
    quantizations = ["float"] + (["int8"] if args.int8 and name == "multi_digits" else [])
    for quantization in quantizations:
        for option, (model, kwargs) in found.items():
            if quantization == "int8" and option not in ("dense", "unstructured", "block_16x1",
                                                         "structured_50"):
                continue
            label = option if quantization == "float" else f"{option} int8"
            path = work / f"{label.replace(' ', '_')}.tflite"
            report = export_tflite(model, path, target="mobile", quantization=quantization,
                                   representative_data=x, num_samples=len(x), **kwargs)
            files[label] = path
            rows[label] = {"bytes": report["bytes"], "storage": report["storage"],
                           "quantization": quantization,
                           "keras_sparsity": sparsity_report(model)["overall"]["sparsity"],
                           "ops": report["ops"],
                           "structured_applied": report["structured"]["applied"]}
    interpreters = {}
    for label, path in files.items():
        interpreters[label] = runtimes.load_interpreter(path, num_threads=args.threads)
        if label in ("dense", "unstructured", "1x1", "block_4x1", "dense int8"):
            interpreters[f"{label} no XNNPack"] = runtimes.load_interpreter(
                path, num_threads=args.threads, default_delegates=False)
    sample = rng.random((1,) + shape, dtype=np.float32)
    values = {label: feed(it, sample) for label, it in interpreters.items()}
    walls, times = {label: [] for label in interpreters}, {label: [] for label in interpreters}
    for _ in range(args.repeats):
        for label, interpreter in interpreters.items():
            wall, cpu = per_sample_seconds(interpreter, values[label], args.invokes)
            walls[label].append(wall)
            times[label].append(cpu)
    median = {label: float(np.median(t)) for label, t in times.items()}
    wall_median = {label: float(np.median(t)) for label, t in walls.items()}
    print(f"\n{name}: LiteRT ({runtimes.litert_package()}), {args.threads} thread(s), batch 1, "
          f"{args.repeats} alternating blocks of {args.invokes} invokes")
    print(f"{'file':<26}{'bytes':>9}{'storage':>8}{'zeros':>7}{'XNNPack':>9}"
          f"{'CPU us':>9}{'/ dense':>9}{'wall us':>9}{'/ dense':>9}")
    result = {}
    for label, interpreter in interpreters.items():
        row = rows[label.replace(" no XNNPack", "")]
        xnnpack = runtimes.runs_in_xnnpack(interpreter)
        ratio = median[label] / median["dense"]
        print(f"{label:<26}{row['bytes']:>9}{row['storage']:>8}{row['keras_sparsity']:>7.2f}"
              f"{str(xnnpack):>9}{1e6 * median[label]:>9.1f}{ratio:>9.3f}"
              f"{1e6 * wall_median[label]:>9.1f}{wall_median[label] / wall_median['dense']:>9.3f}")
        result[label] = {**row, "xnnpack": xnnpack, "median_cpu_seconds_per_sample": median[label],
                         "ratio_to_dense": ratio, "block_cpu_seconds_per_sample": times[label],
                         "median_wall_seconds_per_sample": wall_median[label],
                         "wall_ratio_to_dense": wall_median[label] / wall_median["dense"],
                         "block_wall_seconds_per_sample": walls[label]}
    return result


def time_files(paths, sample, args):
    """Median CPU seconds per invoke of each file, blocks alternating between them."""
    interpreters = {k: runtimes.load_interpreter(p, num_threads=args.threads)
                    for k, p in paths.items()}
    values = {k: feed(it, sample) for k, it in interpreters.items()}
    times = {k: [] for k in interpreters}
    for _ in range(args.repeats):
        for k, it in interpreters.items():
            times[k].append(per_sample_seconds(it, values[k], args.invokes)[1])
    return {k: float(np.median(t)) for k, t in times.items()}


def accuracy(args):
    """Dense vs filter-pruned (half the units removed, shrunk) min-max runs on multi_digits."""
    import _runs

    rows = []
    for seed in args.accuracy_seeds:
        data = _runs.DATASETS["multi_digits"].splits(seed, 64, None)
        x_train, _ = _runs.split_arrays(data["train"])
        x_test, y_test = _runs.split_arrays(data["test"])
        paths, row = {}, {"seed": seed}
        for compression in ("dense", "filter_l1"):
            config = {"dataset": "multi_digits", "weighting": "minmax", "compression": compression,
                      "seed": seed, "epochs": args.epochs,
                      "sparsity": None if compression == "dense" else 0.5, "batch_size": 64,
                      "train_examples": None, "learning_rate": 1e-3}
            result, model = _runs.train_run(config, return_model=True)
            path = args.work / "accuracy" / f"{compression}_seed{seed}.tflite"
            report = export_tflite(model, path, target="mobile",
                                   representative_data=x_train[:256],
                                   structured=compression != "dense", sparse_storage=False)
            outputs = runtimes.run_litert(path, x_test)
            tasks = {t: float(np.mean(np.argmax(outputs[t], -1) == y_test[t])) for t in y_test}
            paths[compression] = path
            row[compression] = {"file_tasks": tasks, "file_worst": min(tasks.values()),
                                "file_mean": float(np.mean(list(tasks.values()))),
                                "keras_test": result["test"], "bytes": report["bytes"],
                                "structured": report["structured"].get("params")}
        cpu = time_files(paths, x_test[:1], args)
        row["latency_ratio"] = cpu["filter_l1"] / cpu["dense"]
        row["cpu_seconds"] = cpu
        rows.append(row)
        print(f"seed {seed}: dense file worst {row['dense']['file_worst']:.4f} mean "
              f"{row['dense']['file_mean']:.4f}; structured_50 file worst "
              f"{row['filter_l1']['file_worst']:.4f} mean {row['filter_l1']['file_mean']:.4f}; "
              f"bytes {row['filter_l1']['bytes']}/{row['dense']['bytes']}; "
              f"CPU latency ratio {row['latency_ratio']:.3f}", flush=True)
    for key in ("file_worst", "file_mean"):
        for compression in ("dense", "filter_l1"):
            values = [r[compression][key] for r in rows]
            print(f"{compression:<10}{key:<11}{np.mean(values):.4f} ± {np.std(values):.4f}")
    ratios = [r["latency_ratio"] for r in rows]
    print(f"latency structured_50 / dense (CPU, trained files): {np.mean(ratios):.3f} ± "
          f"{np.std(ratios):.3f}")
    return rows


def main():
    args = parse()
    if args.accuracy_seeds:
        rows = accuracy(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"config": {k: str(v) if isinstance(v, pathlib.Path)
                                                   else v for k, v in vars(args).items()},
                                        "accuracy": rows}, indent=2))
        print(f"wrote {args.out}")
        return
    results = {"config": {k: str(v) if isinstance(v, pathlib.Path) else v
                          for k, v in vars(args).items()}, "models": {}}
    for name in args.models:
        results["models"][name] = measure(name, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
