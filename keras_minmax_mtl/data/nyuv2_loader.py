"""NYUv2 in the MTAN pre-processed layout, read from a local copy (nothing is downloaded).

`nyuv2` yields `(image, {"segmentation", "depth", "normal"})` batches; the
losses and metrics of the three tasks are in `keras_minmax_mtl.data.nyuv2_metrics`.
See docs/datasets.md.

Example:

>>> NYUV2_TASKS
('segmentation', 'depth', 'normal')
"""
import numpy as np
import tensorflow as tf

from keras_minmax_mtl.core.checks import check_positive_int
from keras_minmax_mtl.data.common import check_seed, resolve_shuffle

__all__ = [
    "NYUV2_TASKS",
    "NYUV2_NUM_CLASSES",
    "NYUV2_IMAGE_SIZE",
    "NYUV2_FOLDERS",
    "nyuv2",
]

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
    seed = check_seed(seed)
    if not isinstance(split, str) or not split or "/" in split:
        raise ValueError(f"Argument `split` must be a split folder name such as 'train' or "
                         f"'val'. Received: split={split!r}")
    shuffle = resolve_shuffle(shuffle, split)
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
