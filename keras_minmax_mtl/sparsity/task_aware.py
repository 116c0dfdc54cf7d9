r"""Task-aware dynamic model optimisation (Choi, Jin and Kim, IEEE Access 2023) on tfmot wrappers.

The steps of the method, with the task weights of any `MultiTaskModel` (e.g.
`MinMaxMultiTask`, whose worst-case weighting stays on throughout):

1. **warm-up**: train the standard network (shared trunk, one hidden layer
   and one output per task) for a few epochs;
2. **measure** on a held batch of training samples (`measure_tasks`): the
   gradient of each task's loss with respect to the shared trunk kernels and
   each task's per-sample losses; from them the similarity
   ``S = α S_weight + (1 − α) S_loss`` and the difficulty ``d_t``
   (`keras_minmax_mtl.sparsity.task_similarity`);
3. **group** similar tasks (`group_tasks`) and build the **grouped network**
   (`grouped_network`): the trunk, one branch per group, each task's output
   head on its group's branch;
4. **train with dynamic allocation** (`TaskAwareAllocation`): the trunk and
   branch kernels are masked at a fixed total number of non-zero weights;
   every `update_every` steps the difficulty is measured again and the
   branches' shares are re-allocated (harder groups keep more weights):
   a branch that loses budget drops its smallest-magnitude weights, one that
   gains grows the inactive weights of largest gradient, at zero.

`TaskAwareRun` (and `task_aware_optimize`) does all of it in one call.

**Our reading of the paper** (its exact rules were not available to us):
weight similarity is the Pearson correlation of the tasks' trunk gradients
(not of separately trained weights); groups come from average-linkage
clustering (the paper finds cliques of a thresholded similarity graph); a
group's branch is the concatenation of its tasks' hidden layers, so the
grouped network starts as exactly the warm-up network and has the same
number of prunable weights; the trunk keeps its initial masks and only the
branches are re-allocated; growth follows RigL's gradient rule.

Example:

>>> model = MinMaxMultiTask(multi_digits_network(seed=0), step_size=0.02, gamma=5.0)
>>> model.compile(optimizer="adam", loss=losses, metrics={t: ["accuracy"] for t in tasks})
>>> run = TaskAwareRun(sparsity=0.9, alpha=0.5, num_groups=2, update_every=100)
>>> grouped = run.run(model, train, warmup_epochs=5, epochs=10)
>>> run.report()["groups"]                # e.g. [["left", "right"], ["sum"]]
>>> deployable = strip_pruning(grouped)   # a MinMaxMultiTask on the grouped network
"""
import json

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from keras_minmax_mtl.core.checks import is_finite_real, is_int, is_real
from keras_minmax_mtl.core.backend import keras, require_functional
from keras_minmax_mtl.sparsity.densities import DISTRIBUTIONS, active_counts
from keras_minmax_mtl.sparsity.dst import check_wrappers, prune_for_dst, set_mask, wrapped_kernels
from keras_minmax_mtl.sparsity.mask_updaters import RigLUpdater
from keras_minmax_mtl.core.multitask import MultiTaskModel
from keras_minmax_mtl.sparsity.policy import (
    head_kernel_count,
    layer_roles,
    prunable_kernel_count,
    refuse_nested_models,
)
from keras_minmax_mtl.sparsity.pruning import check_single_step_execution, sparsity_report
from keras_minmax_mtl.sparsity.reweighted import global_sparsities
from keras_minmax_mtl.sparsity.task_similarity import (
    allocate_budget,
    check_alpha,
    group_tasks,
    mixed_similarity,
    pearson_matrix,
    task_difficulty,
)

__all__ = [
    "branch_name",
    "grouped_network",
    "budget_for_sparsity",
    "measure_tasks",
    "DENSITIES",
    "TaskAwareAllocation",
    "TaskAwareRun",
    "task_aware_optimize",
]


#: How the wrapped kernels share the budget when training starts: the layer
#: densities of `keras_minmax_mtl.sparsity.densities`, or one magnitude ranking of all of them.
#: On the validation split of multi_digits at 90 % (seed 0, min-max, 10 + 10 epochs) the
#: worst task reached 0.400 with "global", 0.332 with "erk" and 0.186 with "uniform":
#: "global" is the default (docs/results.md).
DENSITIES = (*DISTRIBUTIONS, "global")


def _check_density(density):
    if density not in DENSITIES:
        raise ValueError(f"Argument `density` must be one of {list(DENSITIES)}. "
                         f"Received: density={density!r}")


