r"""Dynamic sparse training (RigL, SET) for Keras 3 models, on `PruneMasked` wrappers.

The network trains sparse from the first step. `DynamicSparseTraining` sets
every wrapped kernel's mask at the target sparsity when training starts
(uniform or ERK layer densities, `keras_minmax_mtl.sparsity.densities`), then
after every `update_every`-th training step until `end_step` it drops, in
each layer, the ``n_drop = round(f(t)·n_active)`` active weights of smallest
``|W ⊙ M|`` and grows as many inactive ones, so each layer keeps exactly its
number of active weights:

- RigL (Evci et al. 2020): grow the largest ``|∂L/∂W_eff|``, the gradient of the
  model's objective with respect to the masked kernel ``W_eff = W ⊙ M`` at
  every position (masked ones included);
- SET (Mocanu et al. 2018): grow at random.

``f(t) = f_0·½(1 + cos(πt/T_end))`` (or constant). Grown weights start at 0 and
their optimizer slots are reset. The drop-and-grow step, the densities and the
drop fraction are `keras_minmax_mtl.sparsity.maths` / `.densities`, the code the
tf_keras path runs.

**Where RigL's gradients come from.** Keras 3's train step is the back-end's
own (`jax.value_and_grad` in a jitted function on JAX, a `tf.GradientTape` on
TensorFlow) and hands no gradient to callbacks. `kernel_gradients` computes
them in the callback from a separate evaluation on a batch the user gives
(`gradient_data`): the model is run statelessly (`Model.stateless_call`, then
`Model.stateless_compute_loss` with `training=False`, so no weight, task
weight or metric changes) with every mask set to ones and every kernel to its
masked value (the same outputs, and the gradient at masked positions too), and
differentiated by the back-end: `jax.grad` on JAX, `tf.GradientTape` on
TensorFlow. PyTorch is refused (not installed here, untested). The cost is one
extra forward and backward pass per update, on update steps only.

Example:

>>> model = MinMaxMultiTask(prune_model(base))
>>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
>>> dst = DynamicSparseTraining(sparsity=0.9, update_every=100, end_step=3000,
...                             gradient_data=(x_train[:256], y_batch))
>>> model.fit(x_train, y_train, epochs=20, callbacks=[dst])
>>> dst.history[-1]["layers"]        # active and grown counts per layer
"""
import numpy as np

from keras_minmax_mtl.core.checks import is_finite_real, is_int
from keras_minmax_mtl.keras3.backend import keras
from keras_minmax_mtl.keras3.pruning import (
    check_single_step,
    masked_layers,
    set_mask,
    sparsity_report,
    sync_state,
)
from keras_minmax_mtl.sparsity.densities import DISTRIBUTIONS, active_counts
from keras_minmax_mtl.sparsity.maths import (
    DST_DECAYS,
    check_dst_schedule,
    drop_fraction_at,
    dst_end_step,
    prune_and_grow,
    random_mask,
)

__all__ = ["METHODS", "DECAYS", "kernel_gradients", "initialize_masks", "DynamicSparseTraining"]

ops = keras.ops

#: The `method` names of `DynamicSparseTraining`.
METHODS = {"rigl": "drop by magnitude, grow by largest |gradient| (Evci et al. 2020)",
           "set": "drop by magnitude, grow at random (Mocanu et al. 2018)"}
#: How the drop fraction goes to 0 at `end_step`.
DECAYS = DST_DECAYS


def _wrappers(model, owner):
    wrappers = masked_layers(model)
    if not wrappers:
        raise ValueError(
            f"`{owner}` was given a model without `PruneMasked` wrappers, so it has no masks. "
            f"Wrap the base model first: `pruned = prune_model(base_model)`.")
    return wrappers


