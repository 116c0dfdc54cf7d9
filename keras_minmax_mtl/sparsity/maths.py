r"""The pure maths of pruning, written once for both Keras paths (NumPy and `math` only).

The tf_keras path (`sparsity.reweighted`, `sparsity.dst`, `sparsity.mask_updaters`)
and the Keras 3 path (`keras_minmax_mtl.keras3.pruning`, `keras3.dst`) run these
functions; this module imports no Keras, TensorFlow or tfmot.

- `magnitude_mask`: keep the ``k = round(n·(1 − s))`` weights of largest ``|w|``;
- `polynomial_sparsity`, `should_prune_at`: tfmot's `PolynomialDecay` schedule,
  ``s(t) = s_f + (s_0 − s_f)·(1 − p)^e``, ``p = clip((t − t_0)/(t_1 − t_0), 0, 1)``,
  pruning at ``t_0 ≤ t ≤ t_1`` (or ``t_1 = −1``) with ``(t − t_0) mod f = 0``;
- `reweighted_factors`: ``1/(|w^ref| + ε)``, the factors of the reweighted-ℓ1 penalty
  ``ρ Σ_j |w_j|/(|w^ref_j| + ε)``; `refresh_points`, the steps at which ``w^ref`` is taken again;
- `drop_fraction_at`: the DST drop fraction ``f_0·½(1 + cos(πt/T))`` (or constant);
- `random_mask`: the initial DST mask, `count` positions drawn uniformly;
- `top_indices`, `prune_and_grow`: the drop-and-grow step of RigL / SET with an
  exact number of active weights;
- the argument checks of these methods (`check_target_sparsity`, `check_rho`,
  `check_epsilon`, `check_stage_steps`, and DST's schedule: `check_dst_schedule`,
  `dst_end_step`, with the `DST_DECAYS`).

Example:

>>> magnitude_mask(np.array([0.3, -2.0, 0.1, 1.0]), sparsity=0.5)
array([0., 1., 0., 1.], dtype=float32)
>>> polynomial_sparsity(50, 0.0, 0.9, begin_step=0, end_step=100, exponent=3)
0.7875
"""
import math
import numbers

import numpy as np

from keras_minmax_mtl.core.checks import is_finite_real, is_int, is_real

__all__ = ["check_target_sparsity", "check_rho", "check_epsilon", "check_stage_steps",
           "DST_DECAYS", "check_dst_schedule", "dst_end_step", "magnitude_mask", "polynomial_sparsity", "should_prune_at", "reweighted_factors",
           "refresh_points", "drop_fraction_at", "top_indices", "prune_and_grow", "random_mask"]


def check_target_sparsity(target_sparsity, name="target_sparsity"):
    """Returns `float(target_sparsity)` if it is a number in `[0, 1)`; raises `ValueError` naming `name`."""
    if (not isinstance(target_sparsity, numbers.Real) or isinstance(target_sparsity, bool)
            or not 0.0 <= target_sparsity < 1.0):
        raise ValueError(f"Argument `{name}` must be in [0, 1). Received: {name}={target_sparsity!r}")
    return float(target_sparsity)


def _not_finite(value):
    return " (a finite number is needed)" if is_real(value) and not is_finite_real(value) else ""


def check_epsilon(epsilon):
    """Returns `float(epsilon)` if it is a finite number `> 0`."""
    if not is_finite_real(epsilon) or not epsilon > 0:
        raise ValueError(f"Argument `epsilon` must be > 0. Received: epsilon={epsilon!r}"
                         + _not_finite(epsilon))
    return float(epsilon)


def check_rho(rho):
    """Returns `float(rho)` if it is a finite number `>= 0`."""
    if not is_finite_real(rho) or not rho >= 0:
        raise ValueError(f"Argument `rho` must be a number >= 0. Received: rho={rho!r}"
                         + _not_finite(rho))
    return float(rho)


def check_stage_steps(begin_step, prune_step):
    """Returns `(begin_step, prune_step)` as ints: ``1 <= begin_step <= prune_step``."""
    if not is_int(begin_step) or begin_step < 1:
        raise ValueError(
            f"Argument `begin_step` must be an integer >= 1 (tfmot's first training step is "
            f"step 1). Received: begin_step={begin_step!r}"
        )
    if not is_int(prune_step) or prune_step < begin_step:
        raise ValueError(
            f"Argument `prune_step` must be an integer >= begin_step={begin_step} (the prune "
            f"cannot come before the reweighted stage begins). Received: prune_step={prune_step!r}"
        )
    return int(begin_step), int(prune_step)


