"""Sparsity methods on networks whose trunk is a nested model, or shares a layer between branches.

A trunk built as its own Functional or Sequential model and called as a layer
(``h = trunk(inputs)``, the way a `tf_keras.applications` backbone is used) hides its
layers from the outer model's `layers`; every sparsity method must reach them or refuse
by name. Also: `steps_per_execution > 1`, resume with `BackupAndRestore` in either
callback order, and non-finite numeric arguments.
"""
import os

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import keras_minmax_mtl as kmm
from keras_minmax_mtl.sparsity import dst
from keras_minmax_mtl.sparsity import pruning
from keras_minmax_mtl.sparsity import reweighted
from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.sparsity.densities import active_counts
from keras_minmax_mtl.sparsity.policy import MultiTaskPruningPolicy, prunable_kernel_count
from keras_minmax_mtl.sparsity.task_similarity import allocate_budget
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
    (functional_trunk_model, "rigl"), (functional_trunk_model, "paper"),
    (sequential_trunk_model, "set")])
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
        functional_trunk_model(), 0.75, dense_steps=2, reweighted_steps=6, rho=1e-2, refreshes=1)
    return _multitask(wrapped), callbacks


def _hybrid_run():
    from keras_minmax_mtl.sparsity import hybrid

    wrapped, callbacks = hybrid.prune_hybrid(hybrid.hybrid_network(_flat_model()), 0.5, 0.25,
                                             prune_step=5, end_step=11, frequency=2)
    return _multitask(wrapped), callbacks


def _task_aware_run():
    from keras_minmax_mtl.sparsity import task_aware

    inputs = keras.Input((6,), name="features")
    h = keras.layers.Dense(8, activation="tanh", kernel_initializer=_init(0), name="t1")(inputs)
    outputs = []
    for i, task in enumerate(TASKS):
        hidden = keras.layers.Dense(4, activation="relu", kernel_initializer=_init(20 + i),
                                    name=f"{task}_hidden")(h)
        outputs.extend(_heads(hidden, tasks=(task,)))
    groups = [["a", "b"], ["c"]]
    base = dst.prune_for_dst(task_aware.grouped_network(keras.Model(inputs, outputs), groups))
    x, y = data(n=16, seed=1)
    callback = task_aware.TaskAwareAllocation(groups, 40, (x, y), update_every=4, end_step=16)
    return _multitask(base), [tfmot.sparsity.keras.UpdatePruningStep(), callback]


@pytest.mark.parametrize("setup, backup_first", [
    (_dst_run, True), (_dst_run, False), (_reweighted_run, True), (_reweighted_run, False),
    (_task_aware_run, False),
    # The hybrid callback reads its state as task-aware's does; its resume is checked with
    # KMM_ALL_CELLS=1 only (12 s, and W_shared's gradient sum order varies by an ulp).
    pytest.param(_hybrid_run, False, marks=pytest.mark.skipif(
        os.environ.get("KMM_ALL_CELLS") != "1", reason="costly; run with KMM_ALL_CELLS=1"))])
def test_resume_with_backup_and_restore_in_either_order_is_the_uninterrupted_run(
        setup, backup_first, tmp_path):
    kill_at = 9
    # 6 steps per epoch; the kill at step 9 falls in epoch 2, which resumes from epoch 1's backup
    # (for reweighted l1: inside the reweighted stage, steps 3-8, after the refresh at step 6).
    x, y = data(n=48)

    def fit(model, callbacks, extra=()):
        backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
        callbacks = [backup, *callbacks] if backup_first else [*callbacks, backup]
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
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
        if setup is _hybrid_run:
            # The hybrid layers sum the tasks' gradient contributions to W_shared in an
            # order that can vary from run to run (1 float32 ulp): masks and counts are
            # still compared exactly by the tolerance, weights to 1e-6.
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
        else:
            np.testing.assert_array_equal(a, b)
    assert int(resumed.optimizer.iterations.numpy()) == 12


