import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot

import keras_minmax_mtl as kmm
from keras_minmax_mtl.sparsity.scope import prune_scope
from keras_minmax_mtl.sparsity import pruning
from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.data import load_multi_digits
from keras_minmax_mtl.data.networks import multi_digits_network
from keras_minmax_mtl.sparsity.policy import MultiTaskPruningPolicy
from keras_minmax_mtl.sparsity.pruning import PruneLowMagnitude
from keras_minmax_mtl.sparsity.reweighted import (
    ReweightedL1Penalty,
    ReweightedL1Schedule,
    ReweightedL1Stages,
    global_sparsities,
    prune_reweighted_l1,
)
from tests.helpers import LOSSES, tiny_base_model, tiny_data

TASKS = ("left", "right", "sum")
PRUNED = ["trunk_conv1", "trunk_dense", "left_hidden", "right_hidden", "sum_hidden"]
STEPS_PER_EPOCH = 4  # 32 examples, batch 8


def small_network(seed=0):
    return multi_digits_network(trunk_filters=(2,), trunk_units=8, head_units=4, seed=seed)


def data():
    return load_multi_digits("train", seed=0, num_examples=32)


def compiled(model):
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss={t: "sparse_categorical_crossentropy" for t in TASKS},
                  metrics={t: ["accuracy"] for t in TASKS})
    return model


def pipeline(sparsity=0.75, allocation="uniform", weighting=None, rho=1e-3):
    """Stages aligned with epochs: epoch 1 dense, 2 reweighted, 3 and later masked retraining."""
    wrapped, callbacks = prune_reweighted_l1(
        small_network(), sparsity, dense_steps=STEPS_PER_EPOCH, reweighted_steps=STEPS_PER_EPOCH,
        rho=rho, refreshes=1, allocation=allocation)
    if weighting is None:
        model = kmm.MinMaxMultiTask(wrapped, step_size=0.1)
    else:
        model = kmm.MultiTaskModel(wrapped, weighting=weighting)
    return compiled(model), callbacks


class MaskRecorder(keras.callbacks.Callback):
    """The masks of every wrapper after every train step."""

    def on_train_begin(self, logs=None):
        self.masks = []

    def on_train_batch_end(self, batch, logs=None):
        self.masks.append([m.numpy().copy() for w in pruning.pruning_wrappers(self.model)
                           for _, m, _ in w.pruning_vars])


def kept(size, sparsity):
    """What tfmot keeps of a layer of `size` weights at `sparsity`."""
    return max(int(np.round(np.float32(size) * (np.float32(1) - np.float32(sparsity)))), 1)


# ------------------------------------------------------------------ schedule
def test_schedule_prunes_only_at_prune_step():
    schedule = ReweightedL1Schedule(0.9, prune_step=7, begin_step=3)
    flags = [bool(schedule(tf.constant(step, tf.int64))[0]) for step in range(0, 12)]
    assert flags == [step == 7 for step in range(0, 12)]
    assert float(schedule(tf.constant(7, tf.int64))[1]) == pytest.approx(0.9)
    schedule.set_sparsity(0.5)
    assert float(schedule(7)[1]) == 0.5


def test_schedule_config_round_trips_alone_and_through_prune_low_magnitude():
    schedule = ReweightedL1Schedule(0.975, prune_step=11, begin_step=4)
    config = schedule.get_config()
    assert config == {"class_name": "keras_minmax_mtl>ReweightedL1Schedule",
                      "config": {"target_sparsity": 0.975, "prune_step": 11, "begin_step": 4,
                                 "sparsity_type": "unstructured", "calls_per_step": 1}}
    assert ReweightedL1Schedule.from_config(config["config"]).get_config() == config
    shared = ReweightedL1Schedule(0.5, prune_step=5, begin_step=2, calls_per_step=3).get_config()
    assert ReweightedL1Schedule.from_config(shared["config"]).get_config() == shared
    # A layer called 3 times per step is pruned at its first call of step 5: tfmot's step 13.
    assert [bool(ReweightedL1Schedule(0.5, 5, 2, calls_per_step=3)(k)[0]) for k in (5, 13)] == \
        [False, True]
    # Configs saved before `calls_per_step` existed still load, as one call per step.
    old = dict(config["config"])
    del old["calls_per_step"]
    assert ReweightedL1Schedule.from_config(old).calls_per_step == 1
    wrapper = PruneLowMagnitude(keras.layers.Dense(3), pruning_schedule=schedule)
    rebuilt = PruneLowMagnitude.from_config(wrapper.get_config())
    assert isinstance(rebuilt.pruning_schedule, ReweightedL1Schedule)
    assert rebuilt.pruning_schedule.get_config() == config


