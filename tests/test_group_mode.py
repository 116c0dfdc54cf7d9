"""Reweighted ℓ1 in `sparsity_type="group"`: channel dependency groups through the three stages."""
import math

import numpy as np
import pytest
import tensorflow as tf

import keras_minmax_mtl as kmm
from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.export.surgery import shrink
from keras_minmax_mtl.sparsity import pruning
from keras_minmax_mtl.sparsity.dependency import (
    group_families,
    group_scores,
    group_slices,
    task_taylor_importance,
)
from keras_minmax_mtl.sparsity.reweighted import ReweightedL1Penalty, prune_reweighted_l1
from keras_minmax_mtl.sparsity.structured import prune_channel_groups, pruned_groups


def two_group_model():
    """x (3) -> Dense(2, relu) 'h' -> heads 'a' and 'b': the two units of 'h' are the two groups."""
    inputs = keras.Input((3,), name="x")
    h = keras.layers.Dense(2, activation="relu", name="h")(inputs)
    model = keras.Model(inputs, [keras.layers.Dense(1, name="a")(h),
                                 keras.layers.Dense(1, name="b")(h)], name="two")
    model.get_layer("h").set_weights([np.array([[1.0, 0.0], [2.0, 0.0], [2.0, 3.0]]),
                                      np.array([0.5, -0.5])])
    model.get_layer("a").set_weights([np.array([[0.0], [4.0]]), np.array([1.0])])
    model.get_layer("b").set_weights([np.array([[0.0], [0.0]]), np.array([2.0])])
    return model


def test_group_penalty_is_rho_times_the_hand_computed_group_norms_and_bad_values_are_refused():
    # Group 0: h's column 0 (1, 2, 2) and the rows 0 of 'a' (0) and 'b' (0): ‖g0‖ = 3.
    # Group 1: h's column 1 (0, 0, 3) and the rows 1 of 'a' (4) and 'b' (0): ‖g1‖ = 5.
    wrapped, callbacks = prune_reweighted_l1(two_group_model(), 0.5, dense_steps=0,
                                             reweighted_steps=2, rho=0.1, sparsity_type="group")
    assert [w.layer.name for w in pruning.pruning_wrappers(wrapped)] == ["h"]
    penalty = ReweightedL1Penalty.of(wrapped)
    assert [g.producers for g in penalty.groups] == [(("h", 0),), (("h", 1),)]
    assert float(penalty()) == 0.0                      # coefficient 0 outside the stage
    penalty.set_coefficient(0.1)
    np.testing.assert_allclose(float(penalty()), 0.1 * (3 + 5) / (1 + 1e-6), rtol=1e-6)
    penalty.refresh()                                   # ‖g_ref‖ = (3, 5): the reweighting
    np.testing.assert_allclose(float(penalty()), 0.1 * (3 / (3 + 1e-6) + 5 / (5 + 1e-6)),
                               rtol=1e-6)
    np.testing.assert_allclose(float(tf.add_n(wrapped.losses)), float(penalty()), rtol=1e-6)

    base = two_group_model()
    with pytest.raises(ValueError, match=r"Argument `sparsity_type` must be one of "
                                         r"\['unstructured', 'filter', 'group'\]\. "
                                         r"Received: sparsity_type='groups'"):
        prune_reweighted_l1(base, 0.5, 1, 1, rho=1.0, sparsity_type="groups")
    with pytest.raises(ValueError, match=r"Argument `group_score` must be one of \['norm', "
                                         r"'worst', 'weighted'\]\. Received: group_score='best'"):
        prune_reweighted_l1(base, 0.5, 1, 1, rho=1.0, sparsity_type="group", group_score="best")
    with pytest.raises(ValueError, match=r"Argument `score_data` is required with "
                                         r"group_score='worst'.*Received: score_data=None"):
        prune_reweighted_l1(base, 0.5, 1, 1, rho=1.0, sparsity_type="group", group_score="worst")
    with pytest.raises(ValueError, match=r"Argument `score_data` must be a finite dataset"):
        prune_reweighted_l1(base, 0.5, 1, 1, rho=1.0, sparsity_type="group", group_score="worst",
                            score_data=tf.data.Dataset.from_tensors((1.0, 1.0)).repeat())
    with pytest.raises(ValueError, match=r"Argument `group_score` ranks channel groups and needs "
                                         r"sparsity_type='group'\. Received: "
                                         r"group_score='worst' with sparsity_type='filter'"):
        prune_reweighted_l1(base, 0.5, 1, 1, rho=1.0, sparsity_type="filter", group_score="worst")
    with pytest.raises(ValueError, match=r"Argument `target_sparsity`.*Received: "
                                         r"target_sparsity=1\.0"):
        prune_reweighted_l1(base, 1.0, 1, 1, rho=1.0, sparsity_type="group")
    inputs = keras.Input((5, 2))
    h = keras.layers.Flatten()(keras.layers.Conv1D(4, 3, name="conv1d")(inputs))
    conv1d = keras.Model(inputs, [keras.layers.Dense(3, name=t)(h) for t in "ab"])
    with pytest.raises(ValueError, match=r"sparsity_type='group' removes channel groups made by "
                                         r"Dense and Conv2D layers .* layer 'conv1d' of type "
                                         r"Conv1D"):
        prune_reweighted_l1(conv1d, 0.5, 1, 1, rho=1.0, sparsity_type="group")


