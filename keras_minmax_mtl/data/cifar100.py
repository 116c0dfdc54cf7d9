"""Multi-task CIFAR-100, read from a local copy of TFDS' prepared `cifar100` (nothing is downloaded).

`cifar100_mtl` makes the paper's benchmark: 20 five-way tasks, one per
superclass (`CIFAR100_TASKS`), one batch of every task per step. The
fine→(superclass, index) mapping comes from the official hierarchy
(`CIFAR100_SUPERCLASSES`), never from the data. See docs/datasets.md.

Example:

>>> coarse, index = cifar100_fine_to_task()
>>> CIFAR100_TASKS[coarse[30]], int(index[30])
('aquatic_mammals', 1)
"""
import numpy as np
import tensorflow as tf

from keras_minmax_mtl.core.checks import check_positive_int
from keras_minmax_mtl.data.common import check_seed, resolve_shuffle

__all__ = [
    "CIFAR100_FINE_NAMES",
    "CIFAR100_SUPERCLASSES",
    "CIFAR100_TASKS",
    "CIFAR100_CLASSES_PER_TASK",
    "CIFAR100_IMAGE_SHAPE",
    "cifar100_fine_to_task",
    "cifar100_input_name",
    "load_cifar100_mtl",
    "cifar100_mtl",
]

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
    (`keras_minmax_mtl.data.networks.cifar100_mtl_network`) computes each task's
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
    seed = check_seed(seed)
    if not isinstance(split, str) or not split:
        raise ValueError(f"Argument `split` must be a TFDS split string such as 'train', "
                         f"'test' or 'train[:90%]'. Received: split={split!r}")
    shuffle = resolve_shuffle(shuffle, split)
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