def top_indices(candidates, scores, k, rng=None):
    """Flat indices of the `k` candidates with the highest scores.

    Linear time: a partition finds the k-th largest score; every candidate
    above it is taken, and the rest among those equal to it are drawn at
    random from `rng` (a `numpy.random.Generator`), or, when `rng` is `None`,
    taken in index order (deterministic).

    Args:
        candidates: a boolean array; only its true entries can be chosen.
        scores: an array of the same size.
        k: how many to choose (all candidates if there are fewer).
        rng: a `numpy.random.Generator` for the tie breaks, or `None`.
    """
    index = np.flatnonzero(candidates)
    if k <= 0 or index.size == 0:
        return index[:0]
    if k >= index.size:
        return index
    values = np.asarray(scores).reshape(-1)[index]
    kth = np.partition(values, index.size - k)[index.size - k]
    above = index[values > kth]
    ties = index[values == kth]
    need = k - above.size
    chosen = ties[:need] if rng is None else ties[rng.choice(ties.size, size=need, replace=False)]
    return np.concatenate([above, chosen])


def magnitude_mask(values, sparsity, rng=None):
    r"""The 0/1 mask keeping the ``k = max(round(n·(1 − sparsity)), 1)`` entries of largest ``|values|``.

    tfmot's rule (`pruning_impl.Pruning._update_mask`: the same ``k``; tfmot
    keeps every weight at or above the k-th magnitude, so it can keep more on
    ties); here exactly ``k`` are kept, ties at the k-th magnitude broken by
    `rng` or, without one, by index.

    Args:
        values: the (already masked) weights, any shape.
        sparsity: the fraction set to zero, in `[0, 1)`.
        rng: a `numpy.random.Generator` for ties, or `None` (index order).

    Returns:
        A float32 array of the shape of `values`.
    """
    values = np.asarray(values)
    sparsity = check_target_sparsity(sparsity, "sparsity")
    k = max(int(round(values.size * (1.0 - sparsity))), 1) if values.size else 0
    keep = np.zeros(values.size, dtype=bool)
    keep[top_indices(np.ones(values.size, dtype=bool), np.abs(values), k, rng)] = True
    return keep.reshape(values.shape).astype(np.float32)


def polynomial_sparsity(step, initial_sparsity, final_sparsity, begin_step, end_step, exponent=3):
    r"""tfmot's `PolynomialDecay` sparsity at `step`.

    .. math::

        s(t) = s_f + (s_0 - s_f)\,(1 - p)^{e},\qquad
        p = \min\big(1, \max(0, \tfrac{t - t_0}{t_1 - t_0})\big)

    (`tfmot.sparsity.keras.PolynomialDecay.__call__`, with `power` = ``e``).
    """
    p = min(1.0, max(0.0, (step - begin_step) / float(end_step - begin_step)))
    return float(final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - p) ** exponent)


def should_prune_at(step, begin_step, end_step, frequency):
    """tfmot's pruning turn: ``begin ≤ step ≤ end`` (or ``end = −1``) and ``(step − begin) mod frequency = 0``."""
    in_range = step >= begin_step and (step <= end_step or end_step < 0)
    return bool(in_range and (step - begin_step) % frequency == 0)


def reweighted_factors(magnitudes, epsilon):
    r"""``1 / (|w^{ref}| + ε)``: the factors of the reweighted-ℓ1 penalty ``ρ Σ_j |w_j|·factor_j``.

    `magnitudes` are ``|w^ref|`` (or the unit norms ``‖W^ref_u‖₂`` of the
    group penalty); any array type with `+` and `/` (NumPy, TensorFlow,
    `keras.ops` tensors).
    """
    return 1.0 / (magnitudes + epsilon)


def refresh_points(begin_step, prune_step, refreshes):
    """The `refreshes` steps, evenly spaced strictly inside ``(begin_step, prune_step)``, at which ``w^ref`` is retaken.

    Example: ``refresh_points(501, 1001, 2) == (668, 834)`` (1/3 and 2/3 of the stage).
    """
    length = prune_step - begin_step
    points = {begin_step + int(round(i * length / (refreshes + 1))) for i in range(1, refreshes + 1)}
    return tuple(sorted(p for p in points if begin_step < p < prune_step))


#: DST's `decay` names: how the drop fraction goes to 0 at `end_step` (`drop_fraction_at`).
DST_DECAYS = ("cosine", "constant")


