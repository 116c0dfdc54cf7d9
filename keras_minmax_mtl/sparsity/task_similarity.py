r"""Measurements of task-aware dynamic model optimisation: similarity, difficulty, groups, budgets.

Pure NumPy functions (no Keras) behind `keras_minmax_mtl.sparsity.task_aware`, after
Choi, Jin and Kim, "Task-aware dynamic model optimization for multi-task
learning" (IEEE Access 11, 2023). Where the paper's exact rules were not
available to us, the rule below is *our reading*, stated in each docstring:

- **similarity** of tasks ``i`` and ``j``: Pearson correlations

  .. math::

      S = \alpha\, S_{weight} + (1 - \alpha)\, S_{loss},

  where ``S_weight[i, j]`` correlates the gradients of the two tasks' losses
  with respect to the shared trunk kernels (the directions in which each task
  would move the shared weights) and ``S_loss[i, j]`` correlates their
  per-sample loss vectors on the same batch;
- **difficulty** of task ``t``: the fraction of samples whose loss for ``t``
  exceeds the mean loss of that sample over the tasks,
  ``d_t = (1/N) Σ_n [L_{t,n} > (1/K) Σ_k L_{k,n}]``;
- **groups**: average-linkage agglomerative clustering on ``S`` (the paper
  finds maximal cliques of a thresholded similarity graph; clustering gives
  a partition for any threshold or number of groups, deterministically);
- **budgets**: each group's share of a fixed number of non-zero weights grows
  with its difficulty (`allocate_budget`).

Example:

>>> losses = np.array([[1.0, 2.0, 3.0], [1.0, 2.5, 2.9], [3.0, 0.1, 0.2]])
>>> similarity = mixed_similarity(pearson_matrix(gradients), pearson_matrix(losses), alpha=0.5)
>>> groups = group_tasks(similarity, num_groups=2)          # e.g. [(0, 1), (2,)]
>>> difficulty = task_difficulty(losses)
>>> allocate_budget([difficulty[list(g)].mean() for g in groups], sizes=[64, 32], budget=40)
"""
import math
import numbers

import numpy as np

from keras_minmax_mtl.core.checks import is_finite_real, is_int, is_real

__all__ = [
    "pearson_matrix",
    "check_alpha",
    "mixed_similarity",
    "task_difficulty",
    "group_tasks",
    "allocate_budget",
]


def _matrix(values, argument):
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] < 2:
        raise ValueError(f"Argument `{argument}` must be a 2-D array (tasks, values) with at least "
                         f"two values per task. Received shape {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"Argument `{argument}` must hold finite numbers. Received non-finite "
                         f"values at {np.argwhere(~np.isfinite(array)).tolist()[:5]}.")
    return array


def pearson_matrix(vectors):
    r"""The Pearson correlations between the rows of `vectors`, a `(K, K)` matrix.

    .. math::

        S_{ij} = \frac{\sum_m (v_{im} - \bar v_i)(v_{jm} - \bar v_j)}
                      {\sqrt{\sum_m (v_{im} - \bar v_i)^2}\sqrt{\sum_m (v_{jm} - \bar v_j)^2}}

    A constant row has no defined correlation: its entries are 0, except
    ``S_ii = 1``. The diagonal is always 1.

    Args:
        vectors: an array of shape `(K, M)`, `M >= 2`: one vector per task
            (its per-sample losses, or its flattened gradient).

    Returns:
        A symmetric float64 array of shape `(K, K)` with values in `[-1, 1]`.

    Example:

    >>> pearson_matrix([[1, 2, 3], [2, 4, 6], [3, 2, 1]])
    array([[ 1.,  1., -1.],
           [ 1.,  1., -1.],
           [-1., -1.,  1.]])
    """
    array = _matrix(vectors, "vectors")
    centered = array - array.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.sum(centered * centered, axis=1))
    safe = np.where(norms > 0, norms, 1.0)
    unit = centered / safe[:, None]
    similarity = np.clip(unit @ unit.T, -1.0, 1.0)
    similarity[norms == 0, :] = 0.0
    similarity[:, norms == 0] = 0.0
    np.fill_diagonal(similarity, 1.0)
    return similarity


def check_alpha(alpha):
    """Returns `alpha` as a float if it is in `[0, 1]`; raises `ValueError` otherwise."""
    if not is_real(alpha) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"Argument `alpha` must be in [0, 1]. Received: alpha={alpha!r}")
    return float(alpha)