def _check_sparsity(sparsity):
    if not is_real(sparsity) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"Argument `sparsity` must be in [0, 1). Received: sparsity={sparsity!r}")


def branch_name(index):
    """The name of group `index`'s branch layer (0-based index): ``f"group{index + 1}_branch"``."""
    return f"group{index + 1}_branch"


def _heads(base_model):
    """`(trunk_tensor, {task: (hidden, output)})` of a standard network, or a clear error."""
    refuse_nested_models(base_model, "Task-aware optimisation")
    heads, trunk = {}, None
    for task in base_model.output_names:
        output = base_model.get_layer(task)
        hidden = output.input._keras_history.layer
        if not isinstance(output, keras.layers.Dense) or not isinstance(hidden, keras.layers.Dense):
            raise ValueError(
                f"Argument `base_model` must end, for every task, in Dense(hidden) -> Dense(output "
                f"named after the task) on one shared trunk tensor (as `multi_digits_network`). "
                f"Received task {task!r} with layers {type(hidden).__name__} "
                f"{hidden.name!r} -> {type(output).__name__} {output.name!r}.")
        tensor = hidden.input
        if trunk is not None and tensor is not trunk:
            raise ValueError(
                f"Argument `base_model` must feed every task's hidden layer from the same trunk "
                f"tensor. Received task {task!r} fed by {tensor.name!r}, others by {trunk.name!r}.")
        trunk = tensor
        heads[task] = (hidden, output)
    return trunk, heads


def _check_groups(groups, tasks):
    if isinstance(groups, str) or not groups:
        raise ValueError(f"Argument `groups` must be a non-empty list of lists of task names. "
                         f"Received: groups={groups!r}")
    flat = [t for group in groups for t in (group if not isinstance(group, str) else [group])]
    if any(isinstance(g, str) or not g for g in groups) or sorted(flat) != sorted(tasks):
        raise ValueError(f"Argument `groups` must split the tasks {list(tasks)} into non-empty "
                         f"lists, each task in exactly one. Received: groups={groups!r}")
    return [list(group) for group in groups]


def grouped_network(base_model, groups, name=None):
    """The grouped network: `base_model`'s trunk, one branch per group, the tasks' output heads.

    Group ``g``'s branch is a `Dense` layer named `branch_name(g)` whose
    units are the concatenation of the hidden units of its tasks; each task's
    output head (same name, same units) reads the whole branch. The weights
    are transferred so that the grouped network computes *exactly* what
    `base_model` computes: the trunk is copied, the branch kernel (and bias)
    is the concatenation of the tasks' hidden kernels, and a head's kernel
    holds the task's own output kernel on its own units and zeros on the
    other tasks' units. Training then lets the tasks of a group share their
    branch. With one group per task it is the standard network.

    Args:
        base_model: a Functional network in which every task's output
            layer (named after the task) is a `Dense` on a `Dense` hidden
            layer fed by one trunk tensor shared by all tasks (as
            `multi_digits_network`). It is not changed.
        groups: a list of lists of task names, each task in exactly one.
        name: the model's name. Defaults to `None`: ``base_model.name + "_grouped"``.

    Returns:
        A new Functional `tf_keras` model with the same inputs and output names.

    Example:

    >>> grouped = grouped_network(multi_digits_network(), [["left", "right"], ["sum"]])
    >>> [layer.name for layer in grouped.layers if "branch" in layer.name]
    ['group1_branch', 'group2_branch']
    """
    require_functional(base_model, "base_model")
    tasks = list(base_model.output_names)
    groups = _check_groups(groups, tasks)
    trunk_tensor, heads = _heads(base_model)
    trunk = keras.Model(base_model.inputs, trunk_tensor)
    copy = keras.models.clone_model(trunk)
    copy.set_weights(trunk.get_weights())
    branches, outputs, values = {}, {}, []
    for index, group in enumerate(groups):
        hidden = [heads[t][0] for t in group]
        config = hidden[0].get_config()
        for layer in hidden[1:]:
            other = layer.get_config()
            if other["activation"] != config["activation"] or other["use_bias"] != config["use_bias"]:
                raise ValueError(f"Tasks of one group must have hidden layers with the same "
                                 f"activation and bias. Received {hidden[0].name!r} and "
                                 f"{layer.name!r} in group {group}.")
        config.update(name=branch_name(index), units=sum(layer.units for layer in hidden))
        branch = keras.layers.Dense.from_config(config)
        branches[index] = branch(copy.output)
        values.append((branch, [np.concatenate([layer.get_weights()[i] for layer in hidden], axis=-1)
                                for i in range(len(hidden[0].get_weights()))]))
        offset = 0
        for task, layer in zip(group, hidden):
            output = heads[task][1]
            head = keras.layers.Dense.from_config(output.get_config())
            outputs[task] = head(branches[index])
            kernel, *rest = output.get_weights()
            full = np.zeros((config["units"], kernel.shape[1]), dtype=kernel.dtype)
            full[offset:offset + layer.units] = kernel
            values.append((head, [full, *rest]))
            offset += layer.units
    model = keras.Model(copy.inputs, [outputs[t] for t in tasks],
                        name=name or f"{base_model.name}_grouped")
    for layer, weights in values:
        layer.set_weights(weights)
    return model