@pytest.mark.parametrize("kwargs, message", [
    (dict(target_sparsity=1.0, prune_step=3), r"`target_sparsity` must be in \[0, 1\)\. "
                                              r"Received: target_sparsity=1\.0"),
    (dict(target_sparsity=-0.1, prune_step=3), r"Received: target_sparsity=-0\.1"),
    (dict(target_sparsity=0.5, prune_step=2, begin_step=5), r"`prune_step` must be an integer "
                                                             r">= begin_step=5.*prune_step=2"),
    (dict(target_sparsity=0.5, prune_step=3, begin_step=0), r"`begin_step` must be an integer >= 1"),
])
def test_schedule_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReweightedL1Schedule(**kwargs)


def test_stages_and_setup_refuse_bad_values():
    with pytest.raises(ValueError, match=r"`refresh_steps` must hold integers in .*= \[3, 8\).*"
                                         r"refresh_steps=\(4, 9\)"):
        ReweightedL1Stages(rho=1.0, begin_step=3, prune_step=8, refresh_steps=(4, 9))
    with pytest.raises(ValueError, match=r"`epsilon` must be > 0\. Received: epsilon=0"):
        ReweightedL1Stages(rho=1.0, begin_step=3, prune_step=8, epsilon=0)
    with pytest.raises(ValueError, match=r"`allocation` must be one of \['uniform', 'global'\]"):
        ReweightedL1Stages(rho=1.0, begin_step=3, prune_step=8, allocation="random")
    with pytest.raises(ValueError, match=r"target_sparsity=1\.5"):
        prune_reweighted_l1(small_network(), 1.5, dense_steps=1, reweighted_steps=1, rho=1.0)
    with pytest.raises(ValueError, match=r"leaves no layer"):
        prune_reweighted_l1(tiny_base_model(), 0.5, 1, 1, rho=1.0,
                            policy=MultiTaskPruningPolicy(prune=("task_hidden",)))


# ------------------------------------------------------------------- penalty
def test_penalty_is_exact_over_exactly_the_pruned_kernels():
    wrapped, _ = prune_reweighted_l1(small_network(), 0.5, 1, 1, rho=1.0)
    penalty = ReweightedL1Penalty.of(wrapped)
    assert sorted(w.name.split("/")[0] for w in penalty.weights) == sorted(PRUNED)
    assert float(penalty()) == 0.0  # off until the stage begins
    penalty.refresh()
    refs = [w.numpy().copy() for w in penalty.weights]
    rng = np.random.default_rng(0)
    for w in penalty.weights:
        w.assign(w + rng.normal(size=w.shape).astype(np.float32) * 0.1)
    penalty.set_coefficient(0.25)
    want = 0.25 * sum(np.sum(np.abs(w.numpy()) / (np.abs(r) + 1e-6))
                      for w, r in zip(penalty.weights, refs))
    assert float(penalty()) == pytest.approx(want, rel=1e-5)
    assert float(tf.add_n(wrapped.losses)) == pytest.approx(want, rel=1e-5)


def test_stage_callback_switches_the_penalty_and_refreshes_references_at_the_right_steps():
    wrapped, callbacks = prune_reweighted_l1(small_network(), 0.5, dense_steps=2,
                                             reweighted_steps=6, rho=0.5, refreshes=2)
    stages = callbacks[1]
    assert (stages.begin_step, stages.prune_step, stages.refresh_steps) == (3, 9, (5, 7))
    penalty = ReweightedL1Penalty.of(wrapped)
    stages.set_model(wrapped)
    stages.on_train_begin()
    seen = []
    for batch in range(10):
        for w in penalty.weights:
            w.assign_add(tf.ones_like(w))  # weights move at every step
        stages.on_train_batch_begin(batch)
        step = batch + 1
        refreshed = all(np.array_equal(r.numpy(), w.numpy())
                        for r, w in zip(penalty.references, penalty.weights))
        seen.append((step, float(penalty.coefficient.numpy()), refreshed))
        stages.on_train_batch_end(batch)
    assert [s for s, c, _ in seen if c == 0.5] == [3, 4, 5, 6, 7, 8]
    assert [s for s, _, r in seen if r] == [3, 5, 7]


