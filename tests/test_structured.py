import json
import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot

import keras_minmax_mtl as kmm
from keras_minmax_mtl.sparsity.scope import prune_scope
from keras_minmax_mtl.sparsity import pruning
from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.sparsity.policy import MultiTaskPruningPolicy
from keras_minmax_mtl.sparsity.pruning import PruneLowMagnitude
from keras_minmax_mtl.sparsity.reweighted import (
    ReweightedL1Penalty,
    ReweightedL1Schedule,
    ReweightedL1Stages,
    prune_reweighted_l1,
)
from keras_minmax_mtl.sparsity.structured import (
    RemovedUnits,
    smallest_units,
    structured_report,
    unit_norms,
    units_to_remove,
    zero_rows_of_removed_units,
)
from tests.helpers import LOSSES, tiny_base_model, tiny_data

TASKS = ("a", "b", "c")
STEPS = 4  # 32 examples, batch 8


def conv_bn_model(seed=0):
    """Conv2D(4) -> BatchNorm -> ReLU -> Flatten -> Dense(6) -> one head per task."""
    init = lambda i: keras.initializers.GlorotUniform(seed=seed * 100 + i)  # noqa: E731
    inputs = keras.Input((4, 4, 1), name="image")
    h = keras.layers.Conv2D(4, 3, padding="same", kernel_initializer=init(0), name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    h = keras.layers.Dense(6, activation="relu", kernel_initializer=init(1),
                           bias_initializer="ones", name="hidden")(h)
    outputs = [keras.layers.Dense(1 if LOSSES[t] == "mse" else 3,
                                  activation=None if LOSSES[t] == "mse" else "softmax",
                                  kernel_initializer=init(2 + i), name=t)(h)
               for i, t in enumerate(TASKS)]
    return keras.Model(inputs, outputs, name="conv_bn")


def image_data(n=32, seed=0):
    features, labels = tiny_data(n=n, seed=seed)
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4, 4, 1)).astype(np.float32) + features[:, :1, None, None], labels


def compiled(wrapped):
    model = kmm.MinMaxMultiTask(wrapped, step_size=0.1)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss={t: LOSSES[t] for t in TASKS})
    return model


def filter_pipeline(base, fraction=0.5, rho=1e-2):
    """Epoch 1 dense, epoch 2 reweighted (group penalty), prune at the first step of epoch 3."""
    wrapped, callbacks = prune_reweighted_l1(base, fraction, dense_steps=STEPS,
                                             reweighted_steps=STEPS, rho=rho, refreshes=1,
                                             sparsity_type="filter")
    return compiled(wrapped), callbacks


def kernel_of(model, name):
    wrapper = next(w for w in pruning.pruning_wrappers(model) if w.layer.name == name)
    (weight, mask, _), = wrapper.pruning_vars
    return wrapper, weight.numpy(), mask.numpy()


# ------------------------------------------------------------------ unit maths
def test_unit_norms_match_numpy_for_dense_and_conv_kernels_with_zero_gradient_at_zero():
    rng = np.random.default_rng(0)
    for shape in [(5, 7), (3, 3, 2, 4)]:
        kernel = rng.normal(size=shape)
        want = np.sqrt((kernel.reshape(-1, shape[-1]) ** 2).sum(axis=0))
        np.testing.assert_allclose(unit_norms(kernel).numpy(), want, rtol=1e-12)
    kernel = tf.Variable([[3.0, 0.0], [4.0, 0.0]])
    with tf.GradientTape() as tape:
        norms = unit_norms(kernel)
        total = tf.reduce_sum(norms)
    np.testing.assert_array_equal(norms.numpy(), [5.0, 0.0])
    np.testing.assert_allclose(tape.gradient(total, kernel).numpy(), [[0.6, 0.0], [0.8, 0.0]])


def test_units_to_remove_rounds_halves_up_and_refuses_emptying_a_layer():
    assert [units_to_remove(u, f, "x") for u, f in
            [(8, 0.5), (3, 0.5), (10, 0.25), (10, 0.0), (16, 0.9)]] == [4, 2, 3, 0, 14]
    with pytest.raises(ValueError, match=r"unit fraction of 0\.75 would remove all 2 units of "
                                         r"layer 'trunk'"):
        units_to_remove(2, 0.75, "trunk")
    for fraction in (1.0, -0.1, True):
        with pytest.raises(ValueError, match=rf"`fraction`.* must be in \[0, 1\)\. Received: "
                                             rf"fraction={fraction!r}"):
            units_to_remove(8, fraction, "trunk")


