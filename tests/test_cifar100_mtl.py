"""Multi-task CIFAR-100: the hierarchy, the loader (on mock TFDS data) and its network."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import keras_minmax_mtl as kmm
from keras_minmax_mtl.core.backend import keras
from keras_minmax_mtl.data import (
    CIFAR100_FINE_NAMES,
    CIFAR100_SUPERCLASSES,
    CIFAR100_TASKS,
    cifar100_fine_to_task,
    cifar100_input_name,
    cifar100_mtl,
)
from keras_minmax_mtl.data.networks import cifar100_mtl_network

COARSE, INDEX = cifar100_fine_to_task()


def fake_cifar(per_fine_class=3, consistent=True):
    """An `as_dataset_fn` whose images hold their fine label in every pixel."""
    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        fine = np.tile(np.arange(100), per_fine_class).astype(np.int64)
        coarse = COARSE[fine] if consistent else (COARSE[fine] + 1) % 20
        images = np.broadcast_to(fine[:, None, None, None], (len(fine), 32, 32, 3))
        return tf.data.Dataset.from_tensor_slices({
            "id": np.array([b"x"] * len(fine)), "image": images.astype(np.uint8),
            "label": fine, "coarse_label": coarse.astype(np.int64)})
    return as_dataset


def test_hierarchy_has_20_superclasses_of_5_fine_classes_each_used_once():
    members = [m for ms in CIFAR100_SUPERCLASSES.values() for m in ms]
    assert sorted(members) == sorted(CIFAR100_FINE_NAMES) and len(set(members)) == 100
    assert list(CIFAR100_FINE_NAMES) == sorted(CIFAR100_FINE_NAMES)
    assert np.bincount(COARSE).tolist() == [5] * 20
    for c in range(20):
        assert INDEX[COARSE == c].tolist() == [0, 1, 2, 3, 4]  # increasing fine label


def test_fine_to_task_mapping_matches_the_official_table():
    name = {n: i for i, n in enumerate(CIFAR100_FINE_NAMES)}
    expected = {"beaver": (0, 0), "dolphin": (0, 1), "otter": (0, 2), "seal": (0, 3),
                "whale": (0, 4), "aquarium_fish": (1, 0), "trout": (1, 4), "baby": (14, 0),
                "woman": (14, 4), "worm": (13, 4), "lawn_mower": (19, 0), "tractor": (19, 4)}
    for fine, (c, i) in expected.items():
        assert (COARSE[name[fine]], INDEX[name[fine]]) == (c, i), fine
    assert CIFAR100_TASKS[14] == "people" and CIFAR100_TASKS[9] == "large_man_made_outdoor_things"


def test_tfds_mock_cifar100_gives_label_and_coarse_label_in_dict_mode():
    with tfds.testing.mock_data(num_examples=2):
        example = next(iter(tfds.load("cifar100", split="train", data_dir="/nonexistent")))
    assert {"image", "label", "coarse_label"} <= set(example)


def test_loader_remaps_labels_within_the_superclass_one_batch_per_task():
    with tfds.testing.mock_data(as_dataset_fn=fake_cifar(per_fine_class=3)):
        ds = cifar100_mtl("/nonexistent", "test", batch_size=4)
    batches = list(ds)
    assert len(batches) == 4  # 15 images per task, remainder kept for evaluation
    x, y = batches[0]
    assert sorted(x) == sorted(cifar100_input_name(t) for t in CIFAR100_TASKS)
    assert sorted(y) == sorted(CIFAR100_TASKS)
    seen = {t: [] for t in CIFAR100_TASKS}
    for x, y in batches:
        for c, task in enumerate(CIFAR100_TASKS):
            images = x[cifar100_input_name(task)].numpy()
            assert images.dtype == np.float32 and images.shape[1:] == (32, 32, 3)
            fine = np.rint(images[:, 0, 0, 0] * 255).astype(int)
            assert (COARSE[fine] == c).all()
            np.testing.assert_array_equal(y[task].numpy(), INDEX[fine])
            seen[task].extend(fine.tolist())
    for c, task in enumerate(CIFAR100_TASKS):
        assert sorted(seen[task]) == sorted(np.flatnonzero(COARSE == c).tolist() * 3)


def test_training_batches_are_full_and_shuffled_per_epoch():
    with tfds.testing.mock_data(as_dataset_fn=fake_cifar(per_fine_class=3)):
        ds = cifar100_mtl("/nonexistent", "train", batch_size=4, seed=1,
                          tasks=["people", "fish"])
    first, second = list(ds), list(ds)
    assert len(first) == 3 and all(y["people"].shape == (4,) for _, y in first)
    assert list(first[0][1]) == ["fish", "people"]
    order = lambda epoch: np.concatenate([y["fish"].numpy() for _, y in epoch])  # noqa: E731
    assert not np.array_equal(order(first), order(second))


def test_loader_rejects_labels_that_disagree_with_the_hierarchy():
    with tfds.testing.mock_data(as_dataset_fn=fake_cifar(consistent=False)):
        with pytest.raises(ValueError, match="disagree with the official CIFAR-100 hierarchy"):
            cifar100_mtl("/nonexistent", "train")


def test_missing_data_error_names_the_folder_and_how_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        cifar100_mtl(tmp_path / "no_tfds", "train")
    message = str(info.value)
    assert str(tmp_path / "no_tfds") in message
    assert "download_and_prepare()" in message and "tfds build cifar100" in message
    assert "cifar100/<version>/" in message


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size"), ({"tasks": ["cats"]}, "tasks"),
    ({"shuffle": "yes"}, "shuffle"), ({"split": ""}, "split")])
def test_loader_validates_its_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cifar100_mtl("/nonexistent", **{"split": "train", **kwargs})


def test_network_shares_its_trunk_and_each_task_loss_is_its_own_batch():
    tasks = ("fish", "people", "trees")
    with tfds.testing.mock_data(as_dataset_fn=fake_cifar(per_fine_class=2)):
        ds = cifar100_mtl("/nonexistent", "train", batch_size=4, tasks=tasks)
    base = cifar100_mtl_network(tasks, trunk_filters=(4,), trunk_units=8, head_units=4)
    assert base.input_names == [cifar100_input_name(t) for t in tasks]
    assert len([w for w in base.weights if w.name.startswith("trunk_")]) == 4  # one conv, one dense
    model = kmm.MinMaxMultiTask(base)
    assert model.task_names == list(tasks)
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss={t: "sparse_categorical_crossentropy" for t in tasks})
    x, y = next(iter(ds))
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    predictions = base(x)
    for task, pred in zip(tasks, predictions):
        expected = np.mean(keras.losses.sparse_categorical_crossentropy(y[task], pred))
        assert logs[f"{task}_loss"] == pytest.approx(expected, rel=1e-5)
    history = model.fit(ds.take(1), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert model.task_weights.numpy().sum() == pytest.approx(1.0)