def mobile_trunk():
    """stem conv -> BN -> relu; expand 1x1 -> BN -> relu6 -> ZeroPadding2D -> depthwise -> BN ->
    relu6 -> project 1x1 -> BN, added back to the stem (a residual inverted block)."""
    x = keras.Input((6, 6, 3), name="trunk_in")
    stem = keras.layers.ReLU(name="stem_relu")(keras.layers.BatchNormalization(name="stem_bn")(
        keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="stem")(x)))
    h = keras.layers.BatchNormalization(name="expand_bn")(
        keras.layers.Conv2D(6, 1, name="expand")(stem))
    h = keras.layers.ZeroPadding2D(1, name="pad")(keras.layers.ReLU(6.0, name="expand_relu")(h))
    h = keras.layers.DepthwiseConv2D(3, name="dw")(h)
    h = keras.layers.ReLU(6.0, name="dw_relu")(keras.layers.BatchNormalization(name="dw_bn")(h))
    h = keras.layers.BatchNormalization(name="project_bn")(
        keras.layers.Conv2D(4, 1, name="project")(h))
    return keras.Model(x, keras.layers.Add(name="add")([stem, h]), name="trunk")


def mobile_net():
    inputs = keras.Input((6, 6, 3), name="image")
    h = keras.layers.GlobalAveragePooling2D(name="pool")(mobile_trunk()(inputs))  # nested trunk
    h = keras.layers.Dense(4, activation="relu", name="hidden")(h)
    return keras.Model(inputs, {"cls": keras.layers.Dense(3, name="cls")(h),
                                "reg": keras.layers.Dense(1, name="reg")(h)}, name="mobile")


