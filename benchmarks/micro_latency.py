"""TFLite Micro int8 file size and invoke latency of a structured-pruned multi_digits model, shrunk vs dense.

A `multi_digits_network` (optionally trained for `--epochs`) has `--fraction`
of the units of every hidden layer removed by hand: the kernel columns /
filters with the smallest L1 norms in `trunk_conv*`, `trunk_dense` and
`*_hidden` are set to zero, with their biases (what filter pruning leaves).
The model is then exported for `micro` (full int8, batch 1) twice with
`export_tflite`: `structured=False` (the zeros stay in a file of the original
shape) and `structured="auto"` (`keras_minmax_mtl.export.surgery.shrink` removes the
units first). Both files are verified in TFLite Micro against the same Keras
model. Latency: `runtimes.micro_invoke_seconds` on one test sample, blocks of
`--invokes` invokes alternating between the two files `--repeats` times, in
this process; the ratio is median(shrunk) / median(dense) of the block medians.

    PYTHONPATH=. python benchmarks/micro_latency.py
"""
import argparse
import json
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from keras_minmax_mtl import data as datasets  # noqa: E402
from keras_minmax_mtl.data import networks
from keras_minmax_mtl.export import runtimes
from keras_minmax_mtl.export.tflite import export_tflite  # noqa: E402


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fraction", type=float, default=0.5,
                   help="fraction of the units of each hidden layer to remove (default 0.5)")
    p.add_argument("--epochs", type=int, default=0, help="dense training epochs before (default 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=256, help="representative training samples")
    p.add_argument("--invokes", type=int, default=200, help="timed invokes per block")
    p.add_argument("--repeats", type=int, default=11, help="blocks per file")
    p.add_argument("--work", type=pathlib.Path, default=pathlib.Path("benchmarks/results/micro"))
    p.add_argument("--out", type=pathlib.Path,
                   default=pathlib.Path("benchmarks/results/micro_latency.json"))
    return p.parse_args()


def remove_units_by_hand(model, fraction):
    """Zeroes the `fraction` smallest-L1 kernel columns (and biases) of every hidden layer."""
    removed = {}
    for layer in model.layers:
        name = layer.name
        if not (name.startswith("trunk_conv") or name == "trunk_dense"
                or name.endswith("_hidden")):
            continue
        kernel, bias = layer.get_weights()
        norms = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)
        units = np.sort(np.argsort(norms, kind="stable")[:int(fraction * kernel.shape[-1])])
        kernel[..., units] = 0
        bias[units] = 0
        layer.set_weights([kernel, bias])
        removed[name] = len(units)
    return removed


def main():
    args = parse()
    model = networks.multi_digits_network(seed=args.seed)
    x_train, y_train = datasets.load_multi_digits("train", seed=args.seed)
    x_test, _ = datasets.load_multi_digits("test", seed=args.seed, num_examples=64)
    if args.epochs:
        model.compile(optimizer="adam",
                      loss={t: "sparse_categorical_crossentropy" for t in model.output_names})
        model.fit(x_train, y_train, epochs=args.epochs, batch_size=64, verbose=0)
    removed = remove_units_by_hand(model, args.fraction)
    x = x_train[:args.samples]
    args.work.mkdir(parents=True, exist_ok=True)
    reports = {}
    for name, structured in (("dense", False), ("shrunk", "auto")):
        reports[name] = export_tflite(model, args.work / f"{name}.tflite", target="micro",
                                      representative_data=x, structured=structured)
    contents = {name: (args.work / f"{name}.tflite").read_bytes() for name in reports}
    times = {name: [] for name in contents}
    for _ in range(args.repeats):
        for name, content in contents.items():
            times[name].append(runtimes.micro_invoke_seconds(content, x_test[0],
                                                             repeats=args.invokes, warmup=5))
    median = {name: float(np.median(t)) for name, t in times.items()}
    structured = reports["shrunk"]["structured"]
    print(f"multi_digits_network(seed={args.seed}), {args.epochs} training epochs, "
          f"units removed by hand: {removed}")
    print(f"Keras weights: {structured['params']['dense']} -> {structured['params']['shrunk']} "
          f"parameters; int8 weight bytes {structured['int8_bytes']['dense']} -> "
          f"{structured['int8_bytes']['shrunk']}")
    print(f"TFLite Micro, int8, batch 1; {args.repeats} alternating blocks of {args.invokes} "
          "invokes")
    print(f"{'file':<8}{'bytes':>10}{'arena bytes':>13}{'median us/invoke':>18}"
          f"{'min top-1 agreement':>21}")
    result = {"removed_by_hand": removed, "structured": structured, "files": {}}
    for name, report in reports.items():
        agreement = min(t["top1_agreement"] for t in report["verification"]["tasks"].values())
        print(f"{name:<8}{report['bytes']:>10}{report['arena_bytes']:>13}"
              f"{1e6 * median[name]:>18.1f}{agreement:>21.4f}")
        result["files"][name] = {"bytes": report["bytes"], "arena_bytes": report["arena_bytes"],
                                 "median_seconds_per_invoke": median[name],
                                 "block_medians": times[name], "min_top1_agreement": agreement}
    result["bytes_ratio"] = reports["shrunk"]["bytes"] / reports["dense"]["bytes"]
    result["latency_ratio"] = median["shrunk"] / median["dense"]
    print(f"shrunk / dense: bytes {result['bytes_ratio']:.3f}, invoke latency "
          f"{result['latency_ratio']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
