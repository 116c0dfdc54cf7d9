"""What the dataset loaders share: argument checks (`split`, `seed`, `shuffle`) and uniform picks."""
import numpy as np

from keras_minmax_mtl.core.checks import is_int

__all__ = ["check_split", "check_seed", "resolve_shuffle", "pick"]


def check_split(split, splits):
    """`split` if it is one of `splits`, or a `ValueError` naming it and the choices."""
    if not isinstance(split, str) or split not in splits:
        raise ValueError(
            f"Argument `split` must be one of {list(splits)}. Received: split={split!r}"
        )
    return split


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


def pick(u, choices):
    """Maps uniforms in ``[0, 1)`` to a uniform choice among `choices`."""
    choices = np.asarray(choices)
    return choices[np.minimum((u * len(choices)).astype(np.int64), len(choices) - 1)]
