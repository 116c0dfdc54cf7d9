"""Quantisation-aware fine-tuning that keeps a pruned model's zeros (tfmot's prune-preserving scheme).

Plain quantisation-aware training updates every weight, so the zeros of a
pruned model come back as small non-zero values and the int8 file is no
longer sparse. `prune_preserving_qat` returns a copy of the model whose base
network is wrapped by `tfmot.quantization.keras.quantize_apply` with
`Default8BitPrunePreserveQuantizeScheme`, which masks the weights that are
zero when it is applied: fine-tuning then keeps them at zero, and
`keras_minmax_mtl.export.tflite.export_tflite(..., quantization="int8")` writes a
file as sparse as the float model.

Example:

>>> qat_model = prune_preserving_qat(pruned_minmax_model)   # user's model unchanged
>>> qat_model.compile(optimizer="adam", loss=..., metrics=...)
>>> qat_model.fit(x, y, epochs=2)
>>> export_tflite(qat_model, "int8.tflite", target="micro", representative_data=x[:256])
"""
import tensorflow_model_optimization as tfmot

from keras_minmax_mtl.sparsity import pruning
from keras_minmax_mtl.core.backend import keras, require_functional, require_tf_keras_model
from keras_minmax_mtl.core.multitask import MultiTaskModel

__all__ = ["prune_preserving_qat", "quantize_scope"]


def _qat_functional(model):
    require_functional(model)
    stripped = pruning.strip_pruning(model) if pruning.pruning_wrappers(model) else model
    annotated = tfmot.quantization.keras.quantize_annotate_model(stripped)
    scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
    return tfmot.quantization.keras.quantize_apply(annotated, scheme=scheme)


def prune_preserving_qat(model):
    """A quantisation-aware copy of `model` that keeps its zero weights at zero.

    Pruning wrappers are stripped first (on a copy); `model` is not changed.
    For a `MultiTaskModel` the copy is a model of the same class and
    configuration, with the task-weighting state and counters copied, whose
    base model is the quantisation-aware network; it is not compiled.

    Args:
        model: a Functional `tf_keras` model or a `MultiTaskModel`, pruned
            (with tfmot wrappers) or stripped.

    Returns:
        The quantisation-aware copy, to compile and fine-tune.
    """
    require_tf_keras_model(model)
    if not isinstance(model, MultiTaskModel):
        return _qat_functional(model)
    source = pruning.strip_pruning(model) if pruning.pruning_wrappers(model) else model
    base = _qat_functional(source.base_model)
    with quantize_scope():
        return source.with_base_model(base)


def quantize_scope():
    """A scope to load a saved quantisation-aware model (tfmot's and the package's classes)."""
    return tfmot.quantization.keras.quantize_scope()
