"""keras_minmax_mtl: compressed multi-task learning for Keras 2 (`tf_keras`) and tfmot.

The package has five parts, one folder each; imports only go down this list
(checked by `tools/imports.py`):

- `core`: the multi-task model (`MultiTaskModel`), the `TaskWeighting`
  interface, callbacks, serialization and the one import of `tf_keras`;
- `weighting`: the task weightings: min-max (`MinMaxWeighting`,
  `MinMaxMultiTask`) with its simplex projection and ascent rules,
  uncertainty weighting, DWA;
- `sparsity`: pruning with tfmot: reweighted ℓ1, dynamic sparse training,
  structured (filter) pruning, task-aware and hybrid sparsity, and the
  search for the sparsest model within a worst-task budget;
- `export`: TFLite export for mobile, microcontrollers and the Edge TPU,
  layer surgery, quantisation-aware training;
- `data`: the datasets and networks of the examples and benchmarks;

and the `kmm` command line in `cli`, on top. Beside them, `keras3` is the
Keras 3 path (`import keras` models, TensorFlow and JAX back-ends), imported
only when asked for (`import keras_minmax_mtl.keras3`).

Every public name below is importable from the top level. They resolve on
first use (PEP 562), so `import keras_minmax_mtl` itself imports nothing
heavy: TensorFlow comes with the first core name, tfmot only with a sparsity
or export name, TFLite only with an export name.

Example:

>>> import keras_minmax_mtl as kmm
>>> model = kmm.MinMaxMultiTask(base_model, step_size=0.02, gamma=5.0)
>>> pruned, callbacks = kmm.prune_reweighted_l1(base_model, 0.9, 300, 300, rho=1e-4)
"""
import importlib

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_SOURCES = {
    # core
    "MultiTaskModel": "core.multitask",
    "NonFiniteLossError": "core.multitask",
    "TaskWeighting": "core.task_weighting",
    "EqualWeighting": "core.task_weighting",
    "TrainingClock": "core.task_weighting",
    "TaskWeightHistory": "core.callbacks",
    "custom_objects": "core.serialization",
    "custom_object_scope": "core.serialization",
    # weighting
    "MinMaxWeighting": "weighting.minmax",
    "MinMaxMultiTask": "weighting.minmax",
    "AscentRule": "weighting.ascent",
    "ProjectedGradientAscent": "weighting.ascent",
    "ExponentiatedGradientAscent": "weighting.ascent",
    "closed_form_weights": "weighting.ascent",
    "project_to_simplex": "weighting.simplex",
    "UncertaintyWeighting": "weighting.uncertainty",
    "DynamicWeightAverage": "weighting.dwa",
    # sparsity
    "prune_scope": "sparsity.scope",
    "strip_pruning": "sparsity.pruning",
    "sparsity_report": "sparsity.pruning",
    "MultiTaskPruningPolicy": "sparsity.policy",
    "XNNPackSparsePolicy": "sparsity.policy",
    "ReweightedL1Schedule": "sparsity.reweighted",
    "ReweightedL1Penalty": "sparsity.reweighted",
    "ReweightedL1Stages": "sparsity.reweighted",
    "prune_reweighted_l1": "sparsity.reweighted",
    "DynamicSparseTraining": "sparsity.dst",
    "prune_for_dst": "sparsity.dst",
    "structured_report": "sparsity.structured",
    "channel_groups": "sparsity.dependency",
    "prune_groups": "sparsity.dependency",
    "task_aware_optimize": "sparsity.task_aware",
    "prune_hybrid": "sparsity.hybrid",
    "compress_to_budget": "sparsity.budget",
    "search_budget": "sparsity.budget",
    "BudgetResult": "sparsity.budget",
    # export
    "export_tflite": "export.tflite",
    "inspect_tflite": "export.tflite",
    "ExportVerificationError": "export.tflite",
    "shrink": "export.surgery",
    "prune_preserving_qat": "export.qat",
    # loading (knows every registered class)
    "load_model": "loading",
    "ModelFileError": "loading",
    "UntrustedModelError": "loading",
}

__all__ = sorted(_SOURCES)


def __getattr__(name):
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module 'keras_minmax_mtl' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"keras_minmax_mtl.{module}"), name)
    globals()[name] = value  # resolved once
    return value


def __dir__():
    return sorted({*globals(), *__all__})
