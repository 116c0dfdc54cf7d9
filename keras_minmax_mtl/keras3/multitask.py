r"""`MultiTaskModel` and `MinMaxMultiTask` for Keras 3 models, on any back-end.

`MultiTaskModel` wraps a Functional Keras 3 model whose outputs are the tasks
(dict outputs: the keys; list outputs: the output layers' names) and trains it
with plain `fit` on

.. math::

    \text{scale}\cdot \sum_i w_i \tilde L_i(\theta) \;+\; \text{the model's own losses}

with each task's loss ``L_i`` computed by the Keras loss object that `compile`
makes of the same spec, and ``\tilde L_i`` the loss the weighting sees
(normalised by its first-step value and/or multiplied by a fixed scale: the
rules of `keras_minmax_mtl.core.loss_balance`, shared with the tf_keras path). It overrides only the documented `Model.compute_loss` hook:
the task weights are non-trainable variables that the strategy assigns there
from the detached losses, which every back-end's train step carries out (the
JAX step through `Model.stateless_compute_loss`), so callbacks, `evaluate`
and `.keras` save → load → continue work as for any Keras model.
"""
import inspect
import warnings

from keras_minmax_mtl.core.checks import scale_value
from keras_minmax_mtl.core.loss_balance import (StarvationWatch, auto_normalizes, balanced_losses,
                                                check_loss_scales, check_normalize_losses,
                                                loss_scale_vector)
from keras_minmax_mtl.core.outputs import keyed_by_task
from keras_minmax_mtl.keras3.backend import keras, loss_object, register, require_functional, task_names
from keras_minmax_mtl.keras3.weighting import MinMaxWeighting, TaskWeighting, EqualWeighting

__all__ = ["MultiTaskModel", "MinMaxMultiTask", "LatestValue"]

ops = keras.ops


@register
class LatestValue(keras.metrics.Metric):
    """A metric whose result is the last value it was given (for the `{task}_weight` logs)."""

    def __init__(self, name, **kwargs):
        super().__init__(name=name, **kwargs)
        self.value = self.add_variable(shape=(), initializer="zeros", name="value")

    def update_state(self, value):
        self.value.assign(ops.cast(value, self.value.dtype))

    def result(self):
        return ops.convert_to_tensor(self.value)

    def reset_state(self):
        pass  # The latest value stays the latest value across epochs.


def _check_loss_spec(task, spec):
    """Raises at `compile` (not in `fit`) for a loss spec that names no loss."""
    if isinstance(spec, str) and spec.lower() in ("crossentropy", "ce"):
        return  # resolved from the shapes of the first batch, as `compile` does
    try:
        loss = keras.losses.get(spec)
    except ValueError as error:
        raise ValueError(f"Argument `loss` for task {task!r}: {error}") from None
    if not callable(loss):
        raise ValueError(f"Argument `loss` for task {task!r} must be a string, a function or a "
                         f"`keras.losses.Loss`. Received: {spec!r}")


class _EpochClock(keras.callbacks.Callback):
    """Marks epoch starts for the model (DWA) and warns once when min-max starves a task.

    `MultiTaskModel.fit` adds it; on JAX the variables are in sync with the
    train state at both points (Keras syncs them at every epoch's end and
    reads them again after `on_epoch_begin`).
    """

    def __init__(self, model):
        super().__init__()
        self._owner = model
        self._watch = StarvationWatch()

    def on_epoch_begin(self, epoch, logs=None):
        self._owner.start_epoch()

    def on_epoch_end(self, epoch, logs=None):
        owner = self._owner
        if not owner.weighting.on_simplex:
            return
        message = self._watch.epoch_end(owner.task_names,
                                        ops.convert_to_numpy(owner.task_weights).tolist(),
                                        ops.convert_to_numpy(owner.initial_losses).tolist())
        if message is not None:
            warnings.warn(message, UserWarning, stacklevel=2)


def _refuse_tf_distribute():
    """Raises under a `tf.distribute` strategy of more than one replica (TensorFlow back-end).

    There Keras 3 scales each replica's loss by ``1/replicas`` and the replicas would climb
    their weights from their own batches: the task weights would silently differ from a
    single-device run (checked: 0.478 against 0.427 after one step on two CPU replicas).
    """
    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf  # the TensorFlow back-end is running: already imported

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if replicas > 1:
        raise NotImplementedError(
            f"keras_minmax_mtl.keras3 does not support `tf.distribute` yet: this model trains "
            f"under {type(tf.distribute.get_strategy()).__name__} with {replicas} replicas, whose "
            f"per-replica losses would give each replica its own task weights. Train on one "
            f"device, or use the tf_keras path (`keras_minmax_mtl.MinMaxMultiTask`), which "
            f"all-reduces the losses."
        )


