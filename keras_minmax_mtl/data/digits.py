"""MultiDigits: a small, real, three-task benchmark built from scikit-learn's digits.

Each example is a 12x16 canvas holding two handwritten 8x8 digits (the 1797
images bundled with scikit-learn, `sklearn.datasets.load_digits`) placed
MultiMNIST-style: one on the left, one on the right, at random offsets, merged
by a pixelwise maximum so that they can overlap by up to 4 columns. Three tasks
of unequal difficulty are defined on every canvas (see `MULTI_DIGITS_TASKS`):

- `"left"`: the class of the left digit (10 classes);
- `"right"`: the class of the right digit (10 classes);
- `"sum"`: the sum of the two digits (19 classes, 0..18), which needs both
  digits right and is therefore clearly harder.

Everything is built at run time from data that ships inside the scikit-learn
wheel: nothing is downloaded.

The module also reads the two benchmarks of the paper from local copies
(nothing is ever downloaded; see docs/datasets.md):

- `cifar100_mtl`: multi-task CIFAR-100 from a prepared TFDS `cifar100`, 20
  five-way tasks (the superclasses), one batch of every task per step;
- `nyuv2`: NYUv2 in the MTAN pre-processed layout, `(image, {"segmentation",
  "depth", "normal"})` batches (losses and metrics: `keras_minmax_mtl.data.nyuv2_metrics`).

The 1797 source images are split once, by a fixed stratified draw that does
not depend on any `seed`, into three disjoint pools (see `SPLIT_FRACTIONS`):
`"train"` (55%), `"validation"` (15%) and `"test"` (30%). Canvases of a split
are made only from images of its own pool, so test accuracy is measured on
handwriting that no training or validation set, of any seed, has ever seen.
The `seed` only chooses which pairs of images and which offsets are drawn.

Two entry points:

- `load_multi_digits` returns NumPy arrays `(x, labels)`, like
  `keras.datasets.mnist.load_data`;
- `multi_digits` returns a batched, prefetched `tf.data.Dataset` of
  `(x, labels)`, shuffled for `"train"`.

Example:

>>> x, labels = load_multi_digits("test", num_examples=4)
>>> x.shape, x.dtype.name
((4, 12, 16, 1), 'float32')
>>> list(labels)
['left', 'right', 'sum']
>>> bool((labels["sum"] == labels["left"] + labels["right"]).all())
True
"""
import functools

import numpy as np
import tensorflow as tf

from keras_minmax_mtl.core.checks import check_positive_int
from keras_minmax_mtl.data.common import check_seed, check_split, pick, resolve_shuffle

__all__ = [
    "CANVAS_ROWS",
    "CANVAS_COLS",
    "DIGIT_SIZE",
    "LEFT_ROW_OFFSETS",
    "LEFT_COL_OFFSETS",
    "RIGHT_ROW_OFFSETS",
    "RIGHT_COL_OFFSETS",
    "MULTI_DIGITS_TASKS",
    "SPLITS",
    "SPLIT_FRACTIONS",
    "DEFAULT_NUM_EXAMPLES",
    "load_multi_digits",
    "multi_digits",
    "multi_digits_source_indices",
]

#: Height of a canvas, in pixels.
CANVAS_ROWS = 12
#: Width of a canvas, in pixels.
CANVAS_COLS = 16
#: Height and width of one source digit (scikit-learn's digits are 8x8).
DIGIT_SIZE = 8

#: Row offsets (of the top-left corner) that the left digit is drawn at, uniformly.
LEFT_ROW_OFFSETS = tuple(range(0, 5))
#: Column offsets that the left digit is drawn at, uniformly.
LEFT_COL_OFFSETS = tuple(range(0, 3))
#: Row offsets that the right digit is drawn at, uniformly.
RIGHT_ROW_OFFSETS = tuple(range(0, 5))
#: Column offsets that the right digit is drawn at, uniformly. With the left
#: digit spanning columns `[0, 10)` at most, the two overlap by 0 to 4 columns.
RIGHT_COL_OFFSETS = tuple(range(6, 9))

#: The tasks, in output order, and their number of classes.
MULTI_DIGITS_TASKS = {"left": 10, "right": 10, "sum": 19}

#: The names of the splits.
SPLITS = ("train", "validation", "test")

#: Fraction of the 1797 source images, per class, in the pool of each split.
SPLIT_FRACTIONS = {"train": 0.55, "validation": 0.15, "test": 0.30}

#: Number of canvases of each split when `num_examples` is not given.
DEFAULT_NUM_EXAMPLES = {"train": 6000, "validation": 1000, "test": 2000}

