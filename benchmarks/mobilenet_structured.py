"""Channel-group pruning of MobileNetV2 and a small ResNet trunk: micro int8 bytes, TFLite Micro latency, Edge TPU rules.

Each trunk is a nested Functional model called as ``h = trunk(image)`` with
three Dense task heads on its pooled output (what a user builds from
`tf_keras.applications`):

- `mobilenetv2`: `tf_keras.applications.MobileNetV2(alpha=--alpha,
  weights=None, include_top=False, pooling="avg")` at `--size`×`--size`×3
  (default 0.35 and 96);
- `resnet`: a ResNet-style trunk at 32×32×3 (stem conv 16; three stages of
  two basic blocks, 16/32/64 filters, stride 2 with a 1×1 projection at
  stages 2 and 3; residual `Add`s).

Weights are seeded (Glorot kernels, BatchNorm statistics drawn at random so
that no channel is trivially zero); nothing is trained, since these figures
depend only on which channels are cut. The channel dependency groups
(`keras_minmax_mtl.sparsity.dependency.channel_groups`) are pruned by
`prune_groups(model, --fraction, ranking=--ranking)`: with `per_family`
(the default), in every family of groups (the groups of one set of producer
layers), the `--fraction` with the smallest ℓ2 norm over all their members;
with `global`, the `--fraction` of all prunable groups with the smallest ℓ2
norm over their family's mean, and with `global_cost` that per parameter
the group deletes (every family keeps at least one group, at most
`--max-fraction` of a family goes); the heads' units are model outputs and
never pruned. `--sweep F ...` also exports the shrunk `micro` file at other
fractions (same ranking, from the same dense weights) and prints its bytes
ratio, to find the fraction a bytes goal needs.

Three files are exported for `micro` (full int8, batch 1) by `export_tflite`:
the dense model, the pruned model unshrunk (`structured=False`, zeros kept)
and the pruned model shrunk (`structured="auto"`, `surgery.shrink`); the
shrunk model is also exported for `edgetpu` and its ops checked against the
compiler's published rules. TFLite Micro invoke latency: blocks of
`--invokes` invokes on one sample, alternating between the shrunk and
unshrunk files `--repeats` times in this process; the ratio is the median of
the block medians. Exactness: the largest |shrunk − pruned| Keras output on
16 random inputs.

    nice -n 10 env PYTHONPATH=. python benchmarks/mobilenet_structured.py
    nice -n 10 env PYTHONPATH=. python benchmarks/mobilenet_structured.py --ranking global_cost
"""
import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_minmax_mtl.core.backend import keras  # noqa: E402
from keras_minmax_mtl.export import runtimes  # noqa: E402
from keras_minmax_mtl.export.surgery import shrink  # noqa: E402
from keras_minmax_mtl.export.tflite import export_tflite  # noqa: E402
from keras_minmax_mtl.sparsity.dependency import (  # noqa: E402
    RANKINGS,
    channel_groups,
    group_families,
    prune_groups,
)

TASKS = {"left": 10, "right": 10, "parity": 2}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trunks", nargs="+", default=["mobilenetv2", "resnet"],
                   choices=["mobilenetv2", "resnet"])
    p.add_argument("--alpha", type=float, default=0.35)
    p.add_argument("--size", type=int, default=96, help="MobileNetV2 input size (default 96)")
    p.add_argument("--fraction", type=float, default=0.5,
                   help="fraction of the groups removed (of every family with --ranking "
                        "per_family, of all prunable groups with a global ranking; default 0.5)")
    p.add_argument("--ranking", choices=RANKINGS, default="per_family",
                   help="prune_groups' ranking (default per_family)")
    p.add_argument("--max-fraction", type=float, default=None,
                   help="with a global ranking, the largest fraction of one family removed "
                        "(default: all but one group)")
    p.add_argument("--sweep", type=float, nargs="*", default=[],
                   help="other fractions at which only the shrunk micro file is exported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=16,
                   help="representative / verification samples per export (default 16)")
    p.add_argument("--invokes", type=int, default=3, help="timed invokes per block")
    p.add_argument("--repeats", type=int, default=5, help="blocks per file")
    p.add_argument("--work", type=pathlib.Path,
                   default=pathlib.Path("benchmarks/results/mobilenet_structured"))
    p.add_argument("--out", type=pathlib.Path,
                   default=pathlib.Path("benchmarks/results/mobilenet_structured.json"))
    args = p.parse_args(argv)
    if args.max_fraction is not None and args.ranking == "per_family":
        p.error("argument --max-fraction: needs --ranking global or global_cost. Received: "
                f"--ranking {args.ranking}")
    for name, value in [("--fraction", args.fraction)] + [("--sweep", f) for f in args.sweep]:
        if not 0.0 <= value < 1.0:
            p.error(f"argument {name}: must be in [0, 1). Received: {value}")
    return args


