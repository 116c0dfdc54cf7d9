import numpy as np
import pytest
import tensorflow as tf

import keras_minmax_mtl as kmm
from keras_minmax_mtl.core.backend import keras
from tests.helpers import LOSSES, SubclassedNet, WeightRecorder, task_losses, tiny_base_model, tiny_data

TASKS = ("a", "b", "c")


def compiled(model, lr=0.1, **kwargs):
    model.compile(optimizer=keras.optimizers.SGD(lr), loss={t: LOSSES[t] for t in TASKS},
                  metrics={"a": ["accuracy"], "b": ["accuracy"]}, **kwargs)
    return model


def repeated_batch(x, y, steps):
    return tf.data.Dataset.from_tensors((x, y)).repeat(steps)


def test_frozen_network_ascent_converges_to_closed_form():
    base = tiny_base_model()
    x, y = tiny_data()
    model = compiled(kmm.MinMaxMultiTask(base, step_size=0.02, gamma=5.0), lr=0.0)
    model.fit(repeated_batch(x, y, 300), epochs=1, verbose=0)
    losses = task_losses(base, x, y)
    want = kmm.closed_form_weights(losses, 5.0).numpy()
    np.testing.assert_allclose(model.task_weights.numpy(), want, atol=1e-5)
    assert not np.allclose(want, 1 / 3, atol=1e-3)  # the test would not be telling otherwise


def test_descent_step_uses_fixed_weights_and_unweighted_regularisation():
    base = tiny_base_model(l2=0.01)
    x, y = tiny_data()
    reference = keras.models.clone_model(base)
    reference.set_weights(base.get_weights())
    model = compiled(kmm.MinMaxMultiTask(base, step_size=0.5, gamma=1.0), lr=0.1)
    w0 = model.task_weights.numpy().copy()
    with tf.GradientTape() as tape:
        outputs = reference(x, training=True)
        weighted = tf.add_n([w0[i] * tf.reduce_mean(keras.losses.get(LOSSES[t])(y[t], outputs[i]))
                             for i, t in enumerate(TASKS)])
        objective = weighted + tf.add_n(reference.losses)
    grads = tape.gradient(objective, reference.trainable_variables)
    model.fit(repeated_batch(x, y, 1), epochs=1, verbose=0)
    for got, var, grad in zip(base.trainable_variables, reference.trainable_variables, grads):
        np.testing.assert_allclose(got.numpy(), (var - 0.1 * grad).numpy(), atol=1e-6)
    # The ascent used the losses of the same (pre-descent) forward pass.
    want = kmm.ProjectedGradientAscent(0.5, 1.0)(tf.constant(w0), task_losses(reference, x, y))
    np.testing.assert_allclose(model.task_weights.numpy(), want.numpy(), atol=1e-6)


def test_task_weights_are_not_in_the_network_optimizer():
    model = compiled(kmm.MinMaxMultiTask(tiny_base_model()))
    trainable = {id(v) for v in model.trainable_variables}
    assert id(model.task_weights) not in trainable
    assert isinstance(model.task_weights, tf.Variable)
    assert model.task_names == list(TASKS)


def test_update_every_steps():
    x, y = tiny_data()
    model = compiled(kmm.MinMaxMultiTask(tiny_base_model(), step_size=0.1, update_every=3), lr=0.0)
    recorder = WeightRecorder()
    model.fit(repeated_batch(x, y, 7), epochs=1, verbose=0, callbacks=[recorder])
    changed = [not np.allclose(a, b) for a, b in
               zip(recorder.history, [np.full(3, 1 / 3)] + recorder.history[:-1])]
    assert changed == [True, False, False, True, False, False, True]


def test_update_on_epoch_updates_on_the_first_batch_of_each_epoch():
    x, y = tiny_data(n=32)
    model = compiled(kmm.MinMaxMultiTask(tiny_base_model(), step_size=0.1, update_on="epoch"),
                     lr=0.0)
    recorder = WeightRecorder()
    callbacks = [recorder]
    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=callbacks)
    assert callbacks == [recorder]  # the user's list is not modified
    previous = [np.full(3, 1 / 3)] + recorder.history[:-1]
    changed = [not np.allclose(a, b) for a, b in zip(recorder.history, previous)]
    assert changed == [True, False, False, False] * 3
    assert int(model.epoch_counter.numpy()) == 2 and int(model.train_step_counter.numpy()) == 12


