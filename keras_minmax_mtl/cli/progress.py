"""`kmm train`'s default progress display: one compact line per epoch.

Keras' progress bar prints every metric of a multi-task model: the loss and
each task's loss, accuracy and weight, the worst task's loss and accuracy,
and all of it again for validation (21 numbers, 540-620 characters a line
for three tasks). `CompactProgress` prints one line per epoch with what tells
the tasks apart: the weighted loss, each task's main metric (its first
compiled metric, e.g. accuracy; its loss when it has none) on the training
and, when given, the validation data, and the task weights. `kmm train -v`
shows Keras' own display instead.

    epoch  1/20  0.9s  loss 2.4647  accuracy train/val  left 0.182/0.271  right 0.212/0.369  sum 0.104/0.104  weights  left 0.292  right 0.273  sum 0.435

Example:

>>> model.fit(train, epochs=20, verbose=0, callbacks=[CompactProgress(model.task_names, 20)])
"""
import sys
import time

from keras_minmax_mtl.core.backend import keras

__all__ = ["CompactProgress", "format_epoch", "main_metric"]


def main_metric(logs, task):
    """The name of `task`'s main metric in Keras' `logs`: its first metric besides loss and weight.

    ``"accuracy"`` for logs with `left_accuracy`; ``"loss"`` when the task
    has no other metric.
    """
    prefix = f"{task}_"
    for key in logs:
        if key.startswith(prefix) and key[len(prefix):] not in ("loss", "weight"):
            return key[len(prefix):]
    return "loss"


def format_epoch(epoch, epochs, logs, tasks, seconds=None):
    """One line for the end of epoch `epoch` (counted from 1) of `epochs`, from Keras' `logs`.

    Args:
        epoch: the epoch that ended, counted from 1.
        epochs: the number of epochs of the run.
        logs: Keras' epoch logs (`loss`, `<task>_<metric>`, `val_...`,
            `<task>_weight`).
        tasks: the task names, in order.
        seconds: the epoch's duration, shown when given. Defaults to `None`.

    Returns:
        e.g. ``"epoch  1/20  0.9s  loss 2.4647  accuracy train/val  left
        0.182/0.271 ...  weights  left 0.292 ..."`` (one line); a value
        missing from `logs` is left out.
    """
    width = len(str(epochs))
    parts = [f"epoch {epoch:>{width}}/{epochs}"]
    if seconds is not None:
        parts.append(f"{seconds:.1f}s")
    if "loss" in logs:
        parts.append(f"loss {logs['loss']:.4f}")
    metric = main_metric(logs, tasks[0]) if tasks else "loss"
    validation = any(f"val_{task}_{metric}" in logs for task in tasks)
    values, others = [], []
    for task in tasks:
        own = metric if f"{task}_{metric}" in logs else main_metric(logs, task)
        train = logs.get(f"{task}_{own}")
        if train is None:
            continue
        value = f"{train:.3f}"
        if validation and f"val_{task}_{own}" in logs:
            value += f"/{logs[f'val_{task}_{own}']:.3f}"
        # a task whose main metric is another one (a regression's mae) names it
        (values if own == metric else others).append(
            f"{task} {value}" if own == metric else f"{task} {own} {value}")
    if values:
        parts.append(f"{metric} train/val" if validation else metric)
        parts.extend(values)
    parts.extend(others)
    weights = [f"{task} {logs[f'{task}_weight']:.3f}" for task in tasks
               if f"{task}_weight" in logs]
    if weights:
        parts.append("weights")
        parts.extend(weights)
    return "  ".join(parts)


class CompactProgress(keras.callbacks.Callback):
    """Prints `format_epoch` at the end of every epoch (use with `fit(verbose=0)`).

    Args:
        tasks: the task names, in order.
        epochs: the number of epochs of the run.
        stream: where to print. Defaults to `None` (`sys.stdout` at print time).
    """

    def __init__(self, tasks, epochs, stream=None):
        super().__init__()
        self.tasks = list(tasks)
        self.epochs = epochs
        self.stream = stream
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = None if self._start is None else time.perf_counter() - self._start
        line = format_epoch(epoch + 1, self.epochs, logs or {}, self.tasks, seconds)
        print(line, file=self.stream or sys.stdout, flush=True)