def budget_for_sparsity(base_model, sparsity, policy=None):
    """``round((1 − sparsity) · N)``: the non-zero count of `base_model`'s pruned kernels at `sparsity`.

    `N` is `prunable_kernel_count(base_model, policy)`; reweighted ℓ1 at the
    same `sparsity` keeps this many weights of the same layers.
    """
    _check_sparsity(sparsity)
    return int(round((1.0 - float(sparsity)) * prunable_kernel_count(base_model, policy)))


def _require_compiled(model, argument="model"):
    if not isinstance(model, MultiTaskModel):
        raise TypeError(f"Argument `{argument}` must be a `MultiTaskModel` (e.g. MinMaxMultiTask), "
                        f"whose compiled task losses are measured. Received: {type(model).__name__}")
    if model._compiled is None:
        raise ValueError(f"Argument `{argument}` must be compiled (its task losses are measured). "
                         f"Received an uncompiled {type(model).__name__}.")


def _difficulty(model, x, y):
    losses = model.per_sample_losses(y, model(x, training=False))
    return task_difficulty(np.stack([losses[t].numpy() for t in model.task_names]))


def measure_tasks(model, x, y, alpha=0.5):
    """Similarity and difficulty of the tasks of a compiled `MultiTaskModel` on one batch.

    One forward pass in inference mode; for each task, the gradient of its
    mean loss with respect to the kernels of the trunk (layers every task
    depends on, `policy.layer_roles`). `S_weight` is `pearson_matrix` of the
    flattened gradients, `S_loss` of the per-sample losses.

    Args:
        model: a compiled `MultiTaskModel` without pruning wrappers.
        x: a batch of inputs.
        y: its targets, a dict keyed by the task names.
        alpha: the weight of `S_weight` in the mixed similarity, in `[0, 1]`.
            Defaults to `0.5`.

    Returns:
        A dict of NumPy arrays: `weight_similarity`, `loss_similarity`,
        `similarity` (mixed), each `(K, K)`; `difficulty`, `(K,)`; and
        `task_names`.
    """
    _require_compiled(model)
    refuse_nested_models(model.base_model, "Task-aware optimisation (`measure_tasks`)", "model")
    roles = layer_roles(model.base_model)
    kernels = [layer.kernel for layer in model.base_model.layers
               if roles.get(layer.name) == "trunk" and getattr(layer, "kernel", None) is not None]
    if not kernels:
        raise ValueError(f"Argument `model` has no trunk kernels (layers every task depends on) "
                         f"to measure weight similarity on. Received roles {roles}.")
    with tf.GradientTape(persistent=True) as tape:
        losses = model.per_sample_losses(y, model(x, training=False))
        means = {t: tf.reduce_mean(value) for t, value in losses.items()}
    gradients = []
    for task in model.task_names:
        grads = tape.gradient(means[task], kernels)
        gradients.append(np.concatenate([np.zeros(int(np.prod(k.shape))) if g is None
                                         else g.numpy().ravel() for k, g in zip(kernels, grads)]))
    del tape
    per_sample = np.stack([losses[t].numpy() for t in model.task_names])
    weight, loss = pearson_matrix(np.stack(gradients)), pearson_matrix(per_sample)
    return {"task_names": list(model.task_names), "weight_similarity": weight,
            "loss_similarity": loss, "similarity": mixed_similarity(weight, loss, alpha),
            "difficulty": task_difficulty(per_sample)}


