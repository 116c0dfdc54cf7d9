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
  "depth", "normal"})` batches (losses and metrics: `keras_minmax_mtl.nyuv2`).

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

from keras_minmax_mtl._checks import check_positive_int, is_int

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
    "CIFAR100_FINE_NAMES",
    "CIFAR100_SUPERCLASSES",
    "CIFAR100_TASKS",
    "CIFAR100_CLASSES_PER_TASK",
    "CIFAR100_IMAGE_SHAPE",
    "cifar100_fine_to_task",
    "cifar100_input_name",
    "load_cifar100_mtl",
    "cifar100_mtl",
    "NYUV2_TASKS",
    "NYUV2_NUM_CLASSES",
    "NYUV2_IMAGE_SIZE",
    "NYUV2_FOLDERS",
    "nyuv2",
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
# Argument checks
# --------------------------------------------------------------------------- #
def _check_split(split):
    if not isinstance(split, str) or split not in SPLITS:
        raise ValueError(
            f"Argument `split` must be one of {list(SPLITS)}. Received: split={split!r}"
        )
    return split


def _check_seed(seed):
    if not is_int(seed) or seed < 0:
        raise ValueError(
            f"Argument `seed` must be a non-negative integer. Received: seed={seed!r}"
        )
    return int(seed)


def _resolve_shuffle(shuffle, split):
    """`shuffle` as given, or `True` for the "train" split when it is `None`."""
    if shuffle is None:
        return split == "train"
    if not isinstance(shuffle, (bool, np.bool_)):
        raise ValueError(
            f"Argument `shuffle` must be None, True or False. Received: shuffle={shuffle!r}")
    return bool(shuffle)


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
    return _pools()[_check_split(split)]


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


def _pick(u, choices):
    """Maps uniforms in `[0, 1)` to a uniform choice among `choices`."""
    choices = np.asarray(choices)
    return choices[np.minimum((u * len(choices)).astype(np.int64), len(choices) - 1)]


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
    split = _check_split(split)
    seed = _check_seed(seed)
    if num_examples is None:
        num_examples = DEFAULT_NUM_EXAMPLES[split]
    num_examples = check_positive_int(num_examples, "num_examples")

    images, targets = _source_digits()
    pool = _pools()[split]

    # One (n, 6) block of uniforms, drawn row by row: example i depends only
    # on (split, seed, i), never on `num_examples`.
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split]])
    u = rng.random((num_examples, 6))
    left_idx = _pick(u[:, 0], pool)
    right_idx = _pick(u[:, 1], pool)
    left_rows = _pick(u[:, 2], LEFT_ROW_OFFSETS)
    left_cols = _pick(u[:, 3], LEFT_COL_OFFSETS)
    right_rows = _pick(u[:, 4], RIGHT_ROW_OFFSETS)
    right_cols = _pick(u[:, 5], RIGHT_COL_OFFSETS)

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
    split = _check_split(split)
    seed = _check_seed(seed)
    batch_size = check_positive_int(
        batch_size, "batch_size",
        hint=" (`multi_digits` always returns a batched `tf.data.Dataset`; "
        "use `load_multi_digits` for NumPy arrays)",
    )
    shuffle = _resolve_shuffle(shuffle, split)
    x, labels = load_multi_digits(split, seed=seed, num_examples=num_examples)

    dataset = tf.data.Dataset.from_tensor_slices((x, labels))
    if shuffle:
        dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# =========================================================================== #
# Multi-task CIFAR-100
# =========================================================================== #
#: The 100 CIFAR-100 fine classes, in the order of their integer labels (the
#: official `fine_label_names` of the CIFAR-100 python release, alphabetical).
CIFAR100_FINE_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle",
    "bicycle", "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can",
    "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud",
    "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant",
    "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree",
    "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate",
    "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

#: The official CIFAR-100 hierarchy: each superclass (the task names, in the
#: order of the integer `coarse_label`, with `-` written `_` so that they are
#: valid layer names) and its five fine classes. Source: the CIFAR-100 page,
#: https://www.cs.toronto.edu/~kriz/cifar.html ("Superclass / Classes" table).
CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man_made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non_insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}

#: The 20 task names of `cifar100_mtl`, in `coarse_label` order.
CIFAR100_TASKS = tuple(CIFAR100_SUPERCLASSES)

#: Classes per task (every superclass holds five fine classes).
CIFAR100_CLASSES_PER_TASK = 5

#: Height, width and channels of a CIFAR-100 image.
CIFAR100_IMAGE_SHAPE = (32, 32, 3)


def cifar100_fine_to_task():
    """Returns the fine→(superclass, index inside the superclass) mapping as arrays.

    Derived from the official hierarchy `CIFAR100_SUPERCLASSES`, never from
    the data: `coarse[f]` is the `coarse_label` of fine class `f` and
    `index[f]` its rank (0..4) among the five fine labels of its superclass,
    in increasing fine-label order (i.e. alphabetical, like the fine labels).

    Returns:
        `(coarse, index)`: two int32 NumPy arrays of shape `(100,)`.

    Example:

    >>> coarse, index = cifar100_fine_to_task()
    >>> CIFAR100_FINE_NAMES[30], CIFAR100_TASKS[coarse[30]], int(index[30])
    ('dolphin', 'aquatic_mammals', 1)
    """
    fine_id = {name: i for i, name in enumerate(CIFAR100_FINE_NAMES)}
    coarse = np.full(100, -1, dtype=np.int32)
    index = np.full(100, -1, dtype=np.int32)
    for c, members in enumerate(CIFAR100_SUPERCLASSES.values()):
        for rank, f in enumerate(sorted(fine_id[m] for m in members)):
            coarse[f], index[f] = c, rank
    return coarse, index


def cifar100_input_name(task):
    """The name of the model input (and of the `x` dict key) that carries `task`'s images.

    Example:

    >>> cifar100_input_name("people")
    'people_image'
    """
    return f"{task}_image"


_CIFAR_HOWTO = (
    "Prepare it once on a machine with internet access, e.g. `python -c \"import "
    "tensorflow_datasets as tfds; tfds.builder('cifar100', data_dir='DIR')."
    "download_and_prepare()\"` (or `tfds build cifar100 --data_dir DIR`), then copy DIR "
    "here and pass it as `data_dir`. The folder must hold `cifar100/<version>/` with "
    "`dataset_info.json` and the TFRecord shards. Nothing is ever downloaded by this loader."
)


