"""Parameter checks and small samplers shared by the simulators
(:mod:`scperturb_vae.data.simulate`, :mod:`scperturb_vae.data.realistic`)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from scperturb_vae.errors import InputError

__all__ = ["check_int", "check_float", "check_bool", "names", "softmax_rows", "lognormal_sizes"]


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int ``>= minimum``, or an :class:`InputError` naming the parameter."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_float(name: str, value: Any, lower: float | None, strict: bool) -> float:
    """``value`` as a finite float above ``lower`` (``>`` when ``strict``, else ``>=``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InputError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{name} must be finite, got {value}")
    if lower is not None and (value <= lower if strict else value < lower):
        raise InputError(f"{name} must be {'>' if strict else '>='} {lower:g}, got {value:g}")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def names(prefix: str, n: int, min_width: int) -> list[str]:
    """``prefix000, prefix001, ...``: zero-padded so that they sort in order."""
    width = max(min_width, len(str(max(n - 1, 0))))
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def lognormal_sizes(rng: np.random.Generator, n: int, median: float, sigma: float) -> np.ndarray:
    """``median * exp(sigma * N(0, 1))`` (all equal to ``median`` when ``sigma`` is 0)."""
    if sigma == 0.0:
        return np.full(n, float(median))
    return median * np.exp(sigma * rng.standard_normal(n))
