import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import keras_minmax_mtl as kmm
from keras_minmax_mtl.cli import main as cli
from keras_minmax_mtl.export import qat
from keras_minmax_mtl.export import runtimes
from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.export.tflite import export_tflite
from keras_minmax_mtl.export.surgery import (has_structured_sparsity, removed_units, shrink,
                                      shrink_report)


def seeded(model, seed=0, scale=0.3):
    """Small seeded weights everywhere, positive BatchNorm variances."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = []
        for w in layer.weights:
            if "variance" in w.name:
                values.append(rng.uniform(0.5, 2.0, w.shape))
            else:
                values.append(rng.normal(scale=scale, size=w.shape))
        if values:
            layer.set_weights([v.astype(np.float32) for v in values])
    return model


def zero_units(model, layer_name, units, bias=0.0):
    """Zeroes the kernel columns / filters `units` of a layer and sets their bias."""
    layer = model.get_layer(layer_name)
    kernel, b = layer.get_weights()
    kernel[..., units] = 0
    b[units] = bias
    layer.set_weights([kernel, b])


def conv_model():
    """conv -> BN -> relu -> conv -> pool -> flatten -> dense -> two task heads."""
    inputs = keras.Input((8, 8, 2), name="image")
    h = keras.layers.Conv2D(6, 3, padding="same", name="c1")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="c2")(h)
    h = keras.layers.MaxPooling2D(2, name="pool")(h)
    h = keras.layers.Flatten(name="flat")(h)
    h = keras.layers.Dense(7, activation="relu", name="dense")(h)
    outputs = [keras.layers.Dense(3, activation="softmax", name="a")(h),
               keras.layers.Dense(2, name="b")(h)]
    model = seeded(keras.Model(inputs, outputs, name="conv_net"))
    zero_units(model, "c1", [1, 4])
    bn = model.get_layer("bn")
    gamma, beta, mean, variance = bn.get_weights()
    beta[[1, 4]], mean[[1, 4]] = 0, 0  # removed channels output exactly 0 after BN
    bn.set_weights([gamma, beta, mean, variance])
    zero_units(model, "c2", [0])
    zero_units(model, "dense", [2, 3])
    zero_units(model, "a", [1])  # an output layer: keeps its units
    return model


def mlp():
    """A Dense-only multi-task MLP whose trunk feeds two task branches."""
    inputs = keras.Input((6,), name="features")
    trunk = keras.layers.Dense(8, activation="relu", name="trunk")(inputs)
    trunk = keras.layers.Dropout(0.5, name="drop")(trunk)
    hidden_a = keras.layers.Dense(5, activation="tanh", name="hidden_a")(trunk)
    hidden_b = keras.layers.Dense(4, activation="relu", name="hidden_b")(trunk)
    outputs = [keras.layers.Dense(3, name="a")(hidden_a), keras.layers.Dense(2, name="b")(hidden_b)]
    return seeded(keras.Model(inputs, outputs, name="mlp"))


def valid_conv_model(padding="valid"):
    inputs = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(4, 3, activation="relu", name="c1")(inputs)   # 6x6x4
    h = keras.layers.AveragePooling2D(2, name="avg")(h)                   # 3x3x4
    h = keras.layers.Conv2D(3, 3, padding=padding, name="c2")(h)
    h = keras.layers.GlobalMaxPooling2D(name="gmax")(h)
    model = seeded(keras.Model(inputs, keras.layers.Dense(2, name="out")(h)))
    zero_units(model, "c1", [2], bias=0.5)  # outputs relu(0.5) = 0.5 everywhere
    return model


def images(shape, n=16, seed=1):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


def assert_same_outputs(model, small, x, atol=1e-5):
    want, got = model(x, training=False), small(x, training=False)
    want = want if isinstance(want, list) else [want]
    got = got if isinstance(got, list) else [got]
    for w, g in zip(want, got):
        np.testing.assert_allclose(g.numpy(), w.numpy(), atol=atol)


def test_conv_trunk_is_cut_through_bn_pooling_and_flatten_with_exact_parameter_count():
    model = conv_model()
    before = [w.copy() for w in model.get_weights()]
    assert removed_units(model) == {"c1": [1, 4], "c2": [0], "dense": [2, 3]}
    assert has_structured_sparsity(model)
    small = shrink(model)
    # c1: 3·3·2·4+4; bn: 4·4; c2: 3·3·4·4+4; dense: (4·4·4)·5+5; a: 5·3+3; b: 5·2+2.
    assert small.count_params() == 76 + 16 + 148 + 325 + 18 + 12
    assert model.count_params() == 114 + 24 + 275 + 567 + 24 + 16
    assert [l.name for l in small.layers] == [l.name for l in model.layers]
    assert small.output_names == ["a", "b"] and small.name == "conv_net"
    assert small.get_layer("a").units == 3  # output layers never lose units
    assert small.get_layer("flat").output_shape == (None, 64)
    assert_same_outputs(model, small, images((8, 8, 2)))
    for old, new in zip(before, model.get_weights()):  # the model is unchanged
        np.testing.assert_array_equal(old, new)
    report = shrink_report(model, small)
    assert report["layers"]["c1"]["units"] == {"before": 6, "after": 4}
    assert report["layers"]["bn"]["units"] == {"before": 6, "after": 4}
    assert report["layers"]["dense"]["params"] == {"before": 567, "after": 325}
    assert report["total"]["params"] == {"before": 1020, "after": 595}
    assert report["total"]["float32_bytes"] == {"before": 4080, "after": 2380}
    # int8: kernel weights 1 byte, biases and BN statistics 4 bytes.
    assert report["layers"]["c2"]["int8_bytes"] == {"before": 270 + 20, "after": 144 + 16}
    assert report["kept_constant"] == []


def test_nonzero_constants_of_removed_units_are_folded_into_every_branch_exactly():
    model = mlp()
    zero_units(model, "trunk", [0, 5], bias=[0.7, -0.3])  # relu: constants 0.7 and 0
    zero_units(model, "hidden_a", [1], bias=0.2)           # tanh(0.2) folds into head a
    small = shrink(model)
    assert removed_units(model) == {"hidden_a": [1], "trunk": [0, 5]}
    # trunk 6·6+6, hidden_a 6·4+4, hidden_b 6·4+4, a 4·3+3, b 4·2+2
    assert small.count_params() == 42 + 28 + 28 + 15 + 10
    assert_same_outputs(model, small, images((6,), n=32))
    w, b = model.get_layer("hidden_b").get_weights()
    np.testing.assert_allclose(small.get_layer("hidden_b").get_weights()[1], b + 0.7 * w[0],
                               atol=1e-6)
    w, b = model.get_layer("a").get_weights()
    np.testing.assert_allclose(small.get_layer("a").get_weights()[1],
                               b + np.tanh(0.2) * w[1], atol=1e-6)


def test_valid_conv_folds_a_constant_filter_and_a_zero_padded_conv_keeps_it():
    model = valid_conv_model("valid")
    small = shrink(model)
    assert small.get_layer("c1").filters == 3 and small.get_layer("c2").kernel.shape[2] == 3
    k, b = model.get_layer("c2").get_weights()
    np.testing.assert_allclose(small.get_layer("c2").get_weights()[1],
                               b + 0.5 * k[:, :, 2, :].sum(axis=(0, 1)), atol=1e-6)
    assert_same_outputs(model, small, images((8, 8, 1)))
    padded = valid_conv_model("same")
    small = shrink(padded)
    assert small.get_layer("c1").filters == 4  # 0.5 would meet zero padding: kept
    assert shrink_report(padded, small)["kept_constant"] == [["c1", 2]]
    assert_same_outputs(padded, small, images((8, 8, 1)))


def test_pruning_wrappers_and_multitask_models_are_shrunk_through_their_base():
    base = mlp()
    zero_units(base, "hidden_b", [0, 2])
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(
        base, pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.5, 0))
    assert removed_units(wrapped) == {"hidden_b": [0, 2]}
    small = shrink(kmm.MinMaxMultiTask(base))
    assert small.get_layer("hidden_b").units == 2 and isinstance(small, keras.Model)
    assert_same_outputs(base, small, images((6,)))


def test_a_pruned_multitask_model_exports_shrunk_for_micro_and_is_verified_against_itself(
        tmp_path):
    base = mlp()
    zero_units(base, "trunk", [1, 2, 6])
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(
        base, pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.5, 0))
    model = kmm.MinMaxMultiTask(wrapped)
    x = images((6,), n=64)
    report = export_tflite(model, tmp_path / "m.tflite", target="micro", representative_data=x)
    assert report["structured"]["removed_units"] == {"trunk": [1, 2, 6]}
    assert report["structured"]["units"]["trunk"] == {"before": 8, "after": 5}
    assert report["inputs"]["features"]["shape"] == [1, 6]
    for task in ("a", "b"):
        assert report["verification"]["tasks"][task]["max_abs_error"] < 0.05
    assert wrapped.get_layer("prune_low_magnitude_trunk").layer.units == 8  # unchanged


def test_unstructured_zeros_are_not_removed_units():
    model = mlp()
    layer = model.get_layer("trunk")
    kernel, bias = layer.get_weights()
    kernel[::2, :] = 0  # half the weights, but no whole column
    layer.set_weights([kernel, bias])
    assert removed_units(model) == {} and not has_structured_sparsity(model)
    assert shrink(model).count_params() == model.count_params()


def add_model():
    inputs = keras.Input((6,), name="features")
    d1 = keras.layers.Dense(4, name="d1")(inputs)
    d2 = keras.layers.Dense(4, name="d2")(inputs)
    out = keras.layers.Dense(2, name="out")(keras.layers.Add(name="add")([d1, d2]))
    model = seeded(keras.Model(inputs, out))
    zero_units(model, "d1", [3])
    return model


def layer_norm_model():
    inputs = keras.Input((6,), name="features")
    d1 = keras.layers.Dense(4, name="d1")(inputs)
    out = keras.layers.Dense(2, name="out")(keras.layers.LayerNormalization(name="ln")(d1))
    model = seeded(keras.Model(inputs, out))
    zero_units(model, "d1", [3])
    return model


def test_an_add_cuts_a_channel_removed_in_every_input_and_keeps_one_removed_in_one():
    model = add_model()                       # d1[3] removed, d2[3] not: the sum needs d1[3]
    small = shrink(model)
    assert small.count_params() == model.count_params()
    assert shrink_report(model, small)["kept_constant"] == [["d1", 3]]
    zero_units(model, "d2", [3], bias=0.25)   # removed in both: 0 + 0.25 folds into `out`
    small = shrink(model)
    assert small.get_layer("out").kernel.shape == (3, 2)
    assert_same_outputs(model, small, images((6,)))


def test_unsupported_layers_shared_and_empty_layers_are_refused_by_name():
    model = layer_norm_model()
    with pytest.raises(ValueError, match=r"Layer 'ln' \(LayerNormalization\) receives channels "
                                         r"from which `shrink` removes units \(d1\[3\]\).*cannot "
                                         r"cut the inputs of a LayerNormalization. Supported "
                                         r"layers: Dense, Conv2D"):
        shrink(model)
    inputs = [keras.Input((6,), name="left"), keras.Input((6,), name="right")]
    shared = keras.layers.Dense(4, activation="relu", name="shared")
    outputs = [keras.layers.Dense(2, name=n)(shared(x)) for n, x in zip("ab", inputs)]
    model = seeded(keras.Model(inputs, outputs))
    zero_units(model, "shared", [1])
    with pytest.raises(ValueError, match=r"Layer 'shared' \(Dense\) is called 2 times"):
        shrink(model)
    model = mlp()
    zero_units(model, "hidden_b", [0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"Layer 'hidden_b' \(Dense\) has all of its 4 units "
                                         r"removed"):
        shrink(model)


def test_auto_export_of_a_model_the_surgery_cannot_cut_is_unshrunk_and_says_why(tmp_path):
    model, x = layer_norm_model(), images((6,), n=32)
    with pytest.warns(UserWarning, match=r"did not remove units: Layer 'ln' "
                                         r"\(LayerNormalization\)"):
        report = export_tflite(model, tmp_path / "a.tflite", target="edgetpu",
                               representative_data=x)
    assert not report["structured"]["applied"]
    assert "cannot cut the inputs of a LayerNormalization" in report["structured"]["skipped"]
    with pytest.raises(ValueError, match=r"Layer 'ln' \(LayerNormalization\)"):
        export_tflite(model, tmp_path / "b.tflite", target="edgetpu", representative_data=x,
                      structured=True)
    assert not (tmp_path / "b.tflite").exists()


def test_concatenated_branches_are_cut_per_input():
    inputs = keras.Input((6,), name="features")
    d1 = keras.layers.Dense(4, activation="relu", name="d1")(inputs)
    d2 = keras.layers.Dense(3, activation="relu", name="d2")(inputs)
    joined = keras.layers.Concatenate(name="cat")([d1, d2])
    model = seeded(keras.Model(inputs, keras.layers.Dense(2, name="out")(joined)))
    zero_units(model, "d1", [1])
    zero_units(model, "d2", [0], bias=0.4)
    small = shrink(model)
    assert small.get_layer("out").kernel.shape == (5, 2)
    assert_same_outputs(model, small, images((6,)))


@pytest.fixture(scope="module")
def conv_exports(tmp_path_factory):
    model = conv_model()
    x = images((8, 8, 2), n=64)
    out = tmp_path_factory.mktemp("exports")
    shrunk = export_tflite(model, out / "auto.tflite", target="micro", representative_data=x)
    dense = export_tflite(model, out / "dense.tflite", target="micro", representative_data=x,
                          structured=False)
    return model, x, out, shrunk, dense


def test_micro_export_removes_units_automatically_and_is_smaller(conv_exports):
    model, x, out, shrunk, dense = conv_exports
    assert shrunk["structured"]["applied"] and not dense["structured"]["applied"]
    assert shrunk["structured"]["params"] == {"dense": 1020, "shrunk": 595}
    assert shrunk["structured"]["units"]["c1"] == {"before": 6, "after": 4}
    assert shrunk["structured"]["removed_units"] == {"c1": [1, 4], "c2": [0], "dense": [2, 3]}
    assert shrunk["structured"]["keras_max_abs_difference"] < 1e-5
    assert shrunk["structured"]["file_bytes"] == shrunk["bytes"] == (out / "auto.tflite").stat(
        ).st_size
    assert shrunk["bytes"] < dense["bytes"]
    # The file is verified against the original model, and agrees with it.
    for task in ("a", "b"):
        assert shrunk["verification"]["tasks"][task]["max_abs_error"] < 0.1
    assert shrunk["keras_sparsity"] == dense["keras_sparsity"]  # of the original kernels
    assert model.get_layer("c1").filters == 6
    assert runtimes.micro_invoke_seconds(out / "auto.tflite", x[0], repeats=3, warmup=1) > 0


def test_mobile_shrinks_by_default_and_structured_true_needs_removed_units(tmp_path):
    # Removed units make a phone file faster (a dense, smaller graph); sparse storage does not
    # (benchmarks/mobile_speed.py), so "auto" shrinks on mobile as on micro and edgetpu.
    model = conv_model()
    x = images((8, 8, 2), n=16)
    unshrunk = export_tflite(model, tmp_path / "u.tflite", representative_data=x,
                             structured=False)
    assert unshrunk["structured"] == {"mode": False, "applied": False,
                                      "file_bytes": unshrunk["bytes"]}
    report = export_tflite(model, tmp_path / "m.tflite", representative_data=x)
    assert report["structured"]["mode"] == "auto" and report["structured"]["applied"]
    assert report["bytes"] < unshrunk["bytes"]
    report = export_tflite(model, tmp_path / "s.tflite", representative_data=x, structured=True)
    assert report["structured"]["applied"] and report["structured"]["int8_bytes"]["shrunk"] < \
        report["structured"]["int8_bytes"]["dense"]
    unstructured = mlp()
    with pytest.raises(ValueError, match=r"`structured=True` needs a model with removed units.*"
                                         r"sparsity_type=\"filter\".*--sparsity-type filter.*"
                                         r"structured=False"):
        export_tflite(unstructured, tmp_path / "u" / "u.tflite", target="micro",
                      representative_data=images((6,)), structured=True)
    with pytest.raises(ValueError, match=r"`structured` must be one of \['auto', True, False\]. "
                                         r"Received: structured='on'"):
        export_tflite(model, tmp_path / "u" / "u.tflite", structured="on")
    assert not (tmp_path / "u").exists()


def test_quantization_aware_models_are_not_shrunk_and_structured_true_says_so(tmp_path):
    model = mlp()
    zero_units(model, "trunk", [0])
    qmodel = qat.prune_preserving_qat(model)
    assert removed_units(qmodel) == {}  # wrapped layers are left whole
    with pytest.raises(ValueError, match=r"cannot shrink quantization-aware \(wrapped\) layers"):
        export_tflite(qmodel, tmp_path / "q.tflite", target="micro",
                      representative_data=images((6,)), structured=True)


def test_micro_invoke_seconds_refuses_bad_counts(conv_exports):
    path = conv_exports[2] / "auto.tflite"
    with pytest.raises(ValueError, match=r"`repeats` must be an integer > 0. Received: repeats=0"):
        runtimes.micro_invoke_seconds(path, repeats=0)


def test_kmm_export_structured_option_maps_to_export_tflite():
    parser = cli.build_parser()
    assert parser.parse_args(["export", "run", "--structured", "off"]).structured == "off"
    assert parser.parse_args(["export", "run"]).structured == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["export", "run", "--structured", "yes"])
