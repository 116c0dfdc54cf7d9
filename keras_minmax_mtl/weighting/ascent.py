r"""Ascent rules: how the task weights climb the min-max objective.

The inner problem of the min-max objective is, for fixed per-task losses
``L ∈ R^K``,

.. math::

    \max_{w \in \Delta_K}\ f(w) = w^\top L - \frac{\gamma}{2}\|w - \tfrac{1}{K}\mathbf{1}\|^2 ,

whose gradient is ``G = L − γ (w − 1/K)``. An ascent rule maps the current
weights and losses to the next weights; each rule is one small class. The
maths of every rule is in `keras_minmax_mtl.weighting.maths` (one
implementation, shared with the Keras 3 path); the classes here run it with
TensorFlow ops and carry the hyper-parameters for `tf_keras` serialization.
"""
import tensorflow as tf

from keras_minmax_mtl.core.backend import register
from keras_minmax_mtl.weighting import maths
from keras_minmax_mtl.weighting.simplex import TENSORFLOW_OPS

__all__ = ["AscentRule", "ProjectedGradientAscent", "ExponentiatedGradientAscent", "closed_form_weights"]


def closed_form_weights(losses, gamma):
    r"""The exact maximiser of the inner problem, ``Π_Δ(1/K + L/γ)``.

    For ``γ > 0`` the objective ``f(w) = wᵀL − (γ/2)‖w − 1/K‖²`` equals
    ``−(γ/2)‖w − (1/K + L/γ)‖²`` plus a constant, so its maximiser over the
    simplex is the projection of ``1/K + L/γ``.

    Args:
        losses: per-task losses, shape `(K,)`.
        gamma: the regularisation strength, a finite number `> 0`.

    Example:

    >>> closed_form_weights([1.0, 2.0, 3.0], gamma=5.0).numpy()
    array([0.13333333, 0.3333333 , 0.53333336], dtype=float32)
    """
    gamma = maths.check_closed_form_gamma(gamma)
    losses = tf.convert_to_tensor(losses, tf.float32)
    return maths.closed_form_weights(losses, gamma, TENSORFLOW_OPS)


class AscentRule:
    """Base class of the ascent rules: ``w_next = rule(w, L)``.

    Subclasses implement `__call__` and keep every constructor argument in
    `get_config()`.

    Args:
        step_size: the ascent step, ``1/β`` in the paper's notation. A finite
            number `> 0`.
        gamma: strength of the pull towards uniform weights. A finite number `>= 0`.

    Raises:
        ValueError: for a step size or gamma that is not a finite number (a
            bool, a string, NaN, ±inf) or out of range.
    """

    def __init__(self, step_size=0.02, gamma=5.0):
        self.step_size, self.gamma = maths.check_ascent_hyper_parameters(step_size, gamma)

    def gradient(self, weights, losses):
        """``G = L − γ (w − 1/K)``, the gradient of the inner objective."""
        return maths.ascent_gradient(weights, losses, self.gamma, TENSORFLOW_OPS)

    def __call__(self, weights, losses):
        raise NotImplementedError

    def get_config(self):
        return {"step_size": self.step_size, "gamma": self.gamma}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@register
class ProjectedGradientAscent(AscentRule):
    r"""Projected gradient ascent (the APGDA step of Guo et al. 2025).

    .. math::

        w \leftarrow \Pi_\Delta\big(w + \eta\,(L - \gamma (w - \tfrac{1}{K}))\big)

    with ``η = step_size``. For ``0 < η < 2/γ`` repeated steps with fixed `L`
    converge linearly (factor ``|1 − ηγ|``) to `closed_form_weights(L, γ)`.

    Args:
        step_size: ``η = 1/β``. The paper uses ``β = 50`` with pruning and
            ``β = 10`` with dynamic sparse training. Defaults to `0.02`.
        gamma: pull towards uniform weights. Defaults to `5.0`.

    Example:

    >>> rule = ProjectedGradientAscent(step_size=0.1, gamma=5.0)
    >>> rule(tf.constant([0.5, 0.5]), tf.constant([1.0, 0.0])).numpy()
    array([0.55, 0.45], dtype=float32)
    """

    def __call__(self, weights, losses):
        return maths.projected_gradient_step(weights, losses, self.step_size, self.gamma,
                                             TENSORFLOW_OPS)


@register
class ExponentiatedGradientAscent(AscentRule):
    r"""Exponentiated gradient (multiplicative weights), as in Group DRO.

    .. math::

        w \leftarrow \frac{w \odot \exp(\eta G)}{\sum_i w_i \exp(\eta G_i)},
        \qquad G = L - \gamma (w - \tfrac{1}{K})

    With ``gamma=0`` this is the update of Sagawa et al. (2020),
    ``q ← q·exp(η ℓ); q ← q/Σq``. Weights stay strictly positive and on the
    simplex without a projection; it is computed in the log domain, so large
    ``η·L`` cannot overflow.

    Args:
        step_size: ``η``. Defaults to `0.02`.
        gamma: pull towards uniform weights. Defaults to `5.0`.

    Example:

    >>> rule = ExponentiatedGradientAscent(step_size=1.0, gamma=0.0)
    >>> rule(tf.constant([0.5, 0.5]), tf.constant([1.0, 0.0])).numpy()
    array([0.73105854, 0.26894143], dtype=float32)
    """

    def __call__(self, weights, losses):
        return maths.exponentiated_gradient_step(weights, losses, self.step_size, self.gamma,
                                                 TENSORFLOW_OPS)