def test_smallest_units_takes_the_smallest_norms_ties_by_index():
    kernel = np.array([[1.0, 0.0, 3.0, 0.0, 2.0], [0.0, 1.0, 4.0, 0.0, 0.0]])  # norms 1 1 5 0 2
    assert smallest_units(kernel, 0.6, "x") == [0, 1, 3]  # round(3.0) = 3: 0, then the ties 1, 1
    assert smallest_units(kernel, 0.2, "x") == [3]


def test_group_penalty_is_exact_on_known_weights():
    wrapped, _ = prune_reweighted_l1(tiny_base_model(), 0.5, 1, 1, rho=1.0, epsilon=0.5,
                                     sparsity_type="filter")
    penalty = ReweightedL1Penalty.of(wrapped)
    assert penalty.sparsity_type == "filter"
    assert [w.name.split("/")[0] for w in penalty.weights] == ["trunk"]
    kernel, = penalty.weights
    reference = np.zeros((6, 8), np.float32)
    reference[0] = np.arange(8)  # reference unit norms 0, 1, ..., 7
    kernel.assign(reference)
    penalty.refresh()
    current = np.zeros((6, 8), np.float32)
    current[:2] = 3.0  # every unit norm is now sqrt(18)
    kernel.assign(current)
    penalty.set_coefficient(0.25)
    want = 0.25 * sum(math.sqrt(18.0) / (u + 0.5) for u in range(8))
    assert float(penalty()) == pytest.approx(want, rel=1e-6)
    assert float(tf.add_n(wrapped.losses)) == pytest.approx(want, rel=1e-6)


# ------------------------------------------------------------------ schedule
def test_filter_schedule_never_asks_tfmot_to_prune_and_round_trips_its_config():
    schedule = ReweightedL1Schedule(0.5, prune_step=7, begin_step=3, sparsity_type="filter")
    assert not any(bool(schedule(tf.constant(s, tf.int64))[0]) for s in range(12))
    assert float(schedule(7)[1]) == 0.5
    config = schedule.get_config()
    assert config == {"class_name": "keras_minmax_mtl>ReweightedL1Schedule",
                      "config": {"target_sparsity": 0.5, "prune_step": 7, "begin_step": 3,
                                 "sparsity_type": "filter", "calls_per_step": 1}}
    assert ReweightedL1Schedule.from_config(config["config"]).get_config() == config
    # Configs saved before the option existed still load, as unstructured schedules.
    old = ReweightedL1Schedule.from_config({"target_sparsity": 0.5, "prune_step": 7,
                                            "begin_step": 3})
    assert old.sparsity_type == "unstructured" and bool(old(7)[0])
    wrapper = PruneLowMagnitude(keras.layers.Dense(3), pruning_schedule=schedule)
    rebuilt = PruneLowMagnitude.from_config(wrapper.get_config())
    assert rebuilt.pruning_schedule.get_config() == config


# ------------------------------------------------------------------ pipeline
def test_filter_prune_removes_exactly_the_smallest_whole_units_and_keeps_them_removed():
    model, callbacks = filter_pipeline(tiny_base_model(), fraction=0.5)
    x, y = tiny_data()
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=callbacks).history
    assert history["regularization_loss"][0] == 0.0 and history["regularization_loss"][1] > 0.0
    _, before, mask = kernel_of(model, "trunk")
    assert mask.min() == 1.0  # nothing removed before the prune step
    want = smallest_units(before, 0.5, "trunk")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=callbacks)  # prune at step 9
    assert callbacks[1].removed.removed == {"trunk": want} and len(want) == 4
    for epoch in range(2):
        wrapper, kernel, mask = kernel_of(model, "trunk")
        np.testing.assert_array_equal(mask[:, want], 0.0)
        np.testing.assert_array_equal(np.delete(mask, want, axis=1), 1.0)
        np.testing.assert_array_equal(kernel[:, want], 0.0)
        np.testing.assert_array_equal(wrapper.layer.bias.numpy()[want], 0.0)
        trunk = keras.Model(model.base_model.input, wrapper.output)  # tanh(0) = 0 exactly
        np.testing.assert_array_equal(trunk(x).numpy()[:, want], 0.0)
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=callbacks)
    report = structured_report(model)
    assert report["layers"] == {"trunk": {"units": 8, "removed": 4, "fraction": 0.5,
                                          "removed_units": want}}
    # The task output layers are not wrapped and keep all their units.
    assert [w.layer.name for w in pruning.pruning_wrappers(model)] == ["trunk"]
    for task in TASKS:
        assert np.all(unit_norms(model.base_model.get_layer(task).kernel).numpy() > 0)
    assert structured_report(pruning.strip_pruning(model))["layers"]["trunk"]["removed"] == 4