def test_update_every_two_epochs():
    x, y = tiny_data(n=16)
    model = compiled(kmm.MinMaxMultiTask(tiny_base_model(), step_size=0.1, update_on="epoch",
                                         update_every=2), lr=0.0)
    recorder = WeightRecorder()
    model.fit(x, y, batch_size=8, epochs=5, shuffle=False, verbose=0, callbacks=[recorder])
    previous = [np.full(3, 1 / 3)] + recorder.history[:-1]
    changed = [not np.allclose(a, b) for a, b in zip(recorder.history, previous)]
    assert changed == [True, False, False, False, True, False, False, False, True, False]


def test_every_step_logs_each_task_loss_and_weight():
    x, y = tiny_data()
    seen = []
    logger = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(logs))
    model = compiled(kmm.MinMaxMultiTask(tiny_base_model()))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[logger])
    assert len(seen) == 4
    # The logged objective is the one the step minimised: weights before the ascent (1/3).
    assert seen[0]["loss"] == pytest.approx(sum(seen[0][f"{t}_loss"] for t in TASKS) / 3, rel=1e-6)
    assert seen[0]["a_weight"] != pytest.approx(1 / 3)
    # Every log is a metric of the model, so the progress bar shows it as it is
    # rather than averaging it over the epoch's batches.
    assert set(seen[-1]) <= {m.name for m in model.metrics}
    for logs in seen:
        for task in TASKS:
            assert f"{task}_loss" in logs and f"{task}_weight" in logs
        assert abs(sum(logs[f"{t}_weight"] for t in TASKS) - 1.0) < 1e-6
        assert logs["worst_loss"] == max(logs[f"{t}_loss"] for t in TASKS)


def test_evaluate_reports_per_task_metrics_and_the_worst_task():
    x, y = tiny_data(n=64)
    model = compiled(kmm.MinMaxMultiTask(tiny_base_model()))
    result = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert result["worst_accuracy"] == min(result["a_accuracy"], result["b_accuracy"])
    base = model.base_model
    outputs = base.predict(x, verbose=0)
    for i, task in enumerate(("a", "b")):
        accuracy = np.mean(np.argmax(outputs[i], axis=-1) == y[task])
        assert result[f"{task}_accuracy"] == pytest.approx(accuracy)
    np.testing.assert_allclose([result[f"{t}_loss"] for t in TASKS], task_losses(base, x, y),
                               rtol=1e-5)
    assert result["worst_loss"] == pytest.approx(max(result[f"{t}_loss"] for t in TASKS))


def test_scale_num_tasks_multiplies_the_step():
    x, y = tiny_data()
    moves = []
    for scale in (1.0, "num_tasks"):
        base = tiny_base_model()
        before = base.get_weights()
        compiled(kmm.MultiTaskModel(base, scale=scale), lr=0.05).fit(
            repeated_batch(x, y, 1), epochs=1, verbose=0)
        moves.append(np.concatenate([(a - b).ravel() for a, b in zip(base.get_weights(), before)]))
    np.testing.assert_allclose(moves[1], 3 * moves[0], rtol=1e-4, atol=3e-7)


