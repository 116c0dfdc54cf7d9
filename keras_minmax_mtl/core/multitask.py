r"""`MultiTaskModel`: one training path, many weightings.

`MultiTaskModel` wraps a Functional multi-output `tf_keras` model whose output
layers are named after the tasks, and trains it on

.. math::

    \text{scale}\cdot \sum_i w_i L_i(\theta) \;+\; \text{regularisation losses}

where the task weights ``w`` come from a `TaskWeighting` strategy. Only the
strategy differs between min-max, equal weighting, uncertainty weighting and
DWA, so comparisons between them are fair. `MinMaxMultiTask`
(`keras_minmax_mtl.weighting.minmax`) is the model with the min-max strategy
and its hyper-parameters as constructor arguments.
"""
import inspect
import re
import warnings
import weakref

import numpy as np
import tensorflow as tf

from keras_minmax_mtl.core.checks import scale_value
from keras_minmax_mtl.core.backend import (keras, loss_object, losses_utils, match_dtype_and_rank,
                                     register, require_functional)
from keras_minmax_mtl.core.loss_balance import (AUTO_NORMALIZE_RATIO, NORMALIZE_LOSSES, STARVED_WEIGHT,
                                                StarvationWatch, balanced_losses, check_loss_scales,
                                                check_normalize_losses, loss_scale_vector, starved,
                                                auto_normalizes)
from keras_minmax_mtl.core.outputs import keyed_by_task
from keras_minmax_mtl.core.task_weighting import EqualWeighting, TaskWeighting, TrainingClock
from keras_minmax_mtl.core.tensorflow_ops import TENSORFLOW_OPS

__all__ = ["MultiTaskModel", "NonFiniteLossError", "GradientRequest", "NORMALIZE_LOSSES", "starved_tasks",
           "AUTO_NORMALIZE_RATIO", "STARVED_WEIGHT"]

_NON_FINITE = "Non-finite loss"
_NON_FINITE_TARGET = "Non-finite target"
_STOPPED = "Training stopped before this step updated the network or the task weights."


class NonFiniteLossError(FloatingPointError):
    """A task loss became NaN or infinite during `fit`; the message names the task and step."""

# Metric names for which a smaller value is better; for the others (accuracy,
# AUC, IoU, precision, recall...) the worst task is the one with the smallest value.
_LOWER_IS_BETTER = ("loss", "error", "mse", "mae", "mape", "msle", "rmse", "crossentropy",
                    "hinge", "divergence", "poisson", "cosine_similarity_loss")


def _task_names(base_model):
    """The task names of `base_model`, in the order of `base_model.outputs`.

    Dict outputs (``keras.Model(inputs, {"age": ..., "gender": ...})``) are named
    by their keys, in the order Keras flattens them (sorted keys, the order of
    `base_model.outputs`); list, tuple and single outputs by their output
    layers, a layer inside a wrapper (tfmot's `PruneLowMagnitude`) by the layer
    it wraps.
    """
    structure = getattr(base_model, "_nested_outputs", None)
    if isinstance(structure, dict):
        return [str(key) for key in tf.nest.flatten({key: key for key in structure})]
    names = []
    for name in base_model.output_names:
        layer = base_model.get_layer(name)
        while isinstance(layer, keras.layers.Wrapper):
            layer = layer.layer
        names.append(layer.name)
    return names


def _check_output_structure(base_model):
    """Refuses nested output structures (a dict of lists, a list of dicts)."""
    structure = getattr(base_model, "_nested_outputs", None)
    if structure is None:
        return
    values = structure.values() if isinstance(structure, dict) else (
        structure if isinstance(structure, (list, tuple)) else [structure])
    nested = [v for v in values if tf.nest.is_nested(v)]
    if nested:
        raise ValueError(
            "Argument `base_model` must have one output tensor per task: a dict "
            "{task: tensor}, a list or tuple of tensors, or one tensor. Received nested "
            f"outputs: {tf.nest.map_structure(lambda t: getattr(t, 'name', t), structure)}"
        )


def _as_list(metrics):
    if metrics is None:
        return []
    if isinstance(metrics, (list, tuple)):
        return list(metrics)
    return [metrics]


def _lower_is_better(metric_name):
    return any(token in metric_name for token in _LOWER_IS_BETTER)


_NONE = keras.losses.Reduction.NONE
_SUM = keras.losses.Reduction.SUM


def _task_loss(task, spec):
    """The `keras.losses.Loss` of `task`, made as `compile` makes it (see `_keras.loss_object`)."""
    try:
        loss = loss_object(spec)
    except ValueError as error:
        raise ValueError(f"Argument `loss` for task {task!r}: {error}") from None
    if loss.reduction == _NONE:
        raise ValueError(
            f"Argument `loss` for task {task!r} must reduce to one value per batch (reduction "
            f"'auto', 'sum_over_batch_size' or 'sum'): the task weights weigh one loss per task. "
            f"Received: {type(loss).__name__} with reduction='none'"
        )
    return loss


def _check_metric_spec(task, spec, argument="metrics"):
    """Raises at `compile` (not in `fit`) for a metric spec that names no metric."""
    if isinstance(spec, str) and spec.lower() in _SHAPE_RESOLVED:
        return
    try:
        metric = keras.metrics.get(spec)
    except ValueError as error:
        raise ValueError(f"Argument `{argument}` for task {task!r}: {error}") from None
    if not callable(metric):
        raise ValueError(
            f"Argument `{argument}` for task {task!r} must hold metric names, functions or "
            f"`keras.metrics.Metric` objects. Received an unknown metric: {spec!r}"
        )