# ---------------------------------------------------------------- reweighted l1
@pytest.mark.parametrize("build", [functional_trunk_model, sequential_trunk_model])
def test_reweighted_l1_prunes_a_nested_trunk_to_exactly_the_target(build):
    base = build()
    policy = MultiTaskPruningPolicy()
    wrapped, callbacks = reweighted.prune_reweighted_l1(base, 0.75, dense_steps=2,
                                                        reweighted_steps=2, rho=1e-3, policy=policy)
    assert {n: policy.roles[n] for n in ("t1", "t2", "a")} == {
        "t1": "trunk", "t2": "trunk", "a": "task_output"}
    assert [w.layer.name for w in pruning.pruning_wrappers(wrapped)] == ["t1", "t2"]
    model = _multitask(wrapped)
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    layers = pruning.sparsity_report(model)["layers"]
    assert layers == {"t1/kernel": {"size": 48, "zeros": 36, "sparsity": 0.75},
                      "t2/kernel": {"size": 64, "zeros": 48, "sparsity": 0.75}}
    assert [int(m.sum()) for m in _masks(model)] == [12, 16]
    stripped = pruning.strip_pruning(model)
    assert {n: pruning.sparsity_report(stripped)["layers"][n] for n in layers} == layers
    np.testing.assert_allclose(stripped(x)["c"].numpy(), model(x)["c"].numpy(), atol=1e-6)
    assert prunable_kernel_count(base) == 112  # the nested kernels are counted


def test_reweighted_filter_mode_removes_whole_units_inside_a_nested_trunk():
    wrapped, callbacks = reweighted.prune_reweighted_l1(
        functional_trunk_model(), 0.5, dense_steps=2, reweighted_steps=2, rho=1e-3,
        sparsity_type="filter")
    model = _multitask(wrapped)
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    removed = callbacks[1].removed.removed
    assert sorted(removed) == ["t1", "t2"] and all(len(units) == 4 for units in removed.values())
    for wrapper in pruning.pruning_wrappers(model):
        kernel = wrapper.layer.kernel.numpy()
        assert np.all(kernel[:, removed[wrapper.layer.name]] == 0)
        assert np.all(wrapper.layer.bias.numpy()[removed[wrapper.layer.name]] == 0)
        assert np.count_nonzero(np.abs(kernel).sum(axis=0) == 0) == 4


def test_reweighted_filter_mode_refuses_a_nested_output_layer_feeding_an_outer_batch_norm():
    t_in = keras.Input((6,))
    trunk = keras.Model(t_in, keras.layers.Dense(8, name="t1")(t_in), name="trunk_model")
    inputs = keras.Input((6,))
    h = keras.layers.BatchNormalization(name="bn")(trunk(inputs))
    base = keras.Model(inputs, _heads(h))
    with pytest.raises(ValueError, match=r"units of layer 't1': it produces the output of the "
                                         r"nested model 'trunk_model'.*\['bn'\].*exclude=\['t1'\]"):
        reweighted.prune_reweighted_l1(base, 0.5, 1, 1, rho=1e-3, sparsity_type="filter")


def test_reweighted_l1_prunes_a_layer_called_twice_per_step_at_the_prune_step():
    wrapped, callbacks = reweighted.prune_reweighted_l1(shared_layer_model(), 0.5, 2, 2, rho=1e-3)
    wrappers = pruning.pruning_wrappers(wrapped)
    assert [w.layer.name for w in wrappers] == ["left", "shared"]
    # tfmot's step counts calls: the shared wrapper's schedule knows it is called twice.
    assert [w.pruning_schedule.calls_per_step for w in wrappers] == [1, 2]
    model = _multitask(wrapped)
    x, y = data()
    first = (x[:32], {t: v[:32] for t, v in y.items()})  # 4 steps of 8: dense and reweighted
    model.fit(*first, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    assert all(int(m.sum()) == m.size for m in _masks(model))
    assert [int(w.pruning_step.numpy()) for w in wrappers] == [4, 8]
    model.fit(x[32:40], {t: v[32:40] for t, v in y.items()}, batch_size=8, epochs=1,
              shuffle=False, verbose=0, callbacks=callbacks)  # step 5: the prune, every call
    assert [int(m.size - m.sum()) for m in _masks(model)] == [18, 24]  # half of 36 and of 48
    with pytest.raises(ValueError, match=r"'shared' \(called 2 times, schedule says 1\)"):
        hand = keras.models.clone_model(shared_layer_model(), clone_function=lambda layer: (
            tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=(
                reweighted.ReweightedL1Schedule(0.5, prune_step=3, begin_step=2)))
            if layer.name == "shared" else layer.__class__.from_config(layer.get_config())))
        _multitask(hand).fit(x[:8], {t: v[:8] for t, v in y.items()}, batch_size=8, verbose=0,
                             callbacks=[tfmot.sparsity.keras.UpdatePruningStep(),
                                        reweighted.ReweightedL1Stages(1e-3, 2, 3)])