@register
class MultiTaskModel(keras.Model):
    r"""A multi-output Keras 3 model trained on a weighted sum of its task losses.

    Each train step computes every task's loss on the batch, minimises
    ``scale · Σ_i w_i L_i`` plus the model's own losses (regularisers,
    `add_loss`; unweighted) with the weights held fixed, and lets the strategy
    update its weights from the detached losses. `evaluate` changes no weight.

    Logs: `loss` (the objective), `{task}_loss` (the plain Keras loss of the
    task, as a model compiled with the same loss logs it, before
    normalisation and `loss_scales`), `{task}_weight` (the weights after the
    step) and the compiled metrics (`{task}_{metric}`).

    The weighting sees ``\tilde L_t = s_t L_t / L_t^{(0)}`` (normalised) or
    ``s_t L_t``, as on the tf_keras path (`keras_minmax_mtl.MultiTaskModel`,
    the same rules and constants: `keras_minmax_mtl.core.loss_balance`).

    Args:
        base_model: a Functional Keras 3 model, one output per task.
        weighting: a `keras_minmax_mtl.keras3.TaskWeighting`. Defaults to `EqualWeighting()`.
        scale: multiplies the weighted sum, a finite number `> 0` or
            `"num_tasks"` (the weights sum to 1, so `"num_tasks"` keeps a
            learning rate tuned for the plain sum). Defaults to `1.0`.
        normalize_losses: divide each task's loss by its value on the first
            train step: `True`, `False`, or `"auto"` (normalise when
            ``max_i L_i^{(0)} > AUTO_NORMALIZE_RATIO · min_i L_i^{(0)}``,
            decided from the recorded first losses). Defaults to `False`
            (`MinMaxMultiTask` defaults to `"auto"`).
        loss_scales: fixed multipliers `{task: s_t > 0}` of the losses the
            weighting sees (tasks left out keep 1). Defaults to `None`.

    Example:

    >>> model = MultiTaskModel(base_model, weighting=MinMaxWeighting(0.02, 5.0))
    >>> model.compile(optimizer="adam", loss={"left": "sparse_categorical_crossentropy",
    ...                                        "right": "sparse_categorical_crossentropy"})
    >>> model.fit(x, {"left": y_left, "right": y_right}, epochs=5)
    """

    def __init__(self, base_model, weighting=None, scale=1.0, normalize_losses=False,
                 loss_scales=None, **kwargs):
        super().__init__(**kwargs)
        require_functional(base_model, "base_model")
        names = task_names(base_model)
        if weighting is None:
            weighting = EqualWeighting()
        if not isinstance(weighting, TaskWeighting):
            raise TypeError(
                "Argument `weighting` must be a `keras_minmax_mtl.keras3.TaskWeighting` (e.g. "
                f"MinMaxWeighting(), EqualWeighting()). Received: weighting={weighting!r}"
            )
        self._scale_value = scale_value(scale, len(names))
        self.normalize_losses = check_normalize_losses(normalize_losses)
        self.loss_scales = check_loss_scales(loss_scales, names)
        if weighting.built and weighting.num_tasks != len(names):
            raise ValueError(f"Argument `weighting` was built for {weighting.num_tasks} tasks but "
                             f"the model has {len(names)}: {names}.")
        self.base_model = base_model
        self.task_names = names
        self.num_tasks = len(names)
        self.scale = scale
        self.weighting = weighting
        if not weighting.built:
            weighting.build((self.num_tasks,))
        self.train_step_counter = self.add_weight(
            name="train_step_counter", shape=(), dtype="int32", initializer="zeros", trainable=False)
        self.initial_losses = self.add_weight(
            name="initial_losses", shape=(self.num_tasks,), initializer="zeros", trainable=False)
        self._epoch_start = self.add_weight(
            name="epoch_start", shape=(), dtype="bool", initializer="zeros", trainable=False)
        self.task_loss_trackers = [keras.metrics.Mean(name=f"{t}_loss") for t in names]
        self.task_weight_trackers = [LatestValue(name=f"{t}_weight") for t in names]
        self._task_loss_specs = None
        self._task_losses = None
        self._loss_spec = None
        self.built = True

    @property
    def task_weights(self):
        """The task weights of the strategy, shape `(K,)` (before `scale`)."""
        return self.weighting.task_weights

    def start_epoch(self):
        """Marks the next train step as the first of an epoch (`fit` calls it at every epoch)."""
        self._epoch_start.assign(True)

    def normalizes_losses(self):
        """Whether the task losses are divided by their first-step values (a boolean tensor).

        `True`/`False` as `normalize_losses` says; with `"auto"`, whether the
        recorded first-step losses differ by more than `AUTO_NORMALIZE_RATIO`
        (`False` before the first train step).
        """
        if self.normalize_losses != "auto":
            return ops.convert_to_tensor(bool(self.normalize_losses))
        return auto_normalizes(ops.convert_to_tensor(self.initial_losses), ops)

    def fit(self, *args, **kwargs):
        """`keras.Model.fit`, plus an internal callback that marks epoch starts and watches
        for starved tasks (the user's list of callbacks is not modified)."""
        bound = inspect.signature(keras.Model.fit).bind(self, *args, **kwargs)
        callbacks = bound.arguments.get("callbacks") or []
        if isinstance(callbacks, keras.callbacks.CallbackList):
            callbacks = list(callbacks.callbacks)
        bound.arguments["callbacks"] = [*callbacks, _EpochClock(self)]
        return super().fit(*bound.args[1:], **bound.kwargs)

    def call(self, inputs, training=None):
        """`{task: output}`: the base model's outputs keyed by task name, never by position."""
        return keyed_by_task(self.base_model(inputs, training=training), self.task_names)

    # ---------------------------------------------------------------- compile
    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, metrics=None, **kwargs):
        """`keras.Model.compile` with one loss per task.

        Args:
            optimizer: as for `keras.Model.compile`.
            loss: `{task: loss}` naming every task, a list in task order, or one
                loss for every task (strings, functions or `keras.losses.Loss`).
            loss_weights: must be `None`: the weighting sets the task weights.
            metrics: as for `keras.Model.compile`, e.g. `{task: ["accuracy"]}`.
            **kwargs: the other arguments of `keras.Model.compile`.
        """
        if loss_weights is not None:
            raise ValueError(
                "Argument `loss_weights` must be None: the task weights come from the weighting "
                f"(`weighting=`) and `scale`. Received: loss_weights={loss_weights!r}"
            )
        if loss is None:
            raise ValueError("Argument `loss` is required: a loss per task "
                             f"{self.task_names}, or one loss for all. Received: loss=None")
        if isinstance(loss, dict):
            unknown = sorted(set(loss) - set(self.task_names))
            missing = [t for t in self.task_names if t not in loss]
            if unknown or missing:
                raise ValueError(
                    f"Argument `loss` must name every task {self.task_names} and nothing else. "
                    f"Received: missing {missing}, unknown {unknown}"
                )
            specs = {t: loss[t] for t in self.task_names}
        elif isinstance(loss, (list, tuple)):
            if len(loss) != self.num_tasks:
                raise ValueError(
                    f"Argument `loss` as a list must hold one loss per task {self.task_names}. "
                    f"Received {len(loss)} losses: {list(loss)}"
                )
            specs = dict(zip(self.task_names, loss))
        else:
            specs = {t: loss for t in self.task_names}
        for task, spec in specs.items():
            _check_loss_spec(task, spec)
        self._task_loss_specs = specs
        self._task_losses = None  # made from the specs at the first batch
        self._loss_spec = loss
        super().compile(optimizer=optimizer, loss=None, metrics=metrics, **kwargs)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config:
            config["loss"] = keras.saving.serialize_keras_object(self._loss_spec)
        return config

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        config.pop("loss_weights", None)
        self.compile(**config)
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)  # so that its saved state loads

    # ------------------------------------------------------------------- loss
    def _per_task(self, value):
        if value is None or isinstance(value, dict):
            return value
        if isinstance(value, (list, tuple)):
            return dict(zip(self.task_names, value))
        return {t: value for t in self.task_names}

    def task_losses(self, y, y_pred, sample_weight=None):
        """The per-task losses of a batch, shape `(K,)`: each the task's Keras loss object's value."""
        if self._task_loss_specs is None:
            raise RuntimeError("The model must be compiled (with a loss per task) before it "
                               "computes its task losses: call `compile(optimizer, loss=...)`.")
        y = self._per_task(y)
        if y is None or set(y) != set(self.task_names):
            raise ValueError(f"Argument `y` must hold the targets of exactly the tasks "
                             f"{self.task_names} (a dict by task, or a list in task order). "
                             f"Received: {None if y is None else sorted(y)}")
        if self._task_losses is None:
            self._task_losses = {t: loss_object(s, y[t], y_pred[t])
                                 for t, s in self._task_loss_specs.items()}
        weights = self._per_task(sample_weight) or {}
        values = [ops.cast(self._task_losses[t](y[t], y_pred[t], weights.get(t)), "float32")
                  for t in self.task_names]
        return ops.stack(values)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """``scale · Σ_i w_i L̃_i`` + the model's own losses; in training, then the ascent.

        The per-task trackers are updated as Keras' loss container updates its
        own (weighted by the batch size) with the plain losses ``L_i``; in a
        train step the first-step losses are recorded (when normalising), the
        strategy's `on_step_begin` runs, and after the objective has read the
        current weights its `on_step_end` assigns the new ones from the
        detached ``L̃_i``.
        """
        del x
        losses = self.task_losses(y, y_pred, sample_weight)
        initial = ops.convert_to_tensor(self.initial_losses)
        if training:
            _refuse_tf_distribute()
            if self.normalize_losses is not False:
                first = ops.equal(self.train_step_counter, 0)
                initial = ops.where(first, ops.stop_gradient(losses), initial)
                self.initial_losses.assign(initial)
            self.weighting.on_step_begin(ops.convert_to_tensor(self._epoch_start))
            self._epoch_start.assign(False)
        scales = (ops.convert_to_tensor(loss_scale_vector(self.loss_scales, self.task_names),
                                        losses.dtype) if self.loss_scales else None)
        balanced = balanced_losses(losses, initial, self.normalize_losses, scales, ops)
        objective = self._scale_value * self.weighting.descent_loss(balanced)
        for extra in self.losses:
            objective = objective + self._aggregate_additional_loss(extra)
        batch = keras.tree.flatten(y_pred)[0].shape[0]
        for i, tracker in enumerate(self.task_loss_trackers):
            tracker.update_state(losses[i], sample_weight=batch)
        if training:
            self.weighting.on_step_end(ops.stop_gradient(balanced), self.train_step_counter)
            self.train_step_counter.assign_add(1)
        weights = ops.convert_to_tensor(self.weighting.task_weights)
        for i, tracker in enumerate(self.task_weight_trackers):
            tracker.update_state(weights[i])
        return objective

    # ----------------------------------------------------------- serialization
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
        for key in ("base_model", "weighting"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(
                    config[key], custom_objects=custom_objects)
        return cls(**config)


@register
class MinMaxMultiTask(MultiTaskModel):
    r"""A Keras 3 multi-task model trained by min-max optimisation (Guo et al., 2025).

    .. math::

        \min_\theta \max_{w \in \Delta_K}\ \text{scale}\cdot\sum_i w_i L_i(\theta)
        - \frac{\gamma}{2}\|w - \tfrac{1}{K}\|^2

    `MultiTaskModel` with `MinMaxWeighting(step_size, gamma, update_every, ascent)`.

    Args:
        base_model: a Functional Keras 3 model, one output per task.
        step_size: the ascent step ``1/β``, `> 0`. Defaults to `0.02`.
        gamma: pull towards uniform weights, `>= 0`. Defaults to `5.0`.
        update_every: ascend every this many train steps. Defaults to `1`.
        ascent: `"projected"` or `"exponentiated"`. Defaults to `"projected"`.
        scale: `1.0` or `"num_tasks"` (see `MultiTaskModel`). Defaults to `1.0`.
        normalize_losses: `True`, `False` or `"auto"` (see `MultiTaskModel`).
            Defaults to `"auto"`, as on the tf_keras path: raw losses of
            different scales would drive the weights to a vertex of the simplex.
        loss_scales: fixed multipliers `{task: s_t}` (see `MultiTaskModel`). Defaults to `None`.

    Example:

    >>> model = MinMaxMultiTask(base_model, step_size=0.02, gamma=5.0)
    >>> model.compile(optimizer="adam", loss={"a": "mse", "b": "mse"})
    >>> model.fit(x, {"a": ya, "b": yb}, epochs=3)
    >>> keras.ops.convert_to_numpy(model.task_weights)  # on the simplex
    """

    def __init__(self, base_model, step_size=0.02, gamma=5.0, update_every=1, ascent="projected",
                 scale=1.0, normalize_losses="auto", loss_scales=None, **kwargs):
        kwargs.pop("weighting", None)
        weighting = MinMaxWeighting(step_size=step_size, gamma=gamma, update_every=update_every,
                                    ascent=ascent, name="minmax_weighting")
        super().__init__(base_model, weighting=weighting, scale=scale,
                         normalize_losses=normalize_losses, loss_scales=loss_scales, **kwargs)

    def get_config(self):
        w = self.weighting
        return {"name": self.name, "base_model": keras.saving.serialize_keras_object(self.base_model),
                "step_size": w.step_size, "gamma": w.gamma, "update_every": w.update_every,
                "ascent": w.ascent, "scale": self.scale, "normalize_losses": self.normalize_losses,
                "loss_scales": dict(self.loss_scales) or None}
