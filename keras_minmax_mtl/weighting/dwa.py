r"""Dynamic weight average (DWA) of Liu, Johns and Davison (MTAN, CVPR 2019)."""
import tensorflow as tf

from keras_minmax_mtl.core.checks import check_finite_real
from keras_minmax_mtl.core.backend import keras, register
from keras_minmax_mtl.core.task_weighting import TaskWeighting

__all__ = ["DynamicWeightAverage"]


@register
class DynamicWeightAverage(TaskWeighting):
    r"""Weights from the rate at which each task's loss falls, epoch to epoch.

    With ``\bar L_i(t)`` the mean training loss of task `i` over epoch `t`,

    .. math::

        r_i(t-1) = \frac{\bar L_i(t-1)}{\bar L_i(t-2)}, \qquad
        w_i(t) = \frac{\exp(r_i(t-1)/T)}{\sum_j \exp(r_j(t-1)/T)}

    and ``w = 1/K`` for the first two epochs. The original multiplies by `K`
    (weights summing to `K`); here the weights sum to 1 and the model's
    ``scale=K`` gives the original. Epoch boundaries come from `fit` (or
    `MultiTaskModel.start_epoch()` in a custom loop).

    Args:
        temperature: ``T``; larger is smoother. A finite number `> 0`. Defaults to `2.0`.

    Example:

    >>> model = MultiTaskModel(base_model, weighting=DynamicWeightAverage(2.0), scale="num_tasks")
    """

    def __init__(self, temperature=2.0, **kwargs):
        super().__init__(**kwargs)
        temperature = check_finite_real(temperature, "temperature")
        if not temperature > 0:
            raise ValueError(f"Argument `temperature` must be > 0. Received: temperature={temperature}")
        self.temperature = temperature

    def build(self, input_shape):
        k = int(input_shape[-1])
        self._task_weights = self.state_variable("task_weights", (k,), keras.initializers.Constant(1.0 / k))
        self.loss_sum = self.state_variable("epoch_loss_sum", (k,), "zeros")
        self.loss_count = self.state_variable("epoch_loss_count", (), "zeros")
        # Row 0: mean losses of epoch t-2, row 1: of epoch t-1.
        self.loss_history = self.state_variable("loss_history", (2, k), "zeros")
        self.epochs_done = self.state_variable("epochs_done", (), "zeros", dtype="int64")
        super().build(input_shape)

    @property
    def task_weights(self):
        return self._task_weights

    def on_step_begin(self, clock):
        # On the first step of an epoch after one with data: close that epoch.
        close = tf.logical_and(clock.epoch_start, self.loss_count > 0)
        mean = self.loss_sum / tf.maximum(self.loss_count, 1.0)
        history = tf.where(close, tf.stack([self.loss_history[1], mean]), self.loss_history)
        done = self.epochs_done + tf.cast(close, tf.int64)
        ratio = history[1] / tf.maximum(history[0], 1e-12)
        proposal = tf.nn.softmax(ratio / self.temperature)
        weights = tf.where(done >= 2, proposal, self._task_weights)
        self.loss_history.assign(history)
        self.epochs_done.assign(done)
        self._task_weights.assign(weights)
        self.loss_sum.assign(tf.where(close, tf.zeros_like(self.loss_sum), self.loss_sum))
        self.loss_count.assign(tf.where(close, 0.0, self.loss_count))

    def on_step_end(self, losses, clock):
        self.loss_sum.assign_add(tf.cast(losses, self.loss_sum.dtype))
        self.loss_count.assign_add(1.0)

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature)
        return config
