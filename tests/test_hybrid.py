import numpy as np
import pytest
import tensorflow as tf

import keras_minmax_mtl as kmm
from keras_minmax_mtl.sparsity.scope import prune_scope
from keras_minmax_mtl.sparsity import pruning
from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.data import load_multi_digits
from keras_minmax_mtl.sparsity.hybrid import (
    HybridConv2D,
    HybridDense,
    HybridPruning,
    equal_nonzero_budget,
    equivalent_sparsity,
    hybrid_layers,
    hybrid_network,
    kernel_nonzeros,
    prune_hybrid,
    split_budget,
)
from keras_minmax_mtl.data.networks import multi_digits_network

TASKS = ("left", "right", "sum")


def small_network(seed=0):
    return multi_digits_network(trunk_filters=(2,), trunk_units=8, head_units=4, seed=seed)


def data(n=32):
    return load_multi_digits("train", seed=0, num_examples=n)


def compiled(model):
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss={t: "sparse_categorical_crossentropy" for t in TASKS},
                  metrics={t: ["accuracy"] for t in TASKS})
    return model


def randomize(layer, seed=0):
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in layer.get_weights()])


# -------------------------------------------------------------------- layers
@pytest.mark.parametrize("per_task", [False, True])
def test_dense_output_is_x_times_shared_plus_task_kernel_plus_bias(per_task):
    layer = HybridDense(4, num_tasks=3, activation="relu")
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(5, 6)).astype(np.float32) for _ in range(3)]
    outputs = layer(xs if per_task else xs[0])
    randomize(layer)
    outputs = layer(xs if per_task else xs[0])
    w = layer.shared_kernel.numpy().astype(np.float64)
    for t, y in enumerate(outputs):
        x = (xs[t] if per_task else xs[0]).astype(np.float64)
        want = np.maximum(x @ (w + layer.task_kernels[t].numpy()) + layer.task_biases[t].numpy(),
                          0)
        np.testing.assert_allclose(y.numpy(), want, atol=1e-6, rtol=1e-6)


def test_conv_output_is_conv_with_shared_plus_task_kernel_plus_bias():
    layer = HybridConv2D(3, 3, num_tasks=2, padding="same", strides=(1, 2))
    x = np.random.default_rng(2).normal(size=(2, 6, 8, 2)).astype(np.float32)
    layer(x)
    randomize(layer)
    for t, y in enumerate(layer(x)):
        reference = keras.layers.Conv2D(3, 3, padding="same", strides=(1, 2))
        reference(x)
        reference.set_weights([layer.shared_kernel.numpy() + layer.task_kernels[t].numpy(),
                               layer.task_biases[t].numpy()])
        np.testing.assert_allclose(y.numpy(), reference(x).numpy(), atol=1e-6, rtol=1e-6)
        assert tuple(y.shape) == tuple(layer.compute_output_shape(x.shape)[t])


def test_layer_configs_round_trip():
    for layer in (HybridDense(4, num_tasks=3, activation="relu", use_bias=False, name="d"),
                  HybridConv2D(5, (3, 1), num_tasks=2, strides=2, padding="same",
                               dilation_rate=1, kernel_initializer="he_normal", name="c")):
        config = layer.get_config()
        again = type(layer).from_config(config)
        assert again.get_config() == config
        assert keras.saving.get_registered_name(type(layer)) == \
            f"keras_minmax_mtl>{type(layer).__name__}"


def test_layer_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"Argument `num_tasks` must be an integer >= 1. "
                                         r"Received: num_tasks=0"):
        HybridDense(4, num_tasks=0)
    with pytest.raises(ValueError, match="Argument `padding` must be 'valid' or 'same'"):
        HybridConv2D(4, 3, num_tasks=2, padding="causal")
    layer = HybridDense(4, num_tasks=3)
    with pytest.raises(ValueError, match="list of num_tasks=3 per-task inputs. Received a "
                                         "list of 2"):
        layer([tf.ones((1, 2)), tf.ones((1, 2))])