# The seed of the one draw that splits the source images into pools. It is a
# constant on purpose: the pools must not move with the `seed` of a data set.
_POOL_SEED = 20240607

# Keeps the random streams of the splits apart for one `seed`.
_SPLIT_STREAM = {"train": 0, "validation": 1, "test": 2}

_MAX_PIXEL = 16.0  # scikit-learn's digits take integer values in [0, 16].


# --------------------------------------------------------------------------- #
# Source images and pools
# --------------------------------------------------------------------------- #
@functools.lru_cache(maxsize=1)
def _source_digits():
    """Returns scikit-learn's digits as read-only `(images, targets)` arrays.

    `images` has shape `(1797, 8, 8)`, float32 in `[0, 1]`; `targets` is int32.
    """
    # Imported here so that importing this module stays cheap.
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / _MAX_PIXEL).astype(np.float32)
    targets = digits.target.astype(np.int32)
    images.setflags(write=False)
    targets.setflags(write=False)
    return images, targets


@functools.lru_cache(maxsize=1)
def _pools():
    """Splits the source-image indices into disjoint, stratified pools, once."""
    _, targets = _source_digits()
    rng = np.random.default_rng(_POOL_SEED)
    pools = {split: [] for split in SPLITS}
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(targets == digit))
        n_test = int(round(SPLIT_FRACTIONS["test"] * len(members)))
        n_val = int(round(SPLIT_FRACTIONS["validation"] * len(members)))
        pools["test"].append(members[:n_test])
        pools["validation"].append(members[n_test:n_test + n_val])
        pools["train"].append(members[n_test + n_val:])
    result = {}
    for split, parts in pools.items():
        indices = np.sort(np.concatenate(parts)).astype(np.int64)
        indices.setflags(write=False)
        result[split] = indices
    return result


def multi_digits_source_indices(split):
    """Returns the indices of the source images that canvases of `split` use.

    The indices point into `sklearn.datasets.load_digits()`. The three pools
    are disjoint, stratified by class, and fixed: they do not depend on the
    `seed` of `load_multi_digits` or `multi_digits`.

    Args:
        split: one of `"train"`, `"validation"` or `"test"`.

    Returns:
        A sorted, read-only int64 NumPy array of source-image indices.

    Raises:
        ValueError: if `split` is not a known split.

    Example:

    >>> train = multi_digits_source_indices("train")
    >>> test = multi_digits_source_indices("test")
    >>> len(set(train) & set(test))
    0
    """
    return _pools()[check_split(split, SPLITS)]


# --------------------------------------------------------------------------- #
# Canvases
# --------------------------------------------------------------------------- #
def _paste(canvas, images, rows, cols, row_offsets, col_offsets):
    """Merges `images[i]` into `canvas[i]` at `(rows[i], cols[i])` by maximum."""
    for r in row_offsets:
        for c in col_offsets:
            which = np.flatnonzero((rows == r) & (cols == c))
            if which.size:
                window = canvas[which, r:r + DIGIT_SIZE, c:c + DIGIT_SIZE]
                canvas[which, r:r + DIGIT_SIZE, c:c + DIGIT_SIZE] = np.maximum(
                    window, images[which]
                )