def test_conv_units_bias_and_following_batch_norm_are_held_at_zero():
    model, callbacks = filter_pipeline(conv_bn_model(), fraction=0.5)
    x, y = image_data()
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=callbacks)
    removed = callbacks[1].removed.removed
    assert {name: len(units) for name, units in removed.items()} == {"conv": 2, "hidden": 3}
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=callbacks)
    conv, kernel, mask = kernel_of(model, "conv")
    units = removed["conv"]
    np.testing.assert_array_equal(kernel[..., units], 0.0)
    np.testing.assert_array_equal(mask[..., units], 0.0)
    np.testing.assert_array_equal(conv.layer.bias.numpy()[units], 0.0)
    norm = model.base_model.get_layer("bn")
    for variable in (norm.gamma, norm.beta, norm.moving_mean):
        np.testing.assert_array_equal(variable.numpy()[units], 0.0)
    kept = [u for u in range(4) if u not in units]
    assert np.all(norm.gamma.numpy()[kept] != 0.0)
    normalised = keras.Model(model.base_model.input, norm.get_output_at(-1))  # the wrapped graph
    for training in (False, True):
        np.testing.assert_array_equal(normalised(x, training=training).numpy()[..., units], 0.0)
    hidden, kernel, _ = kernel_of(model, "hidden")
    np.testing.assert_array_equal(kernel[:, removed["hidden"]], 0.0)
    np.testing.assert_array_equal(hidden.layer.bias.numpy()[removed["hidden"]], 0.0)
    assert structured_report(model)["overall"] == {"units": 10, "removed": 5, "fraction": 0.5}


def test_rows_reading_removed_units_are_zeroed_as_the_export_removes_them():
    from keras_minmax_mtl.export.surgery import shrink

    model = conv_bn_model()
    x, _ = image_data()
    conv, norm, hidden = (model.get_layer(n) for n in ("conv", "bn", "hidden"))
    conv.kernel.assign(conv.kernel.numpy() * (np.arange(4) != 1))  # filter 1 removed (as the
    conv.bias.assign([0.5, 0.0, 0.5, 0.5])                          # filter prune leaves it)
    for variable in (norm.gamma, norm.beta, norm.moving_mean):
        variable.assign(variable.numpy() * (np.arange(4) != 1))
    kernel, bias = hidden.get_weights()
    kernel[:, [2, 4]] = 0.0                # units 2 (bias 0: outputs 0) and 4 (bias 1: outputs 1)
    bias[2] = 0.0
    hidden.set_weights([kernel, bias])
    before = [y.numpy() for y in model(x)]
    count = pruning.nonzero_kernel_count(model)
    heads = sum(model.get_layer(t).kernel.shape[1] for t in TASKS)
    # Filter 1 reaches `hidden` through Flatten: 16 rows, non-zero in the 4 units left; unit 2
    # a row of every head.
    assert zero_rows_of_removed_units(model) == 16 * 4 + heads
    assert pruning.nonzero_kernel_count(model) == count - 16 * 4 - heads
    for y, want in zip(model(x), before):
        np.testing.assert_array_equal(y.numpy(), want)  # they multiplied 0: nothing changed
    flat = np.arange(16) * 4 + 1  # Flatten's rows of channel 1: (h * 4 + w) * 4 + 1
    np.testing.assert_array_equal(hidden.kernel.numpy()[flat], 0.0)
    assert np.all(np.delete(hidden.kernel.numpy(), flat, axis=0)[:, [0, 1, 3, 5]] != 0)
    for t in TASKS:
        head = model.get_layer(t).kernel.numpy()
        assert np.all(head[2] == 0) and np.all(head[4] != 0)  # unit 4 outputs 1: its row stays
    # What the export keeps: unit 4's rows folded into the heads' biases, the rest as counted.
    assert pruning.nonzero_kernel_count(shrink(model)) == pruning.nonzero_kernel_count(model) - heads
    assert zero_rows_of_removed_units(model, x) == 0  # nothing left to zero


