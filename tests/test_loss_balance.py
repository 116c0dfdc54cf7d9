"""Losses of different scales: `loss_scales`, `normalize_losses="auto"` and the starved-task warning."""
import warnings

import numpy as np
import pytest

import keras_minmax_mtl as kmm
from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.core.multitask import AUTO_NORMALIZE_RATIO, starved_tasks

LOSSES = {"cls": "sparse_categorical_crossentropy", "reg": "mae"}


def _data(n=32, reg_scale=100.0, seed=0):
    rng = np.random.RandomState(seed)
    x = rng.normal(size=(n, 5)).astype("float32")
    return x, {"cls": (np.arange(n) % 3).astype("int32"),
               "reg": (reg_scale * (1 + rng.rand(n))).astype("float32")}


def _base(seed=0, form="list"):
    """Two tasks, `cls` (softmax) and `reg` (a (N, 1) regression head), as a list, a dict or
    on a nested trunk (a model called as a layer)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((5,))
    if form == "nested":
        inner = keras.Input((5,))
        trunk = keras.Model(inner, keras.layers.Dense(4, activation="tanh", name="trunk")(inner),
                            name="trunk_model")
        h = trunk(inp)
    else:
        h = keras.layers.Dense(4, activation="tanh", name="trunk")(inp)
    heads = [keras.layers.Dense(3, activation="softmax", name="cls")(h),
             keras.layers.Dense(1, name="reg")(h)]
    return keras.Model(inp, {"cls": heads[0], "reg": heads[1]} if form == "dict" else heads)


@pytest.mark.parametrize("form", ["list", "dict", "nested"])
def test_loss_scales_step_equals_plain_keras_loss_weights(form):
    x, y = _data()
    plain = _base(form=form)
    plain.compile(keras.optimizers.SGD(0.01), loss=LOSSES, loss_weights={"cls": 3.0, "reg": 0.5})
    model = kmm.MultiTaskModel(_base(form=form), scale="num_tasks",
                               loss_scales={"cls": 3.0, "reg": 0.5})
    model.compile(keras.optimizers.SGD(0.01), loss=LOSSES)
    plain_logs = plain.train_on_batch(x, y, return_dict=True)
    logs = model.train_on_batch(x, y, return_dict=True)
    for a, b in zip(plain.get_weights(), model.base_model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # the logged task losses stay Keras' own; the objective is the scaled sum
    assert logs["cls_loss"] == pytest.approx(plain_logs["cls_loss"], rel=1e-6)
    assert logs["reg_loss"] == pytest.approx(plain_logs["reg_loss"], rel=1e-6)
    assert logs["loss"] == pytest.approx(plain_logs["loss"], rel=1e-6)


def _frozen_minmax(normalize_losses, reg_scale, **kwargs):
    x, y = _data(reg_scale=reg_scale)
    model = kmm.MinMaxMultiTask(_base(), step_size=0.1, gamma=1.0, **kwargs) if normalize_losses == "default" \
        else kmm.MinMaxMultiTask(_base(), step_size=0.1, gamma=1.0, normalize_losses=normalize_losses,
                                 **kwargs)
    model.compile(keras.optimizers.SGD(0.0), loss=LOSSES)
    plain = model.evaluate(x, y, verbose=0, return_dict=True)
    raw = np.array([plain["cls_loss"], plain["reg_loss"]])
    model.train_on_batch(x, y)
    return model, raw


def _projected_step(w, losses, step_size=0.1, gamma=1.0):
    return kmm.project_to_simplex(w + step_size * (losses - gamma * (w - 1 / len(w)))).numpy()


def test_auto_normalises_losses_of_different_scales_only():
    model, raw = _frozen_minmax("default", reg_scale=100.0)
    assert model.normalize_losses == "auto"
    assert raw[1] / raw[0] > AUTO_NORMALIZE_RATIO
    assert bool(model.normalizes_losses())
    np.testing.assert_allclose(model.initial_losses.numpy(), raw, rtol=1e-5)
    # the ascent saw L / L0 = 1 for every task: the weights stay uniform
    np.testing.assert_allclose(model.task_weights.numpy(), _projected_step(np.full(2, 0.5), np.ones(2)),
                               rtol=1e-5)
    model, raw = _frozen_minmax("default", reg_scale=1.0)
    assert raw.max() / raw.min() < AUTO_NORMALIZE_RATIO
    assert not bool(model.normalizes_losses())
    np.testing.assert_allclose(model.task_weights.numpy(), _projected_step(np.full(2, 0.5), raw),
                               rtol=1e-5)


def test_raw_heterogeneous_losses_starve_a_task_and_warn_by_name():
    x, y = _data(reg_scale=100.0)
    model = kmm.MinMaxMultiTask(_base(), step_size=0.1, gamma=1.0, normalize_losses=False)
    model.compile(keras.optimizers.SGD(0.0), loss=LOSSES)
    with pytest.warns(UserWarning, match=r"tasks \['cls'\] have weight < 0.001 and get no gradient"):
        model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert starved_tasks(model) == ["cls"]
    np.testing.assert_allclose(model.task_weights.numpy(), [0.0, 1.0], atol=1e-7)
    # the default ('auto') keeps both tasks in play and says nothing
    fixed = kmm.MinMaxMultiTask(_base(), step_size=0.1, gamma=1.0)
    fixed.compile(keras.optimizers.SGD(0.0), loss=LOSSES)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        fixed.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert starved_tasks(fixed) == []


def test_loss_scales_and_auto_survive_save_and_load(tmp_path):
    model, _ = _frozen_minmax("default", reg_scale=100.0, loss_scales={"reg": 2.0})
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = kmm.load_model(path)
    assert loaded.normalize_losses == "auto" and loaded.loss_scales == {"reg": 2.0}
    np.testing.assert_array_equal(loaded.initial_losses.numpy(), model.initial_losses.numpy())
    assert bool(loaded.normalizes_losses())


@pytest.mark.parametrize("kwargs, message", [
    ({"normalize_losses": "yes"}, r"must be True, False or 'auto'. Received: normalize_losses='yes'"),
    ({"loss_scales": {"depth": 2.0}}, r"names tasks the model does not have: \['depth'\]"),
    ({"loss_scales": {"reg": 0.0}}, r"must hold finite numbers > 0. Received: loss_scales=\{'reg': 0.0\}"),
    ({"loss_scales": {"reg": float("nan")}}, r"must hold finite numbers > 0"),
    ({"loss_scales": [2.0]}, r"must be a dict \{task: multiplier > 0\} or None"),
])
def test_bad_loss_balance_arguments_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kmm.MultiTaskModel(_base(), **kwargs)
