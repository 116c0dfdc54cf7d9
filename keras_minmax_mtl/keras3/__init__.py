"""The Keras 3 path: min-max multi-task training for `import keras` models (TensorFlow and JAX back-ends).

Imported only when asked for (`import keras_minmax_mtl.keras3`): `import
keras_minmax_mtl` and the tf_keras path never import Keras 3, and this path
imports neither `tf_keras` nor tfmot. It shares the maths of the task weights
with the tf_keras path (`keras_minmax_mtl.weighting.maths`: one
implementation, run here with `keras.ops`).

- `multitask`: `MultiTaskModel` (override of `Model.compute_loss`) and `MinMaxMultiTask`;
- `weighting`: `TaskWeighting`, `EqualWeighting`, `MinMaxWeighting` (projected and
  exponentiated ascent), `UncertaintyWeighting`, `DynamicWeightAverage`;
- `backend`: the one `import keras`, `register` and the model checks;
- `pruning`, `schedules`, `dst`, `export`: magnitude / reweighted-ℓ1 pruning, RigL and SET
  without tfmot, `strip`, and verified LiteRT export (imported when asked for).

`normalize_losses` and `loss_scales` follow the tf_keras path's rules
(`keras_minmax_mtl.core.loss_balance`). Not yet on this path: structured, task-aware and
hybrid sparsity, min-max's `update_on="epoch"`. See docs/keras3.md.

Example:

>>> import keras
>>> from keras_minmax_mtl.keras3 import MinMaxMultiTask
>>> model = MinMaxMultiTask(base_model, step_size=0.02, gamma=5.0)
"""
from keras_minmax_mtl.keras3.multitask import LatestValue, MinMaxMultiTask, MultiTaskModel
from keras_minmax_mtl.keras3.weighting import (DynamicWeightAverage, EqualWeighting, MinMaxWeighting,
                                               TaskWeighting, UncertaintyWeighting)

__all__ = ["MultiTaskModel", "MinMaxMultiTask", "TaskWeighting", "EqualWeighting",
           "MinMaxWeighting", "UncertaintyWeighting", "DynamicWeightAverage", "LatestValue"]