def load_multi_digits(split="train", seed=0, num_examples=None):
    """Builds a split of MultiDigits as NumPy arrays.

    Every example pairs two images drawn uniformly, with replacement, from the
    pool of `split` (see `multi_digits_source_indices`). The left digit's
    top-left corner is drawn uniformly from rows `LEFT_ROW_OFFSETS` and
    columns `LEFT_COL_OFFSETS`, the right digit's from `RIGHT_ROW_OFFSETS` and
    `RIGHT_COL_OFFSETS`; the two are merged by a pixelwise maximum.

    The result is a pure function of `(split, seed, num_examples)`. The splits
    of one `seed` use independent random streams, and the first `k` examples
    do not depend on `num_examples` (asking for more only appends examples).

    Args:
        split: one of `"train"`, `"validation"` or `"test"`. Defaults to
            `"train"`.
        seed: non-negative integer that chooses the pairs and offsets. It does
            not move the pools of source images. Defaults to `0`.
        num_examples: positive number of canvases to build. Defaults to
            `None`, which means `DEFAULT_NUM_EXAMPLES[split]` (6000 for
            `"train"`, 1000 for `"validation"`, 2000 for `"test"`).

    Returns:
        A tuple `(x, labels)`: `x` is a float32 array of shape
        `(num_examples, 12, 16, 1)` with values in `[0, 1]`; `labels` is a
        dict with the keys of `MULTI_DIGITS_TASKS`, in that order (`"left"`,
        `"right"`, `"sum"`), each an int32 array of shape `(num_examples,)`.

    Raises:
        ValueError: if `split` is unknown, `seed` is not a non-negative
            integer, or `num_examples` is not a positive integer.

    Example:

    >>> x_train, y_train = load_multi_digits("train", seed=1)
    >>> x_train.shape
    (6000, 12, 16, 1)
    >>> sorted(set(y_train["sum"].tolist()))[:3]
    [0, 1, 2]
    """
    split = check_split(split, SPLITS)
    seed = check_seed(seed)
    if num_examples is None:
        num_examples = DEFAULT_NUM_EXAMPLES[split]
    num_examples = check_positive_int(num_examples, "num_examples")

    images, targets = _source_digits()
    pool = _pools()[split]

    # One (n, 6) block of uniforms, drawn row by row: example i depends only
    # on (split, seed, i), never on `num_examples`.
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split]])
    u = rng.random((num_examples, 6))
    left_idx = pick(u[:, 0], pool)
    right_idx = pick(u[:, 1], pool)
    left_rows = pick(u[:, 2], LEFT_ROW_OFFSETS)
    left_cols = pick(u[:, 3], LEFT_COL_OFFSETS)
    right_rows = pick(u[:, 4], RIGHT_ROW_OFFSETS)
    right_cols = pick(u[:, 5], RIGHT_COL_OFFSETS)

    canvas = np.zeros((num_examples, CANVAS_ROWS, CANVAS_COLS), dtype=np.float32)
    _paste(canvas, images[left_idx], left_rows, left_cols,
           LEFT_ROW_OFFSETS, LEFT_COL_OFFSETS)
    _paste(canvas, images[right_idx], right_rows, right_cols,
           RIGHT_ROW_OFFSETS, RIGHT_COL_OFFSETS)

    left = targets[left_idx].astype(np.int32)
    right = targets[right_idx].astype(np.int32)
    labels = {"left": left, "right": right, "sum": (left + right).astype(np.int32)}
    return canvas[..., np.newaxis], labels


def multi_digits(split="train", seed=0, num_examples=None, batch_size=32, shuffle=None):
    """Builds a split of MultiDigits as a batched `tf.data.Dataset`.

    The data are those of `load_multi_digits(split, seed, num_examples)`; use
    that function directly for NumPy arrays. The dataset's elements are
    `(x, labels)` batches that `model.fit` accepts as they are for a model
    whose outputs are named after the tasks.

    Args:
        split: one of `"train"`, `"validation"` or `"test"`. Defaults to
            `"train"`.
        seed: non-negative integer that chooses the pairs and offsets and,
            when shuffling, the shuffle order. Defaults to `0`.
        num_examples: positive number of canvases. Defaults to `None`, which
            means `DEFAULT_NUM_EXAMPLES[split]`.
        batch_size: positive number of examples per batch; the last batch may
            be smaller. Defaults to `32`.
        shuffle: whether to shuffle the whole split, with a fresh (seeded)
            order on every iteration. Defaults to `None`, which means `True`
            for `"train"` and `False` for `"validation"` and `"test"`.

    Returns:
        A prefetched `tf.data.Dataset` of `(x, labels)`: `x` is a float32
        tensor of shape `(batch, 12, 16, 1)` and `labels` a dict of int32
        tensors of shape `(batch,)` keyed `"left"`, `"right"`, `"sum"`.

    Raises:
        ValueError: if `split` is unknown, `seed` is not a non-negative
            integer, `num_examples` or `batch_size` is not a positive integer,
            or `shuffle` is not `None` or a bool.

    Example:

    >>> ds = multi_digits("train", seed=0, batch_size=64)
    >>> x, labels = next(iter(ds))
    >>> tuple(x.shape), tuple(labels["sum"].shape)
    ((64, 12, 16, 1), (64,))
    """
    split = check_split(split, SPLITS)
    seed = check_seed(seed)
    batch_size = check_positive_int(
        batch_size, "batch_size",
        hint=" (`multi_digits` always returns a batched `tf.data.Dataset`; "
        "use `load_multi_digits` for NumPy arrays)",
    )
    shuffle = resolve_shuffle(shuffle, split)
    x, labels = load_multi_digits(split, seed=seed, num_examples=num_examples)

    dataset = tf.data.Dataset.from_tensor_slices((x, labels))
    if shuffle:
        dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