LOSSES = {"cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True), "reg": "mse"}


def test_group_pipeline_on_a_nested_mobile_trunk_holds_the_groups_at_zero_and_shrinks_exactly():
    tf.keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6, 6, 3)).astype(np.float32)
    y = {"cls": (np.arange(16) % 3).astype(np.int32),
         "reg": rng.normal(size=16).astype(np.float32)}          # (N,) labels, (N, 1) head
    wrapped, callbacks = prune_reweighted_l1(mobile_net(), 0.5, dense_steps=1, reweighted_steps=1,
                                             rho=1e-2, refreshes=0, sparsity_type="group",
                                             group_score="worst", score_data=[(x, y)])
    model = kmm.MinMaxMultiTask(wrapped, step_size=0.5)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=LOSSES, run_eagerly=True)
    # Dense and reweighted stages: steps 1 and 2 (one batch of 16 per epoch); the prune is step 3.
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=callbacks).history
    assert history["regularization_loss"][0] == 0.0 and history["regularization_loss"][1] > 0.0
    stages = callbacks[1]
    candidates = pruned_groups(model, stages.groups)
    families = group_families(candidates)
    assert sorted(families) == [("expand",), ("hidden",), ("project", "stem")]   # the Add ties
    tied = next(g for g in candidates if g.family == ("project", "stem"))
    assert tied.members == (("project_bn", 0), ("stem_bn", 0))
    assert next(g for g in candidates if g.family == ("expand",)).members == (
        ("dw", 0), ("dw_bn", 0), ("expand_bn", 0))
    # What the prune will rank by: the per-task Taylor importance (labels aligned as compile
    # aligns them: (N,) regression labels give the same as (N, 1)), worst task under the
    # min-max weights, and the lowest round(0.5 n) of every family removed.
    _, importance = task_taylor_importance(model.base_model, candidates, [(x, y)], LOSSES)
    _, column = task_taylor_importance(model.base_model, candidates,
                                       [(x, {**y, "reg": y["reg"][:, None]})], LOSSES)
    np.testing.assert_allclose(importance, column, rtol=1e-6)
    assert np.all(importance.sum(axis=1) > 0)
    weights = model.task_weights.numpy().astype(np.float64)
    scores = dict(zip([g.index for g in candidates],
                      group_scores(importance, weights / weights.sum(), rule="worst")))
    want = sorted(k for members in families.values() for k in sorted(
        members, key=lambda k: (scores[k], k))[:math.floor(0.5 * len(members) + 0.5)])

    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=callbacks)  # prune, step 3
    assert stages.removed.removed == want and len(want) == 2 + 2 + 3
    for epoch in range(2):   # retraining: every weight entry of a removed group stays exactly 0
        removed = [stages.groups[k] for k in want]
        for entries in group_slices(model.base_model, removed):
            for variable, index, _ in entries:
                np.testing.assert_array_equal(variable.numpy()[index], 0.0)
        for wrapper in pruning.pruning_wrappers(model):
            _, mask, _ = wrapper.pruning_vars[0]
            units = [u for g in removed for name, u in g.producers if name == wrapper.layer.name]
            np.testing.assert_array_equal(mask.numpy()[..., units], 0.0)
            assert np.all(np.delete(mask.numpy(), units, axis=-1) == 1.0)
        if epoch == 0:
            model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=callbacks)  # step 4
    kept = [g for g in candidates if g.index not in want]
    assert all(any(np.any(v.numpy()[i] != 0) for v, i, _ in entries)
               for entries in group_slices(model.base_model, kept))

    # The shrunk model is the masked one, and what plain Keras reports for its task losses.
    small = shrink(model)
    assert small.get_layer("stem").filters == 2 and small.get_layer("expand").filters == 3
    assert small.get_layer("dw").depthwise_kernel.shape[2] == 3
    assert small.count_params() < model.base_model.count_params() / 2
    masked, got = model.base_model(x, training=False), small(x, training=False)
    for task in ("cls", "reg"):
        np.testing.assert_allclose(got[task].numpy(), masked[task].numpy(), atol=1e-5)
    small.compile(loss=LOSSES, run_eagerly=True)
    plain = small.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    ours = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    for task in ("cls", "reg"):
        np.testing.assert_allclose(ours[f"{task}_loss"], plain[f"{task}_loss"], rtol=1e-5)