def mobilenet_trunk(alpha, size):
    return keras.applications.MobileNetV2(alpha=alpha, weights=None, include_top=False,
                                          pooling="avg", input_shape=(size, size, 3))


def resnet_trunk():
    def conv_bn(x, filters, kernel, strides, name, relu=True):
        x = keras.layers.Conv2D(filters, kernel, strides=strides, padding="same",
                                use_bias=False, name=name)(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x

    inputs = keras.Input((32, 32, 3))
    h = conv_bn(inputs, 16, 3, 1, "stem")
    for stage, filters in enumerate((16, 32, 64), start=1):
        for block in (1, 2):
            name = f"s{stage}b{block}"
            strides = 2 if stage > 1 and block == 1 else 1
            shortcut = h
            if strides != 1 or int(h.shape[-1]) != filters:
                shortcut = conv_bn(h, filters, 1, strides, f"{name}_proj", relu=False)
            x = conv_bn(h, filters, 3, strides, f"{name}_a")
            x = conv_bn(x, filters, 3, 1, f"{name}_b", relu=False)
            h = keras.layers.ReLU(name=f"{name}_out")(keras.layers.Add(name=f"{name}_add")(
                [shortcut, x]))
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    return keras.Model(inputs, h, name="resnet_trunk")


def multitask(trunk, seed):
    shape = trunk.input_shape[1:]
    image = keras.Input(shape, name="image")
    h = trunk(image)
    outputs = [keras.layers.Dense(n, name=task)(h) for task, n in TASKS.items()]
    model = keras.Model(image, outputs, name=f"{trunk.name}_mtl")
    rng = np.random.default_rng(seed)
    for variable in model.weights:  # BatchNorm statistics drawn at random (nothing trained)
        name = variable.name
        if "moving_variance" in name:
            variable.assign(rng.uniform(0.5, 2.0, variable.shape).astype(np.float32))
        elif "gamma" in name:
            variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype(np.float32))
        elif "beta" in name or "moving_mean" in name:
            variable.assign(rng.normal(0.0, 0.1, variable.shape).astype(np.float32))
    return model


