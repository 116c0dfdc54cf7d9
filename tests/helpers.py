"""Tiny seeded models and data shared by the tests."""
import pathlib

import numpy as np
import tensorflow as tf

from keras_minmax_mtl.core.backend import keras

#: The repository root (tests run from a checkout).
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

LOSSES = {"a": "sparse_categorical_crossentropy", "b": "sparse_categorical_crossentropy",
          "c": "mse"}


def tiny_base_model(tasks=("a", "b", "c"), seed=0, l2=0.0):
    """A Functional model with a shared Dense trunk and one head per task."""
    init = lambda i: keras.initializers.GlorotUniform(seed=seed * 100 + i)  # noqa: E731
    reg = keras.regularizers.l2(l2) if l2 else None
    inputs = keras.Input((6,), name="features")
    h = keras.layers.Dense(8, activation="tanh", kernel_initializer=init(0),
                           kernel_regularizer=reg, name="trunk")(inputs)
    outputs = []
    for i, task in enumerate(tasks):
        if LOSSES.get(task) == "mse":
            outputs.append(keras.layers.Dense(1, kernel_initializer=init(i + 1), name=task)(h))
        else:
            outputs.append(keras.layers.Dense(3, activation="softmax",
                                              kernel_initializer=init(i + 1), name=task)(h))
    return keras.Model(inputs, outputs, name="tiny")


class SubclassedNet(keras.Model):
    """A subclassed model, which the package refuses where it needs a Functional one."""

    def __init__(self):
        super().__init__()
        self.d = keras.layers.Dense(2)

    def call(self, x):
        return self.d(x)


def tiny_data(n=32, tasks=("a", "b", "c"), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = {}
    for task in tasks:
        if LOSSES.get(task) == "mse":
            y[task] = rng.normal(size=(n, 1)).astype(np.float32)
        else:
            y[task] = rng.integers(0, 3, size=n).astype(np.int32)
    return x, y


def task_losses(base_model, x, y, tasks=("a", "b", "c")):
    """Per-task mean losses computed directly with Keras' loss functions."""
    outputs = base_model(x, training=False)
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    return np.array([
        float(tf.reduce_mean(keras.losses.get(LOSSES[t])(y[t], out)))
        for t, out in zip(tasks, outputs)
    ])


class WeightRecorder(keras.callbacks.Callback):
    """Records the task weights after every train batch."""

    def on_train_begin(self, logs=None):
        self.history = []

    def on_train_batch_end(self, batch, logs=None):
        self.history.append(self.model.task_weights.numpy().copy())


def shrink_benchmark_splits(runs_module, monkeypatch, validation=64, test=128):
    """Makes the benchmarks' multi_digits runs (`benchmarks/_runs.py`) evaluate on fewer canvases.

    `runs_module` is the benchmarks' `_runs` module; its `DATASETS["multi_digits"]` then
    builds `validation` and `test` canvases (`None`: the dataset's default, 1000 and 2000)
    and the training split as asked. For the tests that check a benchmark's outputs against its
    runs' own saved values, not the accuracies themselves.
    """
    import dataclasses

    from keras_minmax_mtl.data import multi_digits

    def splits(seed, batch_size, train_examples):
        sizes = {"train": train_examples, "validation": validation, "test": test}
        return {split: multi_digits(split, seed=seed, batch_size=batch_size, num_examples=n)
                for split, n in sizes.items()}

    monkeypatch.setitem(runs_module.DATASETS, "multi_digits", dataclasses.replace(
        runs_module.DATASETS["multi_digits"], splits=splits))
