"""Tests of `keras_minmax_mtl.data.networks`."""
import numpy as np
import pytest

from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.data import MULTI_DIGITS_TASKS, load_multi_digits
from keras_minmax_mtl.data.networks import multi_digits_network


def test_output_names_are_the_task_names_in_order():
    model = multi_digits_network()
    assert model.output_names == ["left", "right", "sum"]
    assert model.name == "multi_digits_net"
    assert isinstance(model, keras.Model)
    assert model._is_graph_network  # Functional, as the package requires.


def test_input_and_output_shapes():
    model = multi_digits_network()
    assert model.input_shape == (None, 12, 16, 1)
    assert model.inputs[0].name.startswith("image")
    assert [tuple(o.shape) for o in model.outputs] == [(None, 10), (None, 10), (None, 19)]


def test_predictions_on_multi_digits_are_probabilities_per_task():
    x, _ = load_multi_digits("test", num_examples=8)
    outputs = multi_digits_network()(x, training=False)
    assert [tuple(o.shape) for o in outputs] == [(8, 10), (8, 10), (8, 19)]
    for o in outputs:
        np.testing.assert_allclose(o.numpy().sum(axis=1), 1.0, rtol=1e-5)


def test_layers_are_named_trunk_then_one_head_per_task():
    model = multi_digits_network(trunk_filters=(8, 8, 8))
    names = [layer.name for layer in model.layers]
    for expected in ["image", "trunk_conv1", "trunk_conv2", "trunk_conv3", "trunk_pool",
                     "trunk_flatten", "trunk_dense", "left_hidden", "right_hidden",
                     "sum_hidden", "left", "right", "sum"]:
        assert expected in names
    assert model.get_layer("trunk_dense").units == 64
    assert model.get_layer("sum_hidden").units == 32
    assert model.get_layer("sum").activation is keras.activations.softmax


def test_custom_tasks_and_widths():
    model = multi_digits_network(
        tasks={"parity": 2, "digit": 10}, trunk_filters=(4,), trunk_units=8, head_units=5)
    assert model.output_names == ["parity", "digit"]
    assert [tuple(o.shape) for o in model.outputs] == [(None, 2), (None, 10)]
    assert model.get_layer("parity_hidden").units == 5


def test_same_seed_gives_identical_weights():
    a = multi_digits_network(seed=3).get_weights()
    b = multi_digits_network(seed=3).get_weights()
    assert len(a) == len(b)
    for wa, wb in zip(a, b):
        np.testing.assert_array_equal(wa, wb)


def test_different_seed_gives_different_weights():
    a = multi_digits_network(seed=0).get_layer("trunk_dense").kernel.numpy()
    b = multi_digits_network(seed=1).get_layer("trunk_dense").kernel.numpy()
    assert not np.array_equal(a, b)


def test_layers_of_one_model_get_different_initial_kernels():
    model = multi_digits_network(seed=0)
    left = model.get_layer("left_hidden").kernel.numpy()
    right = model.get_layer("right_hidden").kernel.numpy()
    assert not np.array_equal(left, right)


def test_default_tasks_are_not_mutated():
    multi_digits_network()
    assert MULTI_DIGITS_TASKS == {"left": 10, "right": 10, "sum": 19}


def test_compiles_and_trains_one_step_on_label_dicts():
    x, labels = load_multi_digits("train", num_examples=64)
    model = multi_digits_network()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss={task: "sparse_categorical_crossentropy" for task in model.output_names},
    )
    history = model.fit(x, labels, batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("tasks", [{}, None, [("left", 10)], {"left": 1}, {"left": 2.5},
                                   {"": 10}])
def test_bad_tasks_raise(tasks):
    with pytest.raises(ValueError, match="`tasks`"):
        multi_digits_network(tasks=tasks)


def test_task_name_colliding_with_a_layer_name_raises():
    with pytest.raises(ValueError, match=r"`tasks`.*trunk_dense"):
        multi_digits_network(tasks={"trunk_dense": 10})
    with pytest.raises(ValueError, match=r"`tasks`.*a_hidden"):
        multi_digits_network(tasks={"a": 2, "a_hidden": 2})


@pytest.mark.parametrize("argument, value", [
    ("trunk_units", 0), ("trunk_units", -3), ("head_units", 0), ("head_units", 2.0),
    ("trunk_filters", ()), ("trunk_filters", (16, 0)), ("trunk_filters", 16),
    ("seed", -1), ("seed", None),
])
def test_bad_sizes_and_seed_raise_with_the_argument_name(argument, value):
    with pytest.raises(ValueError, match=rf"`{argument}`.*Received: {argument}="):
        multi_digits_network(**{argument: value})