def test_reweighted_l1_refuses_names_shared_by_a_nested_layer_and_an_outer_one():
    t_in = keras.Input((6,))
    trunk = keras.Model(t_in, keras.layers.Dense(8, name="a")(t_in), name="trunk_model")
    inputs = keras.Input((6,))
    base = keras.Model(inputs, _heads(trunk(inputs)))
    with pytest.raises(ValueError, match=r"layers \['a'\] whose names are carried by several"):
        reweighted.prune_reweighted_l1(base, 0.5, 1, 1, rho=1e-3)


# ---------------------------------------------------------- shared layers, DST
def test_dst_wraps_a_layer_shared_by_two_branches_once_and_keeps_the_target():
    base = dst.prune_for_dst(shared_layer_model())
    wrappers = pruning.pruning_wrappers(base)
    assert [w.layer.name for w in wrappers] == ["left", "shared"]
    assert [pruning.calls_per_step(base)[id(w)][1] for w in wrappers] == [1, 2]
    model = _multitask(base)
    callback = dst.DynamicSparseTraining(0.5, method="rigl", density="uniform", update_every=2,
                                         end_step=10)
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
              callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), callback])
    assert len(callback.history) == 5
    assert [int(m.sum()) for m in _masks(model)] == [18, 24]  # half of 36 and of 48, held
    # tfmot's step counts calls (2 per training step for `shared`); DST counts training steps.
    assert [int(w.pruning_step.numpy()) for w in wrappers] == [12, 24]
    stripped = pruning.strip_pruning(model)  # the shared layer stays one layer, with its mask
    assert len([layer for layer in stripped.base_model.layers if layer.name == "shared"]) == 1
    assert np.count_nonzero(stripped.base_model.get_layer("shared").kernel.numpy()) <= 24
    np.testing.assert_allclose(stripped(x)["a"].numpy(), model(x)["a"].numpy(), atol=1e-6)


# ------------------------------------------------------- task-aware and hybrid
@pytest.mark.parametrize("build, nested", [(functional_trunk_model, "trunk_model"),
                                           (sequential_trunk_model, "trunk_seq")])
def test_task_aware_and_hybrid_refuse_a_nested_trunk_by_name(build, nested):
    from keras_minmax_mtl.sparsity import hybrid
    from keras_minmax_mtl.sparsity import task_aware

    base = build()
    message = rf"does not enter nested models: layer '{nested}'.*\['t1', 't2'\].*input_tensor=inputs"
    with pytest.raises(ValueError, match="The hybrid strategy.*" + message):
        hybrid.hybrid_network(base)
    with pytest.raises(ValueError, match="The hybrid strategy's budget.*" + message):
        hybrid.equal_nonzero_budget(base, 0.5)
    with pytest.raises(ValueError, match="Task-aware optimisation " + message):
        task_aware.grouped_network(base, [["a", "b"], ["c"]])
    model = _multitask(base)
    with pytest.raises(ValueError, match=r"Task-aware optimisation \(`measure_tasks`\) " + message):
        task_aware.measure_tasks(model, *data(n=8))


# ----------------------------------------------------------- steps_per_execution
def test_dst_refuses_several_steps_per_execution_before_changing_anything():
    model = kmm.MinMaxMultiTask(dst.prune_for_dst(functional_trunk_model()), step_size=0.1)
    model.compile(optimizer="adam", loss=LOSSES, steps_per_execution=3)
    # tfmot's UpdatePruningStep (listed first) sets the fresh wrappers' pruning_step from -1
    # to 0 before DST refuses; every other weight, and the masks, stay as they were.
    before = [v.numpy().copy() for v in model.weights if "pruning_step" not in v.name]
    x, y = data()
    with pytest.raises(ValueError, match=r"`DynamicSparseTraining` acts between training steps.*"
                                         r"counted in executions, not steps\. Received: "
                                         r"steps_per_execution=3"):
        model.fit(x, y, batch_size=8, verbose=0, callbacks=[
            tfmot.sparsity.keras.UpdatePruningStep(), dst.DynamicSparseTraining(update_every=2, end_step=10)])
    after = [v for v in model.weights if "pruning_step" not in v.name]
    assert len(after) == len(before)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b.numpy())


