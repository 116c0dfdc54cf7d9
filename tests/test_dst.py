import json
import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot

import keras_minmax_mtl as kmm
from keras_minmax_mtl.sparsity.scope import prune_scope
from keras_minmax_mtl.cli import main as cli
from keras_minmax_mtl.sparsity import dst
from keras_minmax_mtl.sparsity import pruning
from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.sparsity.densities import active_counts, layer_densities
from keras_minmax_mtl.sparsity.mask_updaters import RigLUpdater, SETUpdater
from tests.helpers import LOSSES, tiny_base_model, tiny_data

ALL = ["trunk", "a", "b", "c"]


def _model(optimizer=None, minmax=True, layers=ALL, seed=0):
    base = dst.prune_for_dst(tiny_base_model(seed=seed), layer_names=layers)
    if minmax:
        model = kmm.MinMaxMultiTask(base, step_size=0.1)
    else:
        model = kmm.MultiTaskModel(base, weighting=kmm.EqualWeighting())
    model.compile(optimizer=optimizer or keras.optimizers.Adam(0.01), loss=LOSSES)
    return model


def _masks(model):
    return [mask.numpy().copy() for w in pruning.pruning_wrappers(model) for _, mask, _ in w.pruning_vars]


def _fit(model, callback, epochs=2, extra=()):
    x, y = tiny_data(n=48)
    model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), callback, *extra])
    return x, y


# ------------------------------------------------------------------ densities
def test_erk_densities_are_capped_at_one_and_the_total_is_exact():
    shapes = [(3, 3, 1, 16), (3, 3, 16, 32), (1536, 64), (64, 32)]
    densities = layer_densities(shapes, 0.9, "erk")
    sizes = [math.prod(s) for s in shapes]
    assert max(densities) <= 1.0
    assert sum(d * n for d, n in zip(densities, sizes)) == pytest.approx(0.1 * sum(sizes))
    # ERK: density ∝ (Σ shape)/(Π shape) among the layers that are not capped.
    raw = [sum(s) / math.prod(s) for s in shapes]
    assert densities[2] / densities[3] == pytest.approx(raw[2] / raw[3])
    counts = active_counts(shapes, 0.9, "erk")
    assert sum(counts) == round(0.1 * sum(sizes))
    assert all(abs(c - d * n) < 1 for c, d, n in zip(counts, densities, sizes))


def test_erk_caps_a_small_layer_and_rescales_the_rest():
    # A 2x2 layer would get density ε·1 > 1: it is kept dense and ε solved again.
    shapes = [(2, 2), (100, 100)]
    densities = layer_densities(shapes, 0.5, "erk")
    assert densities[0] == 1.0
    assert densities[1] == pytest.approx((0.5 * 10004 - 4) / 10000)
    assert active_counts(shapes, 0.5, "erk") == [4, 4998]


def test_uniform_counts_add_up_exactly():
    shapes = [(3, 3), (5, 7), (11, 2)]
    assert layer_densities(shapes, 0.75, "uniform") == [0.25] * 3
    counts = active_counts(shapes, 0.75, "uniform")
    assert sum(counts) == round(0.25 * (9 + 35 + 22)) and counts == [2, 9, 5]  # 2.25, 8.75, 5.5: the largest remainder (8.75) gets the unit


def test_er_ignores_the_kernel_size_and_gives_the_convolution_its_share():
    # multi_digits_network's hidden kernels: ERK leaves conv2 300 of 4608 weights, ER 2006.
    shapes = [(3, 3, 1, 16), (3, 3, 16, 32), (1536, 64), (64, 32), (64, 32), (64, 32)]
    assert active_counts(shapes, 0.9, "erk") == [128, 300, 8892, 534, 533, 533]
    densities = layer_densities(shapes, 0.9, "er")
    assert densities[0] == 1.0  # (1 + 16)/16 > 1/ε: kept dense, ε solved again for the rest
    # ER: density ∝ (n_in + n_out)/(n_in·n_out) among the others; the total is exact.
    epsilon = (10920 - 144) / (48 / 512 * 4608 + 1600 / 98304 * 98304 + 3 * 96 / 2048 * 2048)
    assert densities[1:] == pytest.approx([epsilon * 48 / 512, epsilon * 1600 / 98304]
                                          + [epsilon * 96 / 2048] * 3)
    assert active_counts(shapes, 0.9, "er") == [144, 2006, 7432, 446, 446, 446]