class TaskAwareAllocation(keras.callbacks.Callback):
    """Re-allocates the non-zero weights of a grouped network's branches by task difficulty.

    Works on a `MultiTaskModel` around a `grouped_network` wrapped by
    `prune_for_dst` (every trunk and branch kernel under a `HoldMasks`
    wrapper). When training starts with all masks at one, the wrapped
    kernels share `budget` by `density` (one magnitude ranking, or the
    layer densities of `densities.active_counts`; at least one weight per
    kernel); the branches then split their part by difficulty, and each
    kernel keeps its largest-magnitude weights. At the end of every
    `update_every`-th step (up to `end_step`), the difficulty is measured on `measure_data` and the branches' part
    is split again: a branch over its new count drops its smallest-magnitude
    weights, one under it grows the inactive weights of largest gradient
    (from that step, `MultiTaskModel.request_gradients`), at 0 with reset
    optimizer slots (`dst.set_mask`). The trunk's masks do not change. The
    total number of active (mask) weights is exactly `budget` throughout;
    grown weights are 0 until a step updates them (one whose gradient stays
    0 stays 0), so the non-zero count is at most `budget`.

    Args:
        groups: a list of lists of task names; group `g`'s branch is the layer
            `branch_name(g)`.
        budget: the number of active weights over all wrapped kernels, an
            integer in ``[number of kernels, their total size]``.
        measure_data: `(x, y)`: the held batch on which difficulty is
            measured (inference mode, no weight change).
        update_every: steps between re-allocations, `> 0`. Defaults to `100`.
        end_step: the last step that may re-allocate. Defaults to `None`
            (no end).
        smoothing: `allocate_budget`'s smoothing, `> 0`. Defaults to `0.5`.
        density: how the kernels share `budget` at the start: `"erk"` or
            `"uniform"` (`keras_minmax_mtl.sparsity.densities`; uniform leaves small
            convolutions with a handful of weights), or `"global"` (one
            magnitude ranking of all the kernels, as reweighted ℓ1's
            `allocation="global"`). Defaults to `"global"` (chosen on the
            validation split, see `DENSITIES`).
        seed: seed of the tie breaks (`numpy.random.default_rng((seed, t, g))`).
            Defaults to `0`.
        verbose: print each re-allocation. Defaults to `0`.

    Attributes:
        history: one dict per allocation (the first at step 0): `step`,
            `difficulty` (per task), `group_difficulty`, `active` and
            `density` (per branch), `total_active`.
    """

    def __init__(self, groups, budget, measure_data, update_every=100, end_step=None,
                 smoothing=0.5, density="global", seed=0, verbose=0):
        super().__init__()
        # The batch hooks read no logs: Keras need not convert them to NumPy after every step.
        self._supports_tf_logs = True
        if isinstance(groups, str) or not groups or any(isinstance(g, str) or not g for g in groups):
            raise ValueError(f"Argument `groups` must be a non-empty list of non-empty lists of "
                             f"task names. Received: groups={groups!r}")
        if not is_int(budget) or budget < 1:
            raise ValueError(f"Argument `budget` must be an integer >= 1. Received: budget={budget!r}")
        if not isinstance(measure_data, (tuple, list)) or len(measure_data) != 2:
            raise ValueError(f"Argument `measure_data` must be a pair (x, y). Received: "
                             f"{type(measure_data).__name__}")
        if not is_int(update_every) or update_every <= 0:
            raise ValueError(f"Argument `update_every` must be an integer > 0. "
                             f"Received: update_every={update_every!r}")
        if end_step is not None and (not is_int(end_step) or end_step < update_every):
            raise ValueError(f"Argument `end_step` must be an integer >= update_every "
                             f"({update_every}). Received: end_step={end_step!r}")
        if not is_finite_real(smoothing) or not smoothing > 0:
            raise ValueError(f"Argument `smoothing` must be a finite number > 0. "
                             f"Received: smoothing={smoothing!r}")
        if not is_int(seed) or seed < 0:
            raise ValueError(f"Argument `seed` must be an integer >= 0. Received: seed={seed!r}")
        _check_density(density)
        self.density = density
        self.groups = [list(g) for g in groups]
        self.budget = int(budget)
        self.measure_data = tuple(measure_data)
        self.update_every = int(update_every)
        self.end_step = end_step
        self.smoothing = float(smoothing)
        self.seed = int(seed)
        self.verbose = verbose
        self.history = []
        self._request = None
        self._updater = RigLUpdater()

    # ----------------------------------------------------------------- setup
    def on_train_begin(self, logs=None):
        _require_compiled(self.model)
        _check_groups(self.groups, self.model.task_names)
        check_single_step_execution(self.model, "TaskAwareAllocation")
        check_wrappers(self.model)
        self._kernels = wrapped_kernels(self.model)
        names = [wrapper.layer.name for wrapper, _, _ in self._kernels]
        missing = [branch_name(g) for g in range(len(self.groups)) if branch_name(g) not in names]
        if missing:
            raise ValueError(f"The model has no pruning-wrapped branch layers {missing} for the "
                             f"groups {self.groups}; build it with `grouped_network` and "
                             f"`prune_for_dst`. Wrapped layers: {names}")
        self._branches = [names.index(branch_name(g)) for g in range(len(self.groups))]
        sizes = [int(np.prod(weight.shape)) for _, weight, _ in self._kernels]
        if not len(sizes) <= self.budget <= sum(sizes):
            raise ValueError(
                f"Argument `budget` must be in [{len(sizes)}, {sum(sizes)}]: at least one weight "
                f"per pruned kernel ({len(sizes)} kernels) and at most all of their "
                f"{sum(sizes)} weights. Received: budget={self.budget}")
        self._request = self.model.request_gradients(
            [self._kernels[i][1] for i in self._branches])
        self._pending = None
        # The masks and the step are read at the first batch, after every callback's
        # `on_train_begin` (a `BackupAndRestore` listed after this one has restored them).
        self._step = None

    def _start(self):
        masks = [mask.numpy() for _, _, mask in self._kernels]
        self._step = int(self.model.optimizer.iterations.numpy()) if self.model.optimizer else 0
        if all(np.all(m == 1) for m in masks):
            counts = _initial_counts([w.numpy() for _, w, _ in self._kernels], self.budget,
                                     self.density)
            self._pool = sum(counts[i] for i in self._branches)
            self._allocate(self._step, counts, initial=True)
        else:
            counts = [int(m.sum()) for m in masks]
            if sum(counts) != self.budget:
                self.on_train_end()  # releases the gradient request: fit stops here
                raise ValueError(f"The model's masks hold {sum(counts)} active weights, not "
                                 f"budget={self.budget}: it was masked for another budget.")
            self._pool = sum(counts[i] for i in self._branches)

    def on_train_batch_begin(self, batch, logs=None):
        if self._step is None:
            self._start()
        step = self._step + 1
        due = step % self.update_every == 0 and (self.end_step is None or step <= self.end_step)
        self._pending = step if due else None
        if due:
            self._request.requested.assign(True)

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._pending is None:
            return
        self._request.requested.assign(False)
        counts = [int(mask.numpy().sum()) for _, _, mask in self._kernels]
        gradients = [g.numpy() for g in self._request.gradients]
        self._allocate(self._pending, counts, gradients=gradients)
        self._pending = None

    def on_train_end(self, logs=None):
        if self._request is not None:
            self.model.release_gradients(self._request)
            self._request = None

    # ------------------------------------------------------------ allocation
    def _allocate(self, step, counts, initial=False, gradients=None):
        x, y = self.measure_data
        difficulty = _difficulty(self.model, x, y)
        index = {t: i for i, t in enumerate(self.model.task_names)}
        group_difficulty = [float(np.mean([difficulty[index[t]] for t in g])) for g in self.groups]
        sizes = [int(np.prod(self._kernels[i][1].shape)) for i in self._branches]
        targets = allocate_budget(group_difficulty, sizes, self._pool, self.smoothing)
        counts = list(counts)
        for g, i in enumerate(self._branches):
            counts[i] = targets[g]
        optimizer = self.model.optimizer
        grown_total = 0
        for i, ((_, weight, mask), count) in enumerate(zip(self._kernels, counts)):
            old = np.ones(mask.shape, mask.dtype.as_numpy_dtype) if initial else mask.numpy()
            active = int(old.sum())
            if active == count and not initial:
                continue
            gradient = None
            if gradients is not None and i in self._branches:
                gradient = gradients[self._branches.index(i)]
            if gradient is None:
                gradient = np.zeros(weight.shape, weight.dtype.as_numpy_dtype)
            rng = np.random.default_rng((self.seed, step, i))
            new = self._updater.update(weight.numpy(), old, gradient, max(active - count, 0),
                                       max(count - active, 0), rng)
            grown_total += int(set_mask(weight, mask, new, optimizer).sum())
        record = {
            "step": int(step),
            "difficulty": {t: float(difficulty[index[t]]) for t in self.model.task_names},
            "group_difficulty": group_difficulty,
            "active": {branch_name(g): targets[g] for g in range(len(self.groups))},
            "density": {branch_name(g): targets[g] / sizes[g] for g in range(len(self.groups))},
            "grown": grown_total,
            "total_active": int(sum(int(mask.numpy().sum()) for _, _, mask in self._kernels)),
        }
        self.history.append(record)
        if self.verbose:
            shares = ", ".join(f"{name} {d:.3f}" for name, d in record["density"].items())
            print(f"\ntask-aware allocation at step {step}: branch densities {shares}")

    def report(self):
        """`groups`, `budget`, the allocation `history` and the model's `sparsity_report`."""
        return {"groups": self.groups, "budget": self.budget, "history": self.history,
                "sparsity": sparsity_report(self.model)}


