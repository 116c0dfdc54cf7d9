r"""Dynamic weight average (DWA) of Liu, Johns and Davison (MTAN, CVPR 2019)."""
import tensorflow as tf

from keras_minmax_mtl.core.backend import keras, register
from keras_minmax_mtl.core.task_weighting import TaskWeighting
from keras_minmax_mtl.core.tensorflow_ops import TENSORFLOW_OPS
from keras_minmax_mtl.weighting import maths

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
    `MultiTaskModel.start_epoch()` in a custom loop). The maths is
    `keras_minmax_mtl.weighting.maths.dwa_epoch_start`, which the Keras 3
    path runs too.

    Args:
        temperature: ``T``; larger is smoother. A finite number `> 0`. Defaults to `2.0`.

    Example:

    >>> model = MultiTaskModel(base_model, weighting=DynamicWeightAverage(2.0), scale="num_tasks")
    """

    def __init__(self, temperature=2.0, **kwargs):
        super().__init__(**kwargs)
        self.temperature = maths.check_temperature(temperature)

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
        variables = (self._task_weights, self.loss_sum, self.loss_count, self.loss_history,
                     self.epochs_done)
        state = maths.dwa_epoch_start(tuple(tf.convert_to_tensor(v) for v in variables),
                                      clock.epoch_start, self.temperature, TENSORFLOW_OPS)
        for variable, value in zip(variables, state):
            variable.assign(value)

    def on_step_end(self, losses, clock):
        self.loss_sum.assign_add(tf.cast(losses, self.loss_sum.dtype))
        self.loss_count.assign_add(1.0)

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature)
        return config
