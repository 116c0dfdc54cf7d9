"""Argument checks with Keras-style messages, shared by every part of the package (imports nothing of ours)."""
import math
import numbers


def is_int(value):
    """True for an integer that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value):
    """True for a real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_finite_real(value):
    """True for a finite real number (not a bool, not NaN, not ±inf)."""
    return is_real(value) and math.isfinite(value)


def check_positive_int(value, name, hint=""):
    """Returns `int(value)` if it is an integer > 0; raises `ValueError` naming `name` otherwise."""
    if not is_int(value) or value <= 0:
        raise ValueError(
            f"Argument `{name}` must be a positive integer. Received: {name}={value!r}" + hint
        )
    return int(value)


def check_finite_real(value, name):
    """Returns `float(value)` if it is a finite real number; raises `ValueError` naming `name` otherwise.

    Bools, strings, `None`, NaN and ±inf are refused (`is_finite_real`).
    """
    if not is_finite_real(value):
        raise ValueError(f"Argument `{name}` must be a finite number. Received: {name}={value!r}")
    return float(value)


def scale_value(scale, num_tasks):
    """The multiplier of a multi-task model's weighted loss: `num_tasks` for ``"num_tasks"``.

    Raises:
        ValueError: unless `scale` is ``"num_tasks"`` or a finite number > 0.
    """
    if scale == "num_tasks":
        return float(num_tasks)
    if is_finite_real(scale) and scale > 0:
        return float(scale)
    raise ValueError(
        f"Argument `scale` must be a finite number > 0 or 'num_tasks'. Received: scale={scale!r}")
