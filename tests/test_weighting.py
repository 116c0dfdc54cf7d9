import numpy as np
import pytest
import tensorflow as tf

import keras_minmax_mtl as kmm
from keras_minmax_mtl.core.backend import keras
from tests.helpers import LOSSES, task_losses, tiny_base_model, tiny_data

TASKS = ("a", "b", "c")


def fit(weighting, epochs=4, lr=0.05, **kwargs):
    x, y = tiny_data(n=48)
    model = kmm.MultiTaskModel(tiny_base_model(), weighting=weighting, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(lr), loss={t: LOSSES[t] for t in TASKS})
    history = model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0)
    return model, history.history


def test_equal_weighting_is_constant():
    model, history = fit(kmm.EqualWeighting())
    for task in TASKS:
        assert history[f"{task}_weight"] == [pytest.approx(1 / 3)] * 4


def test_dwa_weights_follow_the_epoch_loss_ratios():
    model, history = fit(kmm.DynamicWeightAverage(temperature=2.0), epochs=4)
    losses = np.array([[history[f"{t}_loss"][e] for t in TASKS] for e in range(4)])
    for epoch in (0, 1):
        np.testing.assert_allclose([history[f"{t}_weight"][epoch] for t in TASKS], 1 / 3)
    for epoch in (2, 3):
        ratio = losses[epoch - 1] / losses[epoch - 2]
        want = np.exp(ratio / 2.0) / np.exp(ratio / 2.0).sum()
        got = [history[f"{t}_weight"][epoch] for t in TASKS]
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_dwa_rejects_non_positive_temperature():
    with pytest.raises(ValueError, match=r"`temperature` must be > 0. Received: temperature=0"):
        kmm.DynamicWeightAverage(temperature=0)


@pytest.mark.parametrize("temperature", [float("inf"), float("nan"), "2", True, None])
def test_dwa_rejects_a_non_finite_or_non_numeric_temperature(temperature):
    with pytest.raises(ValueError, match=r"`temperature` must be a finite number. Received: "
                                         rf"temperature={temperature!r}"):
        kmm.DynamicWeightAverage(temperature=temperature)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), "0", True])
def test_uncertainty_weighting_rejects_a_non_finite_initial_log_variance(value):
    with pytest.raises(ValueError, match=r"`initial_log_variance` must be a finite number. "
                                         rf"Received: initial_log_variance={value!r}"):
        kmm.UncertaintyWeighting(initial_log_variance=value)


@pytest.mark.parametrize("kwargs, match", [
    ({"step_size": float("inf")}, r"`step_size` must be a finite number. Received: step_size=inf"),
    ({"gamma": float("inf")}, r"`gamma` must be a finite number. Received: gamma=inf"),
    ({"step_size": "0.1"}, r"`step_size` must be a finite number. Received: step_size='0.1'"),
    ({"step_size": True}, r"`step_size` must be a finite number. Received: step_size=True"),
    ({"update_every": 2.0}, r"`update_every` must be an integer >= 1. Received: update_every=2.0"),
])
def test_minmax_weighting_and_model_refuse_bad_hyper_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kmm.MinMaxWeighting(**kwargs)
    with pytest.raises(ValueError, match=match):
        kmm.MinMaxMultiTask(tiny_base_model(), **kwargs)


def test_uncertainty_weighting_learns_log_variances_with_the_network():
    # One SGD step on (1/K) Σ exp(-s) L + s: the gradient in s is (1 - L)/K.
    x, y = tiny_data(n=8)
    base = tiny_base_model()
    uw = kmm.MultiTaskModel(base, weighting=kmm.UncertaintyWeighting())
    assert any(v is uw.weighting.log_variances for v in uw.trainable_variables)
    uw.compile(optimizer=keras.optimizers.SGD(0.5), loss={t: LOSSES[t] for t in TASKS})
    frozen = [w.numpy() for w in base.trainable_variables]
    losses = task_losses(base, x, y)
    uw.fit(tf.data.Dataset.from_tensors((x, y)), epochs=1, verbose=0)
    np.testing.assert_allclose(uw.weighting.log_variances.numpy(), -0.5 * (1 - losses) / 3,
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(uw.task_weights),
                               np.exp(0.5 * (1 - losses) / 3) / 3, rtol=1e-5)
    assert not all(np.allclose(a, b.numpy()) for a, b in zip(frozen, base.trainable_variables))


def test_strategy_must_be_a_task_weighting():
    with pytest.raises(TypeError, match=r"`weighting` must be a `TaskWeighting`"):
        kmm.MultiTaskModel(tiny_base_model(), weighting="minmax")


def test_minmax_weighting_in_the_generic_model_matches_minmax_multitask():
    a, _ = fit(kmm.MinMaxWeighting(step_size=0.1), epochs=2)
    x, y = tiny_data(n=48)
    b = kmm.MinMaxMultiTask(tiny_base_model(), step_size=0.1)
    b.compile(optimizer=keras.optimizers.SGD(0.05), loss={t: LOSSES[t] for t in TASKS})
    b.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    np.testing.assert_allclose(np.asarray(a.task_weights), b.task_weights.numpy(), atol=1e-7)
