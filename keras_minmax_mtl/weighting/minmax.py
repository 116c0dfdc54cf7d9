r"""The min-max task weighting of Guo, Li, Sun, Qin, Yu and Zhang (2025).

.. math::

    \min_\theta \max_{w \in \Delta_K} \sum_i w_i L_i(\theta) - \frac{\gamma}{2}\|w - \tfrac{1}{K}\|^2

The network takes one descent step on ``Σ w_i L_i`` with `w` fixed; the task
weights take an ascent step (an `AscentRule`) with the detached losses of the
same batch, every `update_every` steps or epochs. Start: ``w = 1/K``.
"""
import tensorflow as tf

from keras_minmax_mtl.core.checks import is_int
from keras_minmax_mtl.core.backend import keras, register
from keras_minmax_mtl.weighting.ascent import AscentRule, ExponentiatedGradientAscent, ProjectedGradientAscent
from keras_minmax_mtl.core.multitask import MultiTaskModel
from keras_minmax_mtl.core.task_weighting import TaskWeighting

__all__ = ["MinMaxWeighting", "MinMaxMultiTask", "ASCENT_RULES", "UPDATE_UNITS"]

#: The ascent rules `MinMaxWeighting` accepts by name.
ASCENT_RULES = {"projected": ProjectedGradientAscent, "exponentiated": ExponentiatedGradientAscent}
#: What `update_every` counts.
UPDATE_UNITS = ("step", "epoch")


def _resolve_ascent(ascent, step_size, gamma):
    if isinstance(ascent, dict):
        ascent = keras.saving.deserialize_keras_object(ascent)
    if isinstance(ascent, AscentRule):
        return ascent
    if ascent in ASCENT_RULES:
        return ASCENT_RULES[ascent](step_size=step_size, gamma=gamma)
    raise ValueError(
        f"Argument `ascent` must be one of {sorted(ASCENT_RULES)} or an `AscentRule`. "
        f"Received: ascent={ascent!r}"
    )


@register
class MinMaxWeighting(TaskWeighting):
    r"""Worst-case task weights on the simplex, climbed by an ascent rule.

    Args:
        step_size: ascent step ``η = 1/β``, a finite number `> 0`. Defaults to
            `0.02` (the paper's ``β = 50`` with pruning; use `0.1` with DST).
        gamma: pull towards uniform weights, a finite number `>= 0`. Defaults to `5.0`.
        update_every: update the weights every this many steps (or epochs).
            Must be `>= 1`. Defaults to `1`.
        update_on: `"step"` (every `update_every` train steps, from the first)
            or `"epoch"` (on the first batch of every `update_every`-th epoch,
            as in the authors' code; needs `fit`). Defaults to `"step"`.
        ascent: `"projected"` (APGDA, the paper) or `"exponentiated"`
            (multiplicative weights, Group DRO), or an `AscentRule` instance
            whose own step size and gamma are then used. Defaults to `"projected"`.

    Example:

    >>> weighting = MinMaxWeighting(step_size=0.02, gamma=5.0)
    >>> model = MultiTaskModel(base_model, weighting=weighting)
    """

    #: The weights live on the probability simplex (`MultiTaskModel` watches for starved tasks).
    on_simplex = True

    def __init__(self, step_size=0.02, gamma=5.0, update_every=1, update_on="step",
                 ascent="projected", **kwargs):
        super().__init__(**kwargs)
        if not is_int(update_every) or update_every < 1:
            raise ValueError(
                f"Argument `update_every` must be an integer >= 1. Received: update_every={update_every!r}"
            )
        if update_on not in UPDATE_UNITS:
            raise ValueError(
                f"Argument `update_on` must be one of {list(UPDATE_UNITS)}. Received: update_on={update_on!r}"
            )
        self.rule = _resolve_ascent(ascent, step_size, gamma)
        self.step_size = self.rule.step_size
        self.gamma = self.rule.gamma
        self.update_every = int(update_every)
        self.update_on = update_on
        self.ascent = ascent if isinstance(ascent, str) else keras.saving.serialize_keras_object(self.rule)

    def build(self, input_shape):
        k = int(input_shape[-1])
        self._task_weights = self.state_variable(
            "task_weights", (k,), keras.initializers.Constant(1.0 / k)
        )
        super().build(input_shape)

    @property
    def task_weights(self):
        """The `tf.Variable` of task weights, on the simplex."""
        return self._task_weights

    def should_update(self, clock):
        """Whether the ascent step runs at this point of training (a bool tensor)."""
        every = tf.constant(self.update_every, tf.int64)
        if self.update_on == "step":
            return tf.equal(tf.math.floormod(clock.step, every), 0)
        return tf.logical_and(clock.epoch_start, tf.equal(tf.math.floormod(clock.epoch, every), 0))

    def on_step_end(self, losses, clock):
        current = self._task_weights
        proposal = self.rule(tf.convert_to_tensor(current), tf.cast(losses, current.dtype))
        # Assigned unconditionally (no tf.cond) so that it is valid in replica context.
        self._task_weights.assign(tf.where(self.should_update(clock), proposal, current))

    def get_config(self):
        config = super().get_config()
        config.update(
            step_size=self.step_size,
            gamma=self.gamma,
            update_every=self.update_every,
            update_on=self.update_on,
            ascent=self.ascent,
        )
        return config


