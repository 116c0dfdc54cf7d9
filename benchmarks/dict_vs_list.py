"""The same network written with dict and with list outputs trains identically.

`multi_digits` with `kmm train`'s settings (min-max, step size 0.02, gamma 5,
Adam 1e-3, batch 64, 20 epochs, one seed): the base model built by
`multi_digits_network` (list outputs) and the same layers wrapped as a
dict-output model `{task: output}`. Prints both runs' task weights and test
accuracies and whether they are bitwise equal; saves JSON.

    python benchmarks/dict_vs_list.py --seed 0 --epochs 20
"""
import argparse
import json
import pathlib

import numpy as np


def run(form, seed, epochs):
    import keras_minmax_mtl as kmm
    from keras_minmax_mtl.core.backend import keras
    from keras_minmax_mtl.data import multi_digits
    from keras_minmax_mtl.data.networks import multi_digits_network

    keras.utils.set_random_seed(seed)
    base = multi_digits_network(seed=seed)
    if form == "dict":
        base = keras.Model(base.inputs, dict(zip(base.output_names, base.outputs)),
                           name="multi_digits_dict")
    model = kmm.MinMaxMultiTask(base, step_size=0.02, gamma=5.0)
    tasks = model.task_names
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss={t: "sparse_categorical_crossentropy" for t in tasks},
                  metrics={t: ["accuracy"] for t in tasks})
    model.fit(multi_digits("train", seed=seed, batch_size=64), epochs=epochs, verbose=0,
              validation_data=multi_digits("validation", seed=seed, batch_size=64))
    logs = model.evaluate(multi_digits("test", seed=seed, batch_size=64), verbose=0,
                          return_dict=True)
    return {"tasks": tasks, "task_weights": model.task_weights.numpy().tolist(),
            "test_accuracy": {t: float(logs[f"{t}_accuracy"]) for t in tasks},
            "weights": [w.tolist() for w in model.base_model.get_weights()]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=pathlib.Path,
                        default=pathlib.Path("benchmarks/results/dict_vs_list.json"))
    args = parser.parse_args(argv)
    runs = {form: run(form, args.seed, args.epochs) for form in ("list", "dict")}
    same = {
        "task_names": runs["list"]["tasks"] == runs["dict"]["tasks"],
        "task_weights": runs["list"]["task_weights"] == runs["dict"]["task_weights"],
        "network_weights": all(np.array_equal(a, b) for a, b in
                               zip(runs["list"]["weights"], runs["dict"]["weights"])),
        "test_accuracy": runs["list"]["test_accuracy"] == runs["dict"]["test_accuracy"],
    }
    for form, result in runs.items():
        print(f"{form:>4}: tasks {result['tasks']}, task weights "
              f"{np.round(result['task_weights'], 4).tolist()}, test accuracy "
              + ", ".join(f"{t} {v:.4f}" for t, v in result["test_accuracy"].items()))
    print("bitwise equal:", same)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {form: {k: v for k, v in r.items() if k != "weights"} for form, r in runs.items()}
    args.out.write_text(json.dumps({"seed": args.seed, "epochs": args.epochs, "runs": summary,
                                    "bitwise_equal": same}, indent=2))
    print(f"wrote {args.out}")
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