# ------------------------------------------------------------------ pipeline
def test_three_stages_with_one_forward_pass_per_step_and_masks_set_once_then_held():
    model, callbacks = pipeline(0.75)
    recorder = MaskRecorder()
    x, y = data()
    history = model.fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=[*callbacks, recorder])
    wrappers = pruning.pruning_wrappers(model)
    assert sorted(w.layer.name for w in wrappers) == sorted(PRUNED)
    for wrapper in wrappers:  # exactly one training-mode forward pass per train step
        assert int(wrapper.pruning_step.numpy()) == int(model.train_step_counter.numpy()) == 16
    # Masks: all ones through the dense and reweighted stages (steps 1-8), set at step 9, held.
    for masks in recorder.masks[:8]:
        assert all(m.min() == 1.0 for m in masks)
    for masks in recorder.masks[9:]:
        for m, m9 in zip(masks, recorder.masks[8]):
            np.testing.assert_array_equal(m, m9)
    report = pruning.sparsity_report(model)
    for name, layer in report["layers"].items():
        assert layer["size"] - layer["zeros"] == kept(layer["size"], 0.75), name
    # The penalty: 0 while dense, > 0 while reweighted, 0 after the prune; logged on its own.
    reg = history.history["regularization_loss"]
    assert reg[0] == 0.0 and reg[1] > 0.0 and reg[2] == 0.0 and reg[3] == 0.0


def test_penalty_is_added_unweighted_by_the_task_weights_with_a_baseline():
    model, callbacks = pipeline(0.5, weighting=kmm.EqualWeighting(), rho=0.01)
    x, y = data()
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=callbacks).history
    # Reweighted epoch: loss = (1/3) Σ L_i + penalty, the penalty not multiplied by any weight.
    want = history["regularization_loss"][1] + sum(history[f"{t}_loss"][1] for t in TASKS) / 3
    assert history["regularization_loss"][1] > 0.1
    assert history["loss"][1] == pytest.approx(want, rel=1e-5)


def test_global_allocation_keeps_the_globally_largest_weights():
    # Keep 3 of 6: 6, 5, 4 are all in the second layer; the first keeps its one weight anyway.
    assert global_sparsities([np.array([1.0, 2.0]), np.array([3.0, 4.0, 5.0, 6.0])], 0.5) == [0.5, 0.25]
    assert global_sparsities([np.array([9.0, -8.0]), np.array([1.0, -2.0])], 0.5) == [0.0, 0.5]
    model, callbacks = pipeline(0.75, allocation="global")
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=callbacks)  # up to the prune
    before = [w.numpy().copy() for wr in pruning.pruning_wrappers(model) for w, _, _ in wr.pruning_vars]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=callbacks)  # prune at step 9
    masks = [m.numpy() for wr in pruning.pruning_wrappers(model) for _, m, _ in wr.pruning_vars]
    report = pruning.sparsity_report(model)
    total = report["overall"]["size"]
    assert total - report["overall"]["zeros"] == round(total * 0.25)
    assert len({round(layer["sparsity"], 6) for layer in report["layers"].values()}) > 1
    # The kept weights are the largest magnitudes over all layers together.
    kept_values = np.concatenate([np.abs(k[m == 1]) for k, m in zip(before, masks)])
    pruned_values = np.concatenate([np.abs(k[m == 0]) for k, m in zip(before, masks)])
    assert kept_values.min() >= pruned_values.max()
    assert callbacks[1].allocated == global_sparsities(before, 0.75)


def test_save_and_load_after_the_prune_keeps_masks_step_and_task_weights(tmp_path):
    model, callbacks = pipeline(0.75)
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=callbacks)
    model.save(tmp_path / "mid.keras")
    with prune_scope():
        loaded = keras.models.load_model(tmp_path / "mid.keras")
    masks = [m.numpy() for w in pruning.pruning_wrappers(model) for _, m, _ in w.pruning_vars]
    loaded_wrappers = pruning.pruning_wrappers(loaded)
    for m, w in zip(masks, (m for w in loaded_wrappers for _, m, _ in w.pruning_vars)):
        np.testing.assert_array_equal(m, w.numpy())
    assert all(int(w.pruning_step.numpy()) == 12 for w in loaded_wrappers)
    assert all(isinstance(w.pruning_schedule, ReweightedL1Schedule) for w in loaded_wrappers)
    np.testing.assert_array_equal(loaded.task_weights.numpy(), model.task_weights.numpy())
    # Training goes on after the prune with the masks held and the step counting on.
    stages = ReweightedL1Stages(rho=1e-3, begin_step=5, prune_step=9)
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), stages])
    assert all(int(w.pruning_step.numpy()) == 16 for w in loaded_wrappers)
    for m, w in zip(masks, (m for w in loaded_wrappers for _, m, _ in w.pruning_vars)):
        np.testing.assert_array_equal(m, w.numpy())
    assert pruning.sparsity_report(loaded)["overall"] == pruning.sparsity_report(model)["overall"]