def mixed_similarity(weight_similarity, loss_similarity, alpha=0.5):
    """``α · weight_similarity + (1 − α) · loss_similarity``.

    Args:
        weight_similarity: a `(K, K)` array (e.g. `pearson_matrix` of the
            tasks' trunk gradients).
        loss_similarity: a `(K, K)` array (e.g. `pearson_matrix` of the tasks'
            per-sample losses).
        alpha: the weight of `weight_similarity`, in `[0, 1]`. Defaults to `0.5`.

    Returns:
        The mixed `(K, K)` array.
    """
    alpha = check_alpha(alpha)
    weight = np.asarray(weight_similarity, dtype=np.float64)
    loss = np.asarray(loss_similarity, dtype=np.float64)
    if weight.ndim != 2 or weight.shape[0] != weight.shape[1] or weight.shape != loss.shape:
        raise ValueError(f"Arguments `weight_similarity` and `loss_similarity` must be square "
                         f"arrays of the same shape. Received shapes {weight.shape} and "
                         f"{loss.shape}.")
    return float(alpha) * weight + (1.0 - float(alpha)) * loss


def task_difficulty(per_sample_losses):
    r"""The fraction of samples on which each task's loss exceeds the sample's mean task loss.

    .. math::

        d_t = \frac1N \sum_{n=1}^N \Big[L_{t,n} > \frac1K \sum_{k=1}^K L_{k,n}\Big]

    Our reading of the paper's "sample-wise loss" difficulty: the mean is
    taken over the tasks *for each sample* (not over the batch), so a task
    is hard where it does worse than the others on the same inputs. The
    comparison is strict: a sample with equal losses for every task counts
    for none. Losses of different units should be normalised first.

    Args:
        per_sample_losses: an array of shape `(K, N)`: the loss of task `t`
            on sample `n`.

    Returns:
        A float64 array of shape `(K,)` with values in `[0, 1]`.

    Example:

    >>> task_difficulty([[1.0, 3.0], [2.0, 1.0], [3.0, 2.0]])  # sample means 2 and 2
    array([0.5, 0. , 0.5])
    """
    losses = np.asarray(per_sample_losses, dtype=np.float64)
    if losses.ndim != 2 or losses.shape[1] < 1:
        raise ValueError(f"Argument `per_sample_losses` must be a 2-D array (tasks, samples). "
                         f"Received shape {losses.shape}.")
    return np.mean(losses > losses.mean(axis=0, keepdims=True), axis=1)


def group_tasks(similarity, num_groups=None, threshold=None):
    """Groups similar tasks by average-linkage agglomerative clustering; deterministic.

    Starts from one group per task and repeatedly merges the two groups of
    largest *average linkage* (the mean of ``S[i, j]`` over ``i`` in one
    group and ``j`` in the other); ties go to the pair whose smallest task
    indices come first. It stops when `num_groups` groups are left, or when
    no pair has an average linkage ``>= threshold``. Give exactly one of
    them. The matrix is symmetrised (``(S + Sᵀ)/2``) first.

    Args:
        similarity: a `(K, K)` array, `K >= 2`.
        num_groups: the number of groups, in `[1, K]`. Defaults to `None`.
        threshold: merge while the best average linkage is at least this,
            in `[-1, 1]`. Defaults to `None`.

    Returns:
        A list of tuples of task indices (each sorted), ordered by their
        first task.

    Example:

    >>> group_tasks([[1, .9, .1], [.9, 1, .2], [.1, .2, 1]], num_groups=2)
    [(0, 1), (2,)]
    """
    matrix = np.asarray(similarity, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"Argument `similarity` must be a square (K, K) array. Received shape "
                         f"{matrix.shape}.")
    k = matrix.shape[0]
    if k < 2:
        raise ValueError(f"Argument `similarity` must describe at least two tasks to group. "
                         f"Received a ({k}, {k}) matrix.")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("Argument `similarity` must hold finite numbers. Received non-finite "
                         "values.")
    if (num_groups is None) == (threshold is None):
        raise ValueError(f"Exactly one of `num_groups` and `threshold` must be given. Received: "
                         f"num_groups={num_groups!r}, threshold={threshold!r}")
    if num_groups is not None and (not is_int(num_groups) or not 1 <= num_groups <= k):
        raise ValueError(f"Argument `num_groups` must be an integer in [1, {k}] (the number of "
                         f"tasks). Received: num_groups={num_groups!r}")
    if threshold is not None and (not is_real(threshold) or not -1.0 <= threshold <= 1.0):
        raise ValueError(f"Argument `threshold` must be in [-1, 1]. Received: threshold={threshold!r}")
    matrix = 0.5 * (matrix + matrix.T)
    groups = [(i,) for i in range(k)]
    while len(groups) > 1 and (num_groups is None or len(groups) > num_groups):
        best = None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                linkage = float(matrix[np.ix_(groups[a], groups[b])].mean())
                if best is None or linkage > best[0]:
                    best = (linkage, a, b)
        linkage, a, b = best
        if threshold is not None and linkage < threshold:
            break
        merged = tuple(sorted(groups[a] + groups[b]))
        groups = sorted([g for i, g in enumerate(groups) if i not in (a, b)] + [merged])
    return groups


