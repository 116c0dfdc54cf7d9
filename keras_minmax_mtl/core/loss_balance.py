r"""Losses of different scales: the `normalize_losses` and `loss_scales` rules of both Keras paths (pure Python).

The task weighting of a multi-task model sees, per task,

.. math::

    \tilde L_t = s_t \cdot L_t \,/\, L_t^{(0)} \quad(\text{normalised}), \qquad
    \tilde L_t = s_t \cdot L_t \quad(\text{otherwise}),

with ``L_t^{(0)}`` the task's loss on the first train step and ``s_t`` the
fixed `loss_scales`. `normalize_losses="auto"` normalises when the recorded
first-step losses differ by more than `AUTO_NORMALIZE_RATIO`. A weighting on
the simplex whose weights leave a task below `STARVED_WEIGHT` at the end of two
epochs in a row gets a warning (`StarvationWatch`). The tensor rules are
written against an array namespace `ops` with the names of `keras.ops`
(`keras.ops` on the Keras 3 path, `core.tensorflow_ops.TENSORFLOW_OPS` on the
`tf_keras` path), so that both paths run this one implementation.

Example:

>>> check_loss_scales({"depth": 1.5}, ["seg", "depth"])
{'depth': 1.5}
>>> loss_scale_vector({"depth": 1.5}, ["seg", "depth"])
[1.0, 1.5]
"""
from keras_minmax_mtl.core.checks import is_finite_real

__all__ = ["NORMALIZE_LOSSES", "AUTO_NORMALIZE_RATIO", "STARVED_WEIGHT", "check_normalize_losses",
           "check_loss_scales", "loss_scale_vector", "auto_normalizes", "normalization_reference",
           "balanced_losses", "starved", "starvation_message", "StarvationWatch"]

#: The values of `normalize_losses`.
NORMALIZE_LOSSES = (False, True, "auto")
#: With `normalize_losses="auto"`, the losses are normalised when the largest first-step task
#: loss is more than this many times the smallest: losses of different units or scales.
AUTO_NORMALIZE_RATIO = 10.0
#: A task weight below this, on the simplex, gives the task (almost) no gradient: it is starved.
STARVED_WEIGHT = 1e-3


def check_normalize_losses(normalize_losses):
    """Returns `normalize_losses` if it is `True`, `False` or `"auto"`; raises `ValueError` otherwise."""
    if not any(normalize_losses is v or (isinstance(normalize_losses, str) and normalize_losses == v)
               for v in NORMALIZE_LOSSES):
        raise ValueError(
            "Argument `normalize_losses` must be True, False or 'auto'. "
            f"Received: normalize_losses={normalize_losses!r}")
    return normalize_losses


def check_loss_scales(loss_scales, names):
    """`{task: float}` of `loss_scales` (`{}` for `None`); raises `ValueError` naming the fault.

    Args:
        loss_scales: `None` or a dict `{task: s_t}` of finite numbers `> 0`, its
            keys among `names`.
        names: the model's task names.
    """
    if loss_scales is None:
        return {}
    if not isinstance(loss_scales, dict):
        raise ValueError("Argument `loss_scales` must be a dict {task: multiplier > 0} or None. "
                         f"Received: loss_scales={loss_scales!r}")
    unknown = sorted(str(k) for k in loss_scales if k not in names)
    if unknown:
        raise ValueError(f"Argument `loss_scales` names tasks the model does not have: {unknown}; "
                         f"its tasks are {names}. Received: loss_scales={loss_scales!r}")
    bad = {k: v for k, v in loss_scales.items() if not (is_finite_real(v) and v > 0)}
    if bad:
        raise ValueError("Argument `loss_scales` must hold finite numbers > 0. "
                         f"Received: loss_scales={loss_scales!r}")
    return {k: float(v) for k, v in loss_scales.items()}


def loss_scale_vector(loss_scales, names):
    """``[s_t for t in names]``, 1 for the tasks `loss_scales` leaves out."""
    return [loss_scales.get(t, 1.0) for t in names]


def auto_normalizes(initial_losses, ops):
    """Whether `"auto"` normalises: first-step losses recorded (all > 0) and
    ``max_i L_i^{(0)} > AUTO_NORMALIZE_RATIO · min_i L_i^{(0)}`` (a boolean tensor)."""
    recorded = ops.all(initial_losses > 0)
    ratio = ops.max(initial_losses) / ops.maximum(ops.min(initial_losses), 1e-12)
    return ops.logical_and(recorded, ratio > AUTO_NORMALIZE_RATIO)


def normalization_reference(initial_losses, normalize_losses, ops):
    """What each task loss is divided by: ``max(L^{(0)}, 1e-12)``, or 1 where `"auto"` does not normalise.

    Only for `normalize_losses` `True` or `"auto"` (with `False` nothing is divided).
    """
    reference = ops.maximum(initial_losses, 1e-12)
    if normalize_losses == "auto":
        reference = ops.where(auto_normalizes(initial_losses, ops), reference, 1.0)
    return reference


def balanced_losses(losses, initial_losses, normalize_losses, scale_vector, ops):
    r"""``s_t · L_t / L_t^{(0)}`` (normalised) or ``s_t · L_t``: the losses the weighting sees.

    Args:
        losses: the per-task losses, shape `(K,)` (or `(R, K)`: rows share the rule).
        initial_losses: the recorded first-step losses ``L^{(0)}``, shape `(K,)`.
        normalize_losses: `True`, `False` or `"auto"`.
        scale_vector: `None` (all 1) or a tensor of the `s_t`, shape `(K,)`.
        ops: the array namespace.
    """
    if normalize_losses is not False:
        losses = losses / normalization_reference(initial_losses, normalize_losses, ops)
    if scale_vector is not None:
        losses = losses * scale_vector
    return losses


def starved(names, weights):
    """The tasks of `names` whose weight (a sequence of floats, on the simplex) is below `STARVED_WEIGHT`."""
    return [t for t, w in zip(names, weights) if float(w) < STARVED_WEIGHT]


def starvation_message(names, weights, first_losses, starved_names):
    """The warning for tasks starved two epochs in a row, naming them, the weights and the fixes."""
    weights = {t: round(float(w), 4) for t, w in zip(names, weights)}
    first = {t: round(float(v), 4) for t, v in zip(names, first_losses)}
    known = f" (first-step losses {first})" if any(first.values()) else ""
    return (
        f"The task weights have sat at a vertex of the simplex for two epochs: tasks {starved_names} have "
        f"weight < {STARVED_WEIGHT} and get no gradient (weights {weights}){known}. Min-max "
        f"follows the largest loss, so losses of different units or scales starve the others. "
        f"Fix: `normalize_losses=True` (or 'auto'), fixed `loss_scales={{task: s}}`, or a larger "
        f"`gamma` (the pull towards uniform weights).")


class StarvationWatch:
    """Watches the task weights at each epoch end; says once when tasks stay starved two epochs.

    Example:

    >>> watch = StarvationWatch()
    >>> watch.epoch_end(["a", "b"], [0.0, 1.0], [0.1, 9.0]) is None     # first epoch
    True
    >>> watch.epoch_end(["a", "b"], [0.0, 1.0], [0.1, 9.0])[:46]
    'The task weights have sat at a vertex of the s'
    """

    def __init__(self):
        self._before = set()
        self._warned = False

    def epoch_end(self, names, weights, first_losses):
        """The warning's message the first time a task is starved at two epoch ends in a row, else `None`."""
        now = set(starved(names, weights))
        both, self._before = sorted(now & self._before), now
        if both and not self._warned:
            self._warned = True
            return starvation_message(names, weights, first_losses, both)
        return None