# ------------------------------------------------------------------- network
def test_hybrid_network_with_zero_task_kernels_computes_the_base_network():
    base = small_network()
    hybrid = hybrid_network(base)
    assert hybrid.output_names == list(TASKS)
    assert [layer.name for layer in hybrid_layers(hybrid)] == ["trunk_conv1", "trunk_dense"]
    x, _ = data(16)
    for got, want in zip(hybrid.predict(x, verbose=0), base.predict(x, verbose=0)):
        np.testing.assert_array_equal(got, want)
    dense = hybrid.get_layer("trunk_dense")
    np.testing.assert_array_equal(dense.shared_kernel.numpy(),
                                  base.get_layer("trunk_dense").kernel.numpy())
    assert all(not k.numpy().any() for k in dense.task_kernels)
    # The base model keeps its own weights (nothing shared with the copy).
    dense.shared_kernel.assign(dense.shared_kernel + 1.0)
    assert not np.array_equal(base.get_layer("trunk_dense").kernel.numpy(),
                              dense.shared_kernel.numpy())


def test_gradients_reach_shared_kernel_from_every_task_and_task_kernel_only_from_its_task():
    hybrid = hybrid_network(small_network())
    x, y = data(8)
    dense = hybrid.get_layer("trunk_dense")
    for t, task in enumerate(TASKS):
        with tf.GradientTape() as tape:
            out = hybrid(x, training=True)[t]
            loss = keras.losses.sparse_categorical_crossentropy(y[task], out)
        grads = tape.gradient(loss, [dense.shared_kernel, *dense.task_kernels])
        assert np.abs(grads[0].numpy()).sum() > 0
        for s, grad in enumerate(grads[1:]):
            if s == t:
                assert np.abs(grad.numpy()).sum() > 0
            else:
                assert grad is None or not grad.numpy().any()


def test_hybrid_network_refuses_weighted_layers_shared_between_task_paths():
    inputs = keras.Input((4,), name="x")
    h = keras.layers.Dense(3, name="trunk")(inputs)
    h = keras.layers.BatchNormalization(name="norm")(h)
    model = keras.Model(inputs, [keras.layers.Dense(2, name="a")(h),
                                 keras.layers.Dense(2, name="b")(h)])
    with pytest.raises(ValueError, match="Layer 'norm' \\(BatchNormalization\\) has weights and "
                                         "is shared by several tasks"):
        hybrid_network(model)
    with pytest.raises(ValueError, match="Argument `layer_names` must name Dense or Conv2D "
                                         "layers"):
        hybrid_network(model, layer_names=["norm"])


# -------------------------------------------------------------------- budget
def test_equal_nonzero_budget_counts_pruned_and_dense_output_kernels():
    base = small_network()
    sizes = {layer.name: int(np.prod(layer.kernel.shape)) for layer in base.layers
             if getattr(layer, "kernel", None) is not None}
    pruned = sum(v for k, v in sizes.items() if k not in TASKS)
    dense = sum(sizes[t] for t in TASKS)
    assert equal_nonzero_budget(base, 0.9) == round(0.1 * pruned) + dense
    assert equal_nonzero_budget(base, 0.0) == pruned + dense
    assert equivalent_sparsity(base, equal_nonzero_budget(base, 0.75)) == pytest.approx(
        0.75, abs=0.5 / pruned)


def test_split_budget_is_exact_and_refuses_impossible_splits():
    base = small_network()
    hybrid = hybrid_network(base)
    total = equal_nonzero_budget(base, 0.9)
    split = split_budget(hybrid, total, task_share=0.25)
    rest = total - split["dense_nonzeros"]
    assert split["task_budget"] == round(0.25 * rest)
    assert split["shared_nonzeros"] + split["task_budget"] + split["dense_nonzeros"] == total
    with pytest.raises(ValueError, match=r"Argument `task_share` must be in \[0, 1\).*"
                                         r"Received: task_share=1.0"):
        split_budget(hybrid, total, task_share=1.0)
    with pytest.raises(ValueError, match="Argument `total_nonzeros` must leave every shared "
                                         "kernel at least one non-zero"):
        split_budget(hybrid, split["dense_nonzeros"] + 2, task_share=0.0)


