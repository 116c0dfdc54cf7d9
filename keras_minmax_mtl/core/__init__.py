"""The core: the multi-task model and what everything else stands on.

- `multitask`: `MultiTaskModel`, a `keras.Model` whose `train_step` minimises
  ``scale·Σ_i w_i L_i`` with each task's loss computed by Keras' own loss
  machinery, the weights ``w`` coming from a `TaskWeighting`;
- `task_weighting`: the `TaskWeighting` interface, `EqualWeighting` and the
  `TrainingClock` the strategies read;
- `callbacks`: `TaskWeightHistory`;
- `serialization`: the registered classes (`custom_objects`, `custom_object_scope`);
- `backend`: the one import of `tf_keras` in the package, `register` and the
  pieces of Keras' loss machinery that `multitask` reuses;
- `checks`: argument checks with Keras-style messages;
- `arguments`: the `argparse` value types of the `kmm` flags (no TensorFlow).

The core imports nothing from the other parts of the package.
"""
