"""Tests of `keras_minmax_mtl.data` (MultiDigits)."""
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from keras_minmax_mtl import data as datasets
from keras_minmax_mtl.data import (
    CANVAS_COLS,
    CANVAS_ROWS,
    DEFAULT_NUM_EXAMPLES,
    MULTI_DIGITS_TASKS,
    SPLITS,
    load_multi_digits,
    multi_digits,
    multi_digits_source_indices,
)


# --------------------------------------------------------------------------- #
# Constants, shapes, dtypes
# --------------------------------------------------------------------------- #
def test_tasks_are_left_right_sum_in_order():
    assert list(MULTI_DIGITS_TASKS.items()) == [("left", 10), ("right", 10), ("sum", 19)]
    assert (CANVAS_ROWS, CANVAS_COLS) == (12, 16)


def test_default_sizes_are_6000_1000_2000():
    assert DEFAULT_NUM_EXAMPLES == {"train": 6000, "validation": 1000, "test": 2000}


@pytest.mark.parametrize("split", SPLITS)
def test_default_split_has_documented_shapes_and_dtypes(split):
    x, labels = load_multi_digits(split)
    n = DEFAULT_NUM_EXAMPLES[split]
    assert x.shape == (n, 12, 16, 1)
    assert x.dtype == np.float32
    assert list(labels) == ["left", "right", "sum"]
    for y in labels.values():
        assert y.shape == (n,)
        assert y.dtype == np.int32


def test_num_examples_overrides_the_size():
    x, labels = load_multi_digits("validation", num_examples=7)
    assert x.shape == (7, 12, 16, 1)
    assert all(y.shape == (7,) for y in labels.values())


def test_pixels_are_in_unit_interval_and_both_digits_have_ink():
    x, _ = load_multi_digits("train", num_examples=500)
    assert x.min() == 0.0
    assert x.max() <= 1.0
    # Columns 0-5 belong to the left digit only, 10-15 to the right digit only.
    assert (x[:, :, :6].max(axis=(1, 2, 3)) > 0).all()
    assert (x[:, :, 10:].max(axis=(1, 2, 3)) > 0).all()


# --------------------------------------------------------------------------- #
# Labels
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("split", SPLITS)
def test_labels_are_in_range_and_sum_is_left_plus_right(split):
    _, labels = load_multi_digits(split, seed=3, num_examples=1000)
    for task, n_classes in MULTI_DIGITS_TASKS.items():
        assert labels[task].min() >= 0
        assert labels[task].max() < n_classes
    np.testing.assert_array_equal(labels["sum"], labels["left"] + labels["right"])


def test_every_class_of_every_task_occurs_in_train():
    _, labels = load_multi_digits("train")
    for task, n_classes in MULTI_DIGITS_TASKS.items():
        assert set(np.unique(labels[task]).tolist()) == set(range(n_classes))


def _placements(images, candidates, rows, cols):
    """All (image, row, col) placements of `candidates` on an empty canvas."""
    for index in candidates:
        for r in rows:
            for c in cols:
                canvas = np.zeros((CANVAS_ROWS, CANVAS_COLS), np.float32)
                canvas[r:r + 8, c:c + 8] = images[index]
                yield canvas


def test_canvas_is_max_of_a_left_and_right_digit_of_the_labelled_classes():
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    pool = multi_digits_source_indices("test")
    x, labels = load_multi_digits("test", seed=5, num_examples=4)
    for i in range(len(x)):
        canvas = x[i, :, :, 0]
        lefts = [
            p for p in _placements(
                images, pool[digits.target[pool] == labels["left"][i]],
                datasets.LEFT_ROW_OFFSETS, datasets.LEFT_COL_OFFSETS)
            if np.array_equal(p[:, :6], canvas[:, :6])
        ]
        rights = [
            p for p in _placements(
                images, pool[digits.target[pool] == labels["right"][i]],
                datasets.RIGHT_ROW_OFFSETS, datasets.RIGHT_COL_OFFSETS)
            if np.array_equal(p[:, 10:], canvas[:, 10:])
        ]
        assert any(
            np.array_equal(np.maximum(left, right), canvas)
            for left in lefts for right in rights
        ), f"example {i} is not the max of a left and a right digit of its classes"


# --------------------------------------------------------------------------- #
# Determinism and seeds
# --------------------------------------------------------------------------- #
def test_same_seed_gives_identical_data():
    x1, y1 = load_multi_digits("train", seed=7, num_examples=300)
    x2, y2 = load_multi_digits("train", seed=7, num_examples=300)
    np.testing.assert_array_equal(x1, x2)
    for task in MULTI_DIGITS_TASKS:
        np.testing.assert_array_equal(y1[task], y2[task])


def test_different_seed_gives_different_data():
    x1, y1 = load_multi_digits("train", seed=0, num_examples=300)
    x2, y2 = load_multi_digits("train", seed=1, num_examples=300)
    assert not np.array_equal(x1, x2)
    assert not np.array_equal(y1["left"], y2["left"])


def test_splits_of_one_seed_use_different_draws():
    _, train = load_multi_digits("train", seed=0, num_examples=300)
    _, val = load_multi_digits("validation", seed=0, num_examples=300)
    assert not np.array_equal(train["left"], val["left"])


def test_first_examples_do_not_depend_on_num_examples():
    x_small, y_small = load_multi_digits("test", seed=2, num_examples=50)
    x_big, y_big = load_multi_digits("test", seed=2, num_examples=500)
    np.testing.assert_array_equal(x_small, x_big[:50])
    np.testing.assert_array_equal(y_small["sum"], y_big["sum"][:50])


