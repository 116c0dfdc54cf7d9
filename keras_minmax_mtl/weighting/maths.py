r"""The pure maths of the task weights, written once for every back-end.

The simplex projection, the gradient of the inner problem, the two ascent
rules, the closed-form maximiser, uncertainty weighting and DWA, as
functions of an array namespace `ops` with the names of `keras.ops` (numpy's
API): `keras.ops` itself on the Keras 3 path (`keras_minmax_mtl.keras3`, any back-end), and `TENSORFLOW_OPS` of
`keras_minmax_mtl.core.tensorflow_ops` on the `tf_keras` path. Both paths run
this one implementation; this module imports no array library.

The namespace needs `max`, `sort` (ascending), `flip`, `cumsum`, `sum`,
`shape`, `arange`, `cast`, `maximum`, `take_along_axis`, `log`, `exp`, `softmax`,
`where`, `stack`, `logical_and` and `zeros_like`, with the signatures of `keras.ops`.

Example:

>>> import keras
>>> project_to_simplex(keras.ops.convert_to_tensor([0.5, 0.9, -1.0]), keras.ops)
array([0.3, 0.7, 0. ], dtype=float32)     # a tensor of the back-end
"""
from keras_minmax_mtl.core.checks import check_finite_real

__all__ = ["project_to_simplex", "ascent_gradient", "projected_gradient_step",
           "exponentiated_gradient_step", "closed_form_weights", "check_ascent_hyper_parameters",
           "check_closed_form_gamma", "uncertainty_weights", "uncertainty_objective",
           "dwa_epoch_start", "check_temperature"]


def check_ascent_hyper_parameters(step_size, gamma):
    """Returns `(float(step_size), float(gamma))`; raises `ValueError` naming the argument.

    `step_size` must be a finite number `> 0`, `gamma` a finite number `>= 0`
    (bools, strings, NaN and ±inf are refused).
    """
    step_size = check_finite_real(step_size, "step_size")
    gamma = check_finite_real(gamma, "gamma")
    if not step_size > 0:
        raise ValueError(f"Argument `step_size` must be > 0. Received: step_size={step_size}")
    if not gamma >= 0:
        raise ValueError(f"Argument `gamma` must be >= 0. Received: gamma={gamma}")
    return step_size, gamma


def check_closed_form_gamma(gamma):
    """Returns `float(gamma)` if it is a finite number `> 0` (the closed form needs it)."""
    gamma = check_finite_real(gamma, "gamma")
    if not gamma > 0:
        raise ValueError(
            f"Argument `gamma` must be > 0 for the closed form to exist. Received: gamma={gamma}"
        )
    return gamma


def project_to_simplex(v, ops):
    r"""Euclidean projection of the float tensor `v` onto the simplex, along its last axis.

    .. math::

        \Pi_\Delta(v) = \arg\min_{w \ge 0,\ \sum_i w_i = 1} \|w - v\|_2^2

    Duchi, Shalev-Shwartz, Singer and Chandra (ICML 2008): shift `v` by its
    maximum (the projection is invariant to adding a constant; huge values
    cannot overflow the cumulative sums), sort it in decreasing order into
    `u`, find the largest `ρ` with ``u_ρ - (Σ_{j≤ρ} u_j - 1)/ρ > 0``, set
    ``θ = (Σ_{j≤ρ} u_j - 1)/ρ`` and return ``max(v - θ, 0)``.

    Args:
        v: a float tensor of shape `(..., K)`, `K >= 1`, of the namespace's
            back-end (the callers check the shape and convert the dtype).
        ops: the array namespace (`keras.ops`, or `TENSORFLOW_OPS`).

    Returns:
        A tensor of the dtype and shape of `v` whose rows are non-negative and
        sum to 1; NaN everywhere in a row that holds a NaN.
    """
    v = v - ops.max(v, axis=-1, keepdims=True)
    u = ops.flip(ops.sort(v, axis=-1), axis=-1)
    cumulative = ops.cumsum(u, axis=-1) - 1.0
    k = ops.shape(v)[-1]
    j = ops.cast(ops.arange(1, k + 1), v.dtype)
    # Holds for j = 1..ρ and fails after (u_1 = 0 after the shift, so ρ >= 1).
    support = ops.cast(u - cumulative / j > 0, "int32")
    rho = ops.maximum(ops.sum(support, axis=-1, keepdims=True), 1)
    theta = ops.take_along_axis(cumulative, rho - 1, axis=-1) / ops.cast(rho, v.dtype)
    return ops.maximum(v - theta, 0.0)


def ascent_gradient(weights, losses, gamma, ops):
    r"""``G = L − γ (w − 1/K)``, the gradient in `w` of ``wᵀL − (γ/2)‖w − 1/K‖²``.

    Args:
        weights: the task weights `w`, a float tensor of shape `(K,)`.
        losses: the per-task losses `L`, same shape and dtype.
        gamma: `γ`, a float.
        ops: the array namespace.
    """
    k = ops.cast(ops.shape(weights)[-1], weights.dtype)
    return losses - gamma * (weights - 1.0 / k)


