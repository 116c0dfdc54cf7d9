r"""Uncertainty weighting (UW) of Kendall, Gal and Cipolla (CVPR 2018)."""
import tensorflow as tf

from keras_minmax_mtl.core.checks import check_finite_real
from keras_minmax_mtl.core.backend import keras, register
from keras_minmax_mtl.core.task_weighting import TaskWeighting
from keras_minmax_mtl.core.tensorflow_ops import TENSORFLOW_OPS
from keras_minmax_mtl.weighting import maths

__all__ = ["UncertaintyWeighting"]


@register
class UncertaintyWeighting(TaskWeighting):
    r"""Learned homoscedastic-uncertainty weights (Kendall et al. 2018).

    Each task has a learned log-variance ``s_i = log σ_i²`` trained by the
    network's optimizer together with the network:

    .. math::

        \frac{1}{K}\sum_i \big(e^{-s_i} L_i + s_i\big)

    so the applied weights are ``w_i = e^{-s_i}/K`` (``1/K`` at ``s = 0``, the
    same start as equal weighting) and the optimum for fixed losses is
    ``s_i = log L_i``. The ``1/K`` keeps the objective on the same scale as
    the simplex-weighted strategies; the model's `scale` multiplies it. The
    maths is `keras_minmax_mtl.weighting.maths.uncertainty_objective`, which
    the Keras 3 path runs too.

    Args:
        initial_log_variance: the starting ``s_i``, a finite number. Defaults to `0.0`.

    Example:

    >>> model = MultiTaskModel(base_model, weighting=UncertaintyWeighting())
    """

    def __init__(self, initial_log_variance=0.0, **kwargs):
        super().__init__(**kwargs)
        self.initial_log_variance = check_finite_real(initial_log_variance, "initial_log_variance")

    def build(self, input_shape):
        self.log_variances = self.add_weight(
            name="log_variances",
            shape=(int(input_shape[-1]),),
            initializer=keras.initializers.Constant(self.initial_log_variance),
            trainable=True,
        )
        super().build(input_shape)

    @property
    def task_weights(self):
        return maths.uncertainty_weights(tf.convert_to_tensor(self.log_variances), TENSORFLOW_OPS)

    def descent_loss(self, losses, replica_fraction=1.0):
        s = tf.cast(self.log_variances, losses.dtype)
        return maths.uncertainty_objective(s, losses, TENSORFLOW_OPS, replica_fraction)

    def get_config(self):
        config = super().get_config()
        config.update(initial_log_variance=self.initial_log_variance)
        return config
