import pytest
import tensorflow_model_optimization as tfmot

from keras_minmax_mtl.sparsity import pruning
from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.data.networks import multi_digits_network
from keras_minmax_mtl.sparsity.policy import (XNNPACK_MIN_SPARSITY, MultiTaskPruningPolicy,
                                             XNNPackSparsePolicy, layer_roles)
from tests.helpers import SubclassedNet, tiny_base_model


def small_network():
    return multi_digits_network(trunk_filters=(2,), trunk_units=8, head_units=4, seed=0)


def test_roles_come_from_which_task_outputs_depend_on_a_layer():
    roles = layer_roles(small_network())
    assert roles == {
        "trunk_conv1": "trunk", "trunk_dense": "trunk",
        "left_hidden": "task_hidden", "right_hidden": "task_hidden", "sum_hidden": "task_hidden",
        "left": "task_output", "right": "task_output", "sum": "task_output",
    }


def test_a_layer_shared_by_two_of_three_tasks_is_task_hidden():
    inputs = keras.Input((4,))
    trunk = keras.layers.Dense(3, name="trunk")(inputs)
    pair = keras.layers.Dense(3, name="pair")(trunk)
    outputs = [keras.layers.Dense(1, name="a")(pair), keras.layers.Dense(1, name="b")(pair),
               keras.layers.Dense(1, name="c")(trunk)]
    roles = layer_roles(keras.Model(inputs, outputs))
    assert roles["trunk"] == "trunk" and roles["pair"] == "task_hidden"


def test_default_policy_wraps_trunk_and_task_hidden_and_keeps_outputs_dense():
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, 0)
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(
        small_network(), pruning_schedule=schedule, pruning_policy=MultiTaskPruningPolicy())
    names = sorted(w.layer.name for w in pruning.pruning_wrappers(wrapped))
    assert names == ["left_hidden", "right_hidden", "sum_hidden", "trunk_conv1", "trunk_dense"]


def test_policy_with_other_roles_and_exclusions():
    policy = MultiTaskPruningPolicy(prune=("trunk", "task_output"), exclude=("trunk_conv1",))
    policy.ensure_model_supports_pruning(small_network())
    assert policy.prunable_layer_names(small_network()) == ["left", "right", "sum", "trunk_dense"]


def test_policy_that_leaves_nothing_to_prune_names_the_roles():
    policy = MultiTaskPruningPolicy(prune=("task_hidden",))  # the tiny model has no hidden layer
    with pytest.raises(ValueError, match=r"leaves no layer.*'trunk': 'trunk'"):
        policy.ensure_model_supports_pruning(tiny_base_model())


def test_unknown_role_is_refused():
    with pytest.raises(ValueError, match=r"Argument `prune`.*Received: prune=\('heads',\)"):
        MultiTaskPruningPolicy(prune="heads")


def test_allow_pruning_before_reading_the_graph_says_what_to_call():
    with pytest.raises(RuntimeError, match="ensure_model_supports_pruning"):
        MultiTaskPruningPolicy().allow_pruning(keras.layers.Dense(2))


def test_subclassed_unbuilt_and_keras3_models_are_refused():
    import keras as keras3

    policy = MultiTaskPruningPolicy()
    with pytest.raises(TypeError, match="subclassed model of class SubclassedNet"):
        policy.ensure_model_supports_pruning(SubclassedNet())
    with pytest.raises(ValueError, match="must be built.*unbuilt model"):
        policy.ensure_model_supports_pruning(keras.Sequential([keras.layers.Dense(2)]))
    k3 = keras3.Sequential([keras3.Input((3,)), keras3.layers.Dense(2)])
    with pytest.raises(TypeError, match=r"Keras 3 object.*tf_keras"):
        policy.ensure_model_supports_pruning(k3)