def test_unknown_density_lists_the_options():
    with pytest.raises(ValueError, match=r"`distribution` must be one of \['uniform', 'erk', 'er'\]"):
        layer_densities([(2, 2)], 0.5, "erdos")


# -------------------------------------------------------------- mask updaters
def test_rigl_drops_smallest_magnitudes_and_grows_largest_gradients():
    weight = np.array([0.5, -0.1, 0.3, 0.0, 0.0, 0.0], np.float32)
    mask = np.array([1, 1, 1, 0, 0, 0], np.float32)
    gradient = np.array([9.0, 0.0, 0.0, 0.2, -3.0, 1.0], np.float32)
    new = RigLUpdater().update(weight, mask, gradient, 2, 2, np.random.default_rng(0))
    # Keeps 0.5; drops -0.1 and 0.3; grows the two largest |gradient| outside it: 4 and 5.
    np.testing.assert_array_equal(new, [1, 0, 0, 0, 1, 1])


def test_set_grows_at_random_and_keeps_the_count():
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(20, 10)).astype(np.float32)
    mask = (rng.random((20, 10)) < 0.2).astype(np.float32)
    counts = set()
    for seed in range(5):
        new = SETUpdater().update(weight, mask, None, 10, 10, np.random.default_rng(seed))
        assert new.sum() == mask.sum()
        counts.add(new.tobytes())
    assert len(counts) > 1  # different seeds grow different weights


# --------------------------------------------------------------- HoldMasks
def test_hold_masks_round_trips_through_the_wrapper_config_and_save(tmp_path):
    model = _model()
    wrapper = pruning.pruning_wrappers(model)[0]
    config = wrapper.get_config()
    clone = pruning.PruneLowMagnitude.from_config(config)
    assert isinstance(clone.pruning_schedule, dst.HoldMasks)
    schedule = dst.HoldMasks.from_config(dst.HoldMasks().get_config()["config"])
    should_prune, _ = schedule(tf.constant(5, tf.int64))
    assert not bool(should_prune)
    _fit(model, dst.DynamicSparseTraining(0.5, update_every=2, end_step=6), epochs=1)
    model.save(tmp_path / "dst.keras")
    with prune_scope():
        loaded = keras.models.load_model(tmp_path / "dst.keras")
    for a, b in zip(_masks(loaded), _masks(model)):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------ the callback
class _Probe(keras.callbacks.Callback):
    """After each update: active counts, grown weights and their optimizer slots."""

    def __init__(self, callback):
        super().__init__()
        self.callback = callback
        self.seen = 0
        self.records = []
        self.previous = None

    def on_train_batch_begin(self, batch, logs=None):
        self.previous = _masks(self.model)

    def on_train_batch_end(self, batch, logs=None):
        kernels = [(w, m) for wr in pruning.pruning_wrappers(self.model) for w, m, _ in wr.pruning_vars]
        masks = [m.numpy() for _, m in kernels]
        # What the layers compute with is weight · mask: zero wherever the mask is.
        report = pruning.sparsity_report(self.model)
        zeros = sum(int((m == 0).sum()) for m in masks)
        assert report["overall"]["zeros"] >= zeros
        if len(self.callback.history) == self.seen:
            return
        self.seen = len(self.callback.history)
        record = {"active": [int(m.sum()) for m in masks], "grown_weights": [], "grown_slots": [],
                  "grown": 0}
        for (weight, mask), old in zip(kernels, self.previous):
            grown = (mask.numpy() > 0) & (old == 0)
            record["grown"] += int(grown.sum())
            record["grown_weights"].append(np.abs(weight.numpy()[grown]).max(initial=0.0))
            for slot in dst.optimizer_slots(self.model.optimizer, weight):
                record["grown_slots"].append(np.abs(slot.numpy()[grown]).max(initial=0.0))
        self.records.append(record)


