r"""Layer densities for a sparse network: how many weights each layer keeps.

Three distributions of a global density ``d = 1 − sparsity`` over layers of
sizes ``n_l = Π shape_l``:

- `"uniform"`: every layer keeps the fraction ``d`` of its weights.
- `"erk"` (Erdős–Rényi-Kernel, Evci et al., "Rigging the Lottery", ICML 2020):
  layer ``l`` gets density ``min(1, ε · (Σ shape_l) / (Π shape_l))``, with
  ``ε`` chosen so that ``Σ_l density_l · n_l = d · Σ_l n_l``. Small layers
  (few weights per input/output unit) stay denser. A layer whose density
  would exceed 1 is kept dense and ``ε`` is solved again for the others,
  until no layer exceeds 1.
- `"er"` (Erdős–Rényi, Mocanu et al. 2018; Evci et al. 2020): the same with
  ``(n_in + n_out) / (n_in · n_out)`` of the last two dimensions only (a
  convolution's kernel size does not count), so a convolution with few
  channels keeps a larger share than under ERK. On `multi_digits` ERK leaves
  the 3×3×16×32 convolution 300 of its 4608 weights at 90 % sparsity and ER
  2006; with RigL at Adam 1e-2 the worst task rose from 0.55 to 0.78
  (validation, docs/dst.md).

The integer counts of `active_counts` add up to exactly ``round(d · Σ n_l)``:
each layer's ideal count is rounded down, and the remaining units go to the
layers with the largest remainders (ties to the earlier layer), never above a
layer's size.

Example:

>>> active_counts([(3, 3, 1, 16), (1536, 64)], sparsity=0.9, distribution="erk")
[140, 9705]
"""
import math

import numpy as np

__all__ = ["DISTRIBUTIONS", "layer_densities", "active_counts"]

#: The layer-density distributions, with a description for error messages.
DISTRIBUTIONS = {
    "uniform": "every layer at the same density",
    "erk": "Erdős–Rényi-Kernel: density ∝ (Σ shape)/(Π shape), capped at 1 (Evci et al. 2020)",
    "er": "Erdős–Rényi: density ∝ (n_in + n_out)/(n_in·n_out) of the last two dimensions, "
          "capped at 1 (Mocanu et al. 2018)",
}


def _check(shapes, sparsity, distribution):
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"Argument `distribution` must be one of {list(DISTRIBUTIONS)}. "
            f"Received: distribution={distribution!r}"
        )
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"Argument `sparsity` must be in [0, 1). Received: sparsity={sparsity!r}")
    shapes = [tuple(int(s) for s in shape) for shape in shapes]
    if not shapes or any(not shape or min(shape) <= 0 for shape in shapes):
        raise ValueError(
            "Argument `shapes` must be a non-empty list of non-empty shapes with positive "
            f"dimensions. Received: shapes={shapes!r}"
        )
    return shapes


def layer_densities(shapes, sparsity, distribution="erk"):
    """The density (fraction of weights kept) of each layer.

    Args:
        shapes: the shapes of the layers' weights (e.g. `[(3, 3, 1, 16), (1536, 64)]`).
        sparsity: the global fraction of weights removed, in `[0, 1)`.
        distribution: `"uniform"`, `"erk"` or `"er"`. Defaults to `"erk"`.

    Returns:
        A list of floats in `(0, 1]`, one per layer, with
        ``Σ density_l · n_l = (1 − sparsity) · Σ n_l``.
    """
    shapes = _check(shapes, sparsity, distribution)
    density = 1.0 - float(sparsity)
    sizes = np.array([math.prod(s) for s in shapes], dtype=np.float64)
    if distribution == "uniform":
        return [density] * len(shapes)
    if distribution == "er":  # a 1-D shape counts as under ERK
        raw = np.array([(s[-2] + s[-1]) / (s[-2] * s[-1]) if len(s) > 1 else 1.0
                        for s in shapes], dtype=np.float64)
    else:
        raw = np.array([sum(s) / math.prod(s) for s in shapes], dtype=np.float64)
    dense = np.zeros(len(shapes), dtype=bool)
    while True:
        budget = density * sizes.sum() - sizes[dense].sum()
        epsilon = budget / (raw[~dense] * sizes[~dense]).sum()
        over = (~dense) & (epsilon * raw > 1.0)
        if not over.any():
            break
        dense |= over
    return [1.0 if d else float(epsilon * r) for d, r in zip(dense, raw)]


def active_counts(shapes, sparsity, distribution="erk"):
    """The number of weights each layer keeps; the total is exactly ``round((1 − sparsity) · Σ n_l)``.

    Args:
        shapes: the shapes of the layers' weights.
        sparsity: the global fraction of weights removed, in `[0, 1)`.
        distribution: `"uniform"`, `"erk"` or `"er"`. Defaults to `"erk"`.

    Returns:
        A list of ints, one per layer, each in `[0, n_l]` and within 1 of
        ``density_l · n_l``.
    """
    densities = layer_densities(shapes, sparsity, distribution)
    sizes = [math.prod(s) for s in _check(shapes, sparsity, distribution)]
    ideal = [d * n for d, n in zip(densities, sizes)]
    counts = [min(n, int(math.floor(x + 1e-9))) for x, n in zip(ideal, sizes)]
    total = int(round((1.0 - float(sparsity)) * sum(sizes)))
    remainders = sorted(range(len(sizes)), key=lambda i: (-(ideal[i] - counts[i]), i))
    missing = total - sum(counts)
    for i in remainders:
        if missing <= 0:
            break
        if counts[i] < sizes[i]:
            counts[i] += 1
            missing -= 1
    return counts