def test_global_allocation_ranks_the_groups_across_families_at_the_prune():
    # Stopped just before the prune, the model is pruned both ways by hand and restored: the
    # stages' prune must be the global one (dependency.prune_groups' ranking="global", round(0.5
    # * 14) = 7 groups of the 14, every family keeping one), not the per-family one.
    tf.keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 6, 6, 3)).astype(np.float32)
    y = {"cls": (np.arange(16) % 3).astype(np.int32),
         "reg": rng.normal(size=(16, 1)).astype(np.float32)}
    wrapped, callbacks = prune_reweighted_l1(mobile_net(), 0.5, dense_steps=1, reweighted_steps=1,
                                             rho=1e-2, refreshes=0, sparsity_type="group",
                                             allocation="global")
    wrapped.compile(optimizer=keras.optimizers.Adam(0.05), loss=LOSSES)
    wrapped.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=callbacks)  # steps 1, 2
    stages = callbacks[1]
    hidden = next(w for w in pruning.pruning_wrappers(wrapped) if w.layer.name == "hidden")
    hidden.layer.kernel.assign(hidden.layer.kernel * [1.0, 1.0, 1.0, 20.0])  # one unit dominates
    before = wrapped.get_weights()
    chosen = {}
    for ranking in ("global", "per_family"):
        chosen[ranking] = prune_channel_groups(wrapped, 0.5, groups=stages.groups,
                                               ranking=ranking).removed
        wrapped.set_weights(before)
    families = group_families(pruned_groups(wrapped, stages.groups))
    assert sum(map(len, families.values())) == 14 and len(chosen["global"]) == 7
    # Per family 'hidden' loses round(0.5 * 4) = 2; globally its three small units, 1/20 of the
    # fourth, rank lowest of all after the division by the family mean, and all three go.
    assert [len(set(families[("hidden",)]) & set(chosen[r])) for r in ("per_family", "global")] \
        == [2, 3]
    assert all(set(members) - set(chosen["global"]) for members in families.values())

    wrapped.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=callbacks)  # the prune
    assert stages.removed.removed == chosen["global"]
    small = shrink(wrapped)
    np.testing.assert_allclose(small(x)["reg"].numpy(), wrapped(x)["reg"].numpy(), atol=1e-5)


def test_cli_group_mode_flags_defaults_and_one_line_errors(capsys):
    from keras_minmax_mtl.cli import main as cli
    from keras_minmax_mtl.sparsity.methods import ReweightedL1

    parser = cli.build_parser()
    common = ["train", "--pruning", "reweighted_l1", "--sparsity-type", "group",
              "--sparsity", "0.5"]
    args = parser.parse_args([*common, "--group-score", "worst"])
    cli.check_train_arguments(parser, args)
    assert str(args.out) == "runs/multi_digits-minmax-reweighted_l1-group-0.5-e20-s0"
    cli.check_train_arguments(parser, parser.parse_args([*common, "--allocation", "global"]))
    for argv, line in (
            (["train", "--pruning", "reweighted_l1", "--group-score", "worst"],
             "kmm: error: argument --group-score: ranks channel groups and needs --sparsity-type "
             "group (received --sparsity-type unstructured). Received --group-score worst"),
            ([*common, "--group-score", "best"],
             "kmm: error: argument --group-score: invalid choice: 'best' (choose from 'norm', "
             "'worst', 'weighted')")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == line

    # The method: filter mode's rho, uniform allocation, and the Taylor scores on the first
    # training batches (set in `prepare`, before anything trains).
    method = ReweightedL1(sparsity=0.5, sparsity_type="group", group_score="worst",
                          dense_epochs=1, reweighted_epochs=1, retrain_epochs=1)
    assert (method.rho, method.allocation) == (ReweightedL1.GROUP_RHO, "uniform")
    network = method.wrap(two_group_model(), steps_per_epoch=2)
    train = tf.data.Dataset.from_tensor_slices(
        (np.zeros((40, 3), np.float32), {"a": np.zeros(40), "b": np.zeros(40)})).batch(2)
    model = kmm.MinMaxMultiTask(network)
    assert method.prepare(model, train) is model
    stages = method.callbacks[-1]
    assert (stages.sparsity_type, stages.group_score, stages.prune_step) == ("group", "worst", 5)
    assert int(stages.score_data.cardinality()) == ReweightedL1.GROUP_SCORE_BATCHES
    assert "ranked by worst" in method.describe()
    method = ReweightedL1(sparsity=0.5, sparsity_type="group", allocation="global",
                          dense_epochs=1, reweighted_epochs=1, retrain_epochs=1)
    method.wrap(two_group_model(), steps_per_epoch=2)
    assert "removing 50.00% of the channel groups (global, ranked by norm)" in method.describe()
    assert method.callbacks[-1].allocation == "global"