def run_trunk(name, model, args):
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    shape = model.input_shape[1:]
    rng = np.random.default_rng(args.seed + 1)
    x = rng.uniform(-1.0, 1.0, size=(args.samples, *shape)).astype(np.float32)
    dense = export_tflite(model, work / "dense.tflite", target="micro", representative_data=x,
                          num_samples=args.samples)
    dense_weights = model.get_weights()
    start = time.perf_counter()
    groups = channel_groups(model)
    families = group_families(groups)
    removed = prune_groups(model, args.fraction, groups=groups, ranking=args.ranking,
                           max_fraction=args.max_fraction)
    group_seconds = time.perf_counter() - start
    lost = {f: len(set(m) & set(removed)) / len(m) for f, m in families.items()}
    left_one = sorted("+".join(f) for f, m in families.items()
                      if len(set(m) - set(removed)) == 1 and len(m) > 1)
    start = time.perf_counter()
    small = shrink(model)
    shrink_seconds = time.perf_counter() - start
    probe = rng.uniform(-1.0, 1.0, size=(16, *shape)).astype(np.float32)
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(
        tf.nest.flatten(model(probe, training=False)),
        tf.nest.flatten(small(probe, training=False))))
    reports = {"unshrunk": export_tflite(model, work / "unshrunk.tflite", target="micro",
                                         representative_data=x, num_samples=args.samples,
                                         structured=False),
               "shrunk": export_tflite(model, work / "shrunk.tflite", target="micro",
                                       representative_data=x, num_samples=args.samples,
                                       structured="auto")}
    edgetpu = export_tflite(model, work / "shrunk_edgetpu.tflite", target="edgetpu",
                            representative_data=x, num_samples=args.samples)
    rules = edgetpu["edgetpu"]["rules"]
    contents = {k: (work / f"{k}.tflite").read_bytes() for k in reports}
    times = {k: [] for k in contents}
    for _ in range(args.repeats):
        for k, content in contents.items():
            times[k].append(runtimes.micro_invoke_seconds(content, probe[0],
                                                          repeats=args.invokes, warmup=1))
    median = {k: float(np.median(v)) for k, v in times.items()}
    sweep = {}
    for fraction in args.sweep:
        model.set_weights(dense_weights)
        count = len(prune_groups(model, fraction, groups=groups, ranking=args.ranking,
                                 max_fraction=args.max_fraction))
        report = export_tflite(model, work / f"shrunk_{fraction}.tflite", target="micro",
                               representative_data=x, num_samples=args.samples,
                               structured="auto")
        sweep[str(fraction)] = {"removed_groups": count, "micro_bytes": report["bytes"],
                                "micro_bytes_ratio": report["bytes"] / dense["bytes"]}
    prunable = sum(len(m) for m in families.values())
    result = {
        "groups": len(groups), "prunable_groups": prunable, "families": len(families),
        "removed_groups": len(removed),
        "removed_fraction_of_prunable": len(removed) / prunable,
        "removed_fraction_of_all": len(removed) / len(groups),
        "ranking": args.ranking, "max_fraction": args.max_fraction,
        "family_removed_fraction": {"+".join(f): v for f, v in lost.items()},
        "families_left_with_one_group": left_one,
        "params": {"dense": model.count_params(), "shrunk": small.count_params()},
        "micro_bytes": {"dense": dense["bytes"], "unshrunk": reports["unshrunk"]["bytes"],
                        "shrunk": reports["shrunk"]["bytes"]},
        "micro_bytes_ratio": reports["shrunk"]["bytes"] / dense["bytes"],
        "micro_invoke_seconds": median, "block_medians": times,
        "latency_ratio": median["shrunk"] / median["unshrunk"],
        "edgetpu_all_ops_map": rules["all_on_edgetpu"],
        "edgetpu_cpu_ops": [op["op"] for op in rules["cpu_ops"]],
        "edgetpu_bytes": edgetpu["bytes"],
        "shrink_max_abs_difference": difference,
        "export_keras_max_abs_difference":
            reports["shrunk"]["structured"]["keras_max_abs_difference"],
        "min_top1_agreement": {k: min(t["top1_agreement"]
                                      for t in r["verification"]["tasks"].values())
                               for k, r in {**reports, "dense": dense}.items()},
        "seconds": {"groups_and_prune": group_seconds, "shrink": shrink_seconds},
        "sweep": sweep,
    }
    print(f"\n{name}: {model.count_params()} parameters, input {shape}, heads "
          f"{list(TASKS)}")
    print(f"  channel groups: {len(groups)} ({prunable} prunable in {len(families)} families; "
          f"the rest are the heads' outputs); removed {len(removed)} = "
          f"{result['removed_fraction_of_prunable']:.3f} of the prunable groups "
          f"({result['removed_fraction_of_all']:.3f} of all)")
    low, high = min(lost, key=lost.get), max(lost, key=lost.get)
    print(f"  ranking {args.ranking} (max_fraction {args.max_fraction}): a family loses "
          f"{lost[low]:.3f} ({'+'.join(low)}) to {lost[high]:.3f} ({'+'.join(high)}) of its "
          f"groups; {len(left_one)} of {len(families)} families keep one group")
    print(f"  parameters {model.count_params()} -> {small.count_params()}; groups + prune "
          f"{group_seconds:.1f} s, shrink {shrink_seconds:.1f} s")
    print(f"  micro int8 bytes: dense {dense['bytes']}, pruned unshrunk "
          f"{reports['unshrunk']['bytes']}, shrunk {reports['shrunk']['bytes']}: shrunk / dense "
          f"= {result['micro_bytes_ratio']:.3f}")
    print(f"  TFLite Micro invoke: unshrunk {1e3 * median['unshrunk']:.1f} ms, shrunk "
          f"{1e3 * median['shrunk']:.1f} ms: shrunk / unshrunk = "
          f"{result['latency_ratio']:.3f} ({args.repeats} alternating blocks of "
          f"{args.invokes})")
    print(f"  Edge TPU rules: {'all ops map' if rules['all_on_edgetpu'] else 'CPU ops: ' + str(result['edgetpu_cpu_ops'])}"
          f" ({edgetpu['bytes']} bytes)")
    print(f"  shrink exactness: max |shrunk - pruned| = {difference:.3g} (Keras, 16 random "
          f"inputs); min top-1 agreement file vs Keras: {result['min_top1_agreement']}")
    for fraction, row in sweep.items():
        print(f"  sweep: fraction {fraction}, {row['removed_groups']} groups removed: micro "
              f"int8 shrunk {row['micro_bytes']} bytes = {row['micro_bytes_ratio']:.3f} of dense")
    return result


def main(argv=None):
    args = parse(argv)
    keras.utils.set_random_seed(args.seed)
    results = {"arguments": {k: str(v) for k, v in vars(args).items()}}
    for name in args.trunks:
        trunk = (mobilenet_trunk(args.alpha, args.size) if name == "mobilenetv2"
                 else resnet_trunk())
        results[name] = run_trunk(name, multitask(trunk, args.seed), args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    main()