def check_dst_schedule(update_every, end_step, drop_fraction, decay):
    """Checks the schedule of dynamic sparse training; returns it normalised.

    The rules of both Keras paths' `DynamicSparseTraining`: masks change at
    every `update_every`-th step (``update_every > 0``) up to `end_step`
    (`None`: 75 % of the run, `dst_end_step`; else ``end_step >=
    update_every``, since the first update is at step `update_every`), each
    dropping a fraction in ``(0, 1]`` that decays by `decay` (`DST_DECAYS`).

    Returns:
        `(update_every, end_step, drop_fraction)` as `int`, `int` or `None`,
        and `float`.

    Raises:
        ValueError: naming the first argument that breaks its rule.

    Example:

    >>> check_dst_schedule(100, None, 0.3, "cosine")
    (100, None, 0.3)
    """
    if not is_int(update_every) or update_every <= 0:
        raise ValueError(f"Argument `update_every` must be an integer > 0. "
                         f"Received: update_every={update_every!r}")
    if end_step is not None and (not is_int(end_step) or end_step < update_every):
        raise ValueError(
            f"Argument `end_step` must be an integer >= update_every ({update_every}): the "
            f"first update happens at step `update_every`. Received: end_step={end_step!r}")
    if not is_finite_real(drop_fraction) or not 0 < drop_fraction <= 1:
        raise ValueError(f"Argument `drop_fraction` must be in (0, 1]. "
                         f"Received: drop_fraction={drop_fraction!r}")
    if not isinstance(decay, str) or decay not in DST_DECAYS:
        raise ValueError(f"Argument `decay` must be one of {list(DST_DECAYS)}. "
                         f"Received: decay={decay!r}")
    return int(update_every), None if end_step is None else int(end_step), float(drop_fraction)


def dst_end_step(end_step, total, update_every, unit="steps"):
    """The last step of DST's mask updates: `end_step`, or ``int(0.75 · total)`` when it is `None`.

    As in RigL, the masks stop changing after 75 % of the run's `total`
    steps (epochs for ``unit="epochs"``); the default must leave room for
    the first update, at `update_every`.

    Args:
        end_step: the given last step (already checked, `check_dst_schedule`) or `None`.
        total: the run's number of steps (or epochs); `None` or 0 when unknown.
        update_every: the steps (epochs) between updates.
        unit: `"steps"` or `"epochs"`, for the messages.

    Raises:
        ValueError: `end_step` is `None` and `total` unknown, or its default
            comes before the first update.

    Example:

    >>> dst_end_step(None, 1000, 100), dst_end_step(500, 1000, 100)
    (750, 500)
    """
    if end_step is not None:
        return end_step
    if not total:
        raise ValueError(f"Argument `end_step` is required when `fit` does not know the number "
                         f"of training {unit} (e.g. a dataset of unknown length). Received: "
                         f"end_step=None")
    end = int(0.75 * total)
    if end < update_every:
        raise ValueError(
            f"Argument `end_step` defaults to 75% of the training {unit} ({end}), which is "
            f"before the first update at update_every={update_every}. Pass a smaller "
            f"`update_every` or an explicit `end_step`.")
    return end


def drop_fraction_at(step, drop_fraction, end_step, decay="cosine"):
    r"""The drop fraction at `step`: ``f_0·½(1 + cos(π·step/end_step))`` (cosine) or ``f_0``; 0 after `end_step`."""
    if step > end_step:
        return 0.0
    if decay == "constant":
        return float(drop_fraction)
    return float(drop_fraction) * 0.5 * (1.0 + math.cos(math.pi * step / end_step))


def prune_and_grow(mask, drop_scores, grow_scores, n_drop, n_grow, rng=None):
    """The new mask after dropping the `n_drop` active weights of lowest drop score and growing `n_grow`.

    Keeps the ``n_active − n_drop`` active weights of highest `drop_scores`,
    then switches on the `n_grow` weights of highest `grow_scores` among
    those left off (a weight dropped in this update may be grown back).
    With ``n_grow = n_drop`` the number of active weights is unchanged.

    Args:
        mask: the current 0/1 mask.
        drop_scores: scores of the weights (e.g. ``|w·mask|``), same shape.
        grow_scores: scores for growing (e.g. ``|∂L/∂w|``), same shape, or a
            function of no argument that returns them, called after the drop
            (so that random scores drawn from `rng` come after the drop's tie breaks).
        n_drop: capped at the number active.
        n_grow: capped at the number left inactive.
        rng: a `numpy.random.Generator` for the tie breaks, or `None` (index order).

    Returns:
        The new mask, of the dtype and shape of `mask`.
    """
    mask = np.asarray(mask)
    active = mask.reshape(-1) > 0
    n_active = int(active.sum())
    n_drop = min(max(int(n_drop), 0), n_active)
    kept = np.zeros(active.size, dtype=bool)
    kept[top_indices(active, drop_scores, n_active - n_drop, rng)] = True
    if callable(grow_scores):
        grow_scores = grow_scores()
    kept[top_indices(~kept, grow_scores, int(n_grow), rng)] = True
    return kept.reshape(mask.shape).astype(mask.dtype)


def random_mask(shape, count, rng, dtype=np.float32):
    """A 0/1 mask of `shape` with exactly `count` ones at uniformly drawn positions.

    The positions are the first `count` of ``rng.permutation(n)`` (the initial
    masks of dynamic sparse training, `rng` seeded per layer).
    """
    flat = np.zeros(int(np.prod(shape)), dtype=dtype)
    flat[rng.permutation(flat.size)[:int(count)]] = 1
    return flat.reshape(tuple(shape))
