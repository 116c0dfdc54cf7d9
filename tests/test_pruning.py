import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import keras_minmax_mtl as kmm
from keras_minmax_mtl.sparsity.scope import prune_scope
from keras_minmax_mtl.sparsity import pruning
from keras_minmax_mtl.core.backend import keras
from tests.helpers import LOSSES, tiny_base_model, tiny_data

TASKS = ("a", "b", "c")


def pruned_minmax(sparsity=0.5):
    schedule = tfmot.sparsity.keras.ConstantSparsity(sparsity, begin_step=0, frequency=1)
    base = tfmot.sparsity.keras.prune_low_magnitude(tiny_base_model(), pruning_schedule=schedule)
    model = kmm.MinMaxMultiTask(base, step_size=0.1)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss={t: LOSSES[t] for t in TASKS})
    x, y = tiny_data(n=48)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0,
              callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    return model, x


def test_wrappers_are_found_through_the_multitask_model():
    model, _ = pruned_minmax()
    names = [w.layer.name for w in pruning.pruning_wrappers(model)]
    assert names == ["trunk", "a", "b", "c"]


def test_sparsity_report_counts_masked_kernel_zeros():
    model, _ = pruned_minmax(0.5)
    report = pruning.sparsity_report(model)
    assert report["layers"]["trunk/kernel"] == {"size": 48, "zeros": 24, "sparsity": 0.5}
    assert report["overall"]["size"] == 48 + 2 * 8 * 3 + 8 * 1  # trunk, heads a, b (3 classes), c
    assert report["overall"]["sparsity"] == pytest.approx(
        report["overall"]["zeros"] / report["overall"]["size"])


def test_strip_returns_a_copy_of_the_same_class_with_task_weights_and_outputs():
    model, x = pruned_minmax(0.5)
    stripped = pruning.strip_pruning(model)
    assert type(stripped) is kmm.MinMaxMultiTask
    assert pruning.pruning_wrappers(stripped) == []
    assert len(pruning.pruning_wrappers(model)) == 4  # the user's model is unchanged
    np.testing.assert_array_equal(stripped.task_weights.numpy(), model.task_weights.numpy())
    assert int(stripped.train_step_counter.numpy()) == 12
    want = model(x, training=False)
    got = stripped(x, training=False)
    for task in TASKS:
        np.testing.assert_allclose(got[task].numpy(), want[task].numpy(), atol=1e-6)
    assert pruning.sparsity_report(stripped)["layers"]["trunk/kernel"]["sparsity"] == 0.5
    # The copy owns its variables: changing it leaves the original alone.
    before = [w.numpy().copy() for w in model.base_model.weights]
    for v in stripped.base_model.weights:
        v.assign(v + 1.0)
    for a, b in zip(before, model.base_model.weights):
        np.testing.assert_array_equal(a, b.numpy())


def test_strip_a_functional_model_and_refuse_other_objects():
    model, _ = pruned_minmax()
    stripped = pruning.strip_pruning(model.base_model)
    assert isinstance(stripped, keras.Model) and pruning.pruning_wrappers(stripped) == []
    with pytest.raises(TypeError, match="Functional `tf_keras` model or a `MultiTaskModel`"):
        pruning.strip_pruning("model")


def test_pruned_model_saves_and_loads_under_prune_scope(tmp_path):
    model, x = pruned_minmax()
    model.save(tmp_path / "pruned.keras")
    with prune_scope():
        loaded = keras.models.load_model(tmp_path / "pruned.keras")
    assert len(pruning.pruning_wrappers(loaded)) == 4
    np.testing.assert_array_equal(loaded.task_weights.numpy(), model.task_weights.numpy())
    assert pruning.sparsity_report(loaded) == pruning.sparsity_report(model)


def test_has_update_pruning_step():
    assert pruning.has_update_pruning_step([tfmot.sparsity.keras.UpdatePruningStep()])
    assert not pruning.has_update_pruning_step(None)


def test_fit_without_update_pruning_step_fails_at_start_and_says_what_to_add():
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=0)
    base = tfmot.sparsity.keras.prune_low_magnitude(tiny_base_model(), pruning_schedule=schedule)
    model = kmm.MinMaxMultiTask(base)
    model.compile("sgd", loss={t: LOSSES[t] for t in TASKS})
    x, y = tiny_data()
    with pytest.raises(ValueError, match=r"on layers \['a', 'b', 'c', 'trunk'\].*"
                                         r"UpdatePruningStep\(\)"):
        model.fit(x, y, verbose=0)
    assert int(model.train_step_counter.numpy()) == 0