def _read_cifar100(data_dir, split):
    """Reads a whole TFDS `cifar100` split as `(images uint8, fine int32, coarse int32)`."""
    import tensorflow_datasets as tfds  # imported here: importing `datasets` stays cheap.

    try:
        ds = tfds.load("cifar100", split=split, data_dir=str(data_dir), download=False)
    except Exception as error:  # tfds raises AssertionError / DatasetNotFoundError.
        raise FileNotFoundError(
            f"No prepared TFDS `cifar100` (split {split!r}) was found under "
            f"data_dir={str(data_dir)!r}. {_CIFAR_HOWTO} (TFDS said: {error})"
        ) from None
    spec = ds.element_spec
    missing = [k for k in ("image", "label", "coarse_label") if k not in spec]
    if missing:
        raise ValueError(
            f"The TFDS `cifar100` data under data_dir={str(data_dir)!r} lacks the features "
            f"{missing}; expected `image` (32x32x3 uint8), `label` (fine, 0..99) and "
            f"`coarse_label` (0..19). {_CIFAR_HOWTO}"
        )
    images, fine, coarse = [], [], []
    for batch in tfds.as_numpy(ds.batch(4096)):
        images.append(batch["image"])
        fine.append(batch["label"])
        coarse.append(batch["coarse_label"])
    if not images:
        raise ValueError(f"The TFDS `cifar100` split {split!r} under data_dir="
                         f"{str(data_dir)!r} is empty. {_CIFAR_HOWTO}")
    images = np.concatenate(images)
    if images.shape[1:] != CIFAR100_IMAGE_SHAPE:
        raise ValueError(
            f"The TFDS `cifar100` images under data_dir={str(data_dir)!r} must have shape "
            f"{CIFAR100_IMAGE_SHAPE}. Received images of shape {images.shape[1:]}.")
    return (images, np.concatenate(fine).astype(np.int64),
            np.concatenate(coarse).astype(np.int64))


