"""Checks of hyperparameters, each raising a ValueError/TypeError whose message names the bad value."""

from __future__ import annotations

import math
from numbers import Integral, Real

__all__ = [
    "KernelChoiceError",
    "check_beta",
    "check_bool",
    "check_kernel_choice",
    "check_nonnegative",
    "check_positive",
    "check_positive_int",
    "check_unit_interval",
]


class KernelChoiceError(ValueError, RuntimeError):
    """A refused combination of kernel options (foreach, fused, differentiable): a ValueError, as this package
    raises for bad arguments, and a RuntimeError, as torch.optim raises for these."""


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def check_nonnegative(name: str, value: object) -> float:
    """``value`` as a float, if it is a finite real number >= 0."""
    number = _check_real(name, value)
    if number < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return number


def check_positive(name: str, value: object) -> float:
    """``value`` as a float, if it is a finite real number > 0."""
    number = _check_real(name, value)
    if number <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return number


def check_positive_int(name: str, value: object) -> int:
    """``value`` as an int, if it is an integer >= 1 (a Python or NumPy integer, as torch takes them)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be an integer >= 1, got {value!r}")
    if not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def check_unit_interval(name: str, value: object) -> float:
    """``value`` as a float, if it lies in [0, 1)."""
    number = _check_real(name, value)
    if not 0 <= number < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return number


def check_beta(betas: object) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    return check_unit_interval("betas[0]", betas[0]), check_unit_interval("betas[1]", betas[1])


def check_bool(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, bool):
        allowed = "True, False or None" if optional else "True or False"
        raise TypeError(f"{name} must be {allowed}, got {value!r}")


def check_kernel_choice(foreach: object, fused: object) -> None:
    check_bool("foreach", foreach, optional=True)
    check_bool("fused", fused, optional=True)
    if foreach and fused:
        raise KernelChoiceError(
            "foreach=True and fused=True cannot be combined; set at most one (`fused` and `foreach` cannot be `True` "
            "together)"
        )
