"""keras_minmax_mtl: compressed multi-task learning for Keras 2 (`tf_keras`) and tfmot.

The core (`project_to_simplex`, the ascent rules, the weighting strategies and
`MultiTaskModel`/`MinMaxMultiTask`) imports no dataset, export or CLI code.
"""
from keras_minmax_mtl.ascent import (
    AscentRule,
    ExponentiatedGradientAscent,
    ProjectedGradientAscent,
    closed_form_weights,
)
from keras_minmax_mtl.dwa import DynamicWeightAverage
from keras_minmax_mtl.loading import ModelFileError, UntrustedModelError, load_model
from keras_minmax_mtl.minmax import MinMaxWeighting
from keras_minmax_mtl.multitask import MinMaxMultiTask, MultiTaskModel, NonFiniteLossError
from keras_minmax_mtl.serialization import custom_objects, custom_object_scope
from keras_minmax_mtl.simplex import project_to_simplex
from keras_minmax_mtl.uncertainty import UncertaintyWeighting
from keras_minmax_mtl.weighting import EqualWeighting, TaskWeighting, TrainingClock

__version__ = "0.1.0"

__all__ = [
    "AscentRule",
    "DynamicWeightAverage",
    "EqualWeighting",
    "ExponentiatedGradientAscent",
    "MinMaxMultiTask",
    "ModelFileError",
    "MinMaxWeighting",
    "MultiTaskModel",
    "NonFiniteLossError",
    "ProjectedGradientAscent",
    "TaskWeighting",
    "TrainingClock",
    "UncertaintyWeighting",
    "UntrustedModelError",
    "closed_form_weights",
    "custom_object_scope",
    "custom_objects",
    "load_model",
    "project_to_simplex",
]