def load_cifar100_mtl(data_dir, split="train"):
    """Reads a split of multi-task CIFAR-100 as NumPy arrays, one entry per task.

    Args:
        data_dir: the TFDS data folder holding a prepared `cifar100`.
        split: a TFDS split string of `cifar100` (`"train"`, `"test"`, or a
            slice such as `"train[:90%]"` / `"train[90%:]"` for a validation
            split). Defaults to `"train"`.

    Returns:
        `{task: (images, labels)}` for the 20 tasks of `CIFAR100_TASKS`, in
        order: `images` uint8 of shape `(n_task, 32, 32, 3)` and `labels`
        int32 in `0..4` (the fine class's rank inside the superclass, see
        `cifar100_fine_to_task`).

    Raises:
        FileNotFoundError: if no prepared `cifar100` is found in `data_dir`.
        ValueError: if the data lack a feature, or a `coarse_label`
            disagrees with the official hierarchy of its `label`.
    """
    images, fine, coarse = _read_cifar100(data_dir, split)
    expected_coarse, index = cifar100_fine_to_task()
    if fine.min() < 0 or fine.max() > 99 or coarse.min() < 0 or coarse.max() > 19:
        raise ValueError(
            f"The TFDS `cifar100` labels under data_dir={str(data_dir)!r} must be in 0..99 "
            f"(`label`) and 0..19 (`coarse_label`). Received ranges "
            f"{fine.min()}..{fine.max()} and {coarse.min()}..{coarse.max()}.")
    wrong = np.flatnonzero(expected_coarse[fine] != coarse)
    if wrong.size:
        i = int(wrong[0])
        raise ValueError(
            f"The TFDS `cifar100` data under data_dir={str(data_dir)!r} disagree with the "
            f"official CIFAR-100 hierarchy in {wrong.size} of {len(fine)} examples: e.g. "
            f"example {i} has label={fine[i]} ({CIFAR100_FINE_NAMES[fine[i]]!r}, superclass "
            f"{int(expected_coarse[fine[i]])}) but coarse_label={coarse[i]}. {_CIFAR_HOWTO}")
    return {
        task: (images[coarse == c], index[fine[coarse == c]].astype(np.int32))
        for c, task in enumerate(CIFAR100_TASKS)
    }