def test_single_task_model_trains_with_weight_one():
    base = tiny_base_model(tasks=("a",))
    x, y = tiny_data(tasks=("a",))
    model = kmm.MinMaxMultiTask(base)
    model.compile("sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y["a"], batch_size=8, epochs=2, verbose=0)
    assert model.task_weights.numpy().tolist() == [1.0]
    assert history.history["a_weight"][-1] == 1.0


def test_exponentiated_ascent_option():
    x, y = tiny_data()
    model = compiled(kmm.MinMaxMultiTask(tiny_base_model(), ascent="exponentiated",
                                         step_size=0.05, gamma=0.0), lr=0.0)
    model.fit(repeated_batch(x, y, 3), epochs=1, verbose=0)
    losses = task_losses(model.base_model, x, y)
    want = np.full(3, 1 / 3) * np.exp(3 * 0.05 * losses)
    np.testing.assert_allclose(model.task_weights.numpy(), want / want.sum(), rtol=1e-5)


def test_normalize_losses_divides_by_first_step_losses():
    x, y = tiny_data()
    model = compiled(kmm.MinMaxMultiTask(tiny_base_model(), normalize_losses=True), lr=0.0)
    model.fit(repeated_batch(x, y, 200), epochs=1, verbose=0)
    np.testing.assert_allclose(model.initial_losses.numpy(), task_losses(model.base_model, x, y),
                               rtol=1e-5)
    # Normalised losses are all 1 with a frozen network: the weights stay uniform.
    np.testing.assert_allclose(model.task_weights.numpy(), np.full(3, 1 / 3), atol=1e-6)


def test_non_finite_loss_stops_and_names_task_and_step():
    x, y = tiny_data(n=32)
    y["c"] = y["c"].copy()
    y["c"][20] = np.nan  # in the third batch of 8
    model = compiled(kmm.MinMaxMultiTask(tiny_base_model(), step_size=0.1))
    recorder = WeightRecorder()
    with pytest.raises(kmm.NonFiniteLossError,
                       match=r"Non-finite loss for task\(s\) \[c\] at training step 2"):
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[recorder])
    assert len(recorder.history) == 2
    np.testing.assert_array_equal(model.task_weights.numpy(), recorder.history[-1])
    assert np.isfinite(model.task_weights.numpy()).all()
    assert all(np.isfinite(w).all() for w in model.base_model.get_weights())
    assert int(model.train_step_counter.numpy()) == 2


class TestBadInput:
    def test_loss_weights_are_refused(self):
        model = kmm.MinMaxMultiTask(tiny_base_model())
        with pytest.raises(ValueError, match=r"`loss_weights` is not accepted.*Received: loss_weights"):
            model.compile("sgd", loss={t: LOSSES[t] for t in TASKS}, loss_weights=[1, 1, 1])

    def test_loss_keys_must_match_output_names_and_a_failed_compile_changes_nothing(self):
        model = compiled(kmm.MinMaxMultiTask(tiny_base_model()), lr=0.1)
        optimizer = model.optimizer
        with pytest.raises(ValueError, match=r"Received keys: \['a', 'b', 'x'\]; task names.*"
                                             r"\['a', 'b', 'c'\]"):
            model.compile("adam", loss={"a": "mse", "b": "mse", "x": "mse"})
        assert model.optimizer is optimizer
        x, y = tiny_data()
        assert "a_accuracy" in model.fit(x, y, verbose=0).history

    def test_missing_loss(self):
        with pytest.raises(ValueError, match="`loss` is required"):
            kmm.MinMaxMultiTask(tiny_base_model()).compile("sgd")

    def test_keras3_model_is_refused_with_advice(self):
        import keras as keras3

        k3 = keras3.Sequential([keras3.Input((3,)), keras3.layers.Dense(2)])
        with pytest.raises(TypeError, match=r"Keras 3 object.*tf_keras"):
            kmm.MinMaxMultiTask(k3)

    def test_subclassed_model_is_refused(self):
        with pytest.raises(TypeError, match=r"Functional.*subclassed model of class SubclassedNet"):
            kmm.MinMaxMultiTask(SubclassedNet())

    @pytest.mark.parametrize("kwargs, match", [
        ({"step_size": 0}, r"`step_size` must be > 0. Received: step_size=0"),
        ({"gamma": -1.0}, r"`gamma` must be >= 0. Received: gamma=-1.0"),
        ({"update_every": 0}, r"`update_every` must be an integer >= 1. Received: update_every=0"),
        ({"update_on": "batch"}, r"`update_on` must be one of \['step', 'epoch'\]"),
        ({"ascent": "mirror"}, r"`ascent` must be one of \['exponentiated', 'projected'\]"),
        ({"scale": 0}, r"`scale` must be a finite number > 0 or 'num_tasks'. Received: scale=0"),
        ({"scale": float("inf")}, r"`scale` must be a finite number > 0 .* Received: scale=inf"),
        ({"scale": float("nan")}, r"`scale` must be a finite number > 0 .* Received: scale=nan"),
    ])
    def test_bad_hyper_parameters(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            kmm.MinMaxMultiTask(tiny_base_model(), **kwargs)

    def test_targets_must_be_keyed_by_task(self):
        x, y = tiny_data()
        model = compiled(kmm.MinMaxMultiTask(tiny_base_model()))
        with pytest.raises(ValueError, match=r"keyed by the task names"):
            model.fit(x, {"a": y["a"], "b": y["b"], "z": y["c"]}, verbose=0)