# ------------------------------------------------------------ non-finite numbers
@pytest.mark.parametrize("make, message", [
    (lambda: dst.DynamicSparseTraining(sparsity=float("nan")), r"`sparsity` must be in \(0, 1\). Received: sparsity=nan"),
    (lambda: dst.DynamicSparseTraining(drop_fraction=float("nan")), r"`drop_fraction` must be in \(0, 1\]. Received: drop_fraction=nan"),
    (lambda: dst.DynamicSparseTraining(method="paper", grow_ratio=float("inf")), r"`grow_ratio` must be in \(0, 1\]. Received: grow_ratio=inf"),
    (lambda: reweighted.ReweightedL1Stages(rho=float("inf"), begin_step=1, prune_step=2), r"`rho` must be a number >= 0. Received: rho=inf \(a finite number is needed\)"),
    (lambda: reweighted.ReweightedL1Stages(rho=1.0, begin_step=1, prune_step=2, epsilon=float("inf")), r"`epsilon` must be > 0. Received: epsilon=inf \(a finite"),
    (lambda: reweighted.ReweightedL1Schedule(float("nan"), 2), r"`target_sparsity` must be in \[0, 1\). Received: target_sparsity=nan"),
    (lambda: allocate_budget([0.5, 0.5], [4, 4], 4, smoothing=float("inf")), r"`smoothing` must be a finite number > 0. Received: smoothing=inf"),
    (lambda: allocate_budget([0.5, 0.5], [4, 4], 4, smoothing=float("nan")), r"`smoothing` must be a finite number > 0. Received: smoothing=nan"),
])
def test_non_finite_numbers_are_refused_naming_the_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_hybrid_task_budget_nan_is_refused_naming_the_argument():
    from keras_minmax_mtl.sparsity import hybrid

    model = hybrid.hybrid_network(_flat_model())
    with pytest.raises(ValueError, match=r"`task_budget` must be a count.*Received: task_budget=nan"):
        hybrid.prune_hybrid(model, 0.5, float("nan"), prune_step=2)


def _flat_model():
    inputs = keras.Input((6,), name="features")
    h = keras.layers.Dense(8, activation="tanh", kernel_initializer=_init(0), name="t1")(inputs)
    return keras.Model(inputs, _heads(h), name="flat")


# ------------------------------------------------------- a tf_keras.applications trunk
def _application(**kwargs):
    # The cheapest application to build and wrap here.
    return keras.applications.MobileNetV3Small(
        alpha=0.75, minimalistic=True, weights=None, include_top=False, pooling="avg",
        include_preprocessing=False, **kwargs)


def _app_heads(h):
    return [keras.layers.Dense(3, activation="softmax", kernel_initializer=_init(10), name="a")(h),
            keras.layers.Dense(1, kernel_initializer=_init(11), name="c")(h)]


def test_dst_and_reweighted_reach_the_convolutions_of_an_applications_trunk():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    trunk = _application(input_shape=(32, 32, 3))
    base = keras.Model(inputs, _app_heads(trunk(inputs)))  # the trunk called as a layer
    convs = [layer.name for layer in trunk.layers if type(layer) is keras.layers.Conv2D]
    assert len(convs) == 23  # its DepthwiseConv2D layers have no prunable weight in tfmot
    # The same application built into the outer graph (input_tensor=) is found the same way.
    flat_inputs = keras.Input((32, 32, 3))
    flat = _application(input_tensor=flat_inputs)
    flat_base = keras.Model(flat_inputs, _app_heads(flat.output))
    assert [w.layer.name for w in pruning.pruning_wrappers(dst.prune_for_dst(flat_base))] == convs
    wrapped, _ = reweighted.prune_reweighted_l1(base, 0.8, 1, 1, rho=1e-6)
    assert [w.layer.name for w in pruning.pruning_wrappers(wrapped)] == convs

    wrapped = dst.prune_for_dst(base)
    assert [w.layer.name for w in pruning.pruning_wrappers(wrapped)] == convs
    assert pruning.pruning_wrappers(base) == []  # the user's model is not changed
    # The masks DST sets at its first batch (a fit of this trunk takes ~30 s here: the small
    # nested trunks above show the training on the same code path).
    counts = dst.initialize_masks(wrapped, 0.8, "erk", seed=0)
    masks = _masks(wrapped)
    assert [int(m.sum()) for m in masks] == counts == active_counts([m.shape for m in masks], 0.8, "erk")
    assert sum(counts) == round(0.2 * sum(m.size for m in masks))
    for wrapper in pruning.pruning_wrappers(wrapped):
        (weight, mask, _), = wrapper.pruning_vars
        assert np.all(weight.numpy()[mask.numpy() == 0] == 0)