def cifar100_mtl(data_dir, split="train", batch_size=32, shuffle=None, seed=0, tasks=None):
    """Builds multi-task CIFAR-100: 20 five-way tasks, one batch of every task per step.

    The paper's protocol (Guo et al., after Rosenbaum et al.'s multi-task
    CIFAR-100): each superclass is a task, a 5-way problem over its fine
    classes (labels remapped to `0..4` inside the superclass, see
    `cifar100_fine_to_task`). Every element holds one batch of *each* task's
    own images, so that a multi-input network sharing its trunk
    (`keras_minmax_mtl.networks.cifar100_mtl_network`) computes each task's
    loss on its own batch:

        x = {cifar100_input_name(t): images of task t, (B, 32, 32, 3) float32 in [0, 1]}
        y = {t: labels of task t, (B,) int32 in 0..4}

    An epoch ends with the shortest task (all tasks have 2,500 train / 500
    test images in CIFAR-100). Training batches (`shuffle=True`) are full
    (`drop_remainder`), so that all tasks have equal batch sizes; evaluation
    batches keep the remainder, which is the same for every task on the
    real data.

    Args:
        data_dir: the TFDS data folder holding a prepared `cifar100` (read
            with `download=False`; nothing is downloaded).
        split: a TFDS split string, e.g. `"train"`, `"test"`,
            `"train[:90%]"`. Defaults to `"train"`.
        batch_size: positive number of images *per task* in a step.
            Defaults to `32`.
        shuffle: whether to reshuffle every task's images each epoch.
            Defaults to `None`: `True` for `"train"` (pass `True` for a
            training slice such as `"train[:90%]"`).
        seed: non-negative shuffle seed. Defaults to `0`.
        tasks: a subset of `CIFAR100_TASKS` to serve, in that order (labels
            unchanged). Defaults to `None`: all 20.

    Returns:
        A prefetched `tf.data.Dataset` of `(x, y)` as above.

    Raises:
        FileNotFoundError: if no prepared `cifar100` is found in `data_dir`.
        ValueError: bad arguments or malformed data.

    Example:

    >>> train = cifar100_mtl("~/tensorflow_datasets", "train[:90%]", batch_size=16,
    ...                      shuffle=True)
    >>> x, y = next(iter(train))
    >>> sorted(y)[:2], tuple(x["people_image"].shape)
    (['aquatic_mammals', 'fish'], (16, 32, 32, 3))
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    seed = _check_seed(seed)
    if not isinstance(split, str) or not split:
        raise ValueError(f"Argument `split` must be a TFDS split string such as 'train', "
                         f"'test' or 'train[:90%]'. Received: split={split!r}")
    shuffle = _resolve_shuffle(shuffle, split)
    if tasks is None:
        tasks = CIFAR100_TASKS
    if (isinstance(tasks, str) or not tasks
            or any(t not in CIFAR100_TASKS for t in tasks) or len(set(tasks)) != len(tasks)):
        raise ValueError(f"Argument `tasks` must be a non-empty sequence of distinct names from "
                         f"{list(CIFAR100_TASKS)}. Received: tasks={tasks!r}")
    tasks = tuple(t for t in CIFAR100_TASKS if t in tasks)
    per_task = load_cifar100_mtl(data_dir, split)
    per_task = {t: per_task[t] for t in tasks}
    empty = [t for t, (images, _) in per_task.items() if len(images) < (batch_size if shuffle else 1)]
    if empty:
        raise ValueError(
            f"The split {split!r} has too few images for tasks {empty} (a training batch "
            f"needs batch_size={batch_size} images per task).")

    def task_dataset(c, images, labels):
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
        if shuffle:
            ds = ds.shuffle(len(images), seed=seed * 1000 + c, reshuffle_each_iteration=True)
        return ds.batch(batch_size, drop_remainder=bool(shuffle))

    parts = tuple(task_dataset(CIFAR100_TASKS.index(t), *per_task[t]) for t in tasks)

    def to_example(*batches):
        x = {cifar100_input_name(t): tf.cast(b[0], tf.float32) / 255.0
             for t, b in zip(tasks, batches)}
        y = {t: b[1] for t, b in zip(tasks, batches)}
        return x, y

    return tf.data.Dataset.zip(parts).map(to_example).prefetch(tf.data.AUTOTUNE)


# =========================================================================== #
# NYUv2 (MTAN pre-processing)
# =========================================================================== #
#: The NYUv2 tasks, in output order.
NYUV2_TASKS = ("segmentation", "depth", "normal")

#: Number of segmentation classes (the 13-class NYUv2 labelling); -1 = ignore.
NYUV2_NUM_CLASSES = 13

#: Height and width of the MTAN pre-processed NYUv2 images.
NYUV2_IMAGE_SIZE = (288, 384)

#: The folders of one split of the MTAN layout, and the channels of their arrays.
NYUV2_FOLDERS = {"image": 3, "label": 0, "depth": 1, "normal": 3}

_NYUV2_HOWTO = (
    "Expected the MTAN pre-processed NYUv2 layout (Liu, Johns, Davison, CVPR 2019; "
    "https://github.com/lorenmt/mtan, README section 'Image-to-Image Predictions': "
    "https://www.dropbox.com/s/p2nn02wijg7peiy/nyuv2.zip): "
    "<data_dir>/<split>/image/<i>.npy (288x384x3 float), <data_dir>/<split>/label/<i>.npy "
    "(288x384, classes 0..12, -1 = ignore), <data_dir>/<split>/depth/<i>.npy (288x384x1, "
    "0 = invalid) and <data_dir>/<split>/normal/<i>.npy (288x384x3), i = 0, 1, 2, ...; "
    "splits `train` (795 images) and `val` (654, the test set). Download and unpack the "
    "archive elsewhere, copy it here and pass the folder holding `train/` and `val/` "
    "as `data_dir`."
)


def _nyuv2_indices(split_dir):
    """The common sorted indices `i` of `<folder>/<i>.npy` in the four folders of a split."""
    import pathlib

    split_dir = pathlib.Path(split_dir)
    missing = [f for f in NYUV2_FOLDERS if not (split_dir / f).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"NYUv2 folders {[str(split_dir / f) for f in missing]} not found. {_NYUV2_HOWTO}")
    found = {}
    for folder in NYUV2_FOLDERS:
        names = sorted(p.name for p in (split_dir / folder).glob("*.npy"))
        bad = [n for n in names if not n[:-4].isdigit()]
        if bad:
            raise ValueError(f"NYUv2 files must be named <i>.npy with an integer i. Received "
                             f"{bad[:3]} in {split_dir / folder}. {_NYUV2_HOWTO}")
        found[folder] = {int(n[:-4]) for n in names}
    if not found["image"]:
        raise FileNotFoundError(f"No <i>.npy files in {split_dir / 'image'}. {_NYUV2_HOWTO}")
    for folder, indices in found.items():
        if indices != found["image"]:
            diff = sorted(found["image"] ^ indices)[:5]
            raise ValueError(
                f"The NYUv2 folders of {split_dir} must hold the same indices; "
                f"{split_dir / 'image'} and {split_dir / folder} differ at e.g. {diff}. "
                f"{_NYUV2_HOWTO}")
    return sorted(found["image"])


def _nyuv2_load(split_dir, i):
    """Loads example `i` as `(image, label, depth, normal)` float32/int32 arrays, checked."""
    arrays = {f: np.load(f"{split_dir}/{f}/{i}.npy") for f in NYUV2_FOLDERS}
    h, w = arrays["image"].shape[:2]
    for folder, channels in NYUV2_FOLDERS.items():
        a = arrays[folder]
        if channels == 0 and a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if channels and a.ndim == 2 and channels == 1:
            a = a[..., None]
        want = (h, w, channels) if channels else (h, w)
        if a.shape != want:
            raise ValueError(
                f"NYUv2 array {split_dir}/{folder}/{i}.npy must have shape {want} (HWC, like "
                f"its image). Received shape {a.shape}. {_NYUV2_HOWTO}")
        arrays[folder] = a
    return (arrays["image"].astype(np.float32), arrays["label"].astype(np.int32),
            arrays["depth"].astype(np.float32), arrays["normal"].astype(np.float32))


def nyuv2(data_dir, split="train", batch_size=8, shuffle=None, seed=0):
    """Reads NYUv2 in the MTAN pre-processed layout as a batched `tf.data.Dataset`.

    Layout (one folder per split, `train` and `val`): `image/<i>.npy`
    (H x W x 3), `label/<i>.npy` (H x W, 13 classes, -1 = ignore),
    `depth/<i>.npy` (H x W x 1, 0 = invalid), `normal/<i>.npy` (H x W x 3,
    unit vectors, 0 = invalid); H x W = 288 x 384 in the published data (any
    size is accepted if it is the same for every file). Every file is checked
    when it is read.

    Args:
        data_dir: the folder holding the split folders.
        split: the split folder name, `"train"` or `"val"` (any folder name
            of that layout is accepted). Defaults to `"train"`.
        batch_size: positive number of images per batch. Defaults to `8`.
        shuffle: reshuffle every epoch. Defaults to `None`: `True` for
            `"train"`.
        seed: non-negative shuffle seed. Defaults to `0`.

    Returns:
        A prefetched `tf.data.Dataset` of `(image, {"segmentation": (B, H, W)
        int32, "depth": (B, H, W, 1) float32, "normal": (B, H, W, 3)
        float32})`, image `(B, H, W, 3)` float32.

    Raises:
        FileNotFoundError: missing split folder, sub-folder or files.
        ValueError: bad arguments, misnamed files, mismatched indices or
            shapes.

    Example:

    >>> train = nyuv2("/data/nyuv2", "train", batch_size=2)
    >>> image, y = next(iter(train))
    >>> tuple(image.shape), tuple(y["segmentation"].shape)
    ((2, 288, 384, 3), (2, 288, 384))
    """
    import pathlib

    batch_size = check_positive_int(batch_size, "batch_size")
    seed = _check_seed(seed)
    if not isinstance(split, str) or not split or "/" in split:
        raise ValueError(f"Argument `split` must be a split folder name such as 'train' or "
                         f"'val'. Received: split={split!r}")
    shuffle = _resolve_shuffle(shuffle, split)
    split_dir = pathlib.Path(data_dir).expanduser() / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"NYUv2 split folder {str(split_dir)!r} not found. {_NYUV2_HOWTO}")
    indices = _nyuv2_indices(split_dir)
    h, w = _nyuv2_load(split_dir, indices[0])[0].shape[:2]

    def load(i):
        return _nyuv2_load(split_dir, int(i))

    def read(i):
        image, label, depth, normal = tf.numpy_function(
            load, [i], (tf.float32, tf.int32, tf.float32, tf.float32))
        image.set_shape((h, w, 3))
        label.set_shape((h, w))
        depth.set_shape((h, w, 1))
        normal.set_shape((h, w, 3))
        return image, {"segmentation": label, "depth": depth, "normal": normal}

    ds = tf.data.Dataset.from_tensor_slices(np.asarray(indices, dtype=np.int64))
    if shuffle:
        ds = ds.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True)
    return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(
        tf.data.AUTOTUNE)