def _bounded_fill(scores, low, high, total):
    """Reals ``x_g = clip(c · scores_g, low_g, high_g)`` with ``Σ x_g = total`` (bisection on ``c``)."""
    def filled(c):
        return np.clip(c * scores, low, high)

    lo, hi = 0.0, 1.0
    while filled(hi).sum() < total:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if filled(mid).sum() < total:
            lo = mid
        else:
            hi = mid
    return filled(hi)


def allocate_budget(difficulty, sizes, budget, smoothing=0.5, minimum=1):
    r"""Splits `budget` non-zero weights among groups; harder groups keep a larger fraction.

    Group ``g`` of `sizes[g]` weights keeps

    .. math::

        x_g = \operatorname{clip}\big(c\,(d_g + \text{smoothing})\, n_g,\ \text{minimum},\ n_g\big)

    weights, with ``c`` such that ``Σ x_g = budget``: its density (kept
    fraction) is proportional to its difficulty plus `smoothing`, within the
    bounds. The integer counts take ``⌊x_g⌋`` and give the remaining units
    to the largest fractional parts (ties to the lower index), so they add
    up to exactly `budget`. For groups of equal size, a harder group never
    keeps fewer weights than an easier one. This rule is ours (the paper
    allocates "according to task difficulty").

    Args:
        difficulty: `(G,)` difficulties in `[0, 1]` (e.g. the mean
            `task_difficulty` of each group's tasks).
        sizes: `(G,)` positive integers: the weights of each group.
        budget: the total number of non-zero weights, an integer in
            ``[G · minimum, Σ sizes]``.
        smoothing: `> 0`, added to every difficulty so that an easy group
            still keeps weights; the larger, the flatter the split (with
            difficulties 0 and 1 the densities are in the ratio
            ``smoothing : 1 + smoothing``). Defaults to `0.5`.
        minimum: the fewest weights a group keeps, an integer `>= 0`.
            Defaults to `1`.

    Returns:
        A list of `G` ints.

    Example:

    >>> allocate_budget([0.2, 0.6], sizes=[100, 100], budget=60)   # densities 0.7 : 1.1
    [23, 37]
    """
    scores = np.asarray(difficulty, dtype=np.float64)
    if scores.ndim != 1 or scores.size < 1 or np.any(~np.isfinite(scores)) \
            or np.any(scores < 0) or np.any(scores > 1):
        raise ValueError(f"Argument `difficulty` must be a non-empty 1-D array of values in [0, 1]. "
                         f"Received: difficulty={np.asarray(difficulty).tolist()!r}")
    sizes_list = list(sizes) if not isinstance(sizes, np.ndarray) else sizes.tolist()
    if len(sizes_list) != scores.size or not all(is_int(n) and n > 0 for n in sizes_list):
        raise ValueError(f"Argument `sizes` must hold one positive integer per group "
                         f"({scores.size}). Received: sizes={sizes_list!r}")
    if not is_finite_real(smoothing) or not smoothing > 0:
        raise ValueError(f"Argument `smoothing` must be a finite number > 0. "
                         f"Received: smoothing={smoothing!r}")
    if not is_int(minimum) or minimum < 0 or minimum > min(sizes_list):
        raise ValueError(f"Argument `minimum` must be an integer in [0, {min(sizes_list)}] (the "
                         f"smallest group). Received: minimum={minimum!r}")
    n = np.asarray(sizes_list, dtype=np.float64)
    lowest, highest = minimum * scores.size, int(sum(sizes_list))
    if not is_int(budget) or not lowest <= budget <= highest:
        raise ValueError(f"Argument `budget` must be an integer in [{lowest}, {highest}]: at least "
                         f"{minimum} weight(s) per group and at most every weight. "
                         f"Received: budget={budget!r}")
    ideal = _bounded_fill((scores + smoothing) * n, float(minimum), n, float(budget))
    counts = [min(int(s), max(minimum, int(math.floor(x + 1e-9)))) for x, s in zip(ideal, sizes_list)]
    order = sorted(range(scores.size), key=lambda g: (-(ideal[g] - counts[g]), g))
    while sum(counts) < budget:
        for g in order:
            if sum(counts) < budget and counts[g] < sizes_list[g]:
                counts[g] += 1
    while sum(counts) > budget:  # float slack only
        for g in reversed(order):
            if sum(counts) > budget and counts[g] > minimum:
                counts[g] -= 1
    return counts
