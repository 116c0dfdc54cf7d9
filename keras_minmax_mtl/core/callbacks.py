"""Callbacks for multi-task training."""
import numpy as np

from keras_minmax_mtl.core.backend import keras

__all__ = ["TaskWeightHistory"]


class TaskWeightHistory(keras.callbacks.Callback):
    """Records the task weights of a `MultiTaskModel` after every train step.

    After `fit`, `history` is a float array of shape `(steps, K)` (row `i` is
    the weights after step `i`, across all epochs) and `task_names` the
    column names. `initial` holds the weights before the first step.

    Example:

    >>> history = TaskWeightHistory()
    >>> model.fit(train, epochs=3, callbacks=[history])
    >>> history.history[-1]  # the last weights
    """

    def __init__(self):
        super().__init__()
        self.task_names = []
        self.initial = None
        self._rows = []

    def on_train_begin(self, logs=None):
        self.task_names = list(self.model.task_names)
        self.initial = np.asarray(self.model.task_weights, dtype=np.float64).copy()
        self._rows = []

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        self._rows.append([float(logs[f"{task}_weight"]) for task in self.task_names])

    @property
    def history(self):
        """Weights after every recorded step, shape `(steps, K)`."""
        return np.asarray(self._rows, dtype=np.float64).reshape(-1, len(self.task_names))