def test_policy_and_dst_agree_on_which_layers_are_prunable():
    # One rule, `policy.is_prunable`: Dense, Conv2D and Conv2DTranspose yes; DepthwiseConv2D (tfmot's registry
    # gives it no prunable weight) and BatchNormalization no; a nested trunk's layers entered.
    from keras_minmax_mtl.sparsity.dst import prune_for_dst
    from keras_minmax_mtl.sparsity.policy import is_prunable

    trunk_in = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(3, 3, name="conv")(trunk_in)
    h = keras.layers.DepthwiseConv2D(3, name="depthwise")(h)
    h = keras.layers.BatchNormalization(name="norm")(h)
    h = keras.layers.Conv2DTranspose(2, 3, name="upconv")(h)  # DST's own type list missed it
    trunk = keras.Model(trunk_in, keras.layers.Flatten(name="flat")(h), name="trunk")
    inputs = keras.Input((6, 6, 2))
    shared = keras.layers.Dense(4, name="shared")(trunk(inputs))
    outputs = [keras.layers.Dense(2, name="a")(keras.layers.Dense(3, name="a_hidden")(shared)),
               keras.layers.Dense(2, name="b")(shared)]
    model = keras.Model(inputs, outputs)

    prunable = sorted(layer.name for layer in pruning.walk_layers(model) if is_prunable(layer))
    assert prunable == ["a", "a_hidden", "b", "conv", "shared", "upconv"]
    policy = MultiTaskPruningPolicy(prune=("trunk", "task_hidden", "task_output"))
    policy.ensure_model_supports_pruning(model)
    assert policy.prunable_layer_names(model) == prunable
    every = prune_for_dst(model, layer_names=prunable)
    assert sorted(w.layer.name for w in pruning.pruning_wrappers(every)) == prunable
    # By default both keep the output layers dense and prune the same hidden ones.
    default = MultiTaskPruningPolicy()
    default.ensure_model_supports_pruning(model)
    hidden = sorted(w.layer.name for w in pruning.pruning_wrappers(prune_for_dst(model)))
    assert hidden == default.prunable_layer_names(model) == ["a_hidden", "conv", "shared", "upconv"]


def xnnpack_network(stem_padding="symmetric"):
    """A MobileNet-shaped two-task network in the layout XNNPack's sparse path takes."""
    layers = keras.layers
    inputs = keras.Input((16, 16, 3), name="image")
    if stem_padding == "symmetric":
        x = layers.ZeroPadding2D(1, name="stem_pad")(inputs)
        x = layers.Conv2D(8, 3, strides=2, padding="valid", name="stem")(x)
    else:  # tf_keras.applications' MobileNetV2 stem: "same" pads a stride-2 conv unevenly
        x = layers.Conv2D(8, 3, strides=2, padding="same", name="stem")(inputs)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    y = layers.Conv2D(16, 1, name="expand")(x)
    y = layers.DepthwiseConv2D(3, padding="same", name="dw")(y)
    y = layers.Conv2D(8, 1, name="project")(y)
    x = layers.Add(name="add")([x, y])
    x = layers.GlobalAveragePooling2D(keepdims=True, name="pool")(x)
    x = layers.Flatten(name="flat")(x)
    return keras.Model(inputs, [layers.Dense(3, name="a")(x), layers.Dense(2, name="b")(x)])


def test_xnnpack_sparse_policy_prunes_only_the_1x1_convolutions_of_the_trunk():
    # What tfmot's prune_low_magnitude asks (docs/export.md runs it with this policy).
    model, policy = xnnpack_network(), XNNPackSparsePolicy()
    policy.ensure_model_supports_pruning(model)
    assert [layer.name for layer in model.layers if policy.allow_pruning(layer)] == [
        "expand", "project"]  # not the 3x3 stem, the depthwise kernel or the Dense heads
    assert policy.prunable_layer_names(model) == ["expand", "project"]
    heads = XNNPackSparsePolicy(prune=("task_output",))
    with pytest.raises(ValueError, match=r"leaves no layer of model .* to prune"):
        heads.ensure_model_supports_pruning(model)  # the heads are Dense, not 1x1 convolutions
    assert XNNPACK_MIN_SPARSITY == 2 / 3


def test_xnnpack_sparse_policy_refuses_a_graph_xnnpack_runs_dense_and_says_why():
    with pytest.raises(ValueError, match=r"XNNPackSparsePolicy.*XNNPack's sparse path.*"
                                         r"ZeroPadding2D\(1\).*Conv2D 3x3, stride 2.*'valid'.*"
                                         r"3 input channels.*MobileNetV2.*tfmot: Could not find"):
        XNNPackSparsePolicy().ensure_model_supports_pruning(xnnpack_network(stem_padding="same"))
    with pytest.raises(ValueError, match=r"leaves no layer of model .* to prune"):
        XNNPackSparsePolicy(exclude=("expand", "project")).ensure_model_supports_pruning(
            xnnpack_network())