def kernel_gradients(model, x, y, sample_weight=None):
    r"""``∂L/∂(W ⊙ M)`` for every `PruneMasked` kernel of `model`, on the batch `(x, y)`, changing nothing.

    ``L`` is what the compiled model's `compute_loss` returns with
    `training=False` (for a `MultiTaskModel`: ``scale·Σ w_i L_i`` plus the
    model's own losses, with the current task weights). The forward pass runs
    with `training=True` (dropout, batch statistics), statelessly.

    Args:
        model: a compiled Keras 3 model (or `MultiTaskModel`) with `PruneMasked` wrappers.
        x, y, sample_weight: one batch, as for `model.fit`.

    Returns:
        A list of NumPy arrays, one per wrapper in layer order, of the kernels' shapes.

    Raises:
        NotImplementedError: on a back-end other than TensorFlow and JAX.
    """
    wrappers = _wrappers(model, "kernel_gradients")
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax"):
        raise NotImplementedError(
            f"kernel_gradients (RigL's grow) runs on the TensorFlow and JAX back-ends. Received "
            f"back-end {backend!r}; use method='set', or another back-end.")
    frozen_kernels = [w.layer.name for w in wrappers
                      if not any(v is w.kernel for v in model.trainable_variables)]
    if frozen_kernels:
        raise ValueError(f"The kernels of layers {frozen_kernels} are not trainable: RigL grows "
                         f"by their gradients. Make them trainable.")
    sync_state(model)
    kernel_index = {id(w.kernel): i for i, w in enumerate(wrappers)}
    mask_ids = {id(w.mask) for w in wrappers}
    effective = [ops.convert_to_tensor(w.masked_kernel()) for w in wrappers]
    frozen = [ops.ones(v.shape, v.dtype) if id(v) in mask_ids else v.value
              for v in model.non_trainable_variables]
    metrics = [v.value for v in model.metrics_variables]
    x = keras.tree.map_structure(ops.convert_to_tensor, x)
    y = keras.tree.map_structure(ops.convert_to_tensor, y)

    def loss_of(values):
        trainable = [values[kernel_index[id(v)]] if id(v) in kernel_index else v.value
                     for v in model.trainable_variables]
        y_pred, _ = model.stateless_call(trainable, frozen, x, training=True)
        loss, _ = model.stateless_compute_loss(trainable, frozen, metrics, x=x, y=y,
                                               y_pred=y_pred, sample_weight=sample_weight,
                                               training=False)
        return loss

    if backend == "jax":
        import jax

        gradients = jax.grad(loss_of)(effective)
    else:
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(effective)
            loss = loss_of(effective)
        gradients = tape.gradient(loss, effective)
    return [ops.convert_to_numpy(g) for g in gradients]


def initialize_masks(model, sparsity, density="erk", seed=0):
    """Sets random masks at `sparsity` on every `PruneMasked` kernel and zeroes the masked weights.

    Exactly ``round((1 − sparsity)·N)`` active weights in total, shared by
    `density` (`"uniform"` or `"erk"`); layer ``l`` draws its positions with
    `numpy.random.default_rng((seed, l))`, as the tf_keras path does.

    Returns:
        The active count of each wrapped kernel.
    """
    wrappers = _wrappers(model, "initialize_masks")
    counts = active_counts([tuple(w.kernel.shape) for w in wrappers], sparsity, density)
    for index, (wrapper, count) in enumerate(zip(wrappers, counts)):
        rng = np.random.default_rng((int(seed), index))
        set_mask(wrapper, random_mask(tuple(wrapper.kernel.shape), count, rng))
    return counts


