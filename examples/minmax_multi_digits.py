"""Min-max multi-task training on the shipped MultiDigits data, with the Python API.

    python examples/minmax_multi_digits.py --epochs 20
    python examples/minmax_multi_digits.py --smoke    # tiny sizes, 1 epoch: checks that it runs

Trains `MinMaxMultiTask` and, for comparison, the same network with equal
weighting (same data, same initial weights), then prints both models'
per-task test accuracy and the min-max task weights.
"""
import argparse

import keras_minmax_mtl as kmm
from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.data import multi_digits
from keras_minmax_mtl.data.networks import multi_digits_network


def train(weighting_model, epochs, train, validation):
    tasks = weighting_model.task_names
    weighting_model.compile(optimizer=keras.optimizers.Adam(1e-3),
                            loss={t: "sparse_categorical_crossentropy" for t in tasks},
                            metrics={t: ["accuracy"] for t in tasks})
    weighting_model.fit(train, epochs=epochs, validation_data=validation, verbose=2)
    return weighting_model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-examples", type=int, default=None)
    parser.add_argument("--smoke", action="store_true",
                        help="1 epoch on 256 training and 256 validation/test examples")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.train_examples = 1, args.train_examples or 256
    held_out = 256 if args.smoke else None

    keras.utils.set_random_seed(args.seed)
    train_data = multi_digits("train", seed=args.seed, num_examples=args.train_examples,
                              batch_size=64)
    validation = multi_digits("validation", seed=args.seed, num_examples=held_out, batch_size=256)
    test = multi_digits("test", seed=args.seed, num_examples=held_out, batch_size=256)

    models = {
        "minmax": kmm.MinMaxMultiTask(multi_digits_network(seed=args.seed),
                                      step_size=0.02, gamma=5.0),
        "ew": kmm.MultiTaskModel(multi_digits_network(seed=args.seed),
                                 weighting=kmm.EqualWeighting()),
    }
    results = {}
    for name, model in models.items():
        train(model, args.epochs, train_data, validation)
        results[name] = model.evaluate(test, verbose=0, return_dict=True)
    tasks = models["minmax"].task_names
    print(f"{'':8}" + "".join(f"{t:>8}" for t in tasks) + f"{'worst':>8}")
    for name, result in results.items():
        print(f"{name:8}" + "".join(f"{result[f'{t}_accuracy']:8.4f}" for t in tasks)
              + f"{result['worst_accuracy']:8.4f}")
    print("min-max task weights:", dict(zip(tasks, models["minmax"].task_weights.numpy().round(3))))
    return results


if __name__ == "__main__":
    main()