#: The metric names that `compile` resolves from the shapes of the labels and outputs:
#: {name: (binary, sparse categorical, categorical)}.
_SHAPE_RESOLVED = {
    "accuracy": (keras.metrics.binary_accuracy, keras.metrics.sparse_categorical_accuracy,
                 keras.metrics.categorical_accuracy),
    "crossentropy": (keras.metrics.binary_crossentropy,
                     keras.metrics.sparse_categorical_crossentropy,
                     keras.metrics.categorical_crossentropy),
}
_SHAPE_RESOLVED["acc"] = _SHAPE_RESOLVED["accuracy"]
_SHAPE_RESOLVED["ce"] = _SHAPE_RESOLVED["crossentropy"]


class _ShapeResolvedMetric(keras.metrics.MeanMetricWrapper):
    """`"accuracy"` or `"crossentropy"`, resolved by the rule of `keras.Model.compile`.

    Keras picks the binary variant when the output has one unit, the sparse
    categorical one when the labels have a lower rank than the outputs (or a
    last dimension of 1 beside several units), the categorical one otherwise,
    from the shapes of the first batch; so does this metric, at trace time.
    """

    def __init__(self, kind, name):
        self._choices = _SHAPE_RESOLVED[kind]
        super().__init__(self._choices[2], name=name)

    def update_state(self, y_true, y_pred, sample_weight=None):
        true_shape = tf.TensorShape(getattr(y_true, "shape", None)).as_list()
        pred_shape = tf.TensorShape(getattr(y_pred, "shape", None)).as_list()
        binary = pred_shape[-1] == 1
        sparse = len(true_shape) < len(pred_shape) or (true_shape[-1] == 1 and pred_shape[-1] > 1)
        self._fn = self._choices[0] if binary else self._choices[1] if sparse else self._choices[2]
        return super().update_state(y_true, y_pred, sample_weight)