def projected_gradient_step(weights, losses, step_size, gamma, ops):
    r"""One APGDA step, ``w ← Π_Δ(w + η (L − γ (w − 1/K)))`` with ``η = step_size``."""
    return project_to_simplex(weights + step_size * ascent_gradient(weights, losses, gamma, ops), ops)


def exponentiated_gradient_step(weights, losses, step_size, gamma, ops):
    r"""One multiplicative-weights step, ``w ← softmax(log w + η G)``.

    Equal to ``w ⊙ exp(ηG) / Σ_i w_i exp(ηG_i)``, computed in the log domain so
    that large ``η·L`` cannot overflow.
    """
    logits = ops.log(weights) + step_size * ascent_gradient(weights, losses, gamma, ops)
    return ops.softmax(logits, axis=-1)


def closed_form_weights(losses, gamma, ops):
    r"""``Π_Δ(1/K + L/γ)``, the maximiser over the simplex of ``wᵀL − (γ/2)‖w − 1/K‖²`` (γ > 0)."""
    k = ops.cast(ops.shape(losses)[-1], losses.dtype)
    return project_to_simplex(1.0 / k + losses / gamma, ops)


def uncertainty_weights(log_variances, ops):
    r"""``w_i = e^{-s_i} / K``, the weights that uncertainty weighting applies (``1/K`` at ``s = 0``).

    Args:
        log_variances: the learned ``s_i = log σ_i²``, a float tensor of shape `(K,)`.
        ops: the array namespace.
    """
    k = ops.cast(ops.shape(log_variances)[-1], log_variances.dtype)
    return ops.exp(-log_variances) / k


def uncertainty_objective(log_variances, losses, ops, replica_fraction=1.0):
    r"""``(1/K) Σ_i (e^{-s_i} L_i + s_i)``, Kendall et al.'s objective (network and ``s`` both learn it).

    For fixed losses it is minimal at ``s_i = log L_i``.

    Args:
        log_variances: ``s``, shape `(K,)`, of the dtype of `losses`.
        losses: the per-task losses ``L``, shape `(K,)`.
        ops: the array namespace.
        replica_fraction: multiplies the ``s_i`` terms, which do not come from
            the batch: ``1/replicas`` where the replicas' objectives are summed.
    """
    k = ops.cast(ops.shape(losses)[-1], losses.dtype)
    return ops.sum(ops.exp(-log_variances) * losses + log_variances * replica_fraction) / k


def dwa_epoch_start(state, epoch_start, temperature, ops):
    r"""Dynamic weight average at the start of a train step: closes an epoch and sets its weights.

    With ``\bar L_i(t)`` the mean of the steps' losses of task `i` over epoch `t`,

    .. math::

        w_i(t) = \operatorname{softmax}_i\big(\bar L_i(t-1) / (\bar L_i(t-2)\,T)\big)

    from the third epoch on (``1/K`` before). On the first step of an epoch
    after one with data (`epoch_start` and a count > 0) the epoch's mean joins
    the history and the sums restart.

    Args:
        state: `(weights (K,), loss_sum (K,), loss_count (), history (2, K),
            epochs_done ())`: the task weights, the sum and number of the
            current epoch's step losses, the means of epochs ``t-2`` (row 0)
            and ``t-1`` (row 1), and the number of epochs closed.
        epoch_start: a boolean scalar, whether this step is the first of an epoch.
        temperature: ``T > 0``.
        ops: the array namespace.

    Returns:
        The new `state`, same structure and dtypes.
    """
    weights, loss_sum, loss_count, history, epochs_done = state
    close = ops.logical_and(epoch_start, loss_count > 0)
    mean = loss_sum / ops.maximum(loss_count, 1.0)
    history = ops.where(close, ops.stack([history[1], mean]), history)
    epochs_done = epochs_done + ops.cast(close, epochs_done.dtype)
    ratio = history[1] / ops.maximum(history[0], 1e-12)
    weights = ops.where(epochs_done >= 2, ops.softmax(ratio / temperature, axis=-1), weights)
    loss_sum = ops.where(close, ops.zeros_like(loss_sum), loss_sum)
    loss_count = ops.where(close, ops.zeros_like(loss_count), loss_count)
    return weights, loss_sum, loss_count, history, epochs_done


def check_temperature(temperature):
    """Returns `float(temperature)` if it is a finite number `> 0` (DWA's ``T``)."""
    temperature = check_finite_real(temperature, "temperature")
    if not temperature > 0:
        raise ValueError(f"Argument `temperature` must be > 0. Received: temperature={temperature}")
    return temperature