def _initial_counts(kernels, budget, density):
    """Exactly `budget` weights over `kernels` (arrays) by `density`, at least one per kernel.

    `"erk"`/`"uniform"`: `densities.active_counts`; `"global"`: the
    `reweighted.global_sparsities` ranking of the magnitudes. A kernel left
    empty takes one weight from the kernel that keeps the most, and the one
    weight `global_sparsities` grants an empty kernel is taken back likewise.
    """
    sizes = [int(np.prod(k.shape)) for k in kernels]
    sparsity = 1.0 - budget / sum(sizes)
    if density == "global":
        counts = [int(round(n * (1.0 - s)))
                  for n, s in zip(sizes, global_sparsities(kernels, sparsity))]
    else:
        counts = active_counts([tuple(k.shape) for k in kernels], sparsity, density)
    for i in range(len(counts)):
        if counts[i] == 0:
            counts[i] = 1
    while sum(counts) > budget:
        counts[max(range(len(counts)), key=lambda j: (counts[j], -j))] -= 1
    return counts


def _fresh_compile_config(model):
    config = dict(model._task_compile_config)
    optimizer = config.get("optimizer")
    if isinstance(optimizer, keras.optimizers.Optimizer):
        config["optimizer"] = type(optimizer).from_config(optimizer.get_config())
    return config


