"""Euclidean projection onto the probability simplex.

The task weights of the min-max objective live on the probability simplex
``Δ_K = {w ∈ R^K : w ≥ 0, Σ_i w_i = 1}``; every ascent step ends with a
projection back onto it.
"""
import tensorflow as tf

from keras_minmax_mtl.core.tensorflow_ops import TENSORFLOW_OPS
from keras_minmax_mtl.weighting import maths

__all__ = ["project_to_simplex", "uniform_weights", "TENSORFLOW_OPS"]


def project_to_simplex(v):
    r"""Projects `v` onto the probability simplex along its last axis.

    Solves exactly

    .. math::

        \Pi_\Delta(v) = \arg\min_{w \ge 0,\ \sum_i w_i = 1} \|w - v\|_2^2

    with the sort-based algorithm of Duchi, Shalev-Shwartz, Singer and Chandra
    (ICML 2008): sort `v` in decreasing order into `u`, find the largest `ρ`
    with ``u_ρ - (Σ_{j≤ρ} u_j - 1)/ρ > 0``, set
    ``θ = (Σ_{j≤ρ} u_j - 1)/ρ`` and return ``max(v - θ, 0)``.

    The projection is invariant to adding a constant to every entry, so `v` is
    first shifted by its maximum: huge values cannot overflow the cumulative
    sums and tiny differences are kept. The maths is
    `keras_minmax_mtl.weighting.maths.project_to_simplex`, the one
    implementation that the Keras 3 path runs too, here with TensorFlow ops
    (`TENSORFLOW_OPS`), so it runs eagerly and inside `tf.function`, under `tf.distribute`, for
    `K = 1` (the answer is ``[1.]``) and for ties. It is not meant to be
    differentiated (the ascent step treats it as an operator). A NaN anywhere
    in `v` makes the whole output NaN rather than a valid-looking weight.

    Args:
        v: a float tensor (or array) of shape `(..., K)`, `K ≥ 1`; leading
            axes are batch axes, each row is projected on its own.

    Returns:
        A tensor of the dtype and shape of `v` (floats; integers become
        `float32`) whose rows are non-negative and sum to 1.

    Example:

    >>> project_to_simplex([0.5, 0.9, -1.0]).numpy()
    array([0.3, 0.7, 0. ], dtype=float32)
    """
    v = tf.convert_to_tensor(v)
    if not v.dtype.is_floating:
        v = tf.cast(v, tf.float32)
    if v.shape.rank == 0:
        raise ValueError(
            "Argument `v` must have at least one axis (the K task weights). "
            f"Received a scalar: v={v}."
        )
    if v.shape[-1] == 0:
        raise ValueError(
            f"Argument `v` must have K >= 1 entries on its last axis. Received shape {v.shape}."
        )
    return maths.project_to_simplex(v, TENSORFLOW_OPS)


def uniform_weights(num_tasks, dtype=tf.float32):
    """Returns the centre of the simplex, ``1/K`` repeated `num_tasks` times."""
    return tf.fill([num_tasks], tf.constant(1.0 / num_tasks, dtype))