def test_strip_through_minmax_keeps_task_weights_outputs_and_sparsity():
    model, callbacks = pipeline(0.75)
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=callbacks)
    stripped = pruning.strip_pruning(model)
    assert type(stripped) is kmm.MinMaxMultiTask and pruning.pruning_wrappers(stripped) == []
    assert stripped.losses == []  # the penalty stays with the training model
    np.testing.assert_array_equal(stripped.task_weights.numpy(), model.task_weights.numpy())
    for task in TASKS:
        np.testing.assert_allclose(stripped(x)[task].numpy(), model(x)[task].numpy(), atol=1e-6)
    for name, layer in pruning.sparsity_report(model)["layers"].items():
        assert pruning.sparsity_report(stripped)["layers"][name]["zeros"] >= layer["zeros"]


def test_setup_leaves_the_users_model_unchanged():
    base = small_network()
    before = [w.copy() for w in base.get_weights()]
    model, callbacks = prune_reweighted_l1(base, 0.9, dense_steps=0, reweighted_steps=0, rho=0.0)
    model = compiled(kmm.MinMaxMultiTask(model))
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=callbacks)
    assert pruning.sparsity_report(model)["overall"]["sparsity"] > 0.85
    for a, b in zip(before, base.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_fit_without_update_pruning_step_fails_at_start_saying_what_to_add():
    model, callbacks = pipeline(0.5)
    x, y = data()
    with pytest.raises(ValueError, match=r"UpdatePruningStep\(\)"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=callbacks[1:])
    assert int(model.train_step_counter.numpy()) == 0


def test_stage_callback_refuses_several_steps_per_execution_and_foreign_schedules():
    wrapped, callbacks = prune_reweighted_l1(tiny_base_model(), 0.5, 1, 1, rho=1.0)
    model = kmm.MinMaxMultiTask(wrapped)
    model.compile("sgd", loss={t: LOSSES[t] for t in ("a", "b", "c")}, steps_per_execution=2)
    x, y = tiny_data()
    with pytest.raises(ValueError, match="steps_per_execution=1"):
        model.fit(x, y, verbose=0, callbacks=callbacks)
    other = tfmot.sparsity.keras.prune_low_magnitude(
        tiny_base_model(), pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.5, 0))
    model = kmm.MinMaxMultiTask(other)
    model.compile("sgd", loss={t: LOSSES[t] for t in ("a", "b", "c")})
    with pytest.raises(ValueError, match=r"must hold a `ReweightedL1Schedule` with prune_step=3"):
        model.fit(x, y, verbose=0, callbacks=callbacks)


def test_cli_runs_the_three_stages_and_reports_and_saves_the_stripped_model(tmp_path, capsys):
    from keras_minmax_mtl.cli import main as cli

    out = tmp_path / "run"
    code = cli.main(["train", "--pruning", "reweighted_l1", "--sparsity", "0.9", "--dense-epochs",
                     "1", "--reweighted-epochs", "1", "--retrain-epochs", "1", "--rho", "1e-5",
                     "--train-examples", "256", "--test-examples", "128", "--seed", "1",
                     "--out", str(out), "--verbose", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["pruning"]["steps_per_epoch"] == 4
    report = metrics["pruning"]["report"]
    assert sorted(n.split("/")[0] for n in report["layers"]) == sorted([*PRUNED, "trunk_conv2"])
    assert report["overall"]["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert "overall" in printed and "trunk_dense/kernel" in printed
    stripped = keras.models.load_model(out / "model_stripped.keras")
    assert isinstance(stripped, kmm.MinMaxMultiTask) and pruning.pruning_wrappers(stripped) == []
    assert metrics["history"]["regularization_loss"][1] > 0
