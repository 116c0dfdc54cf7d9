r"""NYUv2 losses, metrics and the Δm score (the data loader is `keras_minmax_mtl.data.nyuv2_loader`).

Losses (Keras `Loss` classes, registered for serialization), as in MTAN
(Liu, Johns, Davison, CVPR 2019) and the papers that compare on it; each
returns one value per image (the mean over that image's valid pixels; `0`
for an image without valid pixels), which Keras / `MultiTaskModel` average
over the batch:

- `SegmentationCrossEntropy`: pixelwise cross-entropy over the 13 classes,
  pixels labelled `-1` ignored;
- `DepthL1`: ``|d̂ − d|`` over the pixels with ``d ≠ 0``;
- `NormalCosine`: ``1 − cos(n̂, n)`` over the pixels whose normal is not the
  zero vector (the prediction is L2-normalised first).

Metrics (Keras `Metric` classes, accumulated over all pixels of all batches
seen since the last reset, i.e. dataset-level, not averaged per batch):

- `SegmentationMIoU` (%): one confusion matrix over the valid pixels; IoU per
  class = TP / (TP + FP + FN); mean over the classes with a non-empty union
  (classes never predicted nor present are left out, not counted as 0);
- `PixelAccuracy` (%): correct valid pixels / valid pixels;
- `DepthAbsError`, `DepthRelError`: mean of ``|d̂ − d|`` and of
  ``|d̂ − d| / d`` over the valid pixels;
- `NormalAngleMean`, `NormalAngleMedian` (degrees), `NormalAngleWithin` (%
  of valid pixels with an angle < threshold: 11.25, 22.5, 30) — the angle is
  ``acos(clip(n̂·n, −1, 1))`` with n̂ normalised. The median is read from a
  fixed-bin histogram of the angles over [0°, 180°] with `num_bins` bins
  (default 18,000, i.e. 0.01° wide): it is the centre of the first bin at
  which the cumulative count reaches half the valid pixels, n/2. That bin
  holds the ⌈n/2⌉-th smallest angle (the lower median), so the result is
  within half a bin width (0.005°) of it; NumPy's `np.median` averages the
  two middle angles when n is even, which differs from the lower median only
  by the gap between them (negligible over the ~10^8 pixels of NYUv2 `val`).

`delta_m` computes the multi-task score
``Δm = 100/n · Σ_i (−1)^{h_i} (M_i − S_i) / S_i`` (lower is better), with
``h_i = 1`` where higher is better, against single-task values `S`.

Example:

>>> model.compile(loss=nyuv2_losses(), metrics=nyuv2_metrics(), optimizer="adam")
>>> scores = model.evaluate(val, return_dict=True)
>>> delta_m(metrics_from_logs(scores))
"""
import math

import numpy as np
import tensorflow as tf

from keras_minmax_mtl.core.backend import keras, register
from keras_minmax_mtl.data import NYUV2_NUM_CLASSES

__all__ = [
    "SegmentationCrossEntropy",
    "DepthL1",
    "NormalCosine",
    "SegmentationMIoU",
    "PixelAccuracy",
    "DepthAbsError",
    "DepthRelError",
    "NormalAngleMean",
    "NormalAngleMedian",
    "NormalAngleWithin",
    "nyuv2_losses",
    "nyuv2_metrics",
    "metrics_from_logs",
    "delta_m",
    "SINGLE_TASK_SEGNET",
    "HIGHER_IS_BETTER",
]

#: Single-task SegNet (MTAN architecture) results on NYUv2, the "STL" row that
#: CAGrad (Liu et al., NeurIPS 2021) and Nash-MTL (Navon et al., ICML 2022)
#: report and measure Δm against: `BASE` in Nash-MTL's
#: `experiments/nyuv2/utils.py` ("base results from CAGrad"), there as
#: fractions for mIoU, pixel accuracy and the three "within" percentages.
SINGLE_TASK_SEGNET = {
    "miou": 38.30, "pixel_acc": 63.76,
    "abs_err": 0.6754, "rel_err": 0.2780,
    "angle_mean": 25.01, "angle_median": 19.21,
    "within_11.25": 30.14, "within_22.5": 57.20, "within_30": 69.15,
}

