r"""Task weightings for Keras 3 models: `TaskWeighting`, `EqualWeighting`, `MinMaxWeighting`, UW and DWA.

The Keras 3 twins of `keras_minmax_mtl.core.task_weighting` and
`keras_minmax_mtl.weighting` (`minmax`, `uncertainty`, `dwa`), written in
`keras.ops` so that they run on every back-end. The maths of the weights is
not repeated here: it is `keras_minmax_mtl.weighting.maths`, the
implementation the tf_keras path runs, called with `keras.ops`.

A strategy is a small `keras.layers.Layer` whose state is non-trainable
variables (saved and restored with the model) and which `MultiTaskModel`
calls from `compute_loss`:

1. `on_step_begin(epoch_start)`: in a train step, before the loss is read,
   with whether the step is the first of an epoch (`fit` marks epoch starts);
2. `descent_loss(losses)`: the scalar the network minimises, ``Σ_i w_i L_i``,
   with ``w`` held fixed (no gradient flows into it);
3. `on_step_end(losses, step)`: in a train step, with the detached per-task
   losses of the batch and the number of train steps already done. Variables
   are assigned, never returned, so the update also works in JAX's stateless
   train step (`Model.stateless_compute_loss` hands the new values back).
"""
from keras_minmax_mtl.core.checks import check_finite_real, is_int
from keras_minmax_mtl.keras3.backend import keras, register
from keras_minmax_mtl.weighting import maths

__all__ = ["TaskWeighting", "EqualWeighting", "MinMaxWeighting", "UncertaintyWeighting",
           "DynamicWeightAverage", "ASCENT_RULES"]

ops = keras.ops

#: The ascent rules `MinMaxWeighting` accepts: {name: the step of `keras_minmax_mtl.weighting.maths`}.
ASCENT_RULES = {"projected": maths.projected_gradient_step,
                "exponentiated": maths.exponentiated_gradient_step}


class TaskWeighting(keras.layers.Layer):
    """Base class of the Keras 3 task-weighting strategies.

    `MultiTaskModel` calls `build((num_tasks,))`; subclasses create their
    variables in `build` (calling `super().build(input_shape)`) and override
    the hooks they need.
    """

    #: Whether the weights live on the probability simplex and may starve a task (a weight
    #: near 0); `MultiTaskModel.fit` then warns when a task stays starved.
    on_simplex = False

    def build(self, input_shape):
        self.num_tasks = int(input_shape[-1])
        super().build(input_shape)

    @property
    def task_weights(self):
        """The weights applied to the task losses, shape `(K,)` (before the model's `scale`)."""
        raise NotImplementedError

    def descent_loss(self, losses):
        """``Σ_i w_i L_i`` with `w` fixed (`losses`: the per-task losses, shape `(K,)`)."""
        weights = ops.stop_gradient(ops.cast(self.task_weights, losses.dtype))
        return ops.sum(weights * losses)

    def on_step_begin(self, epoch_start):
        """Called in a train step before the loss is read; `epoch_start`: a boolean scalar."""
        del epoch_start  # Nothing to do by default.

    def on_step_end(self, losses, step):
        """Called in a train step with the detached per-task losses and the steps done before it."""
        del losses, step  # Nothing to do by default.

    def call(self, inputs):
        raise TypeError(f"{type(self).__name__} holds task weights; it is not called on data.")


@register
class EqualWeighting(TaskWeighting):
    """Equal weighting (EW): ``w_i = 1/K`` for every task, always.

    Example:

    >>> model = MultiTaskModel(base_model, weighting=EqualWeighting(), scale="num_tasks")
    """

    @property
    def task_weights(self):
        return ops.full((self.num_tasks,), 1.0 / self.num_tasks)


@register
class MinMaxWeighting(TaskWeighting):
    r"""The min-max task weights of Guo et al. (2025), on the simplex.

    Every `update_every` train steps (from the first), after the step's loss is
    computed with the current weights, the weights take one ascent step with
    the detached losses ``L`` of the batch:

    .. math::

        \text{projected:}\quad w \leftarrow \Pi_\Delta\big(w + \eta (L - \gamma (w - \tfrac1K))\big)
        \qquad
        \text{exponentiated:}\quad w \leftarrow \operatorname{softmax}\big(\log w + \eta (L - \gamma (w - \tfrac1K))\big)

    Start: ``w = 1/K``. For fixed losses the projected rule converges to
    ``Π_Δ(1/K + L/γ)`` (`keras_minmax_mtl.weighting.maths.closed_form_weights`).

    Args:
        step_size: the ascent step ``η = 1/β``, a finite number `> 0`. Defaults to `0.02`.
        gamma: pull towards uniform weights, a finite number `>= 0`. Defaults to `5.0`.
        update_every: ascend every this many train steps, `>= 1`. Defaults to `1`.
        ascent: `"projected"` (APGDA, the paper) or `"exponentiated"`
            (multiplicative weights, Group DRO). Defaults to `"projected"`.

    Example:

    >>> model = MultiTaskModel(base_model, weighting=MinMaxWeighting(step_size=0.02, gamma=5.0))
    """

    on_simplex = True

    def __init__(self, step_size=0.02, gamma=5.0, update_every=1, ascent="projected", **kwargs):
        super().__init__(**kwargs)
        self.step_size, self.gamma = maths.check_ascent_hyper_parameters(step_size, gamma)
        if not is_int(update_every) or update_every < 1:
            raise ValueError(
                f"Argument `update_every` must be an integer >= 1. Received: update_every={update_every!r}"
            )
        if not isinstance(ascent, str) or ascent not in ASCENT_RULES:
            raise ValueError(
                f"Argument `ascent` must be one of {sorted(ASCENT_RULES)}. Received: ascent={ascent!r}"
            )
        self.update_every = int(update_every)
        self.ascent = ascent

    def build(self, input_shape):
        k = int(input_shape[-1])
        self._task_weights = self.add_weight(
            name="task_weights", shape=(k,), initializer=keras.initializers.Constant(1.0 / k),
            trainable=False)
        super().build(input_shape)

    @property
    def task_weights(self):
        """The non-trainable variable of task weights, on the simplex."""
        return self._task_weights

    def on_step_end(self, losses, step):
        current = ops.convert_to_tensor(self._task_weights)
        step_rule = ASCENT_RULES[self.ascent]
        proposal = step_rule(current, ops.cast(losses, current.dtype), self.step_size, self.gamma, ops)
        update = ops.equal(ops.mod(step, self.update_every), 0)
        self._task_weights.assign(ops.where(update, proposal, current))

    def get_config(self):
        config = super().get_config()
        config.update(step_size=self.step_size, gamma=self.gamma, update_every=self.update_every,
                      ascent=self.ascent)
        return config


