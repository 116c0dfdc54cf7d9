r"""Choosing `export_tflite(floor_margin=...)` on the validation split: int8 top-1 agreement per margin.

A full-int8 file outputs ``max(z − t, 0)`` per classification head, with the
floor ``t`` `floor_margin` × (spread of the top logits) below the smallest
top logit of the calibration samples (`logits.logit_floors`). A small margin
gives the int8 scale to the logits that can win; too small a margin puts
samples whose top logit is lower than any calibration sample's at the floor,
where their classes tie at 0.

For each seed, one reweighted-ℓ1 run at 90 % (min-max, `benchmarks/_runs.py`
settings) is exported for `mobile` in full int8 once per margin, calibrated
on the first 256 training inputs, and each file runs the whole **validation**
split in LiteRT. The table gives, per margin, the mean over seeds of the
per-task top-1 agreement with the Keras model (the argmax of the file against
the argmax of the model) and of the fraction of samples with a tied top
output. The test split is not used.

    PYTHONPATH=. python benchmarks/floor_margin.py --seeds 3
"""
import argparse
import json
import os
import pathlib
import sys
import tempfile

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _runs  # noqa: E402
from keras_minmax_mtl.core.arguments import positive_int  # noqa: E402


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--margins", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.4, 0.8])
    parser.add_argument("--seeds", type=positive_int, default=3)
    parser.add_argument("--epochs", type=positive_int, default=20)
    parser.add_argument("--train-examples", type=positive_int, default=None)
    parser.add_argument("--out", type=pathlib.Path,
                        default=pathlib.Path(__file__).parent / "results" / "floor_margin.json")
    return parser


def agreement(model, splits, margins):
    """`{margin: {task: (top-1 agreement, tied fraction)}}` of int8 files on the validation split."""
    from keras_minmax_mtl.export import runtimes
    from keras_minmax_mtl.export.tflite import export_tflite

    x_train, _ = _runs.split_arrays(splits["train"])
    x_val, _ = _runs.split_arrays(splits["validation"])
    reference = {t: np.asarray(v) for t, v in model.predict(x_val, batch_size=256, verbose=0).items()}
    result = {}
    with tempfile.TemporaryDirectory() as work:
        for margin in margins:
            path = pathlib.Path(work) / "m.tflite"
            export_tflite(model, path, target="mobile", quantization="int8",
                          representative_data=x_train[:256], floor_margin=margin)
            out = runtimes.run_litert(path, x_val)
            result[margin] = {
                t: (float(np.mean(out[t].argmax(-1) == reference[t].argmax(-1))),
                    float(np.mean(np.sum(out[t] == out[t].max(-1, keepdims=True), -1) > 1)))
                for t in reference}
    return result


def main(argv=None):
    args = build_parser().parse_args(argv)
    per_seed = []
    for seed in range(args.seeds):
        config = {"dataset": "multi_digits", "weighting": "minmax", "compression": "reweighted_l1",
                  "seed": seed, "epochs": args.epochs, "sparsity": 0.9, "batch_size": 64,
                  "train_examples": args.train_examples, "learning_rate": 1e-3}
        _, model = _runs.train_run(config, return_model=True)
        data = _runs.DATASETS["multi_digits"]
        splits = data.splits(seed, config["batch_size"], config["train_examples"])
        per_seed.append(agreement(model, splits, args.margins))
        print(f"seed {seed}: " + "; ".join(
            f"margin {m}: " + ", ".join(f"{t} {a:.4f}" for t, (a, _) in r.items())
            for m, r in per_seed[-1].items()), flush=True)
    tasks = list(per_seed[0][args.margins[0]])
    summary = {m: {t: {"agreement": float(np.mean([s[m][t][0] for s in per_seed])),
                       "tied": float(np.mean([s[m][t][1] for s in per_seed]))} for t in tasks}
               for m in args.margins}
    print(f"\nint8 top-1 agreement with the Keras model on the validation split "
          f"(mean over {args.seeds} seeds; tied top output in parentheses)")
    print(f"{'margin':>7}" + "".join(f"{t:>20}" for t in tasks) + f"{'min':>9}")
    for m, cell in summary.items():
        print(f"{m:>7}" + "".join(
            f"{cell[t]['agreement']:>11.4f} ({cell[t]['tied']:.4f})" for t in tasks)
              + f"{min(c['agreement'] for c in cell.values()):>9.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"arguments": {k: str(v) for k, v in vars(args).items()},
                                    "summary": {str(m): v for m, v in summary.items()}}, indent=2))
    print(f"wrote {args.out}")
    return summary


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
