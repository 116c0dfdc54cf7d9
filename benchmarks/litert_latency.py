"""LiteRT per-sample latency of a sparse `.tflite` file relative to a dense one, in one process.

Both files are opened with `keras_minmax_mtl.export.runtimes.load_interpreter`
(with the default XNNPack delegate, as a phone app would run them, except a
file with int8 weights stored sparse, which XNNPack fails to prepare) and
invoked on one sample at a time. Blocks of `--invokes` calls alternate between the two
files, `--repeats` times; the ratio is median(sparse) / median(dense) of the
per-sample times. The row `dense_no_xnnpack` opens the dense file without
the default delegate too, to separate the sparse kernels from the delegate.

    PYTHONPATH=. python benchmarks/litert_latency.py \
        --dense benchmarks/results/export/dense_float.tflite \
        --sparse benchmarks/results/export/mobile_float.tflite
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

from keras_minmax_mtl.export import runtimes  # noqa: E402


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dense", type=pathlib.Path,
                   default=pathlib.Path("benchmarks/results/export/dense_float.tflite"))
    p.add_argument("--sparse", type=pathlib.Path, action="append", default=None,
                   help="sparse file(s); default: mobile_float and mobile_int8 beside --dense")
    p.add_argument("--invokes", type=int, default=200)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=pathlib.Path,
                   default=pathlib.Path("benchmarks/results/litert_latency.json"))
    return p.parse_args()


def per_sample_seconds(interpreter, sample, invokes):
    runner = interpreter.get_signature_runner()
    name = next(iter(runner.get_input_details()))
    detail = runner.get_input_details()[name]
    scale, zero = detail["quantization"]
    value = sample if not scale else np.clip(np.round(sample / scale + zero), -128, 127)
    value = value.astype(detail["dtype"])
    runner(**{name: value})  # warm-up
    start = time.perf_counter()
    for _ in range(invokes):
        runner(**{name: value})
    return (time.perf_counter() - start) / invokes


def main():
    args = parse()
    sparse_files = args.sparse or [args.dense.parent / "mobile_float.tflite",
                                   args.dense.parent / "mobile_int8.tflite"]
    interpreters = {"dense": runtimes.load_interpreter(args.dense, num_threads=args.threads),
                    "dense_no_xnnpack": runtimes.load_interpreter(
                        args.dense, num_threads=args.threads, default_delegates=False)}
    for path in sparse_files:
        interpreters[path.stem] = runtimes.load_interpreter(path, num_threads=args.threads)
    shape = [int(s) for s in interpreters["dense"].get_input_details()[0]["shape"]]
    sample = np.random.default_rng(0).random([1] + shape[1:]).astype(np.float32)
    times = {name: [] for name in interpreters}
    for _ in range(args.repeats):
        for name, interpreter in interpreters.items():
            times[name].append(per_sample_seconds(interpreter, sample, args.invokes))
    median = {name: float(np.median(t)) for name, t in times.items()}
    print(f"LiteRT ({runtimes.litert_package()}), {args.threads} thread(s), batch 1, "
          f"{args.repeats} alternating blocks of {args.invokes} invokes")
    print(f"{'file':<16}{'sparse storage':>15}{'median us/sample':>18}{'ratio to dense':>16}")
    result = {}
    rows = [("dense", args.dense), ("dense_no_xnnpack", args.dense)]
    for name, path in rows + [(p.stem, p) for p in sparse_files]:
        sparse = runtimes.is_sparse_model(path)
        ratio = median[name] / median["dense"]
        print(f"{name:<16}{str(sparse):>15}{1e6 * median[name]:>18.1f}{ratio:>16.3f}")
        result[name] = {"path": str(path), "sparse_storage": sparse,
                        "median_seconds_per_sample": median[name], "ratio_to_dense": ratio,
                        "block_seconds_per_sample": times[name]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