@register
class UncertaintyWeighting(TaskWeighting):
    r"""Learned homoscedastic-uncertainty weights (Kendall, Gal and Cipolla, CVPR 2018).

    Each task has a learned log-variance ``s_i = log σ_i²``, a trainable
    variable that the model's optimizer trains with the network on

    .. math::

        \frac{1}{K}\sum_i \big(e^{-s_i} L_i + s_i\big)

    so the applied weights are ``w_i = e^{-s_i}/K`` (``1/K`` at ``s = 0``) and
    the optimum for fixed losses is ``s_i = log L_i``: the tf_keras path's
    `keras_minmax_mtl.UncertaintyWeighting`, the same maths
    (`keras_minmax_mtl.weighting.maths.uncertainty_objective`).

    Args:
        initial_log_variance: the starting ``s_i``, a finite number. Defaults to `0.0`.

    Example:

    >>> model = MultiTaskModel(base_model, weighting=UncertaintyWeighting())
    """

    def __init__(self, initial_log_variance=0.0, **kwargs):
        super().__init__(**kwargs)
        self.initial_log_variance = check_finite_real(initial_log_variance, "initial_log_variance")

    def build(self, input_shape):
        self.log_variances = self.add_weight(
            name="log_variances", shape=(int(input_shape[-1]),),
            initializer=keras.initializers.Constant(self.initial_log_variance), trainable=True)
        super().build(input_shape)

    @property
    def task_weights(self):
        return maths.uncertainty_weights(ops.convert_to_tensor(self.log_variances), ops)

    def descent_loss(self, losses):
        s = ops.cast(self.log_variances, losses.dtype)
        return maths.uncertainty_objective(s, losses, ops)

    def get_config(self):
        config = super().get_config()
        config.update(initial_log_variance=self.initial_log_variance)
        return config


@register
class DynamicWeightAverage(TaskWeighting):
    r"""Dynamic weight average (Liu, Johns and Davison, MTAN, CVPR 2019): weights from how fast each loss falls.

    With ``\bar L_i(t)`` the mean training loss of task `i` over epoch `t`,

    .. math::

        w_i(t) = \frac{\exp(r_i(t-1)/T)}{\sum_j \exp(r_j(t-1)/T)}, \qquad
        r_i(t-1) = \frac{\bar L_i(t-1)}{\bar L_i(t-2)}

    and ``w = 1/K`` for the first two epochs; the weights sum to 1 (the
    model's ``scale="num_tasks"`` gives the original's sum `K`). The tf_keras
    path's `keras_minmax_mtl.DynamicWeightAverage`, the same maths
    (`keras_minmax_mtl.weighting.maths.dwa_epoch_start`). Epoch boundaries
    come from `fit` (or `MultiTaskModel.start_epoch()` in a custom loop).

    Args:
        temperature: ``T``; larger is smoother. A finite number `> 0`. Defaults to `2.0`.

    Example:

    >>> model = MultiTaskModel(base_model, weighting=DynamicWeightAverage(2.0), scale="num_tasks")
    """

    def __init__(self, temperature=2.0, **kwargs):
        super().__init__(**kwargs)
        self.temperature = maths.check_temperature(temperature)

    def build(self, input_shape):
        k = int(input_shape[-1])

        def state(name, shape, initializer, dtype="float32"):
            return self.add_weight(name=name, shape=shape, initializer=initializer, dtype=dtype,
                                   trainable=False)

        self._task_weights = state("task_weights", (k,), keras.initializers.Constant(1.0 / k))
        self.loss_sum = state("epoch_loss_sum", (k,), "zeros")
        self.loss_count = state("epoch_loss_count", (), "zeros")
        # Row 0: mean losses of epoch t-2, row 1: of epoch t-1.
        self.loss_history = state("loss_history", (2, k), "zeros")
        self.epochs_done = state("epochs_done", (), "zeros", dtype="int32")
        super().build(input_shape)

    @property
    def task_weights(self):
        return self._task_weights

    def _state(self):
        return (self._task_weights, self.loss_sum, self.loss_count, self.loss_history,
                self.epochs_done)

    def on_step_begin(self, epoch_start):
        values = maths.dwa_epoch_start(tuple(ops.convert_to_tensor(v) for v in self._state()),
                                       epoch_start, self.temperature, ops)
        for variable, value in zip(self._state(), values):
            variable.assign(value)

    def on_step_end(self, losses, step):
        del step
        self.loss_sum.assign_add(ops.cast(losses, self.loss_sum.dtype))
        self.loss_count.assign_add(1.0)

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature)
        return config
