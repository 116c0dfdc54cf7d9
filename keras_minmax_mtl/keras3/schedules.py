r"""Pruning schedules for Keras 3 models: when to set the masks, and to what sparsity.

The interface is tfmot's: ``schedule(step) → (should_prune, sparsity)``, with
``step`` the 1-based training step (the k-th step of training is step ``k``,
as tfmot's wrappers count). The maths is `keras_minmax_mtl.sparsity.maths`,
shared with the tf_keras path:

- `ConstantSparsity(target_sparsity, begin_step=0, end_step=-1, frequency=100)`;
- `PolynomialDecay(initial_sparsity, final_sparsity, begin_step, end_step, power=3, frequency=100)`:
  ``s(t) = s_f + (s_0 − s_f)(1 − p)^power``, ``p = clip((t − t_0)/(t_1 − t_0), 0, 1)``,
  pruning at ``t_0 ≤ t ≤ t_1`` with ``(t − t_0) mod frequency = 0`` (tfmot's semantics, exactly);
- `ReweightedL1Schedule(target_sparsity, prune_step, begin_step=1, refresh_steps=())`: the
  three stages of reweighted ℓ1 (`stage(step)` is `"dense"`, `"reweighted"` or
  `"masked"`), pruning exactly once, at `prune_step`.

All are registered for Keras serialization (`get_config` holds every constructor argument).

Example:

>>> schedule = PolynomialDecay(0.0, 0.9, begin_step=0, end_step=100, frequency=10)
>>> schedule(50)
(True, 0.7875)
"""
from keras_minmax_mtl.core.checks import is_int
from keras_minmax_mtl.keras3.backend import register
from keras_minmax_mtl.sparsity.maths import (
    check_stage_steps,
    check_target_sparsity,
    polynomial_sparsity,
    refresh_points,
    should_prune_at,
)

__all__ = ["PruningSchedule", "ConstantSparsity", "PolynomialDecay", "ReweightedL1Schedule",
           "STAGES"]

#: The stages of `ReweightedL1Schedule.stage`.
STAGES = ("dense", "reweighted", "masked")


def _check_range(begin_step, end_step, frequency):
    if not is_int(begin_step) or begin_step < 0:
        raise ValueError(f"Argument `begin_step` must be an integer >= 0. Received: begin_step={begin_step!r}")
    if not is_int(end_step) or (end_step != -1 and end_step < begin_step):
        raise ValueError(f"Argument `end_step` must be -1 (no end) or an integer >= begin_step="
                         f"{begin_step}. Received: end_step={end_step!r}")
    if not is_int(frequency) or frequency <= 0:
        raise ValueError(f"Argument `frequency` must be an integer > 0. Received: frequency={frequency!r}")
    return int(begin_step), int(end_step), int(frequency)


class PruningSchedule:
    """Base class: ``schedule(step) → (should_prune, sparsity)`` for the 1-based training step."""

    def __call__(self, step):
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@register
class ConstantSparsity(PruningSchedule):
    """The same sparsity at every pruning turn (tfmot's `ConstantSparsity`).

    Args:
        target_sparsity: in `[0, 1)`.
        begin_step: first step that may prune, `>= 0`. Defaults to `0`.
        end_step: last step that may prune, or `-1` (never stops). Defaults to `-1`.
        frequency: prune every this many steps from `begin_step`, `> 0`. Defaults to `100`.
    """

    def __init__(self, target_sparsity, begin_step=0, end_step=-1, frequency=100):
        self.target_sparsity = check_target_sparsity(target_sparsity)
        self.begin_step, self.end_step, self.frequency = _check_range(begin_step, end_step, frequency)

    def __call__(self, step):
        return (should_prune_at(step, self.begin_step, self.end_step, self.frequency),
                self.target_sparsity)

    def get_config(self):
        return {"target_sparsity": self.target_sparsity, "begin_step": self.begin_step,
                "end_step": self.end_step, "frequency": self.frequency}


