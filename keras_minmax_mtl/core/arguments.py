"""The value types of the `kmm` flags: each turns a flag's text into a value or says what is wrong.

They are `argparse` types: a bad value raises `argparse.ArgumentTypeError`,
which `kmm` prints as one line ``kmm: error: argument --flag: must be ...``
(exit status 2). Nothing here imports TensorFlow. They live in the core
because both the command line (`cli`) and the registry of compression methods
(`keras_minmax_mtl.sparsity.methods`, whose options are flags) use them, and
imports only go down.

Example:

>>> parser.add_argument("--epochs", type=positive_int)
>>> positive_int("0")
Traceback (most recent call last):
argparse.ArgumentTypeError: must be an integer > 0, received 0
"""
import argparse
import math

__all__ = ["number", "finite", "integer", "positive_int", "non_negative_int", "seed",
           "positive_float", "non_negative_float", "drop_fraction", "unit_interval",
           "signed_unit_interval", "share", "scale", "SEED_LIMIT"]


def number(text):
    """A float, or an `ArgumentTypeError` naming the text."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, received {text!r}") from None


def finite(text):
    """A finite float."""
    value = number(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, received {text}")
    return value


def integer(text, rule):
    """An int; `rule` is what the message says it must be."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer {rule}, received {text!r}") from None


def positive_int(text):
    """An integer > 0."""
    value = integer(text, "> 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be an integer > 0, received {text}")
    return value


def non_negative_int(text):
    """An integer >= 0."""
    value = integer(text, ">= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, received {text}")
    return value


#: Seeds go to NumPy's legacy seeding (`keras.utils.set_random_seed`), which takes 32 bits.
SEED_LIMIT = 2 ** 32


def seed(text):
    """A seed: an integer in [0, 2**32)."""
    value = non_negative_int(text)
    if value >= SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**32), received {text}")
    return value


def positive_float(text):
    """A finite number > 0."""
    value = finite(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, received {text}")
    return value


def non_negative_float(text):
    """A finite number >= 0."""
    value = finite(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, received {text}")
    return value


def drop_fraction(text):
    """A finite number in (0, 1]."""
    value = finite(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], received {text}")
    return value


def _in_range(text, low, high, rule):
    """`float(text)` if ``low <= value`` and ``value <op> high`` (`rule` says which), else an error."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    inside = low <= value <= high if rule.endswith("]") else low <= value < high
    if not inside:
        raise argparse.ArgumentTypeError(f"must be {rule}, received {text}")
    return value


def unit_interval(text):
    """A number in [0, 1]."""
    return _in_range(text, 0.0, 1.0, "in [0, 1]")


def signed_unit_interval(text):
    """A number in [-1, 1] (a similarity threshold)."""
    return _in_range(text, -1.0, 1.0, "a number in [-1, 1]")


def share(text):
    """A number in [0, 1) (a share of a budget)."""
    return _in_range(text, 0.0, 1.0, "in [0, 1)")


def scale(text):
    """`--scale`: a finite number > 0 or 'num_tasks'."""
    if text == "num_tasks":
        return text
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0 or 'num_tasks', received {text!r}")
    if value is None or not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0 or 'num_tasks', received {text!r}")
    return value
