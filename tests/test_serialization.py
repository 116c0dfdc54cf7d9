import numpy as np
import pytest
import tensorflow as tf

import keras_minmax_mtl as kmm
from keras_minmax_mtl.core.backend import keras
from tests.helpers import LOSSES, tiny_base_model, tiny_data

TASKS = ("a", "b", "c")


def compiled(model):
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss={t: LOSSES[t] for t in TASKS},
                  metrics={"a": ["accuracy"], "b": ["accuracy"]})
    return model


WEIGHTINGS = [
    lambda: kmm.EqualWeighting(),
    lambda: kmm.UncertaintyWeighting(initial_log_variance=0.5),
    lambda: kmm.DynamicWeightAverage(temperature=3.0),
    lambda: kmm.MinMaxWeighting(step_size=0.1, gamma=2.0, update_every=2, update_on="epoch",
                                ascent="exponentiated"),
    lambda: kmm.MinMaxWeighting(ascent=kmm.ProjectedGradientAscent(0.3, 1.5)),
]


@pytest.mark.parametrize("make", WEIGHTINGS)
def test_weighting_get_config_round_trip(make):
    weighting = make()
    config = weighting.get_config()
    restored = type(weighting).from_config(config)
    assert restored.get_config() == config
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(weighting))
    assert type(again) is type(weighting) and again.get_config() == config


def test_minmax_get_config_is_flat_and_round_trips():
    model = kmm.MinMaxMultiTask(tiny_base_model(), step_size=0.1, gamma=2.0, update_every=3,
                                update_on="epoch", ascent="exponentiated", scale="num_tasks",
                                normalize_losses=True)
    config = model.get_config()
    assert {k: config[k] for k in ("step_size", "gamma", "update_every", "update_on", "ascent",
                                   "scale", "normalize_losses")} == {
        "step_size": 0.1, "gamma": 2.0, "update_every": 3, "update_on": "epoch",
        "ascent": "exponentiated", "scale": "num_tasks", "normalize_losses": True}
    restored = kmm.MinMaxMultiTask.from_config(config)
    assert restored.get_config() == config
    assert restored.task_names == list(TASKS)


@pytest.mark.parametrize("make", WEIGHTINGS)
def test_multitask_model_get_config_round_trip(make):
    model = kmm.MultiTaskModel(tiny_base_model(), weighting=make(), scale=2.0)
    restored = kmm.MultiTaskModel.from_config(model.get_config())
    assert restored.get_config() == model.get_config()


@pytest.mark.parametrize("make_model", [
    lambda base: kmm.MinMaxMultiTask(base, step_size=0.05),
    lambda base: kmm.MultiTaskModel(base, weighting=kmm.DynamicWeightAverage()),
    lambda base: kmm.MultiTaskModel(base, weighting=kmm.UncertaintyWeighting()),
])
def test_save_load_continue_training_gives_the_same_weights(tmp_path, make_model):
    x, y = tiny_data(n=48)
    model = compiled(make_model(tiny_base_model()))
    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(np.asarray(loaded.task_weights), np.asarray(model.task_weights))
    assert int(loaded.train_step_counter.numpy()) == 18
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_allclose(np.asarray(loaded.task_weights), np.asarray(model.task_weights),
                               atol=1e-7)
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_load_with_scope_helper(tmp_path):
    model = compiled(kmm.MinMaxMultiTask(tiny_base_model()))
    model.save(tmp_path / "m.keras")
    assert "keras_minmax_mtl>MinMaxMultiTask" in kmm.custom_objects()
    with kmm.custom_object_scope():
        loaded = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(loaded, kmm.MinMaxMultiTask)


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise RuntimeError("interrupted")


def test_backup_and_restore_resumes_task_weights_and_step_counter(tmp_path):
    x, y = tiny_data(n=48)

    def fresh():
        return compiled(kmm.MinMaxMultiTask(tiny_base_model(), step_size=0.05))

    reference = fresh()
    reference.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0)

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    interrupted = fresh()
    with pytest.raises(RuntimeError, match="interrupted"):
        interrupted.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0,
                        callbacks=[backup, _Interrupt(2)])
    resumed = fresh()
    resumed.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0, callbacks=[backup])
    assert int(resumed.train_step_counter.numpy()) == int(reference.train_step_counter.numpy()) == 24
    assert int(resumed.epoch_counter.numpy()) == 3
    np.testing.assert_allclose(resumed.task_weights.numpy(), reference.task_weights.numpy(),
                               atol=1e-6)
    assert not np.allclose(reference.task_weights.numpy(), 1 / 3)


def test_with_base_model_copies_weighting_state_and_counters_not_the_network():
    x, y = tiny_data(n=48)
    model = compiled(kmm.MultiTaskModel(tiny_base_model(), weighting=kmm.DynamicWeightAverage(),
                                        scale=2.0))
    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    other = tiny_base_model(seed=7)
    copy = model.with_base_model(other)
    assert type(copy) is kmm.MultiTaskModel and copy.base_model is other and copy.scale == 2.0
    for a, b in zip(copy.weighting.weights, model.weighting.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert int(copy.train_step_counter.numpy()) == 18 and int(copy.epoch_counter.numpy()) == 2
    assert not copy._is_compiled
