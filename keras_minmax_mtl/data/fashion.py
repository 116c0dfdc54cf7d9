r"""MultiFashion: two Fashion-MNIST items on one canvas, two classification tasks and a regression.

The usual construction (Sener & Koltun 2018, as in the Pareto-MTL papers):
two 28×28 Fashion-MNIST items on one 36×36 canvas, one at the top left and
one at the bottom right (each shifted by 0–2 pixels), merged by a pixelwise
maximum, so that they overlap. Three tasks (`MULTI_FASHION_TASKS`):

- `"left"`: the class of the top-left item (10 classes);
- `"right"`: the class of the bottom-right item (10 classes);
- `"ink"`: a **regression** that needs both items: their summed ink mass,
  in percent of the area of one 28×28 item,

  .. math::

      \text{ink} = \frac{100}{28 \cdot 28} \Big(\sum_{p} a_p + \sum_{p} b_p\Big)

  over the pixels (values in ``[0, 1]``) of the two items before they are
  merged (mean about 57, standard deviation 18): an L1 loss that starts near
  57 beside cross-entropies near 2.3, i.e. losses of different scales, as
  NYUv2's depth and normals beside its segmentation.

The data are read from a local copy of Fashion-MNIST (the four original
gzipped idx files); nothing is ever downloaded. Debian ships it:
``apt-get install dataset-fashion-mnist`` puts the files under
`DEFAULT_DATA_DIR` (``/usr/share/datasets/fashion-mnist/``), which is where
`data_dir=None` looks.

Splits: `"train"` and `"validation"` pair images of two disjoint pools of the
60 000 training images (`VALIDATION_IMAGES` of them, chosen by a fixed draw
that no `seed` moves, form the validation pool); `"test"` pairs images of the
10 000 test images. The `seed` chooses the pairs and shifts; a split is a pure
function of `(split, seed, num_examples)`, and its first `k` canvases do not
depend on `num_examples`.

The idx files are untrusted input: their headers are checked against the
format (magic number, dimensions, exact length) before any array is built.

Example:

>>> x, labels = load_multi_fashion("test", num_examples=4)
>>> x.shape, x.dtype.name
((4, 36, 36, 1), 'float32')
>>> {task: y.dtype.name for task, y in labels.items()}
{'left': 'int32', 'right': 'int32', 'ink': 'float32'}
"""
import functools
import gzip
import pathlib

import numpy as np
import tensorflow as tf

from keras_minmax_mtl.core.checks import check_positive_int
from keras_minmax_mtl.data.common import check_seed, check_split, pick, resolve_shuffle

__all__ = [
    "DEFAULT_DATA_DIR",
    "FASHION_CLASSES",
    "FASHION_FILES",
    "MULTI_FASHION_TASKS",
    "MULTI_FASHION_SPLITS",
    "MULTI_FASHION_DEFAULT_EXAMPLES",
    "MULTI_FASHION_CANVAS",
    "VALIDATION_IMAGES",
    "FashionFileError",
    "read_idx",
    "load_fashion_mnist",
    "load_multi_fashion",
    "multi_fashion",
]

#: Where Debian's `dataset-fashion-mnist` package puts the files.
DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"

#: The ten Fashion-MNIST classes, in label order.
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")

#: The files of the original release: `{(part, kind): file name}`.
FASHION_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}

#: The tasks, in output order: `{task: number of classes}`, `None` for the regression.
MULTI_FASHION_TASKS = {"left": 10, "right": 10, "ink": None}

#: The names of the splits.
MULTI_FASHION_SPLITS = ("train", "validation", "test")

#: Canvases of a split when `num_examples` is not given.
MULTI_FASHION_DEFAULT_EXAMPLES = {"train": 20000, "validation": 5000, "test": 10000}

#: Height and width of a canvas.
MULTI_FASHION_CANVAS = 36

#: Training images held out (by a fixed draw) as the validation pool.
VALIDATION_IMAGES = 10000

_ITEM = 28
_SHIFTS = (0, 1, 2)
_BOTTOM_RIGHT = MULTI_FASHION_CANVAS - _ITEM - max(_SHIFTS)  # 6: the items overlap by 20-24 px
_POOL_SEED = 20261201
_SPLIT_STREAM = {"train": 0, "validation": 1, "test": 2}
_MAX_ITEMS = 1_000_000  # far above the 70 000 of the release: a header claiming more is refused
# idx magic numbers: 0x0000 + type 0x08 (unsigned byte) + number of dimensions.
_MAGIC = {"images": 0x00000803, "labels": 0x00000801}