@register
class MinMaxMultiTask(MultiTaskModel):
    r"""Multi-task model trained by min-max optimisation (Guo et al., 2025).

    .. math::

        \min_\theta \max_{w \in \Delta_K}\ \text{scale}\cdot\sum_i w_i L_i(\theta)
        - \frac{\gamma}{2}\|w - \tfrac{1}{K}\|^2

    Every train step: one optimizer step on the network for ``Σ w_i L_i`` with
    `w` fixed; then, every `update_every` steps (or epochs), the ascent step
    ``w ← Π_Δ(w + step_size·(L − γ(w − 1/K)))`` with the detached losses of
    the batch, so the task that is doing worst gains weight. The weights start
    at ``1/K``; for fixed losses they converge to ``Π_Δ(1/K + L/γ)``.

    `task_weights` is a non-trainable `tf.Variable` (never in the network
    optimizer), saved and restored with the model and identical on every
    replica under `tf.distribute`.

    Args:
        base_model: a Functional `tf_keras` model whose output layers are named
            after the tasks.
        step_size: the ascent step ``1/β``, `> 0`. Defaults to `0.02` (the
            paper's ``β = 50``; it uses ``β = 10`` with dynamic sparse training).
        gamma: pull towards uniform weights, `>= 0`. Defaults to `5.0`.
        update_every: ascent every this many steps (or epochs). Defaults to `1`.
        update_on: `"step"` or `"epoch"` (first batch of the epoch, as in the
            authors' code). Defaults to `"step"`.
        ascent: `"projected"` (the paper) or `"exponentiated"` (Group DRO's
            multiplicative weights). Defaults to `"projected"`.
        scale: `1.0` (weights sum to 1, as in the paper) or `"num_tasks"` to
            keep learning rates tuned for the plain sum of the task losses.
            Defaults to `1.0`.
        normalize_losses: divide each loss by its first-step value: `True`,
            `False` or `"auto"` (normalise when the first-step losses differ by
            more than `AUTO_NORMALIZE_RATIO`, i.e. are of different units or
            scales). Defaults to `"auto"`: on raw losses of different scales
            the ascent would follow the largest one to a vertex of the simplex
            and starve the other tasks (see docs/concepts.md); losses of one
            scale (e.g. cross-entropies) are left raw, as in the paper.
        loss_scales: fixed multipliers `{task: s_t}` of the losses the weights
            see (see `MultiTaskModel`). Defaults to `None`.

    Example:

    >>> model = MinMaxMultiTask(base_model, step_size=0.02, gamma=5.0)
    >>> model.compile(optimizer="adam",
    ...               loss={"left": "sparse_categorical_crossentropy", ...},
    ...               metrics={"left": ["accuracy"], ...})
    >>> model.fit(train, epochs=10)
    >>> model.task_weights.numpy()  # on the simplex
    """

    def __init__(self, base_model, step_size=0.02, gamma=5.0, update_every=1, update_on="step",
                 ascent="projected", scale=1.0, normalize_losses="auto", loss_scales=None,
                 **kwargs):
        kwargs.pop("weighting", None)
        weighting = MinMaxWeighting(step_size=step_size, gamma=gamma, update_every=update_every,
                                    update_on=update_on, ascent=ascent, name="minmax_weighting")
        super().__init__(base_model, weighting=weighting, scale=scale,
                         normalize_losses=normalize_losses, loss_scales=loss_scales, **kwargs)

    def get_config(self):
        w = self.weighting
        return {
            "name": self.name,
            "base_model": keras.saving.serialize_keras_object(self.base_model),
            "step_size": w.step_size,
            "gamma": w.gamma,
            "update_every": w.update_every,
            "update_on": w.update_on,
            "ascent": w.ascent,
            "scale": self.scale,
            "normalize_losses": self.normalize_losses,
            "loss_scales": dict(self.loss_scales) or None,
        }