def test_returned_arrays_are_fresh_and_writable():
    x, labels = load_multi_digits("test", num_examples=5)
    x[:] = 0
    labels["left"][:] = 0
    x2, labels2 = load_multi_digits("test", num_examples=5)
    assert x2.max() > 0
    assert labels2["left"].any() or labels2["right"].any()


# --------------------------------------------------------------------------- #
# Pools of source images
# --------------------------------------------------------------------------- #
def test_train_validation_and_test_pools_are_disjoint_and_cover_all_images():
    pools = {split: set(multi_digits_source_indices(split).tolist()) for split in SPLITS}
    assert not pools["train"] & pools["test"]
    assert not pools["train"] & pools["validation"]
    assert not pools["validation"] & pools["test"]
    assert set().union(*pools.values()) == set(range(1797))


def test_pools_have_documented_sizes_and_are_stratified():
    targets = load_digits().target
    for split, fraction in datasets.SPLIT_FRACTIONS.items():
        pool = multi_digits_source_indices(split)
        assert abs(len(pool) / 1797 - fraction) < 0.01
        counts = np.bincount(targets[pool], minlength=10)
        expected = fraction * np.bincount(targets)
        assert np.all(np.abs(counts - expected) <= 1.5), (split, counts, expected)


def test_every_seed_draws_test_canvases_from_the_test_pool_only():
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    pool = multi_digits_source_indices("test")
    for seed in (0, 1, 123):
        x, labels = load_multi_digits("test", seed=seed, num_examples=5)
        for canvas, left in zip(x[:, :, :, 0], labels["left"]):
            # Columns 0-5 hold only the left digit: find it among the pool's images.
            candidates = pool[digits.target[pool] == left]
            assert any(
                np.array_equal(p[:, :6], canvas[:, :6])
                for p in _placements(images, candidates,
                                     datasets.LEFT_ROW_OFFSETS, datasets.LEFT_COL_OFFSETS)
            ), f"seed {seed}: a test canvas uses an image outside the test pool"


def test_source_indices_are_read_only():
    pool = multi_digits_source_indices("train")
    with pytest.raises(ValueError):
        pool[0] = 0


# --------------------------------------------------------------------------- #
# tf.data version
# --------------------------------------------------------------------------- #
def test_dataset_yields_batches_of_images_and_label_dicts():
    ds = multi_digits("validation", batch_size=64, num_examples=100)
    assert isinstance(ds, tf.data.Dataset)
    x_spec, y_spec = ds.element_spec
    assert x_spec.shape.as_list() == [None, 12, 16, 1]
    assert x_spec.dtype == tf.float32
    assert list(y_spec) == ["left", "right", "sum"]
    assert all(s.dtype == tf.int32 and s.shape.as_list() == [None] for s in y_spec.values())
    sizes = [int(x.shape[0]) for x, _ in ds]
    assert sizes == [64, 36]


def test_dataset_matches_numpy_arrays_when_not_shuffled():
    x, labels = load_multi_digits("test", seed=4, num_examples=90)
    batches = list(multi_digits("test", seed=4, num_examples=90, batch_size=32))
    np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in batches]), x)
    for task in MULTI_DIGITS_TASKS:
        np.testing.assert_array_equal(
            np.concatenate([b[1][task].numpy() for b in batches]), labels[task])


def test_train_dataset_is_shuffled_by_default_and_reshuffled_each_epoch():
    ds = multi_digits("train", seed=0, num_examples=200, batch_size=200)
    _, labels = load_multi_digits("train", seed=0, num_examples=200)
    epoch1 = next(iter(ds))[1]["sum"].numpy()
    epoch2 = next(iter(ds))[1]["sum"].numpy()
    assert not np.array_equal(epoch1, labels["sum"])
    assert not np.array_equal(epoch1, epoch2)
    assert sorted(epoch1.tolist()) == sorted(labels["sum"].tolist())


def test_shuffle_argument_overrides_the_default():
    _, labels = load_multi_digits("train", seed=0, num_examples=100)
    ds = multi_digits("train", seed=0, num_examples=100, batch_size=100, shuffle=False)
    np.testing.assert_array_equal(next(iter(ds))[1]["left"].numpy(), labels["left"])
    ds = multi_digits("test", seed=0, num_examples=100, batch_size=100, shuffle=True)
    _, test_labels = load_multi_digits("test", seed=0, num_examples=100)
    assert not np.array_equal(next(iter(ds))[1]["left"].numpy(), test_labels["left"])


# --------------------------------------------------------------------------- #
# Argument errors
# --------------------------------------------------------------------------- #
def test_bad_split_raises_with_the_argument_and_value():
    with pytest.raises(ValueError, match=r"`split`.*Received: split='foo'"):
        load_multi_digits("foo")
    with pytest.raises(ValueError, match="`split`"):
        multi_digits("valid")
    with pytest.raises(ValueError, match="`split`"):
        multi_digits_source_indices("Train")


@pytest.mark.parametrize("num_examples", [0, -5, 2.5, True])
def test_non_positive_num_examples_raises(num_examples):
    with pytest.raises(ValueError, match="`num_examples`"):
        load_multi_digits("train", num_examples=num_examples)


@pytest.mark.parametrize("batch_size", [0, -1, None, 8.0])
def test_bad_batch_size_raises(batch_size):
    with pytest.raises(ValueError, match=r"`batch_size`.*Received: batch_size="):
        multi_digits("train", num_examples=10, batch_size=batch_size)


@pytest.mark.parametrize("seed", [-1, 1.5, None, "0"])
def test_bad_seed_raises(seed):
    with pytest.raises(ValueError, match="`seed`"):
        load_multi_digits("train", seed=seed, num_examples=10)


def test_bad_shuffle_raises():
    with pytest.raises(ValueError, match="`shuffle`"):
        multi_digits("train", num_examples=10, shuffle="yes")