_HOWTO = (
    "MultiFashion reads a local copy of Fashion-MNIST (nothing is downloaded): the four "
    f"files {sorted(FASHION_FILES.values())}. On Debian/Ubuntu: `apt-get install "
    f"dataset-fashion-mnist` (they land in {DEFAULT_DATA_DIR}/, the default `data_dir`); "
    "elsewhere copy them from the Fashion-MNIST release into a folder and pass it as "
    "`data_dir` (`--data-dir` on the command line)."
)


class FashionFileError(ValueError):
    """A Fashion-MNIST file is missing, damaged or not in the idx format (the message names it)."""


def read_idx(path, kind):
    """Reads one gzipped idx file of unsigned bytes, checking its header against its length.

    Args:
        path: the `.gz` file.
        kind: `"images"` (3 dimensions: count, 28, 28) or `"labels"` (1 dimension).

    Returns:
        A read-only uint8 array of shape `(count, 28, 28)` or `(count,)`.

    Raises:
        FashionFileError: the file is missing, not gzip, or its magic number,
            dimensions or length do not match the format.

    Example:

    >>> read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz", "labels").shape
    (10000,)
    """
    path = pathlib.Path(path)
    if kind not in _MAGIC:
        raise ValueError(f"Argument `kind` must be 'images' or 'labels'. Received: kind={kind!r}")
    if not path.is_file():
        raise FashionFileError(f"Fashion-MNIST file not found: {path}. {_HOWTO}")
    dims = 3 if kind == "images" else 1
    try:
        with gzip.open(path, "rb") as f:
            header = f.read(4 + 4 * dims)
            if len(header) < 4 + 4 * dims:
                raise FashionFileError(f"{path} is truncated: its idx header is incomplete.")
            magic = int.from_bytes(header[:4], "big")
            shape = tuple(int.from_bytes(header[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
            if magic != _MAGIC[kind]:
                raise FashionFileError(
                    f"{path} is not an idx file of {kind} (magic number {magic:#010x}, "
                    f"expected {_MAGIC[kind]:#010x}).")
            if not 0 < shape[0] <= _MAX_ITEMS or shape[1:] not in ((), (_ITEM, _ITEM)):
                raise FashionFileError(
                    f"{path} declares the shape {shape}; Fashion-MNIST {kind} have shape "
                    f"(count,{' 28, 28' if dims == 3 else ''}) with 0 < count <= {_MAX_ITEMS}.")
            size = int(np.prod(shape))
            data = f.read(size)
            extra = f.read(1)
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise FashionFileError(f"{path} is not a readable gzip file: {error}") from None
    if len(data) != size or extra:
        raise FashionFileError(
            f"{path} holds {len(data)}{'+' if extra else ''} bytes of {kind} after its header; "
            f"the header declares {size}.")
    array = np.frombuffer(data, dtype=np.uint8).reshape(shape)
    array.setflags(write=False)
    return array


@functools.lru_cache(maxsize=2)
def _read_part(data_dir, part):
    images = read_idx(pathlib.Path(data_dir) / FASHION_FILES[(part, "images")], "images")
    labels = read_idx(pathlib.Path(data_dir) / FASHION_FILES[(part, "labels")], "labels")
    if len(images) != len(labels):
        raise FashionFileError(
            f"The {part} files of {data_dir} disagree: {len(images)} images, {len(labels)} labels.")
    if labels.max() >= len(FASHION_CLASSES):
        raise FashionFileError(
            f"{pathlib.Path(data_dir) / FASHION_FILES[(part, 'labels')]} holds the label "
            f"{int(labels.max())}; Fashion-MNIST labels are 0..9.")
    return images, labels


def _data_dir(data_dir):
    if data_dir is None:
        data_dir = DEFAULT_DATA_DIR
    if not isinstance(data_dir, (str, pathlib.Path)):
        raise ValueError(f"Argument `data_dir` must be a folder path. Received: data_dir={data_dir!r}")
    folder = pathlib.Path(data_dir)
    if not folder.is_dir():
        raise FashionFileError(f"Fashion-MNIST folder not found: {folder}. {_HOWTO}")
    return str(folder.resolve())


def load_fashion_mnist(data_dir=None):
    """The original Fashion-MNIST: `((x_train, y_train), (x_test, y_test))` as uint8 arrays.

    Like `keras.datasets.fashion_mnist.load_data`, but from a local copy.

    Example:

    >>> (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    >>> x_train.shape, x_test.shape
    ((60000, 28, 28), (10000, 28, 28))
    """
    folder = _data_dir(data_dir)
    return _read_part(folder, "train"), _read_part(folder, "test")


def _pool(folder, split):
    """`(images, labels, indices)`: the images a split pairs, by index into its part."""
    part = "test" if split == "test" else "train"
    images, labels = _read_part(folder, part)
    if part == "test":
        return images, labels, np.arange(len(images))
    held = min(VALIDATION_IMAGES, len(images) // 6)  # small copies (tests) keep both pools
    order = np.random.default_rng(_POOL_SEED).permutation(len(images))
    chosen = np.sort(order[:held] if split == "validation" else order[held:])
    return images, labels, chosen


def load_multi_fashion(split="train", seed=0, num_examples=None, data_dir=None):
    """Builds a split of MultiFashion as NumPy arrays.

    Args:
        split: `"train"`, `"validation"` or `"test"`. Defaults to `"train"`.
        seed: non-negative integer choosing the pairs (drawn uniformly, with
            replacement, from the split's pool) and the shifts. Defaults to `0`.
        num_examples: positive number of canvases. Defaults to
            `MULTI_FASHION_DEFAULT_EXAMPLES[split]`.
        data_dir: the folder with the four Fashion-MNIST files. Defaults to
            `DEFAULT_DATA_DIR` (Debian's `dataset-fashion-mnist`).

    Returns:
        `(x, labels)`: `x` float32 of shape `(n, 36, 36, 1)` in ``[0, 1]``;
        `labels` `{"left": int32 (n,), "right": int32 (n,), "ink": float32 (n,)}`.

    Raises:
        ValueError: a bad `split`, `seed`, `num_examples` or `data_dir`.
        FashionFileError: the files are missing or damaged (the message says
            how to get them).

    Example:

    >>> x, labels = load_multi_fashion("validation", seed=1, num_examples=256)
    >>> 40 < float(labels["ink"].mean()) < 75
    True
    """
    split = check_split(split, MULTI_FASHION_SPLITS)
    seed = check_seed(seed)
    if num_examples is None:
        num_examples = MULTI_FASHION_DEFAULT_EXAMPLES[split]
    num_examples = check_positive_int(num_examples, "num_examples")
    images, classes, pool = _pool(_data_dir(data_dir), split)

    # Example i depends only on (split, seed, i): one row of uniforms per canvas.
    u = np.random.default_rng([seed, _SPLIT_STREAM[split]]).random((num_examples, 6))
    left, right = pick(u[:, 0], pool), pick(u[:, 1], pool)
    offsets = [pick(u[:, k], _SHIFTS) for k in range(2, 6)]
    canvas = np.zeros((num_examples, MULTI_FASHION_CANVAS, MULTI_FASHION_CANVAS), np.uint8)
    for which, rows, cols, base in ((left, offsets[0], offsets[1], 0),
                                    (right, offsets[2], offsets[3], _BOTTOM_RIGHT)):
        for r in _SHIFTS:
            for c in _SHIFTS:
                at = np.flatnonzero((rows == r) & (cols == c))
                if at.size:
                    window = canvas[at, base + r:base + r + _ITEM, base + c:base + c + _ITEM]
                    canvas[at, base + r:base + r + _ITEM, base + c:base + c + _ITEM] = (
                        np.maximum(window, images[which[at]]))
    ink = (images[left].reshape(num_examples, -1).sum(1, dtype=np.int64)
           + images[right].reshape(num_examples, -1).sum(1, dtype=np.int64)) * (
               100.0 / (255.0 * _ITEM * _ITEM))
    labels = {"left": classes[left].astype(np.int32), "right": classes[right].astype(np.int32),
              "ink": ink.astype(np.float32)}
    return (canvas.astype(np.float32) / 255.0)[..., np.newaxis], labels


def multi_fashion(split="train", seed=0, num_examples=None, batch_size=32, shuffle=None,
                  data_dir=None):
    """Builds a split of MultiFashion as a batched, prefetched `tf.data.Dataset` of `(x, labels)`.

    The data are those of `load_multi_fashion(split, seed, num_examples, data_dir)`;
    `shuffle` defaults to `True` for `"train"` only (a fresh seeded order every epoch).

    Example:

    >>> ds = multi_fashion("train", batch_size=64)
    >>> x, labels = next(iter(ds))
    >>> tuple(x.shape), tuple(labels["ink"].shape)
    ((64, 36, 36, 1), (64,))
    """
    split = check_split(split, MULTI_FASHION_SPLITS)
    seed = check_seed(seed)
    batch_size = check_positive_int(batch_size, "batch_size")
    shuffle = resolve_shuffle(shuffle, split)
    x, labels = load_multi_fashion(split, seed=seed, num_examples=num_examples, data_dir=data_dir)
    dataset = tf.data.Dataset.from_tensor_slices((x, labels))
    if shuffle:
        dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
