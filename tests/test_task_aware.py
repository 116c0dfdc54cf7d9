"""Task-aware dynamic model optimisation: measurements, grouping, allocation, network, callback."""
import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot

import keras_minmax_mtl as kmm
from keras_minmax_mtl.cli import main as cli
from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.sparsity.dst import prune_for_dst
from keras_minmax_mtl.export.tflite import export_tflite
from keras_minmax_mtl.data.networks import multi_digits_network
from keras_minmax_mtl.cli.plots import plot_task_aware
from keras_minmax_mtl.sparsity.pruning import (
    nonzero_kernel_count,
    sparsity_report,
    strip_pruning,
)
from keras_minmax_mtl.sparsity.scope import prune_scope
from keras_minmax_mtl.sparsity.policy import head_kernel_count, prunable_kernel_count
from keras_minmax_mtl.sparsity.task_aware import (
    TaskAwareAllocation,
    TaskAwareRun,
    branch_name,
    budget_for_sparsity,
    grouped_network,
    measure_tasks,
    task_aware_optimize,
)
from keras_minmax_mtl.sparsity.task_similarity import (
    allocate_budget,
    group_tasks,
    mixed_similarity,
    pearson_matrix,
    task_difficulty,
)

TASKS = ("left", "right", "sum")
LOSSES = {t: "sparse_categorical_crossentropy" for t in TASKS}


def small_network(seed=0, sum_classes=19):
    return multi_digits_network({"left": 10, "right": 10, "sum": sum_classes}, trunk_filters=(4,),
                                trunk_units=16, head_units=8, seed=seed)


def small_data(n=64, seed=0, sum_classes=19):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12, 16, 1)).astype(np.float32)
    y = {"left": rng.integers(0, 10, n), "right": rng.integers(0, 10, n),
         "sum": rng.integers(0, sum_classes, n)}
    return x, y


def compiled(model):
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=LOSSES,
                  metrics={t: ["accuracy"] for t in TASKS})
    return model