#: Whether a higher value of each metric is better.
HIGHER_IS_BETTER = {
    "miou": True, "pixel_acc": True, "abs_err": False, "rel_err": False,
    "angle_mean": False, "angle_median": False,
    "within_11.25": True, "within_22.5": True, "within_30": True,
}


# Keras runs `Loss.call`, `Metric.update_state` and `Metric.result` through
# autograph. These methods have no Python control flow on tensors, so they are
# kept out of autograph and trace as the plain TensorFlow code they are.
_plain_tf = tf.autograph.experimental.do_not_convert


def _masked_mean(values, mask):
    """Per-image mean of `values` over `mask` (both (B, ...)); 0 where the mask is empty."""
    axes = list(range(1, values.shape.rank))
    mask = tf.cast(mask, values.dtype)
    total = tf.reduce_sum(values * mask, axis=axes)
    return tf.math.divide_no_nan(total, tf.reduce_sum(mask, axis=axes))


def _normalise(n):
    return tf.math.l2_normalize(tf.cast(n, tf.float32), axis=-1)


def _valid_normal(n):
    return tf.reduce_any(tf.not_equal(n, 0.0), axis=-1)


def _angles(y_true, y_pred):
    """Angles in degrees between the predicted and true normals, and the validity mask."""
    y_true = tf.cast(y_true, tf.float32)
    cos = tf.reduce_sum(_normalise(y_pred) * _normalise(y_true), axis=-1)
    angle = tf.acos(tf.clip_by_value(cos, -1.0, 1.0)) * (180.0 / math.pi)
    return angle, _valid_normal(y_true)


def _check_ignore(value):
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"Argument `ignore_index` must be an integer. Received: "
                         f"ignore_index={value!r}")
    return value


# --------------------------------------------------------------------------- #
# Losses
# --------------------------------------------------------------------------- #
@register
class SegmentationCrossEntropy(keras.losses.Loss):
    """Pixelwise sparse cross-entropy ignoring pixels labelled `ignore_index`.

    Per image: ``mean over pixels with y ≠ ignore_index of −log p(y)``.

    Args:
        ignore_index: the label of unlabelled pixels. Defaults to `-1`.
        from_logits: whether predictions are logits (else probabilities).
            Defaults to `False`.
        name: Defaults to `"segmentation_cross_entropy"`.

    Example:

    >>> loss = SegmentationCrossEntropy()
    >>> float(loss([[[0, -1]]], [[[[0.5, 0.5], [0.9, 0.1]]]]))  # ln 2
    0.6931...
    """

    def __init__(self, ignore_index=-1, from_logits=False,
                 name="segmentation_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.ignore_index = _check_ignore(ignore_index)
        self.from_logits = bool(from_logits)

    @_plain_tf
    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.int32)
        y_pred = tf.convert_to_tensor(y_pred)
        if y_true.shape.rank == y_pred.shape.rank:
            y_true = tf.squeeze(y_true, -1)
        valid = tf.not_equal(y_true, self.ignore_index)
        safe = tf.where(valid, y_true, tf.zeros_like(y_true))
        ce = keras.backend.sparse_categorical_crossentropy(
            safe, y_pred, from_logits=self.from_logits)
        return _masked_mean(ce, valid)

    def get_config(self):
        return {**super().get_config(), "ignore_index": self.ignore_index,
                "from_logits": self.from_logits}


@register
class DepthL1(keras.losses.Loss):
    """L1 depth error over the valid pixels (true depth ≠ 0).

    Per image: ``Σ_valid |d̂ − d| / #valid``.

    Args:
        name: Defaults to `"depth_l1"`.

    Example:

    >>> float(DepthL1()([[[[1.0], [0.0]]]], [[[[1.5], [9.0]]]]))
    0.5
    """

    def __init__(self, name="depth_l1", **kwargs):
        super().__init__(name=name, **kwargs)

    @_plain_tf
    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        return _masked_mean(tf.abs(tf.cast(y_pred, tf.float32) - y_true),
                            tf.not_equal(y_true, 0.0))


