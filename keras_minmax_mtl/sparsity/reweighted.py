r"""Reweighted-ℓ1 pruning in three stages, on tfmot's pruning wrappers (Guo et al., 2025).

1. **Dense training** (steps ``1 … begin_step − 1``).
2. **Reweighted training** (steps ``begin_step … prune_step − 1``): the
   objective gains the penalty

   .. math::

       \rho \sum_j \frac{|w_j|}{|w^{\text{ref}}_j| + \varepsilon}

   over exactly the kernels that will be pruned. ``w^ref`` is copied from
   the current weights at `begin_step` and at every refresh step (by default
   at 1/3 and 2/3 of the stage), so weights that are already small get heavy
   penalties and are driven to zero.
3. **Hard prune** at `prune_step` to the target sparsity (per-layer
   magnitude, uniform across layers, or one global magnitude ranking), then
   **masked retraining**: the masks are held, the penalty is off.

Steps are counted as tfmot counts them: the wrappers' `pruning_step` is 0
before training and the k-th training step (1-based) sees ``step = k``. The
hard prune happens inside the forward pass of step `prune_step`, on the
weights left by step ``prune_step − 1``.

The parts:

- `ReweightedL1Schedule`, a tfmot `PruningSchedule`: never prunes before
  `prune_step`, prunes once at `prune_step`, then holds the masks;
- `ReweightedL1Penalty`, the penalty, added to the (wrapped) base model with
  `add_loss`, so `MultiTaskModel` adds it unweighted by the task weights and
  logs it as `regularization_loss`;
- `ReweightedL1Stages`, the callback that switches the penalty on and off,
  refreshes ``w^ref`` and, for the global ranking, sets each layer's
  sparsity just before the prune;
- `prune_reweighted_l1`, the one call that sets all of it up.

`sparsity_type="filter"` (structured mode) removes whole output units
instead of single weights: the penalty becomes the reweighted group-ℓ1 over
units and the prune removes, per layer, the fraction `target_sparsity` of
units with the smallest ℓ2 norms (`keras_minmax_mtl.sparsity.structured`, which also
states the contract a removed unit satisfies: all-zero kernel slice, bias 0,
following BatchNormalization gamma and beta 0).

`sparsity_type="group"` removes whole **channel dependency groups**
(`keras_minmax_mtl.sparsity.dependency`): the channels tied through residual
`Add`s, `DepthwiseConv2D`, `BatchNormalization`, `ZeroPadding2D` and nested
trunks, which only go together. The Dense/Conv2D producers the policy
chooses are wrapped (a `DepthwiseConv2D` never is: its channels belong to
its producer's groups); the penalty is the reweighted group-ℓ1 over the
groups whose producers are all wrapped (`dependency.GroupL1Penalty`),

.. math::

    \rho \sum_g \frac{\|g\|_2}{\|g^{\text{ref}}\|_2 + \varepsilon},
    \qquad \|g\|_2 = \Big(\sum_{p \in g} p^2\Big)^{1/2}

over every producer kernel column, consumer kernel row, member `gamma` and
depthwise kernel slice ``p`` of group ``g``, with ``g^ref`` refreshed as in
the other modes (the reweighting); the prune removes ``round(f · n)`` of
the ``n`` groups of every family (`dependency.prune_groups`), the smallest
ℓ2 norms first or, with ``group_score="worst"`` / ``"weighted"``, the
lowest per-task Taylor scores under the model's task weights
(`dependency.task_taylor_importance`, `dependency.group_scores`); and
`structured.RemovedGroups.hold` keeps every weight entry of the removed
groups at zero during retraining, so `keras_minmax_mtl.export.surgery.shrink`
cuts them out exactly.

Example:

>>> wrapped, callbacks = prune_reweighted_l1(
...     base, target_sparsity=0.9, dense_steps=500, reweighted_steps=400, rho=1e-5)
>>> model = MinMaxMultiTask(wrapped)
>>> model.compile(optimizer="adam", loss=..., metrics=...)
>>> model.fit(train, epochs=..., callbacks=callbacks)     # all three stages
>>> sparsity_report(model)["overall"]["sparsity"]        # 0.9 (to rounding)
>>> deployable = strip_pruning(model)                    # keeps the task weights
"""

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_schedule import (
    PruningSchedule,
)

from keras_minmax_mtl.core.checks import is_int
from keras_minmax_mtl.core.backend import keras, register, require_functional
from keras_minmax_mtl.core.multitask import MultiTaskModel
from keras_minmax_mtl.sparsity.maths import (
    check_epsilon,
    check_rho,
    check_stage_steps,
    check_target_sparsity,
    refresh_points,
    reweighted_factors,
)
from keras_minmax_mtl.sparsity.policy import MultiTaskPruningPolicy, layer_roles
from keras_minmax_mtl.sparsity.pruning import (
    PruneLowMagnitude,
    calls_per_step,
    check_single_step_execution,
    clone_nested,
    pruning_wrappers,
    walk_layers,
)
from keras_minmax_mtl.sparsity.dependency import (
    GROUP_RULES,
    GroupL1Penalty,
    channel_groups,
    group_scores,
    output_tasks,
    task_taylor_importance,
)
from keras_minmax_mtl.sparsity.structured import (
    RemovedGroups,
    RemovedUnits,
    check_group_layer,
    check_nested_outputs,
    check_sparsity_type,
    check_structured_layer,
    magnitudes,
    prune_channel_groups,
    prune_units,
    pruned_groups,
    units_to_remove,
)

__all__ = [
    "ALLOCATIONS",
    "ReweightedL1Schedule",
    "ReweightedL1Penalty",
    "ReweightedL1Stages",
    "prune_reweighted_l1",
    "global_sparsities",
    "GROUP_SCORES",
]

#: Mask allocations: the same sparsity in every layer (the paper), or one
#: magnitude ranking over all pruned kernels together.
ALLOCATIONS = ("uniform", "global")