@pytest.mark.parametrize("method", ["rigl", "set"])
@pytest.mark.parametrize("optimizer, slots", [
    (lambda: keras.optimizers.SGD(0.1, momentum=0.9), 1),
    (lambda: keras.optimizers.Adam(0.01), 2),
])
def test_updates_keep_counts_and_grown_weights_start_at_zero_with_reset_slots(method, optimizer, slots):
    model = _model(optimizer())
    callback = dst.DynamicSparseTraining(0.5, method=method, density="uniform", update_every=2,
                                         end_step=10, drop_fraction=0.5)
    probe = _Probe(callback)
    _fit(model, callback, extra=[probe])
    assert callback.initial_counts == [24, 12, 12, 4]
    assert len(probe.records) == 5  # steps 2, 4, 6, 8, 10 of 12
    assert all(r["active"] == [24, 12, 12, 4] for r in probe.records)
    assert sum(r["grown"] for r in probe.records) > 0
    for record in probe.records:
        assert max(record["grown_weights"]) == 0.0
        assert len(record["grown_slots"]) == 4 * slots
        assert max(record["grown_slots"]) == 0.0
    # The history's turnover is the grown fraction of the active weights.
    first = callback.history[0]["layers"]["trunk/kernel"]
    assert first["turnover"] == first["grown"] / 24 and first["active"] == 24
    # Masked weights are zero: in what the layers compute with, and in the
    # variables once tfmot re-applies the masks at the end of an epoch.
    for wrapper in pruning.pruning_wrappers(model):
        for weight, mask, _ in wrapper.pruning_vars:
            assert np.all(weight.numpy()[mask.numpy() == 0] == 0)
    assert pruning.sparsity_report(model)["overall"]["sparsity"] == 0.5
    # One training forward pass per step: tfmot's step counts the 12 steps.
    assert all(int(w.pruning_step.numpy()) == 12 for w in pruning.pruning_wrappers(model))


def test_rigl_grows_from_the_training_step_gradient():
    model = _model(keras.optimizers.SGD(0.0), minmax=False)  # lr 0: the weights do not move
    x, y = tiny_data(n=8)
    kernels = [w for wr in pruning.pruning_wrappers(model) for w, _, _ in wr.pruning_vars]
    dst.initialize_masks(model, 0.5, "uniform")
    request = model.request_gradients(kernels)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0,
              callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    assert all(np.all(g.numpy() == 0) for g in request.gradients)  # not requested: nothing stored
    request.requested.assign(True)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0,
              callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    with tf.GradientTape() as tape:
        out = model(x, training=False)
        losses = [tf.reduce_mean(keras.losses.get(LOSSES[t])(y[t], out[t])) for t in "abc"]
        objective = tf.add_n(losses) / 3.0  # equal weights 1/K, scale 1
    expected = tape.gradient(objective, kernels)
    for got, want in zip(request.gradients, expected):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6)
    model.release_gradients(request)


class _CountingSET(SETUpdater):
    """SET that counts its updates (not registered: its config cannot be saved)."""

    calls = 0

    def update(self, *args):
        type(self).calls += 1
        return super().update(*args)


def test_a_mask_updater_instance_is_the_method_and_reruns_with_a_seed_are_identical():
    # SETUpdater() gives exactly the masks of method="set" (two runs of seed 3, from new models:
    # a rerun with the same seed is identical) and seed 4 others; a subclass is called once per
    # kernel and update (steps 2, 4, 6, 8, 10 of 12; 4 kernels).
    masks = []
    for method, seed in (("set", 3), (SETUpdater(), 3), (_CountingSET(), 3), ("set", 4)):
        model = _model()
        callback = dst.DynamicSparseTraining(0.5, method=method, update_every=2, end_step=10,
                                             seed=seed)
        _fit(model, callback)
        masks.append(_masks(model))
    assert all(np.array_equal(a, b) for run in masks[1:3] for a, b in zip(masks[0], run))
    assert not all(np.array_equal(a, b) for a, b in zip(masks[0], masks[3]))
    assert _CountingSET.calls == 5 * 4


def test_the_config_round_trips_with_a_name_or_a_registered_updater():
    for method in ("paper", RigLUpdater(), SETUpdater()):
        callback = dst.DynamicSparseTraining(0.8, method=method, update_every=3, end_step=9,
                                             seed=2, grow_ratio=0.1 if method == "paper" else None)
        config = json.loads(json.dumps(callback.get_config()))
        again = dst.DynamicSparseTraining.from_config(config)
        assert again.get_config() == config
        assert type(again.updater) is type(callback.updater)
        assert (config["sparsity"], config["update_every"], config["end_step"], config["seed"]) == (
            0.8, 3, 9, 2)
    assert dst.DynamicSparseTraining.from_config(
        dst.DynamicSparseTraining(method=SETUpdater()).get_config()).method.__class__ is SETUpdater
    with pytest.raises(ValueError, match=r"`method` .* _CountingSET, whose class is not registered"):
        dst.DynamicSparseTraining(method=_CountingSET()).get_config()