def _measure_batch(dataset, samples):
    """The first `samples` training samples of a dataset of `(x, y)` batches, as one batch."""
    xs, ys, count = [], [], 0
    for batch in dataset:
        x, y = batch[0], batch[1]
        xs.append(x)
        ys.append(y)
        count += int(tf.shape(tf.nest.flatten(x)[0])[0])
        if count >= samples:
            break
    if not xs:
        raise ValueError("Argument `train_data` yielded no batch to measure the tasks on.")
    concat = lambda *parts: tf.concat(parts, axis=0)[:samples]  # noqa: E731
    return tf.nest.map_structure(concat, *xs), tf.nest.map_structure(concat, *ys)


class TaskAwareRun:
    """Warm-up, measure, group, build, and train with dynamic allocation: the whole method.

    `prepare` trains a copy of the user's compiled `MultiTaskModel` (any
    weighting, e.g. `MinMaxMultiTask`) for the warm-up, measures the tasks
    on the first `measure_samples` training samples, groups them, builds the
    grouped network (`grouped_network`, wrapped by `prune_for_dst`) and
    returns a model of the same class, weighting state and compile settings
    (a fresh optimizer of the same configuration) around it; fit it with
    `callbacks`. `run` does both and the fit. The user's model is not changed.

    Args:
        sparsity: the budget as a sparsity of the *standard* network's
            pruned kernels (trunk + task-hidden, `MultiTaskPruningPolicy`):
            ``budget = round((1 − sparsity) · N) − ΔH``, where ``N`` is the
            count of those kernels and ``ΔH`` the number of kernel weights the
            grouped network's (dense) heads have beyond the standard heads (a
            group's heads read its whole branch). The grouped network then
            has in total as many non-zero kernel weights as reweighted ℓ1
            keeps at the same `sparsity` on the standard network (fewer
            where a regrown weight stays 0). In `[0, 1)`.
        budget: the number of non-zero pruned weights instead of `sparsity`
            (the heads' weights come on top).
            Give exactly one of the two.
        alpha: weight of the gradient similarity, in `[0, 1]`. Defaults to `0.5`.
        num_groups: the number of groups, in `[1, K]`. Defaults to `None`.
        similarity_threshold: group while the average similarity is at least
            this, in `[-1, 1]`; used when `num_groups` is `None`. Defaults to
            `0.0` (our default, not tuned).
        update_every: steps between re-allocations. Defaults to `100`.
        end_step: last step that may re-allocate. Defaults to `None`.
        smoothing: `allocate_budget`'s smoothing. Defaults to `0.5`.
        density: the kernels' initial shares of the budget, `"erk"`,
            `"uniform"` or `"global"` (see `TaskAwareAllocation`). Defaults to `"global"`.
        measure_samples: training samples in the held measurement batch.
            Defaults to `256`.
        seed: tie-break seed. Defaults to `0`.
        verbose: print the groups and allocations. Defaults to `0`.

    Attributes:
        measurement: what `measure_tasks` returned after the warm-up.
        groups: the groups, lists of task names.
        budget: the number of non-zero pruned weights.
        callback: the `TaskAwareAllocation`.
        warmup_model: the warmed-up copy of the user's model.
        budget_used: the budget in weights (from `sparsity` or `budget`).
        model: the grouped model after `run`.
    """

    def __init__(self, sparsity=None, budget=None, alpha=0.5, num_groups=None,
                 similarity_threshold=0.0, update_every=100, end_step=None, smoothing=0.5,
                 density="global", measure_samples=256, seed=0, verbose=0):
        if (sparsity is None) == (budget is None):
            raise ValueError(f"Exactly one of `sparsity` and `budget` must be given. Received: "
                             f"sparsity={sparsity!r}, budget={budget!r}")
        if sparsity is not None:
            _check_sparsity(sparsity)
        if budget is not None and (not is_int(budget) or budget < 1):
            raise ValueError(f"Argument `budget` must be an integer >= 1. Received: budget={budget!r}")
        if num_groups is not None and (not is_int(num_groups) or num_groups < 1):
            raise ValueError(f"Argument `num_groups` must be an integer >= 1. "
                             f"Received: num_groups={num_groups!r}")
        if num_groups is None and (not is_real(similarity_threshold)
                                   or not -1.0 <= similarity_threshold <= 1.0):
            raise ValueError(f"Argument `similarity_threshold` must be in [-1, 1]. "
                             f"Received: similarity_threshold={similarity_threshold!r}")
        if not is_int(measure_samples) or measure_samples < 2:
            raise ValueError(f"Argument `measure_samples` must be an integer >= 2. "
                             f"Received: measure_samples={measure_samples!r}")
        self.sparsity, self.budget = sparsity, budget
        self.alpha = check_alpha(alpha)
        self.num_groups, self.similarity_threshold = num_groups, similarity_threshold
        _check_density(density)
        self.update_every, self.end_step, self.smoothing = update_every, end_step, smoothing
        self.density = density
        self.measure_samples, self.seed, self.verbose = measure_samples, seed, verbose
        self.measurement = self.groups = self.callback = self.warmup_model = None
        self.budget_used = self.model = None

    def _budget(self, base_model):
        if self.budget is not None:
            return self.budget
        return budget_for_sparsity(base_model, self.sparsity)

    def prepare(self, model, train_data, warmup_epochs, **fit_kwargs):
        """Warm-up, measurement, grouping; returns the compiled grouped model to fit with `callbacks`.

        Args:
            model: a compiled `MultiTaskModel` (e.g. `MinMaxMultiTask`) on a
                standard network (see `grouped_network`); not changed.
            train_data: a `tf.data.Dataset` of `(x, {task: y})` batches.
            warmup_epochs: epochs of warm-up, an integer `>= 0`.
            **fit_kwargs: passed to the warm-up `fit` (`verbose`, `callbacks`...).
        """
        _require_compiled(model)
        if not is_int(warmup_epochs) or warmup_epochs < 0:
            raise ValueError(f"Argument `warmup_epochs` must be an integer >= 0. "
                             f"Received: warmup_epochs={warmup_epochs!r}")
        base = model.base_model
        _heads(base)
        if self.num_groups is not None and self.num_groups > model.num_tasks:
            raise ValueError(f"Argument `num_groups` must be in [1, {model.num_tasks}] (the "
                             f"number of tasks). Received: num_groups={self.num_groups}")
        if model.num_tasks < 2:
            raise ValueError(f"Task-aware optimisation groups tasks: the model must have at least "
                             f"two tasks. Received tasks {model.task_names}.")
        budget = self._budget(base)
        total = prunable_kernel_count(base)
        if budget > total:
            raise ValueError(f"Argument `budget` must be at most the {total} prunable kernel "
                             f"weights of the network. Received: budget={budget}")
        copy = keras.models.clone_model(base)
        copy.set_weights(base.get_weights())
        warm = model.with_base_model(copy)
        warm.compile(**_fresh_compile_config(model))
        if warmup_epochs:
            warm.fit(train_data, epochs=warmup_epochs, **fit_kwargs)
        x, y = _measure_batch(train_data, self.measure_samples)
        self.measurement = measure_tasks(warm, x, y, self.alpha)
        tasks = self.measurement["task_names"]
        indices = group_tasks(self.measurement["similarity"], num_groups=self.num_groups,
                              threshold=None if self.num_groups else self.similarity_threshold)
        self.groups = [[tasks[i] for i in group] for group in indices]
        grouped_base = grouped_network(warm.base_model, self.groups)
        if self.budget is None:
            # The heads of a group read its whole branch, so they hold more (dense) weights
            # than the standard heads: the pruned budget gives those extra weights back, and
            # the total non-zero count equals reweighted ℓ1's at the same sparsity.
            budget -= head_kernel_count(grouped_base) - head_kernel_count(base)
            if budget < 1:
                raise ValueError(
                    f"Argument `sparsity` leaves no pruned weight once the grouped heads' extra "
                    f"weights are paid for (budget {budget}). Received: sparsity={self.sparsity}")
        grouped = prune_for_dst(grouped_base)
        final = warm.with_base_model(grouped)
        final.compile(**_fresh_compile_config(model))
        self.budget_used = budget
        self.callback = TaskAwareAllocation(
            self.groups, budget, (x, y), update_every=self.update_every, end_step=self.end_step,
            smoothing=self.smoothing, density=self.density, seed=self.seed, verbose=self.verbose)
        self.warmup_model = warm
        if self.verbose:
            print(f"task-aware: groups {self.groups}, budget {budget} non-zero weights of "
                  f"{total} (difficulty {np.round(self.measurement['difficulty'], 3).tolist()})")
        return final

    @property
    def callbacks(self):
        """`[UpdatePruningStep(), the TaskAwareAllocation]` for the grouped model's `fit`."""
        if self.callback is None:
            raise RuntimeError("Call `prepare` (or `run`) first.")
        return [tfmot.sparsity.keras.UpdatePruningStep(), self.callback]

    def run(self, model, train_data, warmup_epochs, epochs, callbacks=None, **fit_kwargs):
        """`prepare`, then fits the grouped model for `epochs`; returns it (with its pruning wrappers)."""
        final = self.prepare(model, train_data, warmup_epochs, **fit_kwargs)
        final.fit(train_data, epochs=epochs, callbacks=[*(callbacks or []), *self.callbacks],
                  **fit_kwargs)
        self.model = final
        return final

    def report(self):
        """The measurements, groups, budget and allocation history, JSON-able."""
        if self.callback is None:
            raise RuntimeError("Call `prepare` (or `run`) first.")
        measurement = {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                       for k, v in self.measurement.items()}
        return {"alpha": self.alpha, "num_groups": self.num_groups,
                "similarity_threshold": self.similarity_threshold, "smoothing": self.smoothing,
                "update_every": self.update_every, "density": self.density,
                "budget": self.budget_used,
                "sparsity_argument": self.sparsity, "measurement": measurement,
                "groups": self.groups, "history": self.callback.history}

    def save_report(self, path):
        """Writes `report()` as JSON to `path`; returns `path`."""
        with open(path, "w") as handle:
            json.dump(self.report(), handle, indent=2)
        return path


def task_aware_optimize(model, train_data, warmup_epochs, epochs, callbacks=None, fit_kwargs=None,
                        **options):
    """One call: `TaskAwareRun(**options).run(model, train_data, warmup_epochs, epochs)`.

    Returns:
        `(grouped_model, run)`: the trained grouped model (with its pruning
        wrappers; `pruning.strip_pruning` gives the deployable copy) and the
        `TaskAwareRun`, whose `report()` holds the measurements and history.

    Example:

    >>> grouped, run = task_aware_optimize(model, train, warmup_epochs=5, epochs=10,
    ...                                    sparsity=0.9, num_groups=2)
    """
    run = TaskAwareRun(**options)
    grouped = run.run(model, train_data, warmup_epochs, epochs, callbacks=callbacks,
                      **(fit_kwargs or {}))
    return grouped, run