def test_rows_of_removed_units_need_a_batch_when_an_input_shape_is_unknown():
    inputs = keras.Input((None, None, 1), name="image")
    h = keras.layers.Conv2D(3, 1, activation="relu", name="conv")(inputs)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(h))
    conv, out = model.get_layer("conv"), model.get_layer("out")
    conv.kernel.assign(conv.kernel.numpy() * (np.arange(3) != 0))  # unit 0 removed
    with pytest.raises(ValueError) as info:
        zero_rows_of_removed_units(model)
    assert str(info.value) == (
        "Argument `inputs` is needed for a model input of unknown shape: "
        "`zero_rows_of_removed_units` runs the model once. Received: inputs=None for inputs of "
        "shape [(None, None, None, 1)]")
    assert np.all(out.kernel.numpy() != 0)  # nothing changed
    x = np.random.default_rng(0).normal(size=(2, 5, 7, 1)).astype(np.float32)
    before = model(x).numpy()
    assert zero_rows_of_removed_units(model, x) == 2  # row 0 of `out`
    np.testing.assert_array_equal(out.kernel.numpy()[0], 0.0)
    np.testing.assert_array_equal(model(x).numpy(), before)


def test_save_and_load_after_the_prune_keeps_unit_masks_and_the_hold(tmp_path):
    model, callbacks = filter_pipeline(conv_bn_model(), fraction=0.25)
    x, y = image_data()
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=callbacks)
    removed = callbacks[1].removed.removed
    model.save(tmp_path / "pruned.keras")
    with prune_scope():
        loaded = keras.models.load_model(tmp_path / "pruned.keras")
    for wrapper in pruning.pruning_wrappers(loaded):
        assert wrapper.pruning_schedule.sparsity_type == "filter"
        np.testing.assert_array_equal(wrapper.pruning_vars[0][1].numpy(),
                                      kernel_of(model, wrapper.layer.name)[2])
    assert RemovedUnits(loaded).removed == removed
    stages = ReweightedL1Stages(rho=1e-2, begin_step=5, prune_step=9, sparsity_type="filter")
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), stages])
    assert stages.removed.removed == removed
    conv = next(w for w in pruning.pruning_wrappers(loaded) if w.layer.name == "conv")
    np.testing.assert_array_equal(conv.layer.bias.numpy()[removed["conv"]], 0.0)
    np.testing.assert_array_equal(loaded.base_model.get_layer("bn").beta.numpy()[removed["conv"]],
                                  0.0)


def test_setup_leaves_the_users_model_unchanged_in_filter_mode():
    base = conv_bn_model()
    before = [w.copy() for w in base.get_weights()]
    model, callbacks = filter_pipeline(base)
    x, y = image_data()
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=callbacks)
    for a, b in zip(before, base.get_weights()):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ bad input
