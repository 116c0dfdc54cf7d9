"""The task weightings, each a `keras_minmax_mtl.core.task_weighting.TaskWeighting`.

- `minmax`: `MinMaxWeighting`, the min-max weights of Guo et al. (2025), and
  `MinMaxMultiTask`, the model that uses them;
- `ascent`: the ascent rules of the weights (projected, exponentiated) and
  their closed-form fixed point;
- `simplex`: the Euclidean projection onto the probability simplex;
- `uncertainty`: uncertainty weighting (Kendall et al. 2018);
- `dwa`: dynamic weight average (Liu et al. 2019).

Imports only the core.
"""