class _Latest(keras.metrics.Metric):
    """A log that is a current value, not an average: a task weight, the worst task's metric.

    Being a metric of the model tells the progress bar not to average it over
    the batches of an epoch.
    """

    def __init__(self, name, **kwargs):
        super().__init__(name=name, **kwargs)
        self.value = self.add_weight("value", initializer="zeros",
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def update_state(self, value):
        self.value.assign(tf.cast(value, self.dtype))

    def result(self):
        return tf.identity(self.value)

    def reset_state(self):
        self.value.assign(0.0)


class _Compiled:
    """What `compile` set up: the task losses, metrics, loss trackers and current-value logs.

    A plain object, so that Keras does not track the metrics as layers of the
    model: their variables stay out of `model.weights`, as with `keras.Model`.
    """

    def __init__(self, losses, metrics, trackers, latest):
        self.losses = losses
        # Sparse cross-entropies cast their labels to integers: their labels are checked.
        self.sparse_tasks = {
            task for task, loss in losses.items()
            if "sparse" in (getattr(getattr(loss, "fn", None), "__name__", "")
                            or type(loss).__name__).lower()}
        self.metrics = metrics
        self.trackers = trackers
        self.latest = latest


class GradientRequest:
    """Gradients of chosen variables, stored by `MultiTaskModel.train_step` on the steps asked for.

    Made by `MultiTaskModel.request_gradients`. Set `requested` to `True`
    before a train step and that step stores the gradient of its objective
    with respect to each of `variables` into `gradients` (same order); other
    steps store nothing and cost nothing more. Under `tf.distribute` each
    replica stores its own gradient (its share of the global-batch
    objective) in a replica-local variable that sums over replicas when read
    outside the replicas, e.g. from a callback: the value read is the
    gradient of the global objective, identical for every reader.

    Attributes:
        variables: the watched variables.
        requested: a boolean `tf.Variable`; the callback sets it.
        gradients: one `tf.Variable` per watched variable.
    """

    def __init__(self, variables, strategy):
        self.variables = list(variables)
        with strategy.scope():
            self.requested = tf.Variable(False, trainable=False, name="gradients_requested",
                                         aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self.gradients = [
                tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name="requested_gradient",
                            synchronization=tf.VariableSynchronization.ON_READ,
                            aggregation=tf.VariableAggregation.SUM)
                for v in self.variables]

    def _store(self, gradient_of):
        """Writes the gradients (in replica context) when `requested` is set; a no-op otherwise."""
        def store():
            writes = []
            for variable, buffer in zip(self.variables, self.gradients):
                gradient = gradient_of.get(variable.ref())
                value = tf.zeros_like(buffer) if gradient is None else tf.convert_to_tensor(gradient)
                writes.append(buffer.assign(tf.cast(value, buffer.dtype)))
            return tf.group(writes)
        return tf.cond(self.requested.read_value(), store, tf.no_op)


class _Hooks:
    """Plain holder of the gradient requests, kept out of Keras' attribute tracking."""

    def __init__(self):
        self.gradient_requests = []


def starved_tasks(model):
    """The tasks whose weight on the simplex is below `STARVED_WEIGHT` (they get no gradient).

    Only for weightings whose weights live on the simplex (`on_simplex`,
    e.g. `MinMaxWeighting`); `[]` otherwise.
    """
    if not getattr(model.weighting, "on_simplex", False):
        return []
    return starved(model.task_names, np.asarray(model.task_weights))


class _EpochClock(keras.callbacks.Callback):
    """Tells the model where each epoch begins (for per-epoch weighting rules).

    Under `jit_compile=True` it also stops `fit` on a non-finite task loss:
    XLA compiles no string or assertion ops, so the train step cannot check
    its losses before updating; the check runs on the step's logs instead.
    """

    def __init__(self, model):
        super().__init__()
        self._owner = model
        self._watch = StarvationWatch()

    def on_epoch_begin(self, epoch, logs=None):
        self._owner.start_epoch()

    def on_epoch_end(self, epoch, logs=None):
        owner = self._owner
        if not getattr(owner.weighting, "on_simplex", False):
            return
        message = self._watch.epoch_end(owner.task_names, np.asarray(owner.task_weights),
                                        owner.initial_losses.numpy())
        if message is not None:
            warnings.warn(message, UserWarning, stacklevel=2)

    def on_train_batch_end(self, batch, logs=None):
        if not self._owner._checks_after_step() or not logs:
            return
        owner = self._owner
        losses = {t: float(logs[f"{t}_loss"]) for t in owner.task_names if f"{t}_loss" in logs}
        bad = [t for t, v in losses.items() if not np.isfinite(v)]
        if bad:
            step = int(owner.train_step_counter.numpy()) - 1
            raise NonFiniteLossError(
                f"{_NON_FINITE} for task(s) [{', '.join(bad)}] at training step {step} (0-based, "
                f"the last of its execution); epoch-mean task losses {losses}. Under "
                f"`jit_compile=True` the loss is checked after the step, so this step has updated "
                f"the network and the task weights. {owner._state_after_stop()}")


@register
class MultiTaskModel(keras.Model):
    r"""A multi-output model trained on a weighted sum of its task losses.

    Each train step computes every task's loss (averaged over the global batch,
    across replicas), takes one optimizer step on
    ``scale · Σ_i w_i L_i + Σ regularisation losses`` (the regularisation is not
    weighted) with the weights held fixed, then lets the weighting strategy
    update its weights from the detached losses.

    Logs at every step: `loss` (the weighted objective that the step
    minimised), `{task}_loss`, `{task}_weight` (the weights after the step's
    update) and, for each metric, `{task}_{metric}`; `worst_loss` and
    `worst_{metric}` report the worst task (largest loss, smallest accuracy)
    among the tasks that have that metric (when at least two have it).
    When the base model has losses of its own at `compile` (kernel
    regularizers, penalties added with `add_loss`), `regularization_loss`
    logs their sum, which enters the objective unweighted.
    `evaluate` reports the same (without weights).

    Args:
        base_model: a Functional `tf_keras` model whose output layers are named
            after the tasks (`base_model.output_names` are the task names, in
            order). A single-output model is allowed: with one task the weight is
            always 1 and the model trains like the base model.
        weighting: a `TaskWeighting`. Defaults to `EqualWeighting()`.
        scale: multiplies the weighted sum. The weights sum to 1, so with
            ``scale=1`` the effective learning rate of the network is `K` times
            smaller than with the plain sum of the task losses; pass
            `"num_tasks"` (or `K`) to keep a learning rate tuned for that sum.
            Defaults to `1.0`.
        normalize_losses: divide each task's loss by its value on the first
            train step, so tasks with losses of different units (cross-entropy,
            depth L1, angles) compete on equal terms: `True`, `False`, or
            `"auto"`: normalise when the first-step losses differ in scale,
            i.e. ``max_i L_i^{(0)} > AUTO_NORMALIZE_RATIO · min_i L_i^{(0)}``
            (decided once, from the recorded first losses). Defaults to `False`
            (`MinMaxMultiTask` defaults to `"auto"`).
        loss_scales: fixed, not learned, multipliers of task losses,
            `{task: s_t > 0}` (tasks left out keep 1), e.g. the ×1.5 depth and
            ×3 normal of the NYUv2 reference code. The weighting sees
            ``s_t · L_t`` (after normalisation); the logged `<task>_loss` stays
            the plain Keras loss. Defaults to `None` (all 1).

    The weighting therefore sees, per task,

    .. math::

        \tilde L_t = s_t \cdot L_t \,/\, L_t^{(0)} \quad(\text{normalised}), \qquad
        \tilde L_t = s_t \cdot L_t \quad(\text{otherwise}).

    A min-max weighting whose weights sit at a vertex of the simplex (tasks
    with weight `< STARVED_WEIGHT` at the end of two epochs in a row) gets a
    `UserWarning` that names the starved tasks and the fixes.

    Example:

    >>> model = MultiTaskModel(base_model, weighting=EqualWeighting(), scale="num_tasks")
    >>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
    ...               metrics=["accuracy"])
    >>> model.fit(dataset, epochs=5)
    """

    def __init__(self, base_model, weighting=None, scale=1.0, normalize_losses=False,
                 loss_scales=None, **kwargs):
        super().__init__(**kwargs)
        require_functional(base_model, "base_model")
        if weighting is None:
            weighting = EqualWeighting()
        if not isinstance(weighting, TaskWeighting):
            raise TypeError(
                "Argument `weighting` must be a `TaskWeighting` (e.g. MinMaxWeighting(), "
                f"EqualWeighting(), UncertaintyWeighting(), DynamicWeightAverage()). "
                f"Received: weighting={weighting!r}"
            )
        _check_output_structure(base_model)
        names = _task_names(base_model)
        if len(set(names)) != len(names):
            raise ValueError(
                "Argument `base_model` must have one uniquely named output layer per task. "
                f"Received output names: {names}"
            )
        self.base_model = base_model
        self.num_tasks = len(names)
        self._scale_value = scale_value(scale, self.num_tasks)
        self.scale = scale
        self.normalize_losses = check_normalize_losses(normalize_losses)
        self.loss_scales = check_loss_scales(loss_scales, names)
        self._loss_scale_vector = tf.constant(loss_scale_vector(self.loss_scales, names), tf.float32)
        owner = getattr(weighting, "_kmm_owner", None)
        if owner is not None and owner() is not None:
            raise ValueError(
                f"Argument `weighting` ({type(weighting).__name__} {weighting.name!r}) already "
                f"belongs to the model {owner().name!r}; two models sharing it would share their "
                f"task weights. Pass a new instance, e.g. "
                f"`{type(weighting).__name__}.from_config(weighting.get_config())`."
            )
        self.weighting = weighting
        weighting._kmm_owner = weakref.ref(self)
        if not weighting.built:
            weighting.build((self.num_tasks,))
        elif weighting.num_tasks != self.num_tasks:
            raise ValueError(
                f"Argument `weighting` was built for {weighting.num_tasks} tasks but the model has "
                f"{self.num_tasks}: {names}."
            )
        state = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_WRITE,
                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.train_step_counter = self.add_weight(
            name="train_step_counter", shape=(), dtype="int64", initializer="zeros", **state)
        self.epoch_counter = self.add_weight(
            name="epoch_counter", shape=(), dtype="int64", initializer="zeros", **state)
        self._epoch_start = self.add_weight(
            name="epoch_start", shape=(), dtype="bool", initializer="zeros", **state)
        self.initial_losses = self.add_weight(
            name="initial_losses", shape=(self.num_tasks,), initializer="zeros", **state)
        self._compiled = None
        self._hooks = _Hooks()
        # Every variable exists now (the base model is built, the strategy and
        # counters were just created): nothing is left for a first call to build.
        self.built = base_model.built

    # ------------------------------------------------------------------ state
    @property
    def task_names(self):
        """The task names, in order: the names of the base model's output layers.

        An output layer inside a wrapper (such as tfmot's `PruneLowMagnitude`)
        is named by the layer it wraps, so pruning does not rename the tasks.
        """
        return _task_names(self.base_model)

    @property
    def task_weights(self):
        """The task weights of the strategy, shape `(K,)` (before `scale`)."""
        return self.weighting.task_weights

    def with_base_model(self, base_model):
        """A new model of this class and configuration around `base_model`.

        The task-weighting state (task weights, DWA history, UW log-variances)
        and the step and epoch counters are copied; the optimizer and the
        compile settings are not. Used to swap the network for a stripped,
        quantisation-aware or otherwise rebuilt copy of it.
        """
        config = self.get_config()
        config["base_model"] = base_model
        if "weighting" in config:
            config["weighting"] = keras.saving.deserialize_keras_object(config["weighting"])
        copy = type(self)(**config)
        for target, source in zip(copy.weighting.weights, self.weighting.weights):
            target.assign(source)
        for name in ("train_step_counter", "epoch_counter", "initial_losses"):
            getattr(copy, name).assign(getattr(self, name))
        return copy

    def start_epoch(self):
        """Marks the next train step as the first of an epoch.

        `fit` calls it at every epoch; call it yourself only in a custom
        training loop with per-epoch weighting rules.
        """
        self._epoch_start.assign(True)

    def request_gradients(self, variables):
        """Lets a callback read the training gradients of `variables` on the steps it names.

        The gradients come from the step's own backward pass (no extra forward
        pass), and are stored only on the steps for which the returned
        `GradientRequest`'s `requested` flag is set. The train function is
        rebuilt to include the request; call `release_gradients` when done.

        Args:
            variables: trainable variables of the model.

        Returns:
            A `GradientRequest`.
        """
        trainable = {v.ref() for v in self.trainable_variables}
        missing = [v.name for v in variables if v.ref() not in trainable]
        if missing:
            raise ValueError(f"Argument `variables` must be trainable variables of the model. "
                             f"Received variables that are not: {missing}")
        request = GradientRequest(variables, self.distribute_strategy)
        self._hooks.gradient_requests.append(request)
        self.make_train_function(force=True)
        return request

    def release_gradients(self, request):
        """Stops storing the gradients of `request` (and rebuilds the train function)."""
        self._hooks.gradient_requests = [r for r in self._hooks.gradient_requests if r is not request]
        self.make_train_function(force=True)

    def call(self, inputs, training=None):
        """`{task: output}`: the base model's outputs keyed by task name, never by position."""
        return keyed_by_task(self.base_model(inputs, training=training), self.task_names)

    # ---------------------------------------------------------------- compile
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None,
                weighted_metrics=None, **kwargs):
        """Configures the model as `keras.Model.compile` does.

        Args:
            optimizer: the network optimizer (task weights are never in it).
            loss: a dict `{task: loss}` with exactly the task names as keys, a
                list in task order, or one loss used for every task.
            metrics: a dict `{task: [metrics]}`, or a list used for every task.
                `"accuracy"` and `"crossentropy"` resolve as in Keras, from the
                shapes of the labels and outputs. As in Keras, these metrics
                ignore the sample weights.
            loss_weights: refused: the task weights are learned.
            weighted_metrics: like `metrics`, weighted by the sample weights
                (as in Keras; a name that is also in `metrics` is logged as
                `{task}_weighted_{name}`).
            **kwargs: passed to `keras.Model.compile` (`run_eagerly`,
                `steps_per_execution`, `jit_compile`).
        """
        if loss_weights is not None:
            raise ValueError(
                f"Argument `loss_weights` is not accepted by {type(self).__name__}: the task "
                f"weights are set by its weighting strategy ({type(self.weighting).__name__}). "
                f"Received: loss_weights={loss_weights!r}"
            )
        if loss is None:
            raise ValueError(
                f"Argument `loss` is required: a dict {{task: loss}} with the task names "
                f"{self.task_names} as keys. Received: loss=None"
            )
        # Everything is validated before anything of the model changes.
        task_losses = {t: _task_loss(t, l) for t, l in self._per_task("loss", loss).items()}
        metric_specs = self._per_task("metrics", metrics or {})
        weighted_specs = self._per_task("weighted_metrics", weighted_metrics or {})
        for argument, per_task in (("metrics", metric_specs), ("weighted_metrics", weighted_specs)):
            for task, specs in per_task.items():
                for spec in _as_list(specs):
                    _check_metric_spec(task, spec, argument)
        super().compile(optimizer=optimizer, **kwargs)
        with self.distribute_strategy.scope():
            task_metrics = {}
            for t in self.task_names:
                plain = [self._resolve_metric(t, m) for m in _as_list(metric_specs.get(t))]
                taken = {m._base_name for m in plain}
                weighted = [self._resolve_metric(t, m, weighted=True, taken=taken)
                            for m in _as_list(weighted_specs.get(t))]
                task_metrics[t] = plain + weighted
            trackers = {"loss": keras.metrics.Mean(name="loss")}
            for t in self.task_names:
                trackers[f"{t}_loss"] = keras.metrics.Mean(name=f"{t}_loss")
            if self.losses:
                # The base model's own losses (kernel regularizers, penalties added
                # with `add_loss`), unweighted by the task weights, logged on their own.
                trackers["regularization_loss"] = keras.metrics.Mean(name="regularization_loss")
            self._compiled = _Compiled(task_losses, task_metrics, trackers, latest={})
            names = ["worst_loss", *(f"worst_{m}" for m in self._metric_tasks()),
                     *(f"{t}_weight" for t in self.task_names)]
            self._compiled.latest = {name: _Latest(name) for name in names}
        self._task_compile_config = dict(optimizer=optimizer, loss=loss, metrics=metrics,
                                         weighted_metrics=weighted_metrics, **kwargs)

    def get_compile_config(self):
        if self._is_compiled and self._compiled is not None:
            return keras.saving.serialize_keras_object(self._task_compile_config)
        return None

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if isinstance(self.optimizer, keras.optimizers.Optimizer) and self.built:
            self.optimizer.build(self.trainable_variables)

    def _per_task(self, argument, value):
        """Maps a per-task argument (dict, list in task order, or shared) to a dict."""
        if isinstance(value, dict):
            if set(value) != set(self.task_names):
                if argument != "loss" and set(value) <= set(self.task_names):
                    return {t: value.get(t) for t in self.task_names}
                raise ValueError(
                    f"Argument `{argument}` must have exactly the task names as keys. "
                    f"Received keys: {sorted(value)}; task names (the base model's output "
                    f"names): {self.task_names}."
                )
            return {t: value[t] for t in self.task_names}
        if argument == "loss" and isinstance(value, (list, tuple)):
            if len(value) != self.num_tasks:
                raise ValueError(
                    f"Argument `loss` given as a list must have one entry per task "
                    f"({self.task_names}). Received {len(value)} entries: {value!r}"
                )
            return dict(zip(self.task_names, value))
        return {t: value for t in self.task_names}

    def _resolve_metric(self, task, spec, weighted=False, taken=()):
        """The metric object of `spec` for `task`, named `{task}_{name}`, as `compile` makes it.

        `"accuracy"`, `"acc"`, `"crossentropy"` and `"ce"` are resolved by
        Keras' rule from the shapes of the labels and outputs (binary,
        sparse categorical or categorical); a `Metric` instance is copied, so
        that tasks never share a metric's state.
        """
        if isinstance(spec, str) and spec.lower() in _SHAPE_RESOLVED:
            metric = _ShapeResolvedMetric(spec.lower(), name=spec)
            base_name = spec
        else:
            metric = keras.metrics.get(spec)
            if isinstance(metric, keras.metrics.Metric):
                base_name = metric.name
                metric = type(metric).from_config(metric.get_config())
            else:
                base_name = getattr(metric, "name", None) or getattr(metric, "__name__", str(spec))
                metric = keras.metrics.MeanMetricWrapper(metric)
            if isinstance(spec, str):
                base_name = spec
        if weighted and base_name in taken:
            base_name = f"weighted_{base_name}"
        metric._name = f"{task}_{base_name}"
        metric._base_name = base_name
        metric._kmm_weighted = weighted
        return metric

    def _metric_tasks(self):
        """`{metric: [tasks reporting it]}` for the metrics of which a worst task is logged:
        those of at least two tasks (or of the only task)."""
        tasks_of = {}
        for task in self.task_names:
            for metric in self._compiled.metrics.get(task, []):
                tasks_of.setdefault(metric._base_name, []).append(task)
        return {name: tasks for name, tasks in sorted(tasks_of.items())
                if len(tasks) >= min(2, self.num_tasks)}

    @property
    def metrics(self):
        if self._compiled is None:
            return []
        metrics = list(self._compiled.trackers.values())
        for task_metrics in self._compiled.metrics.values():
            metrics.extend(task_metrics)
        return metrics + list(self._compiled.latest.values())

    @property
    def distribute_reduction_method(self):
        """How `fit` and `evaluate` reduce the per-replica logs: `"first"` unless set.

        Every log of `train_step` and `test_step` is already global (all-reduced
        losses, cross-replica metric results, mirrored task weights), so Keras'
        default (`"auto"`, a sum over replicas) would multiply the logs computed
        on each replica (`{task}_weight`, `worst_*`) by the number of replicas.
        """
        return self._distribute_reduction_method or "first"

    @distribute_reduction_method.setter
    def distribute_reduction_method(self, value):
        self._distribute_reduction_method = value

    # ------------------------------------------------------------- the steps
    def _as_task_dict(self, value, argument):
        if value is None:
            return {t: None for t in self.task_names}
        if isinstance(value, dict):
            # Sample weights may be given for some tasks only, as in Keras; targets for all.
            wanted = set(value) <= set(self.task_names) if argument == "sample weights" \
                else set(value) == set(self.task_names)
            if not wanted:
                raise ValueError(
                    f"The {argument} must be a dict keyed by the task names. Received keys: "
                    f"{sorted(value)}; task names: {self.task_names}."
                )
            return {t: value.get(t) for t in self.task_names}
        if isinstance(value, (list, tuple)):
            if len(value) != self.num_tasks:
                raise ValueError(
                    f"The {argument} given as a list must have one entry per task "
                    f"({self.task_names}). Received {len(value)} entries."
                )
            return dict(zip(self.task_names, value))
        if argument == "targets" and self.num_tasks > 1:
            raise ValueError(
                f"The targets must be a dict keyed by the task names {self.task_names} (or a "
                f"list in that order). Received a single tensor."
            )
        return {t: value for t in self.task_names}

    def per_sample_losses(self, y, y_pred):
        """`{task: loss of each sample}`, shape `(N,)` each: the compiled losses, unreduced.

        Each loss is Keras' own `Loss.call` on the task's labels and outputs
        (labels aligned with the outputs as `compile` aligns them). Losses with
        more than one value per sample (per pixel, per timestep) are averaged
        over all axes but the first. Sample weights are not applied.

        Args:
            y: the targets, a dict keyed by the task names (or a list in task order).
            y_pred: the predictions, a dict keyed by the task names (as `call` returns).
        """
        if self._compiled is None:
            raise RuntimeError("You must call `compile()` before computing losses.")
        y = self._as_task_dict(y, "targets")
        losses = {}
        for task in self.task_names:
            y_true, y_task, _ = match_dtype_and_rank(tf.convert_to_tensor(y[task]), y_pred[task], None)
            per_sample = tf.cast(self._loss_elements(task, y_true, y_task), tf.float32)
            if per_sample.shape.rank and per_sample.shape.rank > 1:
                per_sample = tf.reduce_mean(per_sample, axis=list(range(1, per_sample.shape.rank)))
            losses[task] = per_sample
        return losses

    def _loss_elements(self, task, y_true, y_pred):
        """The element losses of `task`: its `Loss.call`, run as `Loss.__call__` runs it."""
        loss = self._compiled.losses[task]
        call = loss.call
        if not tf.executing_eagerly():
            call = tf.__internal__.autograph.tf_convert(
                call, tf.__internal__.autograph.control_status_ctx())
        return call(y_true, y_pred)

    def _task_loss_sum(self, task, y_true, y_pred, sample_weight):
        """`(sum, elements)` of `task`'s weighted element losses on this replica's batch.

        The steps are Keras' own, in its order: the loss container's
        `match_dtype_and_rank` and output mask, then `Loss.__call__`'s masks,
        sample weights and reduction (`losses_utils`), so that
        `sum / elements` is exactly the loss a plain `tf_keras` model compiled
        with the same spec reports for the batch (`elements` is 0, meaning
        "do not divide", for a loss reduced by `"sum"`). Beyond Keras, a sample
        weight of shape `(N,)` also weighs per-pixel losses `(N, H, W)`, each
        sample's pixels alike (Keras refuses that shape).
        """
        loss = self._compiled.losses[task]
        y_true = tf.convert_to_tensor(y_true)
        if sample_weight is not None:
            sample_weight = tf.convert_to_tensor(sample_weight)
        y_true, y_pred, sample_weight = match_dtype_and_rank(y_true, y_pred, sample_weight)
        sample_weight = losses_utils.apply_mask(y_pred, sample_weight, losses_utils.get_mask(y_pred))
        values = self._loss_elements(task, y_true, y_pred)
        masks = [m for m in (losses_utils.get_mask(y_pred), losses_utils.get_mask(values))
                 if m is not None]
        mask = None if not masks else masks[0] if len(masks) == 1 else masks[0] & masks[1]
        if sample_weight is not None:
            rank, weight_rank = values.shape.rank, sample_weight.shape.rank
            if rank is not None and weight_rank == 1 and rank >= 3:
                sample_weight = tf.reshape(sample_weight, [-1] + [1] * (rank - 1))
        sample_weight = losses_utils.apply_valid_mask(values, sample_weight, mask, loss.reduction)
        weighted = losses_utils.compute_weighted_loss(values, sample_weight, reduction=_NONE)
        weighted = tf.cast(weighted, tf.float32)
        elements = 0.0 if loss.reduction == _SUM else tf.cast(tf.size(weighted), tf.float32)
        return tf.reduce_sum(weighted), elements

    def _compute_task_losses(self, y, y_pred, sample_weight):
        """Per-task losses: this replica's share of the global-batch loss, and the global loss.

        Returns `(local, global_, count)`: `local`, shape `(K,)`, is what this
        replica differentiates (its sum over replicas is the global loss);
        `global_`, shape `(K,)`, the global-batch losses (Keras' loss of the
        whole global batch, as if on one replica), identical on every replica;
        `count` the number of samples on this replica. The replicas can hold
        different numbers of samples (a partial last batch is split unevenly):
        the loss sums and their element counts are summed over replicas, in
        one all-reduce.
        """
        if self._compiled is None:
            raise RuntimeError("You must call `compile()` before training or evaluating the model.")
        sums, elements = [], []
        for task in self.task_names:
            total, count_ = self._task_loss_sum(task, y[task], y_pred[task], sample_weight[task])
            sums.append(total)
            elements.append(count_)
        count = tf.cast(tf.shape(y_pred[self.task_names[0]])[0], tf.float32)
        local_sums = tf.stack([*sums, *elements, count])
        context = tf.distribute.get_replica_context()
        global_sums = context.all_reduce(tf.distribute.ReduceOp.SUM, local_sums) if context else local_sums
        k = self.num_tasks
        summed = tf.constant([self._compiled.losses[t].reduction == _SUM for t in self.task_names])
        denominators = tf.where(summed, 1.0, global_sums[k:2 * k])
        return (tf.math.divide_no_nan(local_sums[:k], denominators),
                tf.math.divide_no_nan(global_sums[:k], denominators), count)

    def _weighted_losses(self, local, global_, training):
        """The losses the weighting sees: normalised (see `normalize_losses`), then `loss_scales`."""
        if self.normalize_losses is not False and training:
            first = tf.equal(self.train_step_counter, 0)
            self.initial_losses.assign(tf.where(first, tf.stop_gradient(global_), self.initial_losses))
        initial = tf.convert_to_tensor(self.initial_losses)
        scales = self._loss_scale_vector if self.loss_scales else None
        return tuple(balanced_losses(v, initial, self.normalize_losses, scales, TENSORFLOW_OPS)
                     for v in (local, global_))

    def normalizes_losses(self):
        """Whether the task losses are divided by their first-step values (a boolean tensor).

        `True`/`False` as `normalize_losses` says; with `"auto"`, whether the
        recorded first-step losses differ by more than `AUTO_NORMALIZE_RATIO`
        (`False` before the first train step).
        """
        if self.normalize_losses != "auto":
            return tf.constant(bool(self.normalize_losses))
        return auto_normalizes(tf.convert_to_tensor(self.initial_losses), TENSORFLOW_OPS)

    def _clock(self):
        return TrainingClock(step=self.train_step_counter.read_value(),
                             epoch=self.epoch_counter.read_value(),
                             epoch_start=self._epoch_start.read_value())

    def _finite_check(self, global_losses, step):
        finite = tf.math.is_finite(global_losses)
        bad = tf.strings.reduce_join(
            tf.boolean_mask(tf.constant(self.task_names), tf.logical_not(finite)), separator=", ")
        message = tf.strings.join([
            _NON_FINITE, " for task(s) [", bad, "] at training step ", tf.strings.as_string(step),
            " (0-based); task losses [",
            tf.strings.reduce_join(tf.strings.as_string(global_losses), separator=", "),
            f"] for tasks [{', '.join(self.task_names)}]. {_STOPPED}",
        ])
        return tf.debugging.Assert(tf.reduce_all(finite), [message])

    def _targets(self, y, step=None):
        """`y` as a dict keyed by task; integer labels of sparse losses checked to be finite.

        A NaN label of a sparse cross-entropy would be cast to an integer (the
        smallest int64) and fail deep in the loss without naming the task.
        """
        if y is None:
            raise ValueError(
                f"{type(self).__name__} needs targets: the data must yield `(inputs, targets)` "
                f"or `(inputs, targets, sample_weights)` with targets keyed by the task names "
                f"{self.task_names}. Received data with inputs only."
            )
        y = self._as_task_dict(y, "targets")
        checked = {}
        for task, target in y.items():
            target = tf.convert_to_tensor(target)
            if (task in self._compiled.sparse_tasks and target.dtype.is_floating
                    and not self._checks_after_step()):
                where = "" if step is None else tf.strings.as_string(step)
                message = tf.strings.join([
                    f"{_NON_FINITE_TARGET} for task [{task}]: its sparse labels hold NaN or "
                    f"infinite values (training step ", where, ", 0-based)."])
                check = tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(target)), [message])
                with tf.control_dependencies([check]):
                    target = tf.identity(target)
            checked[task] = target
        return checked

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y = self._targets(y, self.train_step_counter.read_value())
        sample_weight = self._as_task_dict(sample_weight, "sample weights")
        # A new epoch begins: advance the epoch counter (not on the very first epoch).
        started = self._epoch_start.read_value()
        self.epoch_counter.assign_add(tf.cast(
            tf.logical_and(started, self.train_step_counter > 0), tf.int64))
        clock = self._clock()
        self.weighting.on_step_begin(clock)
        replica_fraction = 1.0 / self.distribute_strategy.num_replicas_in_sync
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            local, raw, count = self._compute_task_losses(y, y_pred, sample_weight)
            check = tf.no_op() if self._checks_after_step() else self._finite_check(raw, clock.step)
            local, global_ = self._weighted_losses(local, raw, training=True)
            objective = self._scale_value * self.weighting.descent_loss(local, replica_fraction)
            regularization = tf.add_n(self.losses) if self.losses else None
            if regularization is not None:
                objective += regularization * replica_fraction
        # The logged objective: the global one that this step minimised (weights before the ascent).
        reported = self._global_objective(global_, regularization)
        with tf.control_dependencies([check]):
            variables = self.trainable_variables
            gradients = tape.gradient(objective, variables)
            if self._hooks.gradient_requests:
                gradient_of = {v.ref(): g for v, g in zip(variables, gradients)}
                for request in self._hooks.gradient_requests:
                    request._store(gradient_of)
            self.optimizer.apply_gradients(zip(gradients, variables))
            self.weighting.on_step_end(tf.stop_gradient(global_), clock)
            self.train_step_counter.assign_add(1)
            self._epoch_start.assign(False)
        return self._update_metrics(y, y_pred, sample_weight, raw, reported, count,
                                    with_weights=True, regularization=regularization)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y = self._targets(y)
        sample_weight = self._as_task_dict(sample_weight, "sample weights")
        y_pred = self(x, training=False)
        _, raw, count = self._compute_task_losses(y, y_pred, sample_weight)
        _, global_ = self._weighted_losses(raw, raw, training=False)
        regularization = tf.add_n(self.losses) if self.losses else None
        return self._update_metrics(y, y_pred, sample_weight, raw,
                                    self._global_objective(global_, regularization), count,
                                    with_weights=False, regularization=regularization)

    def _global_objective(self, global_losses, regularization=None):
        """``scale · Σ w_i L_i + regularisation`` on the global batch, for the logs."""
        objective = self._scale_value * self.weighting.descent_loss(global_losses)
        if regularization is not None:
            objective += regularization
        return objective

    def _update_metrics(self, y, y_pred, sample_weight, global_losses, objective, count,
                        with_weights, regularization=None):
        """Updates the trackers and metrics and returns the logs of this step.

        The loss trackers are weighted by this replica's number of samples, so
        that epoch (and `evaluate`) losses are means over samples, as Keras'
        own loss tracker gives, even with a partial last batch.
        """
        raw = global_losses  # the plain Keras losses, before normalisation and `loss_scales`
        trackers = self._compiled.trackers
        trackers["loss"].update_state(objective, sample_weight=count)
        if regularization is not None and "regularization_loss" in trackers:
            trackers["regularization_loss"].update_state(regularization, sample_weight=count)
        for i, task in enumerate(self.task_names):
            trackers[f"{task}_loss"].update_state(raw[i], sample_weight=count)
            metrics = self._compiled.metrics.get(task, [])
            if not metrics:
                continue
            # As Keras' metrics container: ranks aligned, output masks applied; the plain
            # metrics ignore the sample weights, the weighted ones use them.
            y_true, y_task, weight = match_dtype_and_rank(
                tf.convert_to_tensor(y[task]), y_pred[task],
                None if sample_weight[task] is None else tf.convert_to_tensor(sample_weight[task]))
            mask = losses_utils.get_mask(y_task)
            weight = losses_utils.apply_mask(y_task, weight, mask)
            for metric in metrics:
                metric.update_state(y_true, y_task, sample_weight=weight if metric._kmm_weighted else mask)
        logs = {m.name: m.result() for m in self.metrics if not isinstance(m, _Latest)}
        latest = {"worst_loss": tf.reduce_max(tf.stack([logs[f"{t}_loss"] for t in self.task_names]))}
        for base_name, tasks in self._metric_tasks().items():
            values = tf.stack([logs[f"{t}_{base_name}"] for t in tasks])
            reduce = tf.reduce_max if _lower_is_better(base_name) else tf.reduce_min
            latest[f"worst_{base_name}"] = reduce(values)
        if with_weights:
            weights = tf.convert_to_tensor(self.weighting.task_weights)
            for i, task in enumerate(self.task_names):
                latest[f"{task}_weight"] = weights[i]
        for name, value in latest.items():
            self._compiled.latest[name].update_state(value)
            logs[name] = value
        return logs

    # ------------------------------------------------------------------- fit
    def fit(self, *args, **kwargs):
        """`keras.Model.fit`, plus an internal callback that marks epoch starts.

        The user's list of callbacks is not modified.
        """
        bound = inspect.signature(keras.Model.fit).bind(self, *args, **kwargs)
        callbacks = bound.arguments.get("callbacks") or []
        if isinstance(callbacks, keras.callbacks.CallbackList):
            callbacks = list(callbacks.callbacks)
        self._check_pruning_callbacks(callbacks)
        bound.arguments["callbacks"] = [*callbacks, _EpochClock(self)]
        try:
            return super().fit(*bound.args[1:], **bound.kwargs)
        except tf.errors.InvalidArgumentError as error:
            target = re.search(rf"({_NON_FINITE_TARGET} for task.*?0-based\)\.)", error.message)
            if target is not None:
                raise ValueError(target.group(1)) from error
            found = re.search(rf"({_NON_FINITE} for task.*?{re.escape(_STOPPED)})", error.message)
            if found is None:
                raise
            raise NonFiniteLossError(f"{found.group(1)} {self._state_after_stop()}") from error

    def _checks_after_step(self):
        """Whether the non-finite checks run after the step (XLA compiles no assertions)."""
        return bool(getattr(self, "_jit_compile", False))

    def _state_after_stop(self):
        """What the variables hold after a stop on a non-finite loss, checked, in words."""
        variables = [*self.base_model.weights, *self.weighting.weights]
        bad = [v.name for v in variables
               if v.dtype.is_floating and not bool(tf.reduce_all(tf.math.is_finite(v)))]
        if not bad:
            return ("Checked: the network's weights and the task weights are all finite; they "
                    "hold the values of the last completed step.")
        return (f"Checked: {len(bad)} variable(s) were already non-finite before this step "
                f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}): an earlier update "
                f"made them so (too large a learning rate, `scale` or step size?). The last "
                f"finite state is not in memory: restore it from a checkpoint "
                f"(`keras.callbacks.BackupAndRestore` or `ModelCheckpoint`).")

    def _check_pruning_callbacks(self, callbacks):
        """Refuses to fit a model with tfmot pruning wrappers without `UpdatePruningStep`."""
        pruned = sorted(layer.layer.name for layer in self.base_model.submodules
                        if isinstance(layer, keras.layers.Wrapper) and hasattr(layer, "pruning_vars"))
        if not pruned:
            return
        # tfmot is imported only for models that already hold its wrappers (so it is loaded):
        # the core never pays for it otherwise, and never imports the package's sparsity part.
        from tensorflow_model_optimization.python.core.sparsity.keras.pruning_callbacks import (
            UpdatePruningStep,
        )

        if not any(isinstance(c, UpdatePruningStep) for c in callbacks or []):
            raise ValueError(
                f"This model has tfmot pruning wrappers (on layers {pruned}) but `fit` received "
                f"no `tfmot.sparsity.keras.UpdatePruningStep()` callback, without which tfmot's "
                f"pruning step and masks never advance. Add it: "
                f"`model.fit(..., callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), ...])`."
            )

    # --------------------------------------------------------- serialization
    def get_config(self):
        return {
            "name": self.name,
            "base_model": keras.saving.serialize_keras_object(self.base_model),
            "weighting": keras.saving.serialize_keras_object(self.weighting),
            "scale": self.scale,
            "normalize_losses": self.normalize_losses,
            "loss_scales": dict(self.loss_scales) or None,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["base_model"] = keras.saving.deserialize_keras_object(
            config["base_model"], custom_objects=custom_objects)
        if "weighting" in config:
            config["weighting"] = keras.saving.deserialize_keras_object(
                config["weighting"], custom_objects=custom_objects)
        return cls(**config)