#: How `sparsity_type="group"` ranks the groups at the prune: their ℓ2 norms, or the per-task
#: Taylor importance combined by a `dependency.group_scores` rule under the task weights.
GROUP_SCORES = ("norm", *GROUP_RULES)

#: The modes in which the schedules hold the masks and `ReweightedL1Stages` writes them.
_HELD_MASKS = ("filter", "group")

_PENALTY_ATTRIBUTE = "_kmm_reweighted_l1_penalty"
_STATE_ATTRIBUTE = "kmm_reweighted_l1_state"


@register
class ReweightedL1Schedule(PruningSchedule):
    """Prunes exactly once, at `prune_step`, then holds the masks (a tfmot `PruningSchedule`).

    ``schedule(step)`` returns ``(step == prune_step, sparsity)``. tfmot's
    wrapper recomputes its masks only when the first element is true, so the
    masks are all ones before `prune_step` (dense and reweighted training),
    are set to `sparsity` by magnitude at `prune_step`, and stay as they are
    afterwards (masked retraining).

    `sparsity` starts at `target_sparsity`; `set_sparsity` changes it for
    this layer only (`ReweightedL1Stages` does so for the global ranking,
    just before the prune).

    Its `get_config` has the shape of tfmot's schedules,
    ``{"class_name": "keras_minmax_mtl>ReweightedL1Schedule", "config": {...}}``
    (with every constructor argument in `config`), so that tfmot's
    `PruneLowMagnitude.from_config` rebuilds it without a custom-object scope;
    `from_config` takes the inner `config`.

    With `sparsity_type="filter"` the schedule never asks tfmot to prune
    (``(False, sparsity)`` at every step, like `dst.HoldMasks`): tfmot would
    set the masks weight by weight. `ReweightedL1Stages` sets the unit masks
    itself at `prune_step` (`structured.prune_units`), and `sparsity` is then
    the fraction of the layer's output units removed. `sparsity_type="group"`
    holds the masks the same way; `sparsity` is then the fraction of each
    family's channel groups removed (`structured.prune_channel_groups`).

    Args:
        target_sparsity: fraction of the layer's prunable weights set to zero
            at `prune_step` (with `sparsity_type="filter"`: fraction of its
            output units removed), in `[0, 1)`.
        prune_step: the step (tfmot's count, 1-based) at which to prune;
            `>= begin_step`.
        begin_step: the first step of the reweighted stage, `>= 1`; the
            schedule never prunes before it. Defaults to `1`.
        sparsity_type: `"unstructured"` (tfmot's magnitude prune),
            `"filter"` or `"group"` (masks held; units or channel groups
            removed by `ReweightedL1Stages`). Defaults to `"unstructured"`.

    Example:

    >>> schedule = ReweightedL1Schedule(0.9, prune_step=1001, begin_step=501)
    >>> wrapped = tfmot.sparsity.keras.prune_low_magnitude(base, pruning_schedule=schedule)
    """

    def __init__(self, target_sparsity, prune_step, begin_step=1, sparsity_type="unstructured",
                 calls_per_step=1):
        self.target_sparsity = check_target_sparsity(target_sparsity)
        self.begin_step, self.prune_step = check_stage_steps(begin_step, prune_step)
        self.sparsity_type = check_sparsity_type(sparsity_type)
        if not is_int(calls_per_step) or calls_per_step < 1:
            raise ValueError(f"Argument `calls_per_step` must be an integer >= 1. Received: "
                             f"calls_per_step={calls_per_step!r}")
        self.calls_per_step = int(calls_per_step)
        self.sparsity = tf.Variable(self.target_sparsity, trainable=False, dtype=tf.float32,
                                    name="reweighted_l1_sparsity")

    def set_sparsity(self, sparsity):
        """Sets the sparsity of the coming prune (for this layer), in `[0, 1)`."""
        self.sparsity.assign(check_target_sparsity(sparsity))

    def __call__(self, step):
        if self.sparsity_type in _HELD_MASKS:  # ReweightedL1Stages sets the masks itself
            return tf.constant(False), tf.identity(self.sparsity)
        # tfmot's `pruning_step` advances at every training call of the wrapper: a layer
        # called n times per training step sees (s − 1)·n + 1 … s·n during step s, and is
        # pruned at the first call of step `prune_step`, so all n calls use the new mask.
        first_call = (self.prune_step - 1) * self.calls_per_step + 1
        should_prune = tf.math.equal(tf.cast(step, tf.int64), first_call)
        return should_prune, tf.identity(self.sparsity)

    def get_config(self):
        return {
            "class_name": keras.saving.get_registered_name(type(self)),
            "config": {
                "target_sparsity": self.target_sparsity,
                "prune_step": self.prune_step,
                "begin_step": self.begin_step,
                "sparsity_type": self.sparsity_type,
                "calls_per_step": self.calls_per_step,
            },
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class ReweightedL1Penalty:
    r"""The reweighted-ℓ1 penalty over the kernels of a pruned model.

    .. math::

        P(w) = c \sum_j \frac{|w_j|}{|w^{\text{ref}}_j| + \varepsilon}

    or, with `sparsity_type="filter"`, the reweighted group-ℓ1 over output
    units (`structured.unit_norms`: a Dense column, a Conv2D filter)

    .. math::

        P(w) = c \sum_{\text{layers}} \sum_u
               \frac{\|W_u\|_2}{\|W^{\text{ref}}_u\|_2 + \varepsilon},

    or, with `sparsity_type="group"`, the reweighted group-ℓ1 over the
    channel groups whose producers are all wrapped (`structured.pruned_groups`;
    ``‖g‖₂`` over every weight the group deletes, `dependency.GroupL1Penalty`)

    .. math::

        P(w) = c \sum_g \frac{\|g\|_2}{\|g^{\text{ref}}\|_2 + \varepsilon},

    where the sum runs over the prunable weights of every `PruneLowMagnitude`
    wrapper of the model (exactly the weights that will be pruned), ``w^ref``
    is a non-trainable copy taken by `refresh`, and ``c`` (`coefficient`, a
    non-trainable variable) is ρ during the reweighted stage and 0 otherwise.
    When ``c = 0`` nothing is computed (a `tf.cond`). A plain callable,
    attached to a Functional model by `attach` with `add_loss`. Its variables
    (``w^ref``, the factors, ``c`` and `reference_step`, the step of the last
    refresh) are not weights of the model, so `model.save` does not hold them
    (`ReweightedL1Stages` attaches a new penalty to a reloaded model, with
    ``w^ref`` taken from the reloaded weights), but they are in the model's
    TensorFlow checkpoint (`tf.train.Checkpoint(model=...)`), so
    `keras.callbacks.BackupAndRestore` restores them and a resumed run is
    the uninterrupted one.

    Args:
        model: the Functional model holding the pruning wrappers.
        epsilon: ``ε > 0``, keeps the factors finite. Defaults to `1e-6`
            (the paper's).
        sparsity_type: `"unstructured"` (per weight), `"filter"` (per
            output unit) or `"group"` (per channel group). Defaults to
            `"unstructured"`.

    Example:

    >>> penalty = ReweightedL1Penalty.attach(wrapped, epsilon=1e-6)
    >>> penalty.set_coefficient(1e-5); penalty.refresh()
    >>> float(penalty())          # about 1e-5 times the number of pruned weights
    """

    def __init__(self, model, epsilon=1e-6, sparsity_type="unstructured"):
        self.epsilon = check_epsilon(epsilon)
        self.sparsity_type = check_sparsity_type(sparsity_type)
        self.weights = [weight for wrapper in pruning_wrappers(model)
                        for weight, _, _ in wrapper.pruning_vars]
        self.groups = None
        if self.sparsity_type == "group" and self.weights:
            self.groups = _groups_to_prune(model)
            # ρ is the coefficient below: the group sum itself has weight 1.
            self.group_penalty = GroupL1Penalty(model, 1.0, groups=self.groups,
                                                epsilon=self.epsilon)
            self.weights = []
            self.references = [self.group_penalty.reference]
            self.factors = []
        elif not self.weights:
            raise ValueError(
                f"Argument `model` has no tfmot pruning wrappers with prunable weights, so the "
                f"reweighted penalty would be empty. Received model {model.name!r}."
            )
        if self.sparsity_type != "group":
            self._weight_references()
        self.coefficient = tf.Variable(0.0, trainable=False, dtype=tf.float32,
                                       name="reweighted_l1_coefficient")
        # The step of the last refresh of ``w^ref`` by `ReweightedL1Stages`; -1: taken when
        # the penalty was created, not at a step of the schedule.
        self.reference_step = tf.Variable(-1, trainable=False, dtype=tf.int64,
                                          name="reweighted_l1_reference_step")
        # Tracked by the model's checkpoint (BackupAndRestore), not one of its weights.
        self.state = tf.__internal__.tracking.AutoTrackable()
        self.state.references = self.references
        self.state.factors = self.factors
        self.state.coefficient = self.coefficient
        self.state.reference_step = self.reference_step

    def _weight_references(self):
        self.references = [
            tf.Variable(tf.identity(weight), trainable=False,
                        name=f"reference_{weight.name.split(':')[0].replace('/', '_')}")
            for weight in self.weights
        ]
        # 1 / (|w_ref| + ε) (or 1 / (‖W_ref_u‖ + ε)), computed at each refresh so a step
        # only multiplies.
        self.factors = [tf.Variable(reweighted_factors(self._magnitudes(r), self.epsilon),
                                    trainable=False,
                                    name=r.name.split(":")[0].replace("reference", "factor"))
                        for r in self.references]

    @classmethod
    def attach(cls, model, epsilon=1e-6, sparsity_type="unstructured"):
        """Creates the penalty over `model`'s pruned kernels and adds it to `model` with `add_loss`.

        Returns the penalty already attached to `model` if there is one (with
        the same `epsilon` and `sparsity_type`).
        """
        existing = getattr(model, _PENALTY_ATTRIBUTE, None)
        if existing is not None:
            if (existing.epsilon, existing.sparsity_type) != (
                    check_epsilon(epsilon), check_sparsity_type(sparsity_type)):
                raise ValueError(
                    f"Model {model.name!r} already has a reweighted penalty with "
                    f"epsilon={existing.epsilon}, sparsity_type={existing.sparsity_type!r}. "
                    f"Received: epsilon={epsilon!r}, sparsity_type={sparsity_type!r}"
                )
            return existing
        with model.distribute_strategy.scope():
            penalty = cls(model, epsilon=epsilon, sparsity_type=sparsity_type)
        model.add_loss(penalty)
        object.__setattr__(model, _PENALTY_ATTRIBUTE, penalty)
        # A checkpoint dependency of the model (an AutoTrackable is neither a layer nor a
        # weight): `BackupAndRestore` saves and restores w_ref with the weights.
        setattr(model, _STATE_ATTRIBUTE, penalty.state)
        return penalty

    @staticmethod
    def of(model):
        """The penalty attached to `model` (or to its base model), or `None`."""
        if isinstance(model, MultiTaskModel):
            model = model.base_model
        return getattr(model, _PENALTY_ATTRIBUTE, None)

    def _magnitudes(self, weight):
        return magnitudes(weight, self.sparsity_type)

    def refresh(self, step=-1):
        """``w^ref ← w`` for every pruned kernel (or group); `step` is recorded as `reference_step`."""
        self.reference_step.assign(int(step))
        if self.sparsity_type == "group":
            self.group_penalty.refresh()
        for reference, factor, weight in zip(self.references, self.factors, self.weights):
            reference.assign(weight)
            factor.assign(reweighted_factors(self._magnitudes(reference), self.epsilon))

    def set_coefficient(self, value):
        """Sets ``c`` (ρ in the reweighted stage, 0 otherwise)."""
        self.coefficient.assign(float(value))

    def _value(self):
        if self.sparsity_type == "group":
            return self.coefficient * self.group_penalty()
        terms = [tf.reduce_sum(self._magnitudes(w) * f) for w, f in zip(self.weights, self.factors)]
        return self.coefficient * tf.add_n(terms)

    def __call__(self):
        return tf.cond(self.coefficient > 0.0, self._value, lambda: tf.constant(0.0))


def global_sparsities(kernels, target_sparsity):
    """Per-layer sparsities that, together, keep the globally largest-magnitude weights.

    ``k = round(N (1 − target_sparsity))`` weights are kept among the `N`
    weights of all `kernels` together: those of largest magnitude (ties
    broken by order). Each layer keeps at least one weight, as tfmot's
    per-layer pruning does. Layer `l` keeping ``k_l`` of its ``n_l`` weights
    gets sparsity ``1 − k_l / n_l``.

    Args:
        kernels: a list of arrays (or variables).
        target_sparsity: in `[0, 1)`.

    Returns:
        A list of floats, one per kernel.

    Example:

    >>> global_sparsities([np.array([1., 2.]), np.array([3., 4., 5., 6.])], 0.5)
    [0.5, 0.25]

    (6, 5 and 4 are kept in the second layer; the first keeps one weight anyway.)
    """
    target_sparsity = check_target_sparsity(target_sparsity)
    magnitudes = [np.abs(np.asarray(k, dtype=np.float64)).ravel() for k in kernels]
    sizes = [m.size for m in magnitudes]
    total = sum(sizes)
    keep = int(round(total * (1.0 - target_sparsity)))
    order = np.argsort(-np.concatenate(magnitudes), kind="stable")[:keep]
    owner = np.repeat(np.arange(len(sizes)), sizes)
    kept = np.bincount(owner[order], minlength=len(sizes))
    return [1.0 - max(int(k), 1) / n for k, n in zip(kept, sizes)]


class ReweightedL1Stages(keras.callbacks.Callback):
    """Drives the three stages: penalty on, ``w^ref`` refreshes, allocation, penalty off.

    Before step `k` (tfmot's 1-based count) it

    - sets the penalty's coefficient to `rho` when ``k == begin_step`` and
      to 0 when ``k == prune_step``;
    - refreshes ``w^ref`` when ``k == begin_step`` or ``k`` is in `refresh_steps`;
    - with `allocation="global"` (unstructured), sets each layer's
      `ReweightedL1Schedule` sparsity from one magnitude ranking when
      ``k == prune_step``;
    - with `sparsity_type="filter"`, removes whole output units when
      ``k == prune_step`` (`structured.prune_units`, each layer at its
      schedule's sparsity, read as a unit fraction), and after every later
      training step re-zeroes the removed units' kernel, bias and following
      BatchNormalization entries (`structured.RemovedUnits.hold`);
    - with `sparsity_type="group"`, removes ``round(f · n)`` of the ``n``
      channel groups of every family when ``k == prune_step``
      (`structured.prune_channel_groups`, ``f`` the schedules' sparsity), ranked
      by `group_score` — with `allocation="global"`, ``round(f · Σ n)``
      groups of one ranking across the families instead, each score divided
      by its family's mean (`dependency.prune_groups`, ``ranking="global"``)
      — and after every later training step re-zeroes every
      weight entry of the removed groups (`structured.RemovedGroups.hold`).

    At the start of `fit` it reads the wrappers' `pruning_step` (so training
    resumes at the right stage after `load_model`), attaches a penalty to the
    model if it has none and the prune is still to come, and checks that
    every wrapper holds a `ReweightedL1Schedule` with the same `prune_step`.
    Put it after tfmot's `UpdatePruningStep` (which `prune_reweighted_l1`
    returns with it).

    Args:
        rho: ρ, the penalty's weight, `>= 0` (the paper: 1e-7 for its large
            networks; scale it to the model).
        begin_step: first step of the reweighted stage, `>= 1`.
        prune_step: step of the hard prune, `>= begin_step`.
        refresh_steps: steps in ``(begin_step, prune_step)`` at which ``w^ref``
            is refreshed again. Defaults to `()`.
        epsilon: ε of the penalty, `> 0`. Defaults to `1e-6`.
        allocation: `"uniform"` or `"global"`. Defaults to `"uniform"`.
        target_sparsity: the overall sparsity of the global ranking, in
            `[0, 1)`; `None` takes the schedules'. Defaults to `None`.
        sparsity_type: `"unstructured"`, `"filter"` (whole output units,
            group-ℓ1 penalty; only with `allocation="uniform"`) or `"group"`
            (whole channel groups). Must match the schedules'.
            Defaults to `"unstructured"`.
        group_score: `sparsity_type="group"` only: how the groups are ranked
            at the prune, one of `GROUP_SCORES`. `"norm"`: their ℓ2 norms
            ``‖g‖₂`` (`dependency.group_norms`; what the penalty shrinks).
            `"worst"` / `"weighted"`: the per-task Taylor importance
            ``I_t(g) = Σ_b (Σ_{p∈g} p ∂L_{t,b}/∂p)²`` on `score_data`
            (`dependency.task_taylor_importance`, with the losses the model
            was compiled with), normalised per task and combined under the
            model's task weights ``w`` (a `MultiTaskModel`'s, e.g. the
            min-max weights) as ``max_t K w_t Î_t(g)`` or ``Σ_t w_t Î_t(g)``
            (`dependency.group_scores`). Defaults to `"norm"`.
        score_data: the batches `(x, y)` (`y` keyed by task) the Taylor
            importance is summed over: a finite `tf.data.Dataset` (e.g.
            ``train.take(8)``) or a list; required with `"worst"` /
            `"weighted"`, refused otherwise. Defaults to `None`.

    Attributes:
        removed: in filter mode, the `structured.RemovedUnits` of the model
            once the prune has happened, in group mode its
            `structured.RemovedGroups` (`None` before, and in unstructured
            mode).

    Example:

    >>> stages = ReweightedL1Stages(rho=1e-5, begin_step=501, prune_step=1001,
    ...                             refresh_steps=(668, 834))
    >>> model.fit(train, callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), stages])
    """

    def __init__(self, rho, begin_step, prune_step, refresh_steps=(), epsilon=1e-6,
                 allocation="uniform", target_sparsity=None, sparsity_type="unstructured",
                 group_score="norm", score_data=None):
        super().__init__()
        self.rho = check_rho(rho)
        self.begin_step, self.prune_step = check_stage_steps(begin_step, prune_step)
        refresh_steps = tuple(refresh_steps or ())
        for step in refresh_steps:
            if not is_int(step) or not begin_step <= step < prune_step:
                raise ValueError(
                    f"Argument `refresh_steps` must hold integers in [begin_step, prune_step) = "
                    f"[{begin_step}, {prune_step}): w_ref is only used before the prune. "
                    f"Received: refresh_steps={refresh_steps!r}"
                )
        self.refresh_steps = tuple(sorted(set(int(s) for s in refresh_steps)))
        self.epsilon = check_epsilon(epsilon)
        if allocation not in ALLOCATIONS:
            raise ValueError(
                f"Argument `allocation` must be one of {list(ALLOCATIONS)}. "
                f"Received: allocation={allocation!r}"
            )
        self.allocation = allocation
        self.target_sparsity = (None if target_sparsity is None
                                else check_target_sparsity(target_sparsity))
        self.sparsity_type = _check_filter_allocation(sparsity_type, allocation)
        self.group_score, self.score_data = _check_group_score(self.sparsity_type, group_score,
                                                               score_data)
        self.step = None
        self.groups = None
        self._losses = None
        self.penalty = None
        self.allocated = None
        self.removed = None

    def _base(self):
        return self.model.base_model if isinstance(self.model, MultiTaskModel) else self.model

    def on_train_begin(self, logs=None):
        # Checks and the penalty's attachment only: the training state (the wrappers'
        # step, w_ref, the coefficient) is read at the first batch, once every callback's
        # `on_train_begin` has run, so that a `keras.callbacks.BackupAndRestore` listed
        # after this callback has already restored it.
        check_single_step_execution(self.model, type(self).__name__)
        wrappers = pruning_wrappers(self.model)
        if not wrappers:
            raise ValueError(
                "`ReweightedL1Stages` was given a model without tfmot pruning wrappers. Wrap the "
                "base model first, e.g. with `prune_reweighted_l1(base_model, ...)`."
            )
        schedules = [w.pruning_schedule for w in wrappers]
        wrong = [w.layer.name for w, s in zip(wrappers, schedules)
                 if not isinstance(s, ReweightedL1Schedule) or s.prune_step != self.prune_step
                 or s.sparsity_type != self.sparsity_type]
        if wrong:
            raise ValueError(
                f"Every pruning wrapper must hold a `ReweightedL1Schedule` with "
                f"prune_step={self.prune_step} and sparsity_type={self.sparsity_type!r}; "
                f"layers {wrong} do not (found "
                f"{[s.get_config() for w, s in zip(wrappers, schedules) if w.layer.name in wrong]})."
            )
        if (self.allocation == "global" and self.sparsity_type == "unstructured"
                and len({id(s) for s in schedules}) != len(schedules)):
            raise ValueError(
                "allocation='global' needs one `ReweightedL1Schedule` per wrapper (each layer "
                "gets its own sparsity), but the wrappers share schedules. Wrap the model with "
                "`prune_reweighted_l1(..., allocation='global')`."
            )
        _check_calls(self.model)
        self._schedules = schedules
        if self.sparsity_type == "filter":
            _check_filter_layers(wrappers)
            check_nested_outputs(self.model)
        base = self._base()
        if self.sparsity_type == "group":
            _check_group_layers(wrappers)
            if self.group_score != "norm" and not isinstance(self.model, MultiTaskModel):
                raise ValueError(
                    f"group_score={self.group_score!r} weighs the tasks by the model's task "
                    f"weights and needs a `MultiTaskModel` (e.g. `MinMaxMultiTask(wrapped)`). "
                    f"Received a {type(self.model).__name__}; use group_score='norm'.")
            self.groups = channel_groups(base)
            if self.group_score != "norm":  # read now: a loss that cannot be read stops `fit` here
                self._losses = self._task_losses()
        self.penalty = ReweightedL1Penalty.of(base)
        if self.penalty is None:
            # Attached whatever the stage (a coefficient of 0 computes nothing): the stage
            # is only known at the first batch, and the train function is traced then.
            self.penalty = ReweightedL1Penalty.attach(base, epsilon=self.epsilon,
                                                      sparsity_type=self.sparsity_type)
        if (self.penalty.epsilon, self.penalty.sparsity_type) != (self.epsilon,
                                                                  self.sparsity_type):
            raise ValueError(
                f"The model's reweighted penalty has epsilon={self.penalty.epsilon}, "
                f"sparsity_type={self.penalty.sparsity_type!r}; this callback "
                f"epsilon={self.epsilon}, sparsity_type={self.sparsity_type!r}: use the "
                f"same values."
            )
        self.step = None

    def _start(self):
        """The stage the training state is at: read at the first batch of `fit`."""
        wrappers = pruning_wrappers(self.model)
        calls = wrappers[0].pruning_schedule.calls_per_step
        self.step = max(int(wrappers[0].pruning_step.numpy()), 0) // calls
        if self.sparsity_type == "filter" and self.step >= self.prune_step:
            self.removed = RemovedUnits(self.model)  # resumed after the prune: the masks say
        if self.sparsity_type == "group" and self.step >= self.prune_step:
            self.removed = RemovedGroups(self.model, self.groups)
        next_step = self.step + 1
        active = self.begin_step <= next_step < self.prune_step
        if active and int(self.penalty.reference_step.numpy()) < self.begin_step:
            # w_ref was not taken at a refresh of this stage (a reloaded model's new
            # penalty): take it now. A restored or continued run keeps its w_ref.
            self.penalty.refresh(self.step)
        self.penalty.set_coefficient(self.rho if active else 0.0)

    def on_train_batch_begin(self, batch, logs=None):
        if self.step is None:
            self._start()
        step = self.step + 1
        if step == self.begin_step and step < self.prune_step:
            self.penalty.refresh(step)
            self.penalty.set_coefficient(self.rho)
        elif step in self.refresh_steps:
            self.penalty.refresh(step)
        if step == self.prune_step:
            self.penalty.set_coefficient(0.0)
        if step == self.prune_step and self.allocation == "global" and (
                self.sparsity_type == "unstructured"):
            target = self.target_sparsity
            if target is None:
                target = self._schedules[0].target_sparsity
            kernels = [weight.numpy() * mask.numpy() for wrapper in pruning_wrappers(self.model)
                       for weight, mask, _ in wrapper.pruning_vars]
            sparsities = global_sparsities(kernels, target)
            for schedule, sparsity in zip(self._schedules, sparsities):
                schedule.set_sparsity(sparsity)
            self.allocated = sparsities
        if step == self.prune_step and self.sparsity_type == "filter":
            fractions = {wrapper.layer.name: float(schedule.sparsity.numpy())
                         for wrapper, schedule in zip(pruning_wrappers(self.model),
                                                      self._schedules)}
            self.removed = prune_units(self.model, fractions)
        if step == self.prune_step and self.sparsity_type == "group":
            fraction = self.target_sparsity
            if fraction is None:
                fraction = float(self._schedules[0].sparsity.numpy())
            ranking = "global" if self.allocation == "global" else "per_family"
            self.removed = prune_channel_groups(self.model, fraction, scores=self._scores(),
                                                groups=self.groups, ranking=ranking)

    def _task_losses(self):
        """`{task: loss}` as the model was compiled (its compile config, read back)."""
        config = self.model.get_compile_config()
        if config is None:
            raise ValueError(f"group_score={self.group_score!r} needs the compiled losses: "
                             f"compile the model before `fit`.")
        loss = keras.saving.deserialize_keras_object(config)["loss"]
        tasks = output_tasks(self._base())
        if isinstance(loss, dict):
            return dict(loss)
        if isinstance(loss, (list, tuple)):
            return dict(zip(tasks, loss))
        return {t: loss for t in tasks}

    def _scores(self):
        """The groups' scores for the prune (`None`: `prune_groups`' ℓ2 norms)."""
        if self.group_score == "norm":
            return None
        candidates = pruned_groups(self.model, self.groups)
        batches = ((batch[0], batch[1]) for batch in self.score_data)
        _, importance = task_taylor_importance(self._base(), candidates, batches, self._losses)
        weights = np.asarray(self.model.task_weights, np.float64)
        weights = weights / weights.sum()
        scores = np.zeros(len(self.groups))
        scores[[g.index for g in candidates]] = group_scores(importance, weights,
                                                             rule=self.group_score)
        return scores

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.removed is not None:
            self.removed.hold()


def _check_filter_allocation(sparsity_type, allocation):
    sparsity_type = check_sparsity_type(sparsity_type)
    if sparsity_type == "filter" and allocation != "uniform":
        raise ValueError(
            f"sparsity_type='filter' removes the same fraction of units in every layer: it "
            f"needs allocation='uniform' (unit norms of different layers are not comparable "
            f"in one ranking). Received: allocation={allocation!r}"
        )
    return sparsity_type


def _check_group_score(sparsity_type, group_score, score_data):
    """`(group_score, score_data)` checked against `sparsity_type` and each other."""
    if not isinstance(group_score, str) or group_score not in GROUP_SCORES:
        raise ValueError(f"Argument `group_score` must be one of {list(GROUP_SCORES)}. "
                         f"Received: group_score={group_score!r}")
    if group_score != "norm" and sparsity_type != "group":
        raise ValueError(f"Argument `group_score` ranks channel groups and needs "
                         f"sparsity_type='group'. Received: group_score={group_score!r} with "
                         f"sparsity_type={sparsity_type!r}")
    if group_score == "norm" and score_data is not None:
        raise ValueError(f"Argument `score_data` is only used with group_score in "
                         f"{list(GROUP_RULES)} (the per-task Taylor importance). Received: "
                         f"score_data={type(score_data).__name__} with group_score='norm'")
    if group_score != "norm":
        if score_data is None:
            raise ValueError(f"Argument `score_data` is required with "
                             f"group_score={group_score!r}: the batches (x, y) the per-task "
                             f"Taylor importance is summed over, e.g. `train.take(8)`. "
                             f"Received: score_data=None")
        if isinstance(score_data, tf.data.Dataset):
            if int(score_data.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
                raise ValueError("Argument `score_data` must be a finite dataset (the "
                                 "importance is summed over all of it). Received an infinite "
                                 "dataset: take a few batches, e.g. `train.take(8)`.")
        elif not isinstance(score_data, (list, tuple)) or not score_data:
            raise ValueError(f"Argument `score_data` must be a finite `tf.data.Dataset` or a "
                             f"non-empty list of batches (x, y). Received: "
                             f"score_data={type(score_data).__name__}")
    return group_score, score_data


def _check_group_layers(wrappers, roles=None):
    """Group mode: Dense/Conv2D producers only, and no output layer."""
    for wrapper in wrappers:
        check_group_layer(wrapper.layer)
    _refuse_output_layers(wrappers, roles, "group", "channels")


def _refuse_output_layers(wrappers, roles, mode, what):
    """A `ValueError` if a structured mode would cut a task output layer's units."""
    outputs = sorted(w.layer.name for w in wrappers
                     if roles is not None and roles.get(w.layer.name) == "task_output")
    if outputs:
        raise ValueError(
            f"sparsity_type={mode!r} cannot remove {what} of the task output layers {outputs}: "
            f"their units are the task's outputs. Prune only the trunk and the task-hidden "
            f"layers, e.g. with `MultiTaskPruningPolicy(prune=('trunk', 'task_hidden'))` (the "
            f"default).")


def _groups_to_prune(model):
    """`structured.pruned_groups` of a wrapped model; a `ValueError` naming why if there are none."""
    groups = channel_groups(model)
    chosen = pruned_groups(model, groups)
    if not chosen:
        reasons = sorted({g.reason for g in groups if not g.prunable})
        raise ValueError(
            f"sparsity_type='group' finds no channel group of model {model.name!r} to remove: "
            f"no prunable group has all its producers among the pruned layers "
            f"{sorted(w.layer.name for w in pruning_wrappers(model))}. The unprunable groups "
            f"say why: {reasons[:3]}.")
    return chosen


def _check_filter_layers(wrappers, roles=None, fraction=None):
    """Filter mode: Dense/Conv2D only, no output layer, and `fraction` leaves a unit in each."""
    for wrapper in wrappers:
        check_structured_layer(wrapper.layer)
    _refuse_output_layers(wrappers, roles, "filter", "units")
    if fraction is not None:
        for wrapper in wrappers:
            (weight, _, _), = wrapper.pruning_vars
            units_to_remove(int(weight.shape[-1]), fraction, wrapper.layer.name)


def _wrap(model, make_schedule, policy):
    def wrap(layer):
        if policy.allow_pruning(layer):
            return PruneLowMagnitude(layer, pruning_schedule=make_schedule(layer))
        return layer

    return clone_nested(model, wrap)


def _check_calls(model):
    """Each wrapper's schedule must know how many times a training step calls the wrapper.

    tfmot's `pruning_step` counts calls; a layer shared by two branches (or
    a trunk applied to every task's input) is called several times per step.
    """
    wrong = sorted(f"{layer.layer.name!r} (called {n} times, schedule says "
                   f"{layer.pruning_schedule.calls_per_step})"
                   for layer, n in calls_per_step(model).values()
                   if isinstance(layer, PruneLowMagnitude)
                   and isinstance(layer.pruning_schedule, ReweightedL1Schedule)
                   and layer.pruning_schedule.calls_per_step != n)
    if wrong:
        raise ValueError(
            f"The pruning wrappers of layers {', '.join(wrong)} run a different number of times "
            f"per training step than their `ReweightedL1Schedule(calls_per_step=...)` says, so "
            f"they would be pruned at the wrong step. Wrap the model with `prune_reweighted_l1`, "
            f"which counts the calls.")


def _check_unique_names(model):
    """The policy decides by layer name: two weighted layers may not share one (nested models)."""
    seen = {}
    for layer in walk_layers(model):
        if layer.weights and not isinstance(layer, keras.Model):
            seen.setdefault(layer.name, []).append(layer)
    clashes = sorted(name for name, layers in seen.items() if len(layers) > 1)
    if clashes:
        raise ValueError(
            f"Argument `base_model` has layers {clashes} whose names are carried by several "
            f"layers (a nested model's layer and another with the same name); the pruning "
            f"policy decides by name. Give every layer a unique name.")


def prune_reweighted_l1(base_model, target_sparsity, dense_steps, reweighted_steps, rho,
                        epsilon=1e-6, refreshes=2, refresh_steps=None, allocation="uniform",
                        policy=None, sparsity_type="unstructured", group_score="norm",
                        score_data=None):
    """Sets up reweighted-ℓ1 pruning: a wrapped copy of `base_model` and the callbacks to fit it.

    The copy's prunable layers (by default the trunk and the task-hidden
    layers, see `MultiTaskPruningPolicy`) are wrapped by tfmot's
    `PruneLowMagnitude`, each with its own `ReweightedL1Schedule`; the
    reweighted penalty is attached with `add_loss`. `base_model` is not
    changed (its weights are copied). Fit the copy (or a `MultiTaskModel` /
    `MinMaxMultiTask` built on it) for at least
    ``dense_steps + reweighted_steps`` steps plus the retraining you want,
    with the returned callbacks:

    - steps ``1 … dense_steps``: dense training;
    - steps ``dense_steps + 1 … dense_steps + reweighted_steps``: reweighted
      training, ``w^ref`` refreshed at its start and `refreshes` more times,
      evenly (the paper: at 1/3 and 2/3);
    - step ``dense_steps + reweighted_steps + 1``: the hard prune; then
      masked retraining.

    With `sparsity_type="filter"` the penalty is the reweighted group-ℓ1
    over output units (``ρ Σ_u ‖W_u‖₂ / (‖W_u^ref‖₂ + ε)``, see
    `keras_minmax_mtl.sparsity.structured`), `target_sparsity` is the **fraction of
    output units** removed from every pruned layer (``round(f · units)`` of
    smallest ℓ2 norm), and each removed unit's kernel slice, bias and
    following BatchNormalization `gamma`/`beta` are exactly 0 from the prune
    on (the contract the layer surgery relies on). Only Dense and Conv2D
    layers, never the task output layers, and only `allocation="uniform"`.

    With `sparsity_type="group"` the unit is the channel dependency group
    (`keras_minmax_mtl.sparsity.dependency`: channels tied by residual
    `Add`s, depthwise convolutions, BatchNormalization, padding and nested
    trunks). The Dense/Conv2D layers the policy chooses are wrapped, and
    every prunable group whose producers are all wrapped is a candidate; the
    penalty is ``ρ Σ_g ‖g‖₂ / (‖g^ref‖₂ + ε)`` over them (``‖g‖₂`` over every
    producer kernel column, consumer kernel row, member `gamma` and
    depthwise kernel slice of ``g``), `target_sparsity` is the **fraction of
    the groups of every family** removed at the prune (``round(f · n)``,
    each family keeps one; `dependency.prune_groups`), ranked by
    `group_score` (with `allocation="global"`, the fraction of all the
    groups, ranked across the families), and from the prune on every weight entry of a removed
    group (producers' kernel columns and biases, members' BatchNormalization
    `gamma`/`beta`/`moving_mean` and depthwise slices) is exactly 0, so
    `keras_minmax_mtl.export.surgery.shrink` removes the groups and the
    shrunk model computes what the pruned one computes.

    Args:
        base_model: a built Functional `tf_keras` model.
        target_sparsity: fraction of the prunable weights to remove (filter
            mode: fraction of each pruned layer's units), in `[0, 1)`.
        dense_steps: steps of dense training, `>= 0`.
        reweighted_steps: steps of reweighted training, `>= 0`.
        rho: ρ, `>= 0`. The paper's 1e-7 is for networks of ~10^7 weights;
            right after a refresh the penalty is about ρ times the number of
            pruned weights, so scale it to the model.
        epsilon: ε, `> 0`. Defaults to `1e-6`.
        refreshes: refreshes of ``w^ref`` after the first, `>= 0`. Defaults
            to `2`.
        refresh_steps: explicit refresh steps instead of `refreshes`, in
            ``(dense_steps + 1, prune step)``. Defaults to `None`.
        allocation: `"uniform"` (every layer at `target_sparsity`, the
            paper) or `"global"` (one magnitude ranking over all pruned
            kernels; group mode: one ranking of the groups across the
            families, `dependency.prune_groups`' ``ranking="global"``).
            Defaults to `"uniform"`.
        policy: a tfmot `PruningPolicy`. Defaults to
            `MultiTaskPruningPolicy()`.
        sparsity_type: `"unstructured"` (single weights), `"filter"`
            (whole output units of each layer) or `"group"` (whole channel
            dependency groups). Defaults to `"unstructured"`.
        group_score: group mode: `"norm"` (ℓ2 norms), `"worst"` or
            `"weighted"` (per-task Taylor importance on `score_data` under
            the task weights of the `MultiTaskModel` being fit; see
            `ReweightedL1Stages`). Defaults to `"norm"`.
        score_data: group mode with `"worst"` / `"weighted"`: a finite
            `tf.data.Dataset` or list of batches `(x, y)`, e.g.
            ``train.take(8)``. Defaults to `None`.

    Returns:
        `(wrapped_model, callbacks)`: the Functional copy with pruning
        wrappers, and `[UpdatePruningStep(), ReweightedL1Stages(...)]`.

    Raises:
        ValueError: for bad values; in filter mode also for layers other than
            Dense/Conv2D, for task output layers, and for a `target_sparsity`
            that would remove every unit of a layer (the message names it).

    Example:

    >>> wrapped, callbacks = prune_reweighted_l1(base, 0.9, dense_steps=500,
    ...                                          reweighted_steps=400, rho=1e-5)
    >>> model = MinMaxMultiTask(wrapped); model.compile(...)
    >>> model.fit(train, epochs=15, callbacks=callbacks)

    Filter mode, half of the units of every trunk and task-hidden layer:

    >>> wrapped, callbacks = prune_reweighted_l1(base, 0.5, dense_steps=500,
    ...                                          reweighted_steps=400, rho=1e-3,
    ...                                          sparsity_type="filter")

    Group mode on a MobileNetV2 trunk, half the groups of every family, the
    groups ranked by the task that would lose most under the min-max weights:

    >>> wrapped, callbacks = prune_reweighted_l1(
    ...     base, 0.5, dense_steps=500, reweighted_steps=400, rho=1e-4,
    ...     sparsity_type="group", group_score="worst", score_data=train.take(8))
    >>> model = MinMaxMultiTask(wrapped); model.compile(...)
    >>> model.fit(train, epochs=15, callbacks=callbacks)
    >>> small = shrink(model.base_model)      # keras_minmax_mtl.export.surgery
    """
    require_functional(base_model, "base_model")
    target_sparsity = check_target_sparsity(target_sparsity)
    sparsity_type = _check_filter_allocation(sparsity_type, allocation)
    for name, value in (("dense_steps", dense_steps), ("reweighted_steps", reweighted_steps)):
        if not is_int(value) or value < 0:
            raise ValueError(f"Argument `{name}` must be an integer >= 0. Received: {name}={value!r}")
    if not is_int(refreshes) or refreshes < 0:
        raise ValueError(f"Argument `refreshes` must be an integer >= 0. Received: refreshes={refreshes!r}")
    rho = check_rho(rho)
    epsilon = check_epsilon(epsilon)
    begin_step = dense_steps + 1
    prune_step = dense_steps + reweighted_steps + 1
    if refresh_steps is None:
        refresh_steps = refresh_points(begin_step, prune_step, refreshes)
    stages = ReweightedL1Stages(rho=rho, begin_step=begin_step, prune_step=prune_step,
                                refresh_steps=refresh_steps, epsilon=epsilon,
                                allocation=allocation, target_sparsity=target_sparsity,
                                sparsity_type=sparsity_type, group_score=group_score,
                                score_data=score_data)
    policy = MultiTaskPruningPolicy() if policy is None else policy
    if not isinstance(policy, tfmot.sparsity.keras.PruningPolicy):
        raise TypeError(
            f"Argument `policy` must be a `tfmot.sparsity.keras.PruningPolicy` (e.g. "
            f"MultiTaskPruningPolicy()). Received: policy={policy!r}"
        )
    copy = keras.models.clone_model(base_model)
    copy.set_weights(base_model.get_weights())
    _check_unique_names(copy)
    policy.ensure_model_supports_pruning(copy)
    calls = {layer.name: n for layer, n in calls_per_step(copy).values()}
    wrapped = _wrap(copy, lambda layer: ReweightedL1Schedule(
        target_sparsity, prune_step, begin_step, sparsity_type, calls_per_step=calls[layer.name]),
        policy)
    wrappers = pruning_wrappers(wrapped)
    if not wrappers:
        raise ValueError(
            f"The policy {type(policy).__name__} leaves no layer of {base_model.name!r} to prune."
        )
    _check_calls(wrapped)
    if sparsity_type == "filter":
        _check_filter_layers(wrappers, roles=layer_roles(copy), fraction=target_sparsity)
        check_nested_outputs(wrapped)
    if sparsity_type == "group":
        _check_group_layers(wrappers, roles=layer_roles(copy))
    ReweightedL1Penalty.attach(wrapped, epsilon=epsilon, sparsity_type=sparsity_type)
    return wrapped, [tfmot.sparsity.keras.UpdatePruningStep(), stages]
