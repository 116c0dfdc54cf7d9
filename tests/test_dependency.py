import numpy as np
import pytest
import tensorflow as tf

from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.export.surgery import removed_units, shrink, shrink_report
from keras_minmax_mtl.export.tflite import export_tflite
from keras_minmax_mtl.sparsity.dependency import (
    GroupL1Penalty,
    channel_groups,
    group_costs,
    group_families,
    group_norms,
    group_scores,
    inline_nested_models,
    prune_groups,
    task_taylor_importance,
)
from keras_minmax_mtl.sparsity.policy import MultiTaskPruningPolicy


def seeded(model, seed=0):
    """Seeded weights in every layer (nested ones too), positive BatchNorm variances."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if "variance" in variable.name:
            variable.assign(rng.uniform(0.5, 2.0, variable.shape).astype(np.float32))
        elif "gamma" in variable.name:
            variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype(np.float32))
        else:
            variable.assign(rng.normal(scale=0.3, size=variable.shape).astype(np.float32))
    return model


def images(shape, n=8, seed=1):
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


def max_difference(model, small, x):
    want, got = model(x, training=False), small(x, training=False)
    return max(float(np.max(np.abs(w.numpy() - g.numpy())))
               for w, g in zip(tf.nest.flatten(want), tf.nest.flatten(got)))


def residual_model():
    """stem conv -> BN -> relu, a residual block (conv, BN, relu, 1x1 conv, BN) added back."""
    inputs = keras.Input((8, 8, 3), name="image")
    stem = keras.layers.ReLU(name="stem_relu")(keras.layers.BatchNormalization(name="stem_bn")(
        keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)))
    h = keras.layers.Conv2D(8, 3, padding="same", name="r1a")(stem)
    h = keras.layers.ReLU(name="r1a_relu")(keras.layers.BatchNormalization(name="r1a_bn")(h))
    h = keras.layers.BatchNormalization(name="r1b_bn")(keras.layers.Conv2D(8, 1, name="r1b")(h))
    h = keras.layers.ReLU(name="out_relu")(keras.layers.Add(name="add")([stem, h]))
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    outputs = [keras.layers.Dense(3, name="a")(h), keras.layers.Dense(2, name="b")(h)]
    return seeded(keras.Model(inputs, outputs, name="resnet"))


def mobile_model():
    """A nested trunk: expand, ZeroPadding2D, depthwise, squeeze-excite Multiply (through a
    Reshape), project, and a side branch concatenated; two task heads outside it."""
    x = keras.Input((9, 9, 4), name="trunk_in")
    h = keras.layers.BatchNormalization(name="expand_bn")(
        keras.layers.Conv2D(6, 1, name="expand")(x))
    h = keras.layers.ReLU(6.0, name="expand_relu")(h)
    h = keras.layers.ZeroPadding2D(((0, 1), (0, 1)), name="pad")(h)            # 10x10
    h = keras.layers.DepthwiseConv2D(3, strides=2, name="dw")(h)               # 4x4
    h = keras.layers.ReLU(6.0, name="dw_relu")(keras.layers.BatchNormalization(name="dw_bn")(h))
    s = keras.layers.Reshape((1, 1, 6), name="se_shape")(
        keras.layers.GlobalAveragePooling2D(name="se_pool")(h))
    s = keras.layers.Conv2D(3, 1, activation="relu", name="se_reduce")(s)
    s = keras.layers.Conv2D(6, 1, activation="sigmoid", name="se_expand")(s)
    h = keras.layers.Multiply(name="se_mul")([h, s])
    h = keras.layers.BatchNormalization(name="project_bn")(
        keras.layers.Conv2D(5, 1, name="project")(h))
    side = keras.layers.Conv2D(3, 3, strides=2, name="side")(x)                # 4x4
    trunk = keras.Model(x, keras.layers.Concatenate(name="cat")([h, side]), name="trunk")
    inputs = keras.Input((9, 9, 4), name="image")
    h = keras.layers.GlobalAveragePooling2D(name="pool")(trunk(inputs))
    outputs = [keras.layers.Dense(3, name="a")(h), keras.layers.Dense(2, name="b")(h)]
    return seeded(keras.Model(inputs, outputs, name="mobile"))


def test_a_residual_add_ties_its_producers_and_shrinks_exactly_to_the_counted_parameters():
    model = residual_model()
    groups = channel_groups(model)
    assert len(groups) == 8 + 8 + 3 + 2 and sum(g.prunable for g in groups) == 16
    tied = groups[0]
    assert tied.producers == (("stem", 0), ("r1b", 0))
    assert tied.members == (("r1b_bn", 0), ("stem_bn", 0))
    assert tied.consumers == (("a", 0), ("b", 0), ("r1a", 0))
    assert {f: len(m) for f, m in group_families(groups).items()} == {("r1b", "stem"): 8,
                                                                        ("r1a",): 8}
    heads = [g for g in groups if not g.prunable]
    assert {g.reason for g in heads} == {"it reaches the model output 'a'",
                                         "it reaches the model output 'b'"}
    # The group's l2 norm: every kernel column / row and gamma the group deletes.
    values = {layer.name: layer.get_weights() for layer in model.layers}
    want = np.sqrt(sum(np.sum(v ** 2) for v in (
        values["stem"][0][..., 0], values["r1b"][0][..., 0], values["stem_bn"][0][0],
        values["r1b_bn"][0][0], values["r1a"][0][:, :, 0, :], values["a"][0][0],
        values["b"][0][0])))
    np.testing.assert_allclose(group_norms(model, groups)[0], want, rtol=1e-6)

    removed = prune_groups(model, 0.5, groups=groups)
    assert len(removed) == 8
    assert len(removed_units(model)["stem"]) == 4 and len(removed_units(model)["r1b"]) == 4
    small = shrink(model)
    # stem 3·3·3·4+4, 3 BNs 4·4, r1a 3·3·4·4+4, r1b 4·4+4, a 4·3+3, b 4·2+2
    assert small.count_params() == 112 + 3 * 16 + 148 + 20 + 15 + 10
    assert max_difference(model, small, images((8, 8, 3))) < 1e-5
    assert shrink_report(model, small)["kept_constant"] == []


def test_depthwise_padding_squeeze_excite_concatenate_in_a_nested_trunk_shrink_exactly(tmp_path):
    model = mobile_model()
    groups = channel_groups(model)
    expand = groups[0]
    assert expand.producers == (("expand", 0), ("se_expand", 0))  # tied by the Multiply
    assert expand.members == (("dw", 0), ("dw_bn", 0), ("expand_bn", 0))
    assert expand.consumers == (("project", 0), ("se_reduce", 0))
    side = [g for g in groups if g.producers == (("side", 1),)][0]
    assert side.consumers == (("a", 6), ("b", 6))                 # concatenated at offset 5
    families = {f: len(m) for f, m in group_families(groups).items()}
    assert families == {("expand", "se_expand"): 6, ("se_reduce",): 3, ("project",): 5,
                        ("side",): 3}
    assert len(prune_groups(model, 0.5, groups=groups)) == 3 + 2 + 3 + 2
    small = shrink(model)
    assert "trunk" not in [layer.name for layer in small.layers]  # the nested model is inlined
    assert small.output_names == ["a", "b"]
    assert small.get_layer("dw").depthwise_kernel.shape == (3, 3, 3, 1)
    assert small.get_layer("se_shape").output_shape == (None, 1, 1, 3)
    # expand 4·3+3, expand_bn 12, dw 27+3, dw_bn 12, se_reduce 3+1, se_expand 3+3,
    # project 3·2+2, project_bn 8, side 3·3·4+1, a 3·3+3, b 3·2+2
    assert small.count_params() == 15 + 12 + 30 + 12 + 4 + 6 + 8 + 8 + 37 + 12 + 8
    x = images((9, 9, 4))
    assert max_difference(model, small, x) < 1e-5
    report = export_tflite(model, tmp_path / "m.tflite", target="micro",
                           representative_data=images((9, 9, 4), n=32))
    assert report["structured"]["applied"]
    assert report["structured"]["params"]["shrunk"] == small.count_params()
    assert report["structured"]["keras_max_abs_difference"] < 1e-5


def test_fractions_per_layer_type_and_name_and_the_policy_choose_the_families():
    model = mobile_model()
    groups = channel_groups(model)
    policy = MultiTaskPruningPolicy(exclude=["side"])
    removed = prune_groups(model, {"Conv2D": 0.5, "project": 0.0}, groups=groups, policy=policy)
    assert {groups[k].family for k in removed} == {("expand", "se_expand"), ("se_reduce",)}
    assert {n: len(u) for n, u in removed_units(model).items()} == {
        "expand": 3, "se_expand": 3, "se_reduce": 2}
    dw_bn = model.get_layer("trunk").get_layer("dw_bn")
    zeroed = [groups[k].members[1][1] for k in removed if groups[k].family[0] == "expand"]
    np.testing.assert_array_equal(dw_bn.gamma.numpy()[zeroed], 0)
    with pytest.raises(ValueError, match=r"Argument `fraction\['Dense'\]` must be in \[0, 1\)"):
        prune_groups(model, {"Dense": -0.1}, groups=groups)


def two_family_model():
    """Dense "h1" (4 units on 1 input) -> Dense "h2" (2 units) -> two one-unit heads."""
    inputs = keras.Input((1,), name="x")
    h = keras.layers.Dense(2, activation="relu", name="h2")(
        keras.layers.Dense(4, activation="relu", name="h1")(inputs))
    outputs = [keras.layers.Dense(1, name="a")(h), keras.layers.Dense(1, name="b")(h)]
    return seeded(keras.Model(inputs, outputs, name="two_families"))


def test_a_global_ranking_compares_families_by_their_mean_normalised_scores_with_a_floor():
    model = two_family_model()
    groups = channel_groups(model)
    assert group_families(groups) == {("h1",): [0, 1, 2, 3], ("h2",): [4, 5]}
    # h1: kernel column 1 + bias 1 + h2 row 2; h2: column 4 + bias 1 + a row 1 + b row 1
    np.testing.assert_array_equal(group_costs(model, groups)[:6], [4, 4, 4, 4, 7, 7])
    scores = [1.0, 1.0, 1.0, 5.0, 0.8, 1.2, -1.0, -1.0]  # the heads' groups: never pruned, so
                                                        # not checked for the global ranking
    # s / family mean: h1 [0.5, 0.5, 0.5, 2.5], h2 [0.8, 1.2]: the lowest 3 of 6 are h1's,
    # where every family losing half (or the raw scores) would take group 4 instead of 2.
    assert prune_groups(model, 0.5, scores=scores, groups=groups, ranking="global") == [0, 1, 2]
    kernel = model.get_layer("h1").kernel.numpy()
    np.testing.assert_array_equal(kernel[:, :3], 0)
    assert np.all(kernel[:, 3] != 0) and np.all(model.get_layer("h2").kernel.numpy() != 0)
    assert prune_groups(model, 0.5, scores=scores, groups=groups) == [0, 1, 4]
    # max_fraction 0.5 lets h1 lose 2 of 4: then the next lowest, 4 (0.8).
    assert prune_groups(model, 0.5, scores=scores, groups=groups, ranking="global",
                        max_fraction=0.5) == [0, 1, 4]
    # Excluded or unnamed families are out of the pool: h1 alone loses round(0.5 * 4).
    for kwargs in ({"exclude": ["h2"]}, {"fraction": {"h1": 0.5}}):
        kwargs = {"fraction": 0.5, **kwargs}
        assert prune_groups(model, scores=scores, groups=groups, ranking="global",
                            **kwargs) == [0, 1]
    assert prune_groups(model, {"Dense": 0.5}, scores=scores, groups=groups,
                        ranking="global") == [0, 1, 2]
    # Different fractions make different pools: h1 loses round(0.5 * 4), h2 round(0.4 * 2).
    assert prune_groups(model, {"h1": 0.5, "h2": 0.4}, scores=scores, groups=groups,
                        ranking="global") == [0, 1, 4]
    # Equal scores, per parameter: h2's groups (1/7) before h1's (1/4), but h2 keeps one.
    flat = [1.0] * 8
    assert prune_groups(model, 0.5, scores=flat, groups=groups, ranking="global") == [0, 1, 2]
    assert prune_groups(model, 0.5, scores=flat, groups=groups,
                        ranking="global_cost") == [0, 1, 4]
    assert prune_groups(model, 0.9, scores=flat, groups=groups,
                        ranking="global_cost") == [0, 1, 2, 4]   # round(5.4) > 3 + 1


def test_bad_rankings_and_caps_are_refused_by_name_before_any_weight_changes():
    model = two_family_model()
    groups = channel_groups(model)
    before = [w.copy() for w in model.get_weights()]
    cases = [
        ({"ranking": "size"}, r"Argument `ranking` must be one of \['per_family', 'global', "
                              r"'global_cost'\]. Received: ranking='size'"),
        ({"max_fraction": 0.9}, r"Argument `max_fraction` caps a family's share of a global "
                                r"ranking.*Received: max_fraction=0.9 with "
                                r"ranking='per_family'"),
        ({"ranking": "global", "max_fraction": 0.0},
         r"Argument `max_fraction` must be in \(0, 1\]. Received: max_fraction=0.0"),
        ({"ranking": "global", "max_fraction": True},
         r"Argument `max_fraction` must be in \(0, 1\]. Received: max_fraction=True"),
        ({"ranking": "global", "max_fraction": 0.25},
         r"Argument `max_fraction` must be >= the largest fraction to remove \(0.5\), .*"
         r"Received: max_fraction=0.25"),
        ({"ranking": "global", "max_fraction": 0.6, "fraction": {"h1": 0.5, "h2": 0.75}},
         r"the largest fraction to remove \(0.75\)"),
        ({"ranking": "global", "scores": [1.0, -1.0] + [1.0] * 6},
         r"Argument `scores` must be finite and >= 0 with ranking='global' .*Received: "
         r"scores\[1\]=-1.0"),
        ({"ranking": "global_cost", "scores": [np.nan] + [1.0] * 7},
         r"Argument `scores` must be finite and >= 0 with ranking='global_cost' .*"
         r"Received: scores\[0\]=nan"),
    ]
    for kwargs, message in cases:
        kwargs = {"fraction": 0.5, "groups": groups, **kwargs}
        with pytest.raises(ValueError, match=message):
            prune_groups(model, **kwargs)
    for want, got in zip(before, model.get_weights()):
        np.testing.assert_array_equal(want, got)


def inverted_residual_model():
    """A nested trunk: stem conv, an inverted-residual block (expand, ZeroPadding2D, depthwise,
    project) added back to the stem, a 1x1 conv; two task heads outside it."""
    def bn_relu(h, name):
        return keras.layers.ReLU(6.0, name=f"{name}_relu")(
            keras.layers.BatchNormalization(name=f"{name}_bn")(h))

    x = keras.Input((8, 8, 3), name="trunk_in")
    stem = bn_relu(keras.layers.Conv2D(8, 3, padding="same", name="stem")(x), "stem")
    h = bn_relu(keras.layers.Conv2D(12, 1, name="expand")(stem), "expand")
    h = keras.layers.DepthwiseConv2D(3, name="dw")(keras.layers.ZeroPadding2D(1, name="pad")(h))
    h = keras.layers.BatchNormalization(name="project_bn")(
        keras.layers.Conv2D(8, 1, name="project")(bn_relu(h, "dw")))
    h = keras.layers.Add(name="add")([stem, h])
    h = bn_relu(keras.layers.Conv2D(16, 1, name="last")(h), "last")
    trunk = keras.Model(x, h, name="trunk")
    inputs = keras.Input((8, 8, 3), name="image")
    h = keras.layers.GlobalAveragePooling2D(name="pool")(trunk(inputs))
    outputs = [keras.layers.Dense(3, name="a")(h), keras.layers.Dense(2, name="b")(h)]
    return seeded(keras.Model(inputs, outputs, name="inverted_residual"))


def test_a_globally_pruned_nested_residual_depthwise_trunk_shrinks_exactly():
    model = inverted_residual_model()
    groups = channel_groups(model)
    families = group_families(groups)
    assert {f: len(m) for f, m in families.items()} == {
        ("project", "stem"): 8, ("expand",): 12, ("last",): 16}
    costs = group_costs(model, groups)
    # stem column 27+1, stem_bn 4, project column 12+1, project_bn 4, rows of expand 12, last 16;
    # expand column 8+1, expand_bn 4, dw 9+1, dw_bn 4, project row 8; last 8+1, 4, heads 3+2
    assert {f: set(costs[m].tolist()) for f, m in families.items()} == {
        ("project", "stem"): {77}, ("expand",): {35}, ("last",): {18}}
    # Equal scores: 1/77 < 1/35 < 1/18, so 18 of the 36 groups go as 7 (all but one) of the
    # Add's family and 11 of expand's, none of last's.
    removed = prune_groups(model, 0.5, scores=np.ones(len(groups)), groups=groups,
                           ranking="global_cost")
    assert len(removed) == 18
    assert {f: len(set(m) & set(removed)) for f, m in families.items()} == {
        ("project", "stem"): 7, ("expand",): 11, ("last",): 0}
    small = shrink(model)
    assert small.get_layer("stem").filters == 1 and small.get_layer("expand").filters == 1
    # stem 28 + 4, expand 2 + 4, dw 10 + 4, project 2 + 4, last 16 + 16 + 64, a 51, b 34
    assert small.count_params() == 28 + 4 + 2 + 4 + 10 + 4 + 2 + 4 + 32 + 64 + 51 + 34
    assert max_difference(model, small, images((8, 8, 3), n=16)) < 1e-5


def test_a_depthwise_group_is_removed_only_with_its_pointwise_producer():
    model = mobile_model()
    dw = model.get_layer("trunk").get_layer("dw")
    kernel, bias = dw.get_weights()
    kernel[:, :, 1, :] = 0
    bias[1] = 0
    dw.set_weights([kernel, bias])            # a depthwise channel alone is not a removal
    assert removed_units(model) == {}
    assert shrink(model).count_params() == model.count_params()
    expand = model.get_layer("trunk").get_layer("expand")
    kernel, bias = expand.get_weights()
    kernel[..., 2] = 0
    bias[2] = 0
    expand.set_weights([kernel, bias])        # BN beta, se_expand still make channel 2 non-zero
    small = shrink(model)
    assert small.get_layer("dw").depthwise_kernel.shape[2] == 6
    assert shrink_report(model, small)["kept_constant"] == [["expand", 2]]
    assert max_difference(model, small, images((9, 9, 4))) < 1e-5


def test_channels_that_cannot_be_cut_make_their_group_unprunable_and_say_why():
    inputs = keras.Input((4,), name="x")
    d = keras.layers.Dense(6, activation="relu", name="d")(inputs)
    folded = keras.layers.Reshape((2, 3), name="fold")(d)
    soft = keras.layers.Dense(3, activation="softmax", name="soft")(inputs)
    norm = keras.layers.LayerNormalization(name="ln")(keras.layers.Dense(3, name="e")(inputs))
    joined = keras.layers.Concatenate(name="cat")(
        [keras.layers.Flatten(name="flat")(folded), soft, norm])
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(joined))
    reasons = {g.producers[0][0]: g.reason for g in channel_groups(model)}
    assert reasons == {"d": "the Reshape 'fold' changes the channel axis",
                       "soft": "its producer 'soft' has the activation 'softmax', which is not "
                               "element-wise",
                       "e": "it passes the layer 'ln' (LayerNormalization), whose channels "
                            "cannot be cut",
                       "out": "it reaches the model output 'out'"}
    assert group_families(channel_groups(model)) == {}
    inputs = keras.Input((3,))
    nested = keras.Model(inputs, keras.layers.Dense(3, name="same")(inputs), name="inner")
    outer_in = keras.Input((3,))
    outer = keras.Model(outer_in, keras.layers.Dense(2, name="same")(nested(outer_in)))
    with pytest.raises(ValueError, match=r"two layers are named 'same'"):
        inline_nested_models(outer)


def test_task_taylor_importance_is_the_per_task_activation_taylor_sum_and_scores_follow():
    inputs = keras.Input((4,), name="x")
    h = keras.layers.Dense(3, activation="relu", name="h")(inputs)
    model = seeded(keras.Model(inputs, [keras.layers.Dense(2, name="a")(h),
                                        keras.layers.Dense(2, name="b")(h)]))
    x = images((4,), n=16)
    y = {"a": np.arange(16) % 2, "b": (np.arange(16) // 2) % 2}
    losses = {t: keras.losses.SparseCategoricalCrossentropy(from_logits=True) for t in "ab"}
    groups = channel_groups(model)[:3]
    tasks, importance = task_taylor_importance(model, groups, [(x, y)], losses)
    assert tasks == ["a", "b"]
    # The producer's kernel column and bias sum p·dL/dp equals z·dL/dz over the batch.
    kernel, bias = model.get_layer("h").get_weights()
    for t, head in enumerate("ab"):
        w, c = model.get_layer(head).get_weights()
        z = tf.constant(x @ kernel + bias)
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = losses[head](y[head], tf.nn.relu(z) @ w + c)
        want = tf.reduce_sum(z * tape.gradient(loss, z), axis=0).numpy() ** 2
        np.testing.assert_allclose(importance[t], want, rtol=1e-4, atol=1e-12)
    # Task 0 alone needs group 0, task 1 alone group 1: both worst-task scores are high.
    table = np.array([[0.6, 0.0, 0.4], [0.0, 0.5, 0.5]])
    np.testing.assert_allclose(group_scores(table), [0.6, 0.5, 0.5])
    np.testing.assert_allclose(group_scores(table, [0.25, 0.75]), [0.3, 0.75, 0.75])
    np.testing.assert_allclose(group_scores(table, [0.25, 0.75], rule="weighted"),
                               [0.15, 0.375, 0.475])
    with pytest.raises(ValueError, match=r"Argument `rule` must be one of \['worst', "
                                         r"'weighted'\]. Received: rule='min'"):
        group_scores(table, rule="min")
    with pytest.raises(ValueError, match=r"Argument `task_weights` must be 2 non-negative"):
        group_scores(table, [0.5, 0.6])
    with pytest.raises(ValueError, match=r"Argument `fraction` must be in \[0, 1\). "
                                         r"Received: fraction=1.0"):
        prune_groups(model, 1.0)
    with pytest.raises(ValueError, match=r"Argument `losses` must be a dict with one loss"):
        task_taylor_importance(model, groups, [(x, y)], {"a": "mse"})


def test_group_l1_penalty_is_rho_times_the_group_norms_and_reweights_on_refresh():
    model = residual_model()
    groups = channel_groups(model)
    penalty = GroupL1Penalty(model, rho=0.01, groups=groups)
    norms = group_norms(model, [g for g in groups if g.prunable])
    np.testing.assert_allclose(penalty.norms().numpy(), norms, rtol=1e-5)
    np.testing.assert_allclose(float(penalty()), 0.01 * norms.sum() / (1 + 1e-6), rtol=1e-5)
    penalty.refresh()
    np.testing.assert_allclose(float(penalty()), 0.01 * np.sum(norms / (norms + 1e-6)),
                               rtol=1e-5)
    model.add_loss(penalty)
    with tf.GradientTape() as tape:
        loss = tf.add_n(model.losses)
    grad = tape.gradient(loss, model.get_layer("r1a_bn").gamma)
    assert grad is not None and np.all(np.isfinite(grad.numpy()))
    with pytest.raises(ValueError, match=r"Argument `rho` must be a finite number > 0. "
                                         r"Received: rho=0"):
        GroupL1Penalty(model, rho=0)