@register
class NormalCosine(keras.losses.Loss):
    """``1 − cos`` between predicted (L2-normalised) and true normals, over valid pixels.

    Per image: ``1 − Σ_valid n̂·n / #valid`` with ``n̂ = pred / ‖pred‖``;
    a pixel is valid when its true normal is not the zero vector.

    Args:
        name: Defaults to `"normal_cosine"`.

    Example:

    >>> float(NormalCosine()([[[[0.0, 0.0, 1.0]]]], [[[[0.0, 1.0, 1.0]]]]))  # 1 − cos 45°
    0.2928...
    """

    def __init__(self, name="normal_cosine", **kwargs):
        super().__init__(name=name, **kwargs)

    @_plain_tf
    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        cos = tf.reduce_sum(_normalise(y_pred) * y_true, axis=-1)
        valid = _valid_normal(y_true)
        return tf.where(tf.reduce_any(valid, axis=[1, 2]), 1.0 - _masked_mean(cos, valid), 0.0)


# --------------------------------------------------------------------------- #
# Metrics
# --------------------------------------------------------------------------- #
class _ConfusionMetric(keras.metrics.Metric):
    def __init__(self, num_classes=NYUV2_NUM_CLASSES, ignore_index=-1, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
            raise ValueError(f"Argument `num_classes` must be an integer >= 2. Received: "
                             f"num_classes={num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = _check_ignore(ignore_index)
        self.confusion = self.add_weight("confusion", shape=(num_classes, num_classes),
                                         initializer="zeros", dtype=tf.float64)

    @_plain_tf
    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = tf.cast(y_true, tf.int32)
        y_pred = tf.convert_to_tensor(y_pred)
        if y_true.shape.rank == y_pred.shape.rank:
            y_true = tf.squeeze(y_true, -1)
        valid = tf.not_equal(y_true, self.ignore_index)
        truth = tf.boolean_mask(y_true, valid)
        guess = tf.boolean_mask(tf.argmax(y_pred, axis=-1, output_type=tf.int32), valid)
        self.confusion.assign_add(tf.math.confusion_matrix(
            truth, guess, num_classes=self.num_classes, dtype=tf.float64))

    def reset_state(self):
        self.confusion.assign(tf.zeros_like(self.confusion))

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "num_classes": self.num_classes,
                "ignore_index": self.ignore_index}


@register
class SegmentationMIoU(_ConfusionMetric):
    """Mean intersection-over-union (%) over the classes with a non-empty union.

    Args:
        num_classes: Defaults to `13`.
        ignore_index: Defaults to `-1`.
        name: Defaults to `"miou"`.
    """

    def __init__(self, num_classes=NYUV2_NUM_CLASSES, ignore_index=-1, name="miou", **kwargs):
        super().__init__(num_classes, ignore_index, name=name, **kwargs)

    @_plain_tf
    def result(self):
        tp = tf.linalg.diag_part(self.confusion)
        union = tf.reduce_sum(self.confusion, 0) + tf.reduce_sum(self.confusion, 1) - tp
        present = union > 0
        iou = tf.boolean_mask(tp, present) / tf.boolean_mask(union, present)
        return tf.cast(100.0 * tf.math.divide_no_nan(
            tf.reduce_sum(iou), tf.cast(tf.size(iou), tf.float64)), tf.float32)


@register
class PixelAccuracy(_ConfusionMetric):
    """Pixel accuracy (%) over the valid (labelled) pixels.

    Args:
        num_classes: Defaults to `13`.
        ignore_index: Defaults to `-1`.
        name: Defaults to `"pixel_acc"`.
    """

    def __init__(self, num_classes=NYUV2_NUM_CLASSES, ignore_index=-1, name="pixel_acc",
                 **kwargs):
        super().__init__(num_classes, ignore_index, name=name, **kwargs)

    @_plain_tf
    def result(self):
        return tf.cast(100.0 * tf.math.divide_no_nan(
            tf.linalg.trace(self.confusion), tf.reduce_sum(self.confusion)), tf.float32)


class _MaskedMean(keras.metrics.Metric):
    """Mean of a per-pixel quantity over the valid pixels of everything seen."""

    def __init__(self, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_weight("total", initializer="zeros", dtype=tf.float64)
        self.count = self.add_weight("count", initializer="zeros", dtype=tf.float64)

    @_plain_tf
    def values(self, y_true, y_pred):  # pragma: no cover - abstract
        raise NotImplementedError

    @_plain_tf
    def update_state(self, y_true, y_pred, sample_weight=None):
        values, valid = self.values(y_true, y_pred)
        self.total.assign_add(tf.reduce_sum(tf.cast(tf.boolean_mask(values, valid), tf.float64)))
        self.count.assign_add(tf.reduce_sum(tf.cast(valid, tf.float64)))

    @_plain_tf
    def result(self):
        return tf.cast(tf.math.divide_no_nan(self.total, self.count), tf.float32)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


def _depth(y_true, y_pred):
    y_true = tf.cast(y_true, tf.float32)
    return y_true, tf.abs(tf.cast(y_pred, tf.float32) - y_true), tf.not_equal(y_true, 0.0)


@register
class DepthAbsError(_MaskedMean):
    """Mean ``|d̂ − d|`` over the valid depth pixels (``d ≠ 0``). Name defaults to `"abs_err"`."""

    def __init__(self, name="abs_err", **kwargs):
        super().__init__(name=name, **kwargs)

    @_plain_tf
    def values(self, y_true, y_pred):
        _, error, valid = _depth(y_true, y_pred)
        return error, valid


@register
class DepthRelError(_MaskedMean):
    """Mean ``|d̂ − d| / d`` over the valid depth pixels. Name defaults to `"rel_err"`."""

    def __init__(self, name="rel_err", **kwargs):
        super().__init__(name=name, **kwargs)

    @_plain_tf
    def values(self, y_true, y_pred):
        y_true, error, valid = _depth(y_true, y_pred)
        return tf.math.divide_no_nan(error, y_true), valid


@register
class NormalAngleMean(_MaskedMean):
    """Mean angle (degrees) between predicted and true normals. Name defaults to `"angle_mean"`."""

    def __init__(self, name="angle_mean", **kwargs):
        super().__init__(name=name, **kwargs)

    @_plain_tf
    def values(self, y_true, y_pred):
        return _angles(y_true, y_pred)


@register
class NormalAngleWithin(_MaskedMean):
    """Percentage of valid pixels whose normal angle is < `threshold` degrees.

    Args:
        threshold: in degrees, > 0. Defaults to `11.25`.
        name: Defaults to `f"within_{threshold:g}"`.
    """

    def __init__(self, threshold=11.25, name=None, **kwargs):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold <= 0:
            raise ValueError(f"Argument `threshold` must be a number of degrees > 0. "
                             f"Received: threshold={threshold!r}")
        self.threshold = float(threshold)
        super().__init__(name=name or f"within_{self.threshold:g}", **kwargs)

    @_plain_tf
    def values(self, y_true, y_pred):
        angle, valid = _angles(y_true, y_pred)
        return tf.cast(angle < self.threshold, tf.float32) * 100.0, valid

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


@register
class NormalAngleMedian(keras.metrics.Metric):
    """Median angle (degrees), from a fixed-bin histogram over [0°, 180°].

    Angle `a` falls in bin ``min(floor(a / w), num_bins − 1)``, ``w = 180 /
    num_bins``; the result is the centre of the first bin where the cumulative
    count reaches half of the `n` valid pixels; that bin holds the
    ⌈n/2⌉-th smallest angle (the lower median), so the result is within
    ``w / 2`` of it.

    Args:
        num_bins: positive number of bins. Defaults to `18000` (0.01°).
        name: Defaults to `"angle_median"`.
    """

    def __init__(self, num_bins=18000, name="angle_median", **kwargs):
        super().__init__(name=name, **kwargs)
        if not isinstance(num_bins, int) or isinstance(num_bins, bool) or num_bins < 1:
            raise ValueError(f"Argument `num_bins` must be a positive integer. Received: "
                             f"num_bins={num_bins!r}")
        self.num_bins = num_bins
        self.histogram = self.add_weight("histogram", shape=(num_bins,), initializer="zeros",
                                         dtype=tf.float64)

    @_plain_tf
    def update_state(self, y_true, y_pred, sample_weight=None):
        angle, valid = _angles(y_true, y_pred)
        width = 180.0 / self.num_bins
        bins = tf.minimum(tf.cast(tf.floor(tf.boolean_mask(angle, valid) / width), tf.int32),
                          self.num_bins - 1)
        self.histogram.assign_add(tf.cast(
            tf.math.bincount(bins, minlength=self.num_bins, maxlength=self.num_bins),
            tf.float64))

    @_plain_tf
    def result(self):
        cumulative = tf.cumsum(self.histogram)
        total = cumulative[-1]
        first = tf.argmax(tf.cast(cumulative >= total / 2.0, tf.int32), output_type=tf.int32)
        centre = (tf.cast(first, tf.float64) + 0.5) * (180.0 / self.num_bins)
        return tf.cast(tf.where(total > 0, centre, tf.constant(0.0, tf.float64)), tf.float32)

    def reset_state(self):
        self.histogram.assign(tf.zeros_like(self.histogram))

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "num_bins": self.num_bins}


def nyuv2_losses():
    """The standard losses, keyed by task: `{"segmentation": ..., "depth": ..., "normal": ...}`."""
    return {"segmentation": SegmentationCrossEntropy(), "depth": DepthL1(),
            "normal": NormalCosine()}


def nyuv2_metrics():
    """The standard metrics, keyed by task (logged as `f"{task}_{name}"`)."""
    return {
        "segmentation": [SegmentationMIoU(), PixelAccuracy()],
        "depth": [DepthAbsError(), DepthRelError()],
        "normal": [NormalAngleMean(), NormalAngleMedian(), NormalAngleWithin(11.25),
                   NormalAngleWithin(22.5), NormalAngleWithin(30)],
    }


_LOG_KEYS = {
    "miou": "segmentation_miou", "pixel_acc": "segmentation_pixel_acc",
    "abs_err": "depth_abs_err", "rel_err": "depth_rel_err",
    "angle_mean": "normal_angle_mean", "angle_median": "normal_angle_median",
    "within_11.25": "normal_within_11.25", "within_22.5": "normal_within_22.5",
    "within_30": "normal_within_30",
}


def metrics_from_logs(logs):
    """Picks the nine NYUv2 metrics out of `evaluate(..., return_dict=True)` logs.

    Returns:
        `{metric: value}` keyed like `SINGLE_TASK_SEGNET`, for the metrics present.
    """
    return {name: float(logs[key]) for name, key in _LOG_KEYS.items() if key in logs}


def delta_m(metrics, single_task=None, higher_is_better=None):
    r"""Δm (%), the mean relative change against single-task values (lower is better).

    ``Δm = 100/n · Σ_i (−1)^{h_i} (M_i − S_i) / S_i`` over the `n` metrics of
    `metrics`, with ``h_i = 1`` if higher is better for metric `i`.

    Args:
        metrics: `{name: value}` in the units of `single_task`.
        single_task: `{name: value}` reference values, a superset of the
            keys of `metrics`. Defaults to `SINGLE_TASK_SEGNET`.
        higher_is_better: `{name: bool}` for every key of `metrics`.
            Defaults to `HIGHER_IS_BETTER`.

    Returns:
        Δm as a float, in percent.

    Raises:
        ValueError: empty `metrics`, a metric without a reference value or
            direction, or a zero reference.

    Example:

    >>> delta_m({"a": 110.0, "b": 0.9}, {"a": 100.0, "b": 1.0}, {"a": True, "b": False})
    -10.0
    """
    single_task = SINGLE_TASK_SEGNET if single_task is None else single_task
    higher_is_better = HIGHER_IS_BETTER if higher_is_better is None else higher_is_better
    if not metrics:
        raise ValueError(f"Argument `metrics` must be a non-empty dict of metric values. "
                         f"Received: metrics={metrics!r}")
    for name in metrics:
        if name not in single_task:
            raise ValueError(f"Argument `single_task` has no reference value for {name!r}. "
                             f"Received keys: {sorted(single_task)}")
        if name not in higher_is_better:
            raise ValueError(f"Argument `higher_is_better` has no entry for {name!r}. "
                             f"Received keys: {sorted(higher_is_better)}")
        if single_task[name] == 0:
            raise ValueError(f"Argument `single_task` must hold non-zero references. "
                             f"Received: single_task[{name!r}]=0")
    terms = [(-1.0 if higher_is_better[n] else 1.0) * (metrics[n] - single_task[n]) / single_task[n]
             for n in metrics]
    return float(100.0 * np.mean(terms))
