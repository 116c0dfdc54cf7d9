"""The task weightings, each a `keras_minmax_mtl.core.task_weighting.TaskWeighting`.

- `minmax`: `MinMaxWeighting`, the min-max weights of Guo et al. (2025), and
  `MinMaxMultiTask`, the model that uses them;
- `ascent`: the ascent rules of the weights (projected, exponentiated) and
  their closed-form fixed point;
- `simplex`: the Euclidean projection onto the probability simplex;
- `maths`: the pure maths of the projection and the ascent rules, written once
  against an array namespace (TensorFlow ops here, `keras.ops` on the Keras 3
  path, `keras_minmax_mtl.keras3`);
- `uncertainty`: uncertainty weighting (Kendall et al. 2018);
- `dwa`: dynamic weight average (Liu et al. 2019).

Imports only the core.
"""