def test_static_masks_do_not_change_without_the_callback():
    model = _model()
    counts = dst.initialize_masks(model, 0.75, "erk", seed=1)
    before = _masks(model)
    x, y = tiny_data(n=48)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0,
              callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    assert sum(counts) == round(0.25 * 104)
    for a, b in zip(before, _masks(model)):
        np.testing.assert_array_equal(a, b)


def test_paper_variant_updates_on_epochs_and_density_drifts_up():
    model = _model()
    callback = dst.DynamicSparseTraining(0.75, method="paper", density="uniform", update_every=1,
                                         end_step=3, drop_fraction=0.2, grow_ratio=0.5)
    _fit(model, callback, epochs=4)
    assert [h["step"] for h in callback.history] == [1, 2, 3]
    total = [sum(r["active"] for r in h["layers"].values()) for h in callback.history]
    assert sum(callback.initial_counts) < total[0] < total[1] < total[2]


def test_works_with_a_baseline_weighting():
    model = _model(minmax=False)
    callback = dst.DynamicSparseTraining(0.5, update_every=2, end_step=10)
    _fit(model, callback)
    assert len(callback.history) == 5


def test_prune_for_dst_wraps_hidden_layers_and_leaves_the_model_alone():
    base = tiny_base_model()
    wrapped = dst.prune_for_dst(base)
    assert [w.layer.name for w in pruning.pruning_wrappers(wrapped)] == ["trunk"]
    assert pruning.pruning_wrappers(base) == []
    np.testing.assert_array_equal(wrapped.get_layer("prune_low_magnitude_trunk").layer.kernel.numpy(),
                                  base.get_layer("trunk").kernel.numpy())


# -------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, message", [
    (dict(drop_fraction=0), r"`drop_fraction` must be in \(0, 1\]. Received: drop_fraction=0"),
    (dict(drop_fraction=1.5), r"`drop_fraction` must be in \(0, 1\]. Received: drop_fraction=1.5"),
    (dict(update_every=0), r"`update_every` must be an integer > 0. Received: update_every=0"),
    (dict(update_every=10, end_step=5), r"`end_step` must be an integer >= update_every \(10\)"),
    (dict(method="snip"), r"`method` must be one of \['rigl', 'set', 'paper'\]"),
    (dict(method=RigLUpdater), r"`method` must be a `MaskUpdater` instance, not the class: pass "
                               r"`RigLUpdater\(\)`. Received: method=RigLUpdater"),
    (dict(method=["rigl"]), r"`method` must be one of \['rigl', 'set', 'paper'\] or a `MaskUpdater` "
                            r"instance \(e.g. `RigLUpdater\(\)`\). Received: method=\['rigl'\]"),
    (dict(method=SETUpdater(), grow_ratio=0.2), r"`grow_ratio` is only used by method='paper'"),
    (dict(density="erdos"), r"`density` must be one of \['uniform', 'erk', 'er'\]"),
    (dict(sparsity=1.0), r"`sparsity` must be in \(0, 1\)"),
    (dict(grow_ratio=0.2), r"`grow_ratio` is only used by method='paper'"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dst.DynamicSparseTraining(**kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(update_every=10, end_step=5), dict(update_every=0), dict(update_every=2.0),
    dict(end_step=True), dict(drop_fraction=0), dict(drop_fraction=float("nan")),
    dict(decay="linear"), dict(decay=["cosine"])])
def test_the_schedule_is_checked_by_the_shared_maths(kwargs):
    from keras_minmax_mtl.sparsity import maths

    schedule = {"update_every": 100, "end_step": None, "drop_fraction": 0.3, "decay": "cosine",
                **kwargs}
    with pytest.raises(ValueError) as shared:
        maths.check_dst_schedule(**schedule)
    with pytest.raises(ValueError) as callback:
        dst.DynamicSparseTraining(**kwargs)
    assert str(callback.value) == str(shared.value)