def test_filter_mode_refuses_bad_input_clearly():
    base = tiny_base_model()
    with pytest.raises(ValueError, match=r"`sparsity_type` must be one of \['unstructured', "
                                         r"'filter', 'group'\]\. Received: sparsity_type='channel'"):
        prune_reweighted_l1(base, 0.5, 1, 1, rho=1.0, sparsity_type="channel")
    with pytest.raises(ValueError, match=r"sparsity_type='channel'"):
        ReweightedL1Schedule(0.5, prune_step=3, sparsity_type="channel")
    with pytest.raises(ValueError, match=r"needs allocation='uniform'.*allocation='global'"):
        prune_reweighted_l1(base, 0.5, 1, 1, rho=1.0, allocation="global", sparsity_type="filter")
    with pytest.raises(ValueError, match=r"needs allocation='uniform'"):
        ReweightedL1Stages(rho=1.0, begin_step=1, prune_step=3, allocation="global",
                           sparsity_type="filter")
    with pytest.raises(ValueError, match=r"target_sparsity=1\.0"):
        prune_reweighted_l1(base, 1.0, 1, 1, rho=1.0, sparsity_type="filter")
    with pytest.raises(ValueError, match=r"0\.95 would remove all 8 units of layer 'trunk'"):
        prune_reweighted_l1(base, 0.95, 1, 1, rho=1.0, sparsity_type="filter")
    with pytest.raises(ValueError, match=r"cannot remove units of the task output layers "
                                         r"\['a', 'b', 'c'\]"):
        prune_reweighted_l1(base, 0.5, 1, 1, rho=1.0, sparsity_type="filter",
                            policy=MultiTaskPruningPolicy(prune=("trunk", "task_output")))
    inputs = keras.Input((5, 2))
    h = keras.layers.Conv1D(4, 3, name="conv1d")(inputs)
    h = keras.layers.Flatten()(h)
    outputs = [keras.layers.Dense(3, name=t)(h) for t in ("a", "b")]
    with pytest.raises(ValueError, match=r"Dense and Conv2D layers only\. Received layer "
                                         r"'conv1d' of type Conv1D"):
        prune_reweighted_l1(keras.Model(inputs, outputs), 0.5, 1, 1, rho=1.0,
                            sparsity_type="filter")


def test_stages_refuse_schedules_of_the_other_sparsity_type():
    wrapped, _ = prune_reweighted_l1(tiny_base_model(), 0.5, 1, 1, rho=1.0)  # unstructured
    model = compiled(wrapped)
    x, y = tiny_data()
    stages = ReweightedL1Stages(rho=1.0, begin_step=2, prune_step=3, sparsity_type="filter")
    with pytest.raises(ValueError, match=r"prune_step=3 and sparsity_type='filter'; layers "
                                         r"\['trunk'\] do not"):
        model.fit(x, y, verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), stages])


# ------------------------------------------------------------------ command line
def test_cli_filter_mode_prints_removed_units_and_checks_sparsity(tmp_path, capsys):
    from keras_minmax_mtl.cli import main as cli
    from keras_minmax_mtl.sparsity.methods import ReweightedL1

    common = ["train", "--pruning", "reweighted_l1", "--sparsity-type", "filter",
              "--dense-epochs", "1", "--reweighted-epochs", "1", "--retrain-epochs", "1",
              "--train-examples", "64", "--test-examples", "64", "--batch-size", "32",
              "--verbose", "0"]
    with pytest.raises(SystemExit):
        cli.main([*common, "--sparsity", "1.0"])
    assert "argument --sparsity: must be in [0, 1) (the fraction of the units removed from " \
           "each pruned layer). Received --sparsity 1.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*common, "--sparsity", "0.5", "--allocation", "global"])
    assert "needs --allocation uniform" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"0\.99 would remove all 16 units of layer "
                                         r"'trunk_conv1'"):
        cli.main([*common, "--sparsity", "0.99", "--out", str(tmp_path / "bad")])
    out = tmp_path / "run"
    assert cli.main([*common, "--sparsity", "0.5", "--out", str(out), "--export", "micro"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    units = metrics["pruning"]["report"]["units"]
    assert {n: (r["units"], r["removed"]) for n, r in units["layers"].items()} == {
        "trunk_conv1": (16, 8), "trunk_conv2": (32, 16), "trunk_dense": (64, 32),
        "left_hidden": (32, 16), "right_hidden": (32, 16), "sum_hidden": (32, 16)}
    assert metrics["arguments"]["rho"] == ReweightedL1.FILTER_RHO
    assert metrics["arguments"]["allocation"] == "uniform"
    assert "removed units" in printed and "trunk_dense" in printed
    # --export micro shrinks the filter-pruned model (layer surgery) and says so.
    exported = json.loads((out / "model_micro.json").read_text())
    structured = exported["structured"]
    assert structured["applied"] and "units removed (structured)" in printed
    assert {n: len(indices) for n, indices in structured["removed_units"].items()} == {
        n: r["removed"] for n, r in units["layers"].items()}
    assert structured["params"]["shrunk"] < structured["params"]["dense"] / 2