@register
class PolynomialDecay(PruningSchedule):
    r"""Sparsity rising from `initial_sparsity` to `final_sparsity` (tfmot's `PolynomialDecay`).

    .. math::

        s(t) = s_f + (s_0 - s_f)\,\big(1 - \min(1, \max(0, \tfrac{t - t_0}{t_1 - t_0}))\big)^{\text{power}}

    Args:
        initial_sparsity: ``s_0``, in `[0, 1)`.
        final_sparsity: ``s_f``, in `[0, 1)`.
        begin_step: ``t_0``, `>= 0`.
        end_step: ``t_1``, `> begin_step` (no `-1`: the decay needs an end).
        power: the exponent. Defaults to `3`.
        frequency: prune every this many steps from `begin_step`. Defaults to `100`.
    """

    def __init__(self, initial_sparsity, final_sparsity, begin_step, end_step, power=3,
                 frequency=100):
        self.initial_sparsity = check_target_sparsity(initial_sparsity, "initial_sparsity")
        self.final_sparsity = check_target_sparsity(final_sparsity, "final_sparsity")
        self.begin_step, self.end_step, self.frequency = _check_range(begin_step, end_step, frequency)
        if self.end_step <= self.begin_step:
            raise ValueError(f"Argument `end_step` must be > begin_step={self.begin_step} for a "
                             f"decay. Received: end_step={end_step!r}")
        if not isinstance(power, (int, float)) or isinstance(power, bool) or not power > 0:
            raise ValueError(f"Argument `power` must be a number > 0. Received: power={power!r}")
        self.power = power

    def __call__(self, step):
        return (should_prune_at(step, self.begin_step, self.end_step, self.frequency),
                polynomial_sparsity(step, self.initial_sparsity, self.final_sparsity,
                                    self.begin_step, self.end_step, self.power))

    def get_config(self):
        return {"initial_sparsity": self.initial_sparsity, "final_sparsity": self.final_sparsity,
                "begin_step": self.begin_step, "end_step": self.end_step, "power": self.power,
                "frequency": self.frequency}


@register
class ReweightedL1Schedule(PruningSchedule):
    """The three stages of reweighted ℓ1: dense, reweighted, then one prune and masked retraining.

    ``schedule(step)`` is ``(step == prune_step, target_sparsity)``;
    ``stage(step)`` is `"dense"` before `begin_step`, `"reweighted"` from
    `begin_step` to ``prune_step − 1`` and `"masked"` from `prune_step` on.

    Args:
        target_sparsity: in `[0, 1)`.
        prune_step: the step of the hard prune, `>= begin_step`.
        begin_step: the first step of the reweighted stage, `>= 1`. Defaults to `1`.
        refresh_steps: steps in ``(begin_step, prune_step)`` at which ``w^ref``
            is taken again, or an integer: that many evenly spaced steps
            (`sparsity.maths.refresh_points`; the paper: 2, at 1/3 and 2/3).
            Defaults to `2`.
    """

    def __init__(self, target_sparsity, prune_step, begin_step=1, refresh_steps=2):
        self.target_sparsity = check_target_sparsity(target_sparsity)
        self.begin_step, self.prune_step = check_stage_steps(begin_step, prune_step)
        if is_int(refresh_steps):
            if refresh_steps < 0:
                raise ValueError(f"Argument `refresh_steps` as a count must be >= 0. "
                                 f"Received: refresh_steps={refresh_steps!r}")
            refresh_steps = refresh_points(self.begin_step, self.prune_step, int(refresh_steps))
        refresh_steps = tuple(refresh_steps)
        for step in refresh_steps:
            if not is_int(step) or not self.begin_step < step < self.prune_step:
                raise ValueError(
                    f"Argument `refresh_steps` must hold integers in (begin_step, prune_step) = "
                    f"({self.begin_step}, {self.prune_step}). Received: refresh_steps={refresh_steps!r}")
        self.refresh_steps = tuple(sorted({int(s) for s in refresh_steps}))

    def stage(self, step):
        """`"dense"`, `"reweighted"` or `"masked"` at the 1-based `step`."""
        if step < self.begin_step:
            return "dense"
        return "reweighted" if step < self.prune_step else "masked"

    def __call__(self, step):
        return step == self.prune_step, self.target_sparsity

    def get_config(self):
        return {"target_sparsity": self.target_sparsity, "prune_step": self.prune_step,
                "begin_step": self.begin_step, "refresh_steps": list(self.refresh_steps)}