def test_the_schedule_rules_and_the_default_end_step():
    from keras_minmax_mtl.sparsity import maths

    assert maths.check_dst_schedule(np.int64(10), np.int64(20), 1, "constant") == (10, 20, 1.0)
    assert [type(v) for v in maths.check_dst_schedule(np.int64(10), np.int64(20), 1, "constant")
            ] == [int, int, float]
    with pytest.raises(ValueError) as info:
        maths.check_dst_schedule(10, 5, 0.3, "cosine")
    assert str(info.value) == ("Argument `end_step` must be an integer >= update_every (10): the "
                               "first update happens at step `update_every`. Received: end_step=5")
    assert maths.dst_end_step(None, 1000, 100) == 750 and maths.dst_end_step(40, 1000, 10) == 40
    assert maths.dst_end_step(None, 4, 3) == 3
    with pytest.raises(ValueError) as info:
        maths.dst_end_step(None, 3, 3, "epochs")
    assert str(info.value) == ("Argument `end_step` defaults to 75% of the training epochs (2), "
                               "which is before the first update at update_every=3. Pass a "
                               "smaller `update_every` or an explicit `end_step`.")
    with pytest.raises(ValueError) as info:
        maths.dst_end_step(None, None, 1)
    assert str(info.value) == ("Argument `end_step` is required when `fit` does not know the "
                               "number of training steps (e.g. a dataset of unknown length). "
                               "Received: end_step=None")
    assert dst.DECAYS == maths.DST_DECAYS == ("cosine", "constant")


def test_model_without_wrappers_is_refused_with_how_to_wrap():
    model = kmm.MinMaxMultiTask(tiny_base_model())
    model.compile("sgd", loss=LOSSES)
    x, y = tiny_data()
    with pytest.raises(ValueError, match=r"no tfmot pruning wrappers.*prune_for_dst"):
        model.fit(x, y, verbose=0, callbacks=[dst.DynamicSparseTraining(end_step=100)])


def test_wrappers_with_another_schedule_are_refused():
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=0)
    model = kmm.MinMaxMultiTask(tfmot.sparsity.keras.prune_low_magnitude(tiny_base_model(),
                                                                         pruning_schedule=schedule))
    model.compile("sgd", loss=LOSSES)
    with pytest.raises(ValueError, match=r"\['a', 'b', 'c', 'trunk'\] use a schedule other than `HoldMasks`"):
        _fit(model, dst.DynamicSparseTraining(end_step=100))


def test_rigl_needs_a_multitask_model():
    base = dst.prune_for_dst(tiny_base_model())
    base.compile("sgd", loss=[LOSSES[t] for t in "abc"])
    with pytest.raises(ValueError, match=r"MultiTaskModel\(base_model\).*method='set'"):
        _fit(base, dst.DynamicSparseTraining(end_step=100))


# ----------------------------------------------------------------------- CLI
def test_cli_trains_with_rigl_and_reports_turnover_and_layer_sparsity(tmp_path, capsys):
    out = tmp_path / "run"
    cli.main(["train", "--pruning", "dst", "--dst-method", "rigl", "--sparsity", "0.9",
              "--density", "erk", "--dst-update-every", "2", "--epochs", "1", "--out", str(out),
              "--train-examples", "256", "--test-examples", "64", "--verbose", "0"])
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert [u["step"] for u in metrics["pruning"]["updates"]] == [2]  # end: 75% of 4 steps = 3
    assert "mask turnover per update" in printed and "trunk_dense/kernel" in printed
    assert metrics["pruning"]["sparsity"]["overall"]["sparsity"] >= 0.9
    with prune_scope():
        loaded = keras.models.load_model(out / "model.keras")
    masks = _masks(loaded)
    assert sum(int(m.sum()) for m in masks) == round(0.1 * sum(m.size for m in masks))
    assert isinstance(pruning.pruning_wrappers(loaded)[0].pruning_schedule, dst.HoldMasks)


def test_cli_refuses_an_unknown_dst_method(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--pruning", "dst", "--dst-method", "snip"])
    assert "invalid choice: 'snip' (choose from 'rigl', 'set', 'paper', 'static')" in capsys.readouterr().err
