r"""Hybrid shared + per-task sparse compression on multi_digits: settings chosen on validation.

Trains, for one seed and the min-max weighting, the hybrid network
(`keras_minmax_mtl.sparsity.hybrid`) at the equal-non-zero budget of `--sparsity` for
every combination of `--task-shares`, `--allocations` and `--prune-epochs`
(0 = one-shot), through `benchmarks/_runs.train_run` (the settings of
`compare.py`), and prints the *validation* worst-task and mean accuracy of
each, the chosen one (best validation worst task, then mean) and only its
test accuracy. With `--export`, the chosen model is exported for mobile
(float, sparse storage where smaller) and the file's bytes are printed.
Everything is saved to `--out` (default `benchmarks/results/hybrid.json`).

    python benchmarks/hybrid.py --task-shares 0 0.1 0.25 0.5 --allocations global uniform
"""
import argparse
import itertools
import json
import os
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _runs  # noqa: E402
from keras_minmax_mtl.core.arguments import non_negative_int, positive_int  # noqa: E402


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task-shares", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5])
    parser.add_argument("--allocations", nargs="+", default=["global"],
                        choices=["uniform", "global"])
    parser.add_argument("--prune-epochs", type=non_negative_int, nargs="+", default=[0])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--epochs", type=positive_int, default=20)
    parser.add_argument("--train-examples", type=positive_int, default=None)
    parser.add_argument("--export", action="store_true",
                        help="export the chosen model for mobile and print its bytes")
    parser.add_argument("--out", type=pathlib.Path,
                        default=pathlib.Path(__file__).parent / "results" / "hybrid.json")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    runs = []  # (result, trained model)
    for share, allocation, prune_epochs in itertools.product(
            args.task_shares, args.allocations, args.prune_epochs):
        config = {"dataset": "multi_digits", "weighting": "minmax",
                  "compression": "hybrid", "seed": args.seed, "epochs": args.epochs,
                  "sparsity": args.sparsity, "batch_size": 64,
                  "train_examples": args.train_examples, "learning_rate": 1e-3,
                  "hybrid": {"task_share": share, "allocation": allocation,
                             "prune_epochs": prune_epochs}}
        result, model = _runs.train_run(config, return_model=True)
        runs.append((result, model))
        print(f"task_share={share} allocation={allocation} prune_epochs={prune_epochs} "
              f"(validation, seed {args.seed}, minmax, {args.sparsity:.1%}): worst "
              f"{result['validation']['worst']:.4f}, mean "
              f"{result['validation']['mean']:.4f}, equal-non-zero sparsity "
              f"{result['sparsity']:.4f}, {result['train_seconds']:.0f}s", flush=True)
    results = [result for result, _ in runs]
    best, best_model = max(runs, key=lambda run: (run[0]["validation"]["worst"],
                                                   run[0]["validation"]["mean"]))
    print(f"chosen on validation: {best['config']['hybrid']}; test worst "
          f"{best['test']['worst']:.4f}, mean {best['test']['mean']:.4f}, per task "
          f"{ {t: round(v, 4) for t, v in best['test']['tasks'].items()} }")
    summary = {"arguments": {k: str(v) if isinstance(v, pathlib.Path) else v
                             for k, v in vars(args).items()},
               "runs": [{k: v for k, v in r.items() if k != "task_weight_trajectory"}
                        for r in results],
               "chosen": best["config"]["hybrid"]}
    if args.export:
        from keras_minmax_mtl.data import load_multi_digits
        from keras_minmax_mtl.export.tflite import export_tflite

        x, _ = load_multi_digits("train", seed=args.seed, num_examples=256)
        with tempfile.TemporaryDirectory() as folder:
            report = export_tflite(best_model, pathlib.Path(folder) / "hybrid.tflite",
                                   target="mobile", representative_data=x)
        summary["export"] = {k: report[k] for k in ("bytes", "gzip_bytes", "storage",
                                                    "quantization")}
        print(f"mobile export of the chosen model: {report['bytes']} bytes "
              f"({report['quantization']}, {report['storage']} storage, gzip "
              f"{report['gzip_bytes']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")
    return summary


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # a script, not the library
    main()