def test_prune_hybrid_refuses_budgets_that_cannot_be_met():
    hybrid = hybrid_network(small_network())
    task_size = sum(int(np.prod(k.shape)) for layer in hybrid_layers(hybrid)
                    for k in layer.task_kernels)
    with pytest.raises(ValueError, match=rf"Argument `task_budget` must be a count of non-zeros "
                                         rf"in \[0, {task_size}\].*Received: task_budget=-1"):
        prune_hybrid(hybrid, 0.9, -1, prune_step=1)
    with pytest.raises(ValueError, match=rf"Received: task_budget={task_size + 1}"):
        prune_hybrid(hybrid, 0.9, task_size + 1, prune_step=1)
    with pytest.raises(ValueError, match=r"Received: task_budget=3.5"):
        prune_hybrid(hybrid, 0.9, 3.5, prune_step=1)  # 3.5 x the trunk > the 3 S_t
    with pytest.raises(ValueError, match=r"Argument `shared_sparsity` must leave every shared "
                                         r"kernel at least one non-zero.*Received: "
                                         r"shared_sparsity=0.9999"):
        prune_hybrid(hybrid, 0.9999, 0, prune_step=1)
    with pytest.raises(ValueError, match=r"Argument `end_step` must be None or an integer > "
                                         r"prune_step=5. Received: end_step=5"):
        prune_hybrid(hybrid, 0.9, 0, prune_step=5, end_step=5)
    with pytest.raises(ValueError, match="has no hybrid layers"):
        prune_hybrid(small_network(), 0.9, 0, prune_step=1)


# ------------------------------------------------------------------- pruning
@pytest.mark.parametrize("allocation,end_step", [("uniform", None), ("global", 10)])
def test_minmax_fit_prunes_to_exactly_the_equal_nonzero_budget(allocation, end_step):
    base = small_network()
    hybrid = hybrid_network(base)
    total = equal_nonzero_budget(base, 0.9)
    split = split_budget(hybrid, total, task_share=0.3)
    wrapped, callbacks = prune_hybrid(hybrid, split["shared_sparsity"], split["task_budget"],
                                      prune_step=5, end_step=end_step, frequency=2,
                                      allocation=allocation)
    model = compiled(kmm.MinMaxMultiTask(wrapped, step_size=0.1))
    x, y = data(32)
    model.fit(x, y, batch_size=8, epochs=3, callbacks=callbacks, verbose=0)  # 12 steps
    counts = kernel_nonzeros(model)
    assert counts == {"shared": split["shared_nonzeros"], "task": split["task_budget"],
                      "dense": split["dense_nonzeros"], "total": total}
    prune = callbacks[-1]
    assert [r["step"] for r in prune.history] == list(prune.prune_steps)
    assert prune.history[-1] == {"step": prune.prune_steps[-1],
                                 "shared": split["shared_nonzeros"],
                                 "task": split["task_budget"]}
    if end_step is not None:  # gradual: counts decrease to the target
        assert [r["task"] for r in prune.history] == sorted(
            (r["task"] for r in prune.history), reverse=True)
    stripped = pruning.strip_pruning(model)
    assert kernel_nonzeros(stripped) == counts
    # The package-wide count sees the hybrid kernels too, wrapped or stripped.
    assert pruning.nonzero_kernel_count(model) == pruning.nonzero_kernel_count(stripped) == total
    for layer in hybrid_layers(stripped.base_model):
        assert np.count_nonzero(layer.shared_kernel.numpy()) >= 1
    assert not np.allclose(model.task_weights.numpy(), 1 / 3)


def test_uniform_allocation_gives_every_task_kernel_its_share():
    hybrid = hybrid_network(small_network())
    wrapped, callbacks = prune_hybrid(hybrid, 0.5, 30, prune_step=1)
    for layer in hybrid_layers(wrapped):  # S_t trained from 0 needs magnitudes: randomize
        for k in layer.task_kernels:
            k.assign(np.random.default_rng(0).normal(size=k.shape))
    model = compiled(kmm.MultiTaskModel(wrapped))
    x, y = data(8)
    model.fit(x, y, batch_size=8, epochs=1, callbacks=callbacks, verbose=0)
    per_kernel = [np.count_nonzero(k.numpy()) for layer in hybrid_layers(wrapped)
                  for k in layer.task_kernels]
    sizes = [int(np.prod(k.shape)) for layer in hybrid_layers(wrapped) for k in layer.task_kernels]
    assert sum(per_kernel) == 30
    for count, size in zip(per_kernel, sizes):
        assert abs(count - 30 * size / sum(sizes)) < 1