# ------------------------------------------------------------ measurements
def test_pearson_matrix_is_exact_on_hand_made_vectors():
    s = pearson_matrix([[1, 2, 3, 4], [1, 3, 2, 4], [4, 3, 2, 1], [5, 5, 5, 5]])
    expected = np.array([[1.0, 0.8, -1.0, 0.0], [0.8, 1.0, -0.8, 0.0],
                         [-1.0, -0.8, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    np.testing.assert_allclose(s, expected, atol=1e-12)


def test_mixed_similarity_weights_the_two_matrices_by_alpha():
    weight, loss = np.array([[1.0, 0.6], [0.6, 1.0]]), np.array([[1.0, -0.2], [-0.2, 1.0]])
    np.testing.assert_allclose(mixed_similarity(weight, loss, 0.25)[0, 1], 0.25 * 0.6 - 0.75 * 0.2)
    np.testing.assert_array_equal(mixed_similarity(weight, loss, 1.0), weight)
    np.testing.assert_array_equal(mixed_similarity(weight, loss, 0.0), loss)


def test_difficulty_counts_samples_above_their_cross_task_mean():
    losses = [[1.0, 3.0, 2.0, 0.0], [2.0, 1.0, 2.0, 0.0], [3.0, 2.0, 2.0, 0.0]]
    # sample means 2, 2, 2, 0: task 0 exceeds on sample 1, task 2 on sample 0, ties count for none
    np.testing.assert_array_equal(task_difficulty(losses), [0.25, 0.0, 0.25])


def test_measure_tasks_gives_pearson_of_trunk_gradients_and_per_sample_losses():
    base = small_network()
    model = compiled(kmm.MinMaxMultiTask(base))
    x, y = small_data(16)
    m = measure_tasks(model, x, y, alpha=0.3)
    out = base(x)
    per_sample = np.stack([keras.losses.sparse_categorical_crossentropy(y[t], o).numpy()
                           for t, o in zip(TASKS, out)])
    np.testing.assert_allclose(m["loss_similarity"], pearson_matrix(per_sample), atol=1e-5)
    np.testing.assert_allclose(m["difficulty"], task_difficulty(per_sample))
    kernels = [base.get_layer(n).kernel for n in ("trunk_conv1", "trunk_dense")]
    grads = []
    for t, i in zip(TASKS, range(3)):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y[t], base(x)[i]))
        grads.append(np.concatenate([g.numpy().ravel() for g in tape.gradient(loss, kernels)]))
    np.testing.assert_allclose(m["weight_similarity"], pearson_matrix(np.stack(grads)), atol=1e-4)
    np.testing.assert_allclose(m["similarity"],
                               0.3 * m["weight_similarity"] + 0.7 * m["loss_similarity"])


# ---------------------------------------------------------------- grouping
BLOCKS = np.array([[1.0, 0.1, 0.8, 0.0],
                   [0.1, 1.0, 0.2, 0.7],
                   [0.8, 0.2, 1.0, 0.1],
                   [0.0, 0.7, 0.1, 1.0]])


def test_grouping_finds_the_constructed_blocks_by_number_or_threshold():
    assert group_tasks(BLOCKS, num_groups=2) == [(0, 2), (1, 3)]
    assert group_tasks(BLOCKS, threshold=0.5) == [(0, 2), (1, 3)]
    assert group_tasks(BLOCKS, threshold=0.75) == [(0, 2), (1,), (3,)]
    assert group_tasks(BLOCKS, num_groups=1) == [(0, 1, 2, 3)]
    assert group_tasks(BLOCKS, num_groups=4) == [(0,), (1,), (2,), (3,)]


def test_grouping_uses_average_linkage_and_is_deterministic_under_ties():
    # {0, 1} merge first; 2 links to them by (0.9 + 0.0) / 2 = 0.45 on average (single
    # linkage would say 0.9) and to 3 by 0.5, so average linkage pairs 2 with 3.
    s = np.array([[1.0, 0.95, 0.9, 0.0], [0.95, 1.0, 0.0, 0.0],
                  [0.9, 0.0, 1.0, 0.5], [0.0, 0.0, 0.5, 1.0]])
    assert group_tasks(s, num_groups=2) == [(0, 1), (2, 3)]
    ties = np.ones((4, 4))
    assert group_tasks(ties, num_groups=2) == group_tasks(ties, num_groups=2) == [(0, 1, 2), (3,)]


# -------------------------------------------------------------- allocation
def test_allocation_sums_exactly_to_the_budget_within_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        g = int(rng.integers(1, 6))
        sizes = [int(v) for v in rng.integers(1, 300, g)]
        budget = int(rng.integers(g, sum(sizes) + 1))
        counts = allocate_budget(rng.random(g), sizes, budget, smoothing=float(rng.random() + 0.01))
        assert sum(counts) == budget
        assert all(1 <= c <= n for c, n in zip(counts, sizes))


def test_allocation_is_monotone_in_difficulty_and_proportional_to_it():
    counts = allocate_budget([0.1, 0.3, 0.3, 0.9], [100] * 4, 160, smoothing=0.1)
    assert counts == [16, 32, 32, 80]  # densities 0.2 : 0.4 : 0.4 : 1.0, 80 weights per 1.0
    for budget in range(4, 401, 7):
        c = allocate_budget([0.0, 0.2, 0.5, 1.0], [100] * 4, budget)
        assert c == sorted(c) and sum(c) == budget
    assert allocate_budget([0.2, 0.6], [100, 100], 60) == [23, 37]


def test_allocation_caps_full_groups_and_gives_the_rest_to_the_others():
    assert allocate_budget([1.0, 0.0], [10, 100], 60, smoothing=0.5) == [10, 50]


# ----------------------------------------------------------------- network
def test_grouped_network_names_outputs_after_tasks_and_computes_what_the_base_computes():
    base = small_network()
    grouped = grouped_network(base, [["left", "sum"], ["right"]])
    assert grouped.output_names == list(TASKS)
    assert grouped.get_layer(branch_name(0)).units == 16
    assert grouped.get_layer(branch_name(1)).units == 8
    assert prunable_kernel_count(grouped) == prunable_kernel_count(base)
    x, _ = small_data(8)
    for a, b in zip(base(x), grouped(x)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    assert nonzero_kernel_count(base) == sum(
        int(np.count_nonzero(layer.kernel.numpy())) for layer in base.layers if hasattr(layer, "kernel"))


def test_budget_for_sparsity_counts_the_trunk_and_task_hidden_kernels():
    base = small_network()
    # conv 3*3*1*4 = 36, dense 192*16 = 3072, three hidden 16*8 = 384
    assert prunable_kernel_count(base) == 36 + 3072 + 3 * 128
    assert budget_for_sparsity(base, 0.9) == round(0.1 * 3492)


# ---------------------------------------------------------------- callback
def _labels(model, x, easy):
    """Labels of lowest loss (`easy`) or highest loss per task for the model now."""
    out = model(x, training=False)
    return {t: np.argmax(out[t], -1) if t in easy else np.argmin(out[t], -1) for t in TASKS}


def test_callback_keeps_the_total_active_count_while_moving_weights_between_groups():
    from keras_minmax_mtl.sparsity.pruning import pruning_wrappers

    keras.utils.set_random_seed(0)
    groups = [["left", "right"], ["sum"]]
    # Ten classes per task: the losses of the three tasks have the same scale.
    model = compiled(kmm.MinMaxMultiTask(prune_for_dst(grouped_network(
        small_network(sum_classes=10), groups))))
    x, y = small_data(64, sum_classes=10)
    # Held batches on which the sum task is hard (then easy), the others easy (then hard).
    hard_sum = (x[:32], _labels(model, x[:32], easy=("left", "right")))
    easy_sum = (x[:32], _labels(model, x[:32], easy=("sum",)))
    budget = 300
    callback = TaskAwareAllocation(groups, budget, hard_sum, update_every=2)

    class Swap(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            callback.measure_data = hard_sum if epoch == 0 else easy_sum

    totals = []

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            totals.append(sum(int(m.numpy().sum()) for w in pruning_wrappers(self.model)
                              for _, m, _ in w.pruning_vars))

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    model.fit(dataset, epochs=2, verbose=0,
              callbacks=[Swap(), tfmot.sparsity.keras.UpdatePruningStep(), callback, Count()])
    history = callback.history
    assert [r["step"] for r in history] == [0, 2, 4, 6, 8]
    assert all(r["total_active"] == budget for r in history) and set(totals) == {budget}
    first, last = history[0]["active"], history[-1]["active"]
    assert first[branch_name(1)] > last[branch_name(1)] and first[branch_name(0)] < last[branch_name(0)]
    assert sum(r["grown"] for r in history[1:]) > 0
    assert history[0]["difficulty"]["sum"] == 1.0
    early, late = history[0]["group_difficulty"], history[-1]["group_difficulty"]
    assert early[0] < early[1] and late[0] > late[1]  # the harder group is the larger one
    # Masked weights are zero; an active weight can be zero too (grown with a zero gradient).
    overall = sparsity_report(model)["overall"]
    assert overall["size"] - overall["zeros"] <= budget
    json.dumps(callback.report())


def test_callback_refuses_a_budget_that_cannot_be_met():
    groups = [["left", "right"], ["sum"]]
    model = compiled(kmm.MinMaxMultiTask(prune_for_dst(grouped_network(small_network(), groups))))
    x, y = small_data(16)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    for budget in (3493, 3):
        with pytest.raises(ValueError, match=rf"`budget` must be in \[4, 3492\]: at least one "
                                             rf"weight per pruned kernel.*budget={budget}$"):
            model.fit(dataset, epochs=1, verbose=0,
                      callbacks=[tfmot.sparsity.keras.UpdatePruningStep(),
                                 TaskAwareAllocation(groups, budget, (x, y))])


# --------------------------------------------------------- one-call, export
def test_task_aware_optimize_with_minmax_saves_loads_and_exports(tmp_path):
    keras.utils.set_random_seed(0)
    base = small_network()
    before = [w.copy() for w in base.get_weights()]
    model = compiled(kmm.MinMaxMultiTask(base))
    x, y = small_data(64)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    grouped, run = task_aware_optimize(model, dataset, warmup_epochs=1, epochs=1, budget=400,
                                       num_groups=2, update_every=2, measure_samples=32,
                                       fit_kwargs={"verbose": 0})
    assert all(np.array_equal(a, b) for a, b in zip(before, base.get_weights()))  # untouched
    assert isinstance(grouped, kmm.MinMaxMultiTask) and grouped.task_names == list(TASKS)
    report = run.report()
    assert len(report["groups"]) == 2 and report["budget"] == 400
    assert [r["total_active"] for r in report["history"]] == [400] * len(report["history"])
    stripped = strip_pruning(grouped)
    path = tmp_path / "grouped.keras"
    grouped.save(path)
    with prune_scope():
        loaded = keras.models.load_model(path)
    for task in TASKS:
        np.testing.assert_allclose(loaded(x[:4])[task], grouped(x[:4])[task], atol=1e-6)
    np.testing.assert_allclose(loaded.task_weights, grouped.task_weights)
    exported = export_tflite(stripped, tmp_path / "g.tflite", target="micro",
                             representative_data=x, num_samples=32)
    assert exported["quantization"] == "int8" and set(exported["verification"]["tasks"]) == set(TASKS)
    assert plot_task_aware(report, tmp_path / "ta.png").stat().st_size > 0


def test_cli_train_task_aware_writes_report_plot_and_stripped_model(tmp_path):
    out = tmp_path / "run"
    cli.main(["train", "--pruning", "task_aware", "--sparsity", "0.9", "--warmup-epochs", "1",
              "--epochs", "1", "--train-examples", "128", "--test-examples", "64", "--groups", "2",
              "--allocate-every", "1", "--out", str(out), "--verbose", "0"])
    metrics = json.loads((out / "metrics.json").read_text())
    report = json.loads((out / "task_aware.json").read_text())
    base = multi_digits_network(seed=0)
    # Two groups: a group's heads read its whole branch, and the pruned budget pays for that.
    extra = head_kernel_count(grouped_network(base, report["groups"])) - head_kernel_count(base)
    assert extra > 0
    assert report["budget"] == budget_for_sparsity(base, 0.9) - extra \
        == metrics["pruning"]["report"]["budget"]
    assert {r["total_active"] for r in report["history"]} == {report["budget"]}
    # So the whole network has at most as many non-zero kernel weights as reweighted ℓ1 keeps.
    with prune_scope():
        stripped = keras.models.load_model(out / "model_stripped.keras")
    assert nonzero_kernel_count(stripped) <= budget_for_sparsity(base, 0.9) + head_kernel_count(base)
    assert report["sparsity"]["overall"]["size"] - report["sparsity"]["overall"]["zeros"] \
        <= report["budget"]
    assert (out / "task_aware.png").exists() and (out / "model_stripped.keras").exists()


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("call, message", [
    (lambda: group_tasks([[1.0]], num_groups=1), r"at least two tasks.*\(1, 1\)"),
    (lambda: group_tasks(BLOCKS, num_groups=0), r"`num_groups` must be an integer in \[1, 4\].*num_groups=0"),
    (lambda: group_tasks(BLOCKS, num_groups=5), r"`num_groups`.*\[1, 4\].*num_groups=5"),
    (lambda: group_tasks(BLOCKS), r"Exactly one of `num_groups` and `threshold`"),
    (lambda: mixed_similarity(np.eye(2), np.eye(2), 1.5), r"`alpha` must be in \[0, 1\].*alpha=1.5"),
    (lambda: TaskAwareRun(sparsity=0.9, alpha=-0.1), r"`alpha` must be in \[0, 1\].*alpha=-0.1"),
    (lambda: TaskAwareRun(sparsity=0.9, num_groups=0), r"`num_groups`.*>= 1.*num_groups=0"),
    (lambda: TaskAwareRun(), r"Exactly one of `sparsity` and `budget`"),
    (lambda: TaskAwareRun(sparsity=1.0), r"`sparsity` must be in \[0, 1\).*sparsity=1.0"),
    (lambda: allocate_budget([0.5, 0.5], [10, 10], 21),
     r"`budget` must be an integer in \[2, 20\].*budget=21"),
    (lambda: allocate_budget([0.5, 0.5], [10, 10], 1), r"`budget`.*\[2, 20\].*budget=1"),
    (lambda: allocate_budget([1.5], [10], 5), r"`difficulty` must be .* in \[0, 1\]"),
    (lambda: grouped_network(small_network(), [["left"], ["sum"]]), r"`groups` must split the tasks"),
    (lambda: pearson_matrix([[1.0], [2.0]]), r"`vectors` must be a 2-D array .* at least two values"),
])
def test_bad_input_is_refused_with_the_argument_rule_and_value(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_run_refuses_too_many_groups_and_too_large_a_budget_before_training():
    model = compiled(kmm.MinMaxMultiTask(small_network()))
    x, y = small_data(16)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    with pytest.raises(ValueError, match=r"`num_groups` must be in \[1, 3\].*num_groups=4"):
        TaskAwareRun(sparsity=0.9, num_groups=4).prepare(model, dataset, 1)
    with pytest.raises(ValueError, match=r"`budget` must be at most the 3492.*budget=5000"):
        TaskAwareRun(budget=5000).prepare(model, dataset, 1)
    assert int(model.train_step_counter.numpy()) == 0


def test_run_refuses_a_single_task_model():
    base = multi_digits_network({"left": 10}, trunk_filters=(4,), trunk_units=16, head_units=8)
    model = kmm.MinMaxMultiTask(base)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = small_data(16)
    dataset = tf.data.Dataset.from_tensor_slices((x, {"left": y["left"]})).batch(16)
    with pytest.raises(ValueError, match=r"at least two tasks.*\['left'\]"):
        TaskAwareRun(sparsity=0.9).prepare(model, dataset, 1)


def test_cli_refuses_a_similarity_coefficient_outside_the_unit_interval(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--pruning", "task_aware", "--similarity-coefficient", "1.5"])
    assert "--similarity-coefficient: must be in [0, 1], received 1.5" in capsys.readouterr().err


def test_per_sample_losses_are_the_compiled_losses_unreduced():
    base = small_network()
    model = compiled(kmm.MinMaxMultiTask(base))
    x, y = small_data(8)
    losses = model.per_sample_losses(y, model(x))
    for task, out in zip(TASKS, base(x)):
        np.testing.assert_allclose(
            losses[task], keras.losses.sparse_categorical_crossentropy(y[task], out), rtol=1e-6)


def test_set_mask_zeroes_grown_weights_and_their_optimizer_slots():
    from keras_minmax_mtl.sparsity.dst import set_mask

    weight = tf.Variable([[1.0, 2.0], [3.0, 4.0]])
    mask = tf.Variable([[1.0, 1.0], [0.0, 0.0]])
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build([weight])
    slot = optimizer.variables[-1]
    slot.assign([[5.0, 6.0], [7.0, 8.0]])
    grown = set_mask(weight, mask, np.array([[1.0, 0.0], [1.0, 0.0]], np.float32), optimizer)
    np.testing.assert_array_equal(grown, [[False, False], [True, False]])
    np.testing.assert_array_equal(weight.numpy(), [[1.0, 0.0], [0.0, 0.0]])
    np.testing.assert_array_equal(slot.numpy(), [[5.0, 6.0], [0.0, 8.0]])
    np.testing.assert_array_equal(mask.numpy(), [[1.0, 0.0], [1.0, 0.0]])


@pytest.mark.parametrize("density", ["erk", "uniform", "global"])
def test_initial_allocation_meets_the_budget_exactly_for_every_density(density):
    from keras_minmax_mtl.sparsity.pruning import pruning_wrappers

    groups = [["left", "right"], ["sum"]]
    model = compiled(kmm.MinMaxMultiTask(prune_for_dst(grouped_network(small_network(), groups))))
    x, y = small_data(16)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    callback = TaskAwareAllocation(groups, 60, (x, y), update_every=100, density=density)
    model.fit(dataset, epochs=1, verbose=0,
              callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), callback])
    counts = [int(m.numpy().sum()) for w in pruning_wrappers(model) for _, m, _ in w.pruning_vars]
    assert sum(counts) == 60 and min(counts) >= 1 and callback.history[0]["total_active"] == 60
