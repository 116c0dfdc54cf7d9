"""Argument checks shared by the dataset loaders (`seed`, `shuffle`)."""
import numpy as np

from keras_minmax_mtl.core.checks import is_int

__all__ = ["check_seed", "resolve_shuffle"]


def check_seed(seed):
    """`seed` as an `int`, or a `ValueError` naming it when it is not a non-negative integer."""
    if not is_int(seed) or seed < 0:
        raise ValueError(
            f"Argument `seed` must be a non-negative integer. Received: seed={seed!r}"
        )
    return int(seed)


def resolve_shuffle(shuffle, split):
    """`shuffle` as given, or `True` for the "train" split when it is `None`."""
    if shuffle is None:
        return split == "train"
    if not isinstance(shuffle, (bool, np.bool_)):
        raise ValueError(
            f"Argument `shuffle` must be None, True or False. Received: shuffle={shuffle!r}")
    return bool(shuffle)