def test_hybrid_pruning_refuses_wrappers_with_other_schedules():
    import tensorflow_model_optimization as tfmot

    wrapped = tfmot.sparsity.keras.prune_low_magnitude(
        small_network(), pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.5, 0))
    model = compiled(kmm.MultiTaskModel(wrapped))
    x, y = data(8)
    with pytest.raises(ValueError, match="wrapped layers all use `HoldMasks`"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[
            tfmot.sparsity.keras.UpdatePruningStep(), HybridPruning(10, 0, prune_step=1)])


# ----------------------------------------------------------- save and export
def test_save_and_load_round_trip(tmp_path):
    hybrid = hybrid_network(small_network())
    wrapped, callbacks = prune_hybrid(hybrid, 0.8, 0.1, prune_step=2)
    model = compiled(kmm.MinMaxMultiTask(wrapped, step_size=0.1))
    x, y = data(16)
    model.fit(x, y, batch_size=8, epochs=1, callbacks=callbacks, verbose=0)
    stripped = pruning.strip_pruning(model)
    path = tmp_path / "hybrid.keras"
    stripped.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, kmm.MinMaxMultiTask)
    for got, want in zip(loaded.predict(x, verbose=0).values(),
                         stripped.predict(x, verbose=0).values()):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(loaded.task_weights.numpy(), stripped.task_weights.numpy())
    assert kernel_nonzeros(loaded) == kernel_nonzeros(model)
    with prune_scope():  # with the wrappers too
        model.save(tmp_path / "wrapped.keras")
        again = keras.models.load_model(tmp_path / "wrapped.keras")
    assert kernel_nonzeros(again) == kernel_nonzeros(model)


def test_export_stores_task_kernels_sparse_on_mobile(tmp_path):
    from keras_minmax_mtl.export.tflite import export_tflite

    hybrid = hybrid_network(small_network())
    wrapped, callbacks = prune_hybrid(hybrid, 0.9, 0.05, prune_step=2)
    model = compiled(kmm.MinMaxMultiTask(wrapped, step_size=0.1))
    x, y = data(16)
    model.fit(x, y, batch_size=8, epochs=1, callbacks=callbacks, verbose=0)
    stripped = pruning.strip_pruning(model)
    sparse = export_tflite(stripped, tmp_path / "sparse.tflite", sparse_storage=True,
                           representative_data=x)
    dense = export_tflite(stripped, tmp_path / "dense.tflite", sparse_storage=False,
                          representative_data=x)
    assert sparse["storage"] == "sparse" and sparse["bytes"] < dense["bytes"]
    assert set(sparse["verification"]["tasks"]) == set(TASKS)


def test_kmm_train_pruning_hybrid_meets_the_budget_and_saves_the_stripped_model(tmp_path):
    import json

    from keras_minmax_mtl.cli import main as cli

    out = tmp_path / "run"
    cli.main(["train", "--pruning", "hybrid", "--sparsity", "0.9", "--task-share", "0.2",
              "--epochs", "2", "--train-examples", "64", "--test-examples", "32", "--verbose",
              "0", "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    report = metrics["pruning"]
    budget = equal_nonzero_budget(multi_digits_network(seed=0), 0.9)
    assert report["budget"] == budget and report["nonzeros"]["total"] == budget
    assert report["nonzeros"]["task"] == report["split"]["task_budget"] == round(
        0.2 * (budget - report["split"]["dense_nonzeros"]))
    stripped = keras.models.load_model(out / "model_stripped.keras")
    assert not pruning.pruning_wrappers(stripped)
    assert kernel_nonzeros(stripped) == report["nonzeros"]


def test_cli_prune_steps_one_shot_gradual_and_refusal():
    from keras_minmax_mtl.sparsity.methods import Hybrid

    prune_steps = Hybrid.prune_steps

    assert prune_steps(10, 0, 20, 94) == (941, None, 23)
    assert prune_steps(10, 2, 20, 94) == (941, 941 + 188, 23)
    with pytest.raises(ValueError, match=r"must be < --epochs.*Received: 10 \+ 10 with "
                                         r"--epochs 20"):
        prune_steps(10, 10, 20, 94)