class DynamicSparseTraining(keras.callbacks.Callback):
    """Prune-and-grow masks (RigL or SET) on a Keras 3 model's `PruneMasked` wrappers.

    Sets the masks at `sparsity` at the first batch if every mask is still all
    ones (fresh wrappers; a second `fit` continues from the current masks),
    then updates them at the end of every update step ``t`` (1-based:
    ``t % update_every == 0`` and ``t <= end_step``).

    Args:
        sparsity: target fraction of zero weights over all wrapped kernels, in `(0, 1)`.
            Defaults to `0.9`.
        method: `"rigl"` or `"set"`. Defaults to `"rigl"`.
        density: `"erk"` or `"uniform"`. Defaults to `"erk"`.
        update_every: steps between mask updates, `> 0`. Defaults to `100`.
        end_step: last step at which masks change, `>= update_every`. Defaults to
            `None`: 75 % of the training steps of the `fit` call.
        drop_fraction: drop fraction at step 0, in `(0, 1]`. Defaults to `0.3`.
        decay: `"cosine"` or `"constant"`. Defaults to `"cosine"`.
        gradient_data: for RigL, the batch `(x, y)` or `(x, y, sample_weight)` on which
            `kernel_gradients` evaluates the gradient at every update (required for
            `"rigl"`). Defaults to `None`.
        seed: seed of the initial masks, SET's growth and the tie breaks (update ``t``,
            layer ``l`` use `numpy.random.default_rng((seed, t, l))`). Defaults to `0`.

    Attributes:
        history: one dict per update: `step`, `drop_fraction`, and per layer `active`,
            `grown` and `turnover` (``grown/active``).
        last_gradients: the gradients of the last RigL update (for inspection).
        initial_counts: the active count of each wrapped kernel.
    """

    def __init__(self, sparsity=0.9, method="rigl", density="erk", update_every=100,
                 end_step=None, drop_fraction=0.3, decay="cosine", gradient_data=None, seed=0):
        super().__init__()
        if not is_finite_real(sparsity) or not 0 < sparsity < 1:
            raise ValueError(f"Argument `sparsity` must be in (0, 1). Received: sparsity={sparsity!r}")
        if not isinstance(method, str) or method not in METHODS:
            raise ValueError(f"Argument `method` must be one of {list(METHODS)}. Received: method={method!r}")
        if density not in DISTRIBUTIONS:
            raise ValueError(f"Argument `density` must be one of {list(DISTRIBUTIONS)}. "
                             f"Received: density={density!r}")
        update_every, end_step, drop_fraction = check_dst_schedule(update_every, end_step,
                                                                   drop_fraction, decay)
        if method == "rigl":
            if not isinstance(gradient_data, (tuple, list)) or len(gradient_data) not in (2, 3):
                raise ValueError(
                    "Argument `gradient_data` must be a batch `(x, y)` or `(x, y, sample_weight)` "
                    "for method='rigl', which grows by the gradient on it. Received: "
                    f"gradient_data={type(gradient_data).__name__}")
        if not is_int(seed) or seed < 0:
            raise ValueError(f"Argument `seed` must be an integer >= 0. Received: seed={seed!r}")
        self.sparsity = float(sparsity)
        self.method = method
        self.density = density
        self.update_every = update_every
        self.end_step = end_step
        self.drop_fraction = drop_fraction
        self.decay = decay
        self.gradient_data = gradient_data
        self.seed = int(seed)
        self.history = []
        self.initial_counts = None
        self.last_gradients = None

    def on_train_begin(self, logs=None):
        check_single_step(self.model, type(self).__name__)
        self.wrappers = _wrappers(self.model, type(self).__name__)
        params = self.params or {}
        epochs, steps = params.get("epochs"), params.get("steps")
        self._end = dst_end_step(self.end_step, epochs * steps if epochs and steps else None,
                                 self.update_every)
        self._step = None

    def _start(self):
        sync_state(self.model)
        masks = [ops.convert_to_numpy(w.mask) for w in self.wrappers]
        if all(np.all(m == 1) for m in masks):
            self.initial_counts = initialize_masks(self.model, self.sparsity, self.density, self.seed)
        else:
            self.initial_counts = [int(m.sum()) for m in masks]
        optimizer = self.model.optimizer
        self._step = int(ops.convert_to_numpy(optimizer.iterations)) if optimizer else 0

    def on_train_batch_begin(self, batch, logs=None):
        if self._step is None:
            self._start()

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        t = self._step
        if t % self.update_every == 0 and t <= self._end:
            sync_state(self.model)
            self.update(t)

    def update(self, t):
        """One drop-and-grow update of every mask, at step `t` (what the callback does after step `t`)."""
        fraction = drop_fraction_at(t, self.drop_fraction, self._end, self.decay)
        gradients = None
        if self.method == "rigl":
            x, y, *rest = self.gradient_data
            gradients = kernel_gradients(self.model, x, y, rest[0] if rest else None)
            self.last_gradients = gradients
        record = {"step": t, "drop_fraction": fraction, "layers": {}}
        for index, wrapper in enumerate(self.wrappers):
            mask = ops.convert_to_numpy(wrapper.mask)
            value = ops.convert_to_numpy(wrapper.masked_kernel())
            n_active = int(mask.sum())
            n_drop = int(round(fraction * n_active))
            rng = np.random.default_rng((self.seed, t, index))
            grow = (np.abs(gradients[index]) if gradients is not None
                    else (lambda: rng.random(mask.shape)))
            new = prune_and_grow(mask, np.abs(value), grow, n_drop, n_drop, rng)
            grown = set_mask(wrapper, new, self.model.optimizer)
            active = int(new.sum())
            record["layers"][wrapper.layer.name] = {
                "active": active, "grown": int(grown.sum()),
                "turnover": float(grown.sum()) / active if active else 0.0}
        self.history.append(record)

    def report(self):
        """The sparsity of the model now (`pruning.sparsity_report`) and the update history."""
        return {"sparsity": sparsity_report(self.model), "updates": self.history}
