"""Sparsity methods on networks whose trunk is a nested model, or shares a layer between branches.

A trunk built as its own Functional or Sequential model and called as a layer
(``h = trunk(inputs)``, the way a `tf_keras.applications` backbone is used) hides its
layers from the outer model's `layers`; every sparsity method must reach them or refuse
by name. Also: `steps_per_execution > 1`, resume with `BackupAndRestore` in either
callback order, and non-finite numeric arguments.
"""
import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import keras_minmax_mtl as kmm
from keras_minmax_mtl import dst, pruning, reweighted
from keras_minmax_mtl._keras import keras
from tests.helpers import LOSSES

TASKS = ("a", "b", "c")


def _init(seed):
    return keras.initializers.GlorotUniform(seed=seed)


def _heads(h, tasks=TASKS):
    outputs = []
    for i, task in enumerate(tasks):
        if LOSSES[task] == "mse":
            outputs.append(keras.layers.Dense(1, kernel_initializer=_init(10 + i), name=task)(h))
        else:
            outputs.append(keras.layers.Dense(3, activation="softmax", kernel_initializer=_init(10 + i),
                                              name=task)(h))
    return outputs


def functional_trunk_model():
    """Input (6) → nested Functional trunk [Dense 8, Dense 8] → three heads."""
    t_in = keras.Input((6,))
    t = keras.layers.Dense(8, activation="tanh", kernel_initializer=_init(0), name="t1")(t_in)
    t = keras.layers.Dense(8, activation="tanh", kernel_initializer=_init(1), name="t2")(t)
    trunk = keras.Model(t_in, t, name="trunk_model")
    inputs = keras.Input((6,), name="features")
    return keras.Model(inputs, _heads(trunk(inputs)), name="nested_functional")


def sequential_trunk_model():
    """Input (6) → nested Sequential trunk [Dense 8, Dense 8] → three heads."""
    trunk = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, activation="tanh", kernel_initializer=_init(0), name="t1"),
        keras.layers.Dense(8, activation="tanh", kernel_initializer=_init(1), name="t2"),
    ], name="trunk_seq")
    inputs = keras.Input((6,), name="features")
    return keras.Model(inputs, _heads(trunk(inputs)), name="nested_sequential")


def shared_layer_model():
    """One Dense layer `shared` called on two branches of the input; their sum feeds the heads."""
    inputs = keras.Input((6,), name="features")
    shared = keras.layers.Dense(8, activation="tanh", kernel_initializer=_init(0), name="shared")
    left = keras.layers.Dense(6, kernel_initializer=_init(1), name="left")(inputs)
    h = keras.layers.Add()([shared(inputs), shared(left)])
    return keras.Model(inputs, _heads(h), name="shared_layer")


def data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = {"a": rng.integers(0, 3, n).astype(np.int32), "b": rng.integers(0, 3, n).astype(np.int32),
         "c": rng.normal(size=(n, 1)).astype(np.float32)}
    return x, y


def _multitask(base, optimizer=None):
    model = kmm.MinMaxMultiTask(base, step_size=0.1)
    model.compile(optimizer=optimizer or keras.optimizers.Adam(0.01), loss=LOSSES)
    return model


def _masks(model):
    return [m.numpy().copy() for w in pruning.pruning_wrappers(model) for _, m, _ in w.pruning_vars]


# ------------------------------------------------------------------------ DST
@pytest.mark.parametrize("build, method", [
    (functional_trunk_model, "rigl"), (functional_trunk_model, "set"),
    (functional_trunk_model, "paper"), (sequential_trunk_model, "rigl")])
def test_dst_sparsifies_the_layers_of_a_nested_trunk_at_exactly_the_target(build, method):
    base = dst.prune_for_dst(build())
    assert [w.layer.name for w in pruning.pruning_wrappers(base)] == ["t1", "t2"]
    model = _multitask(base)
    kwargs = dict(update_every=2, end_step=10) if method != "paper" else dict(update_every=1, end_step=1)
    callback = dst.DynamicSparseTraining(0.75, method=method, density="uniform", **kwargs)
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
              callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), callback])
    assert len(callback.history) == (5 if method != "paper" else 1)
    report = pruning.sparsity_report(model)
    assert report["layers"]["t1/kernel"]["size"] == 48 and report["layers"]["t2/kernel"]["size"] == 64
    masks = _masks(model)
    if method != "paper":  # the paper's variant grows more than it drops: density drifts up
        assert [int(m.sum()) for m in masks] == [12, 16]  # exactly 25 % of 48 and of 64 active
        assert 1 - sum(m.sum() for m in masks) / 112 == 0.75
    # What the layers compute with is zero wherever the mask is (a grown weight may also be 0).
    assert all(r["zeros"] >= int((m == 0).sum()) for r, m in zip(report["layers"].values(), masks))
    stripped = pruning.strip_pruning(model)
    assert pruning.pruning_wrappers(stripped) == []
    stripped_layers = pruning.sparsity_report(stripped)["layers"]
    assert {name: stripped_layers[name] for name in report["layers"]} == report["layers"]
    np.testing.assert_allclose(stripped(x)["a"].numpy(), model(x)["a"].numpy(), atol=1e-6)


# ------------------------------------------------- resume with BackupAndRestore
class _Kill(keras.callbacks.Callback):
    """Raises after training step `at` (1-based, counted over the whole `fit`): a simulated kill."""

    def __init__(self, at):
        super().__init__()
        self.at, self.seen = at, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            raise RuntimeError("killed")


def _state(model):
    return ([v.numpy().copy() for v in model.base_model.weights]
            + [model.task_weights.numpy().copy(), model.optimizer.iterations.numpy().copy()]
            + [v.numpy().copy() for v in model.optimizer.variables])


def _dst_run():
    model = _multitask(dst.prune_for_dst(functional_trunk_model()))
    callbacks = [tfmot.sparsity.keras.UpdatePruningStep(),
                 dst.DynamicSparseTraining(0.75, method="rigl", update_every=2, end_step=16)]
    return model, callbacks


def _reweighted_run():
    wrapped, callbacks = reweighted.prune_reweighted_l1(
        functional_trunk_model(), 0.75, dense_steps=4, reweighted_steps=8, rho=1e-2, refreshes=1)
    return _multitask(wrapped), callbacks


@pytest.mark.parametrize("setup, kill_at", [(_dst_run, 9), (_reweighted_run, 9)])
@pytest.mark.parametrize("backup_first", [True, False])
def test_resume_with_backup_and_restore_in_either_order_is_the_uninterrupted_run(
        setup, kill_at, backup_first, tmp_path):
    x, y = data(n=48)  # 6 steps per epoch; the kill at step 9 falls in epoch 2, resumed from 1

    def fit(model, callbacks, extra=()):
        backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
        callbacks = [backup, *callbacks] if backup_first else [*callbacks, backup]
        model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0,
                  callbacks=[*callbacks, *extra])
        return model

    reference = fit(*setup())
    expected = _state(reference)
    killed = setup()
    with pytest.raises(RuntimeError, match="killed"):
        fit(*killed, extra=[_Kill(kill_at)])
    resumed = fit(*setup())  # a new process: new model, new callbacks, the backup on disk
    got = _state(resumed)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    assert int(resumed.optimizer.iterations.numpy()) == 18
