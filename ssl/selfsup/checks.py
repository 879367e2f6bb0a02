"""The value checks every part runs on its arguments, one owner for their wording (docs/design.md, "Where each
fact lives").

Each takes the config key the value came from (``objective.temperature``, ``data.batch_size``) and returns the value
itself, so a constructor reads ``self.k = checks.integer("objective.k", k, minimum=2)``; a bad value raises one
:class:`ValueError` line naming the key, what it got and what it expects — what the command-line tools print.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _expected(minimum, maximum, noun: str) -> str:
    if minimum is not None and maximum is not None:
        return f"{noun} in [{minimum}, {maximum}]"
    if minimum == 1 and noun == "an integer":
        return "a positive integer"
    if minimum is not None:
        return f"{noun} >= {minimum}"
    if maximum is not None:
        return f"{noun} <= {maximum}"
    return noun


def integer(key: str, value, minimum: int | None = None, maximum: int | None = None, allow_none: bool = False):
    """``value`` if it is an integer (not a bool) within [minimum, maximum] (or None where ``allow_none``)."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, int) and not isinstance(value, bool)
    if ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum):
        return value
    expected = _expected(minimum, maximum, "an integer") + (" or null" if allow_none else "")
    raise ValueError(f"{key}={value!r}: expected {expected}")


def number(
    key: str,
    value,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    allow_none: bool = False,
):
    """``value`` if it is a finite real number (not a bool) within [minimum, maximum], > ``above`` and < ``below``."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if (
        ok
        and (minimum is None or value >= minimum)
        and (maximum is None or value <= maximum)
        and (above is None or value > above)
        and (below is None or value < below)
    ):
        return value
    low = f"[{minimum}" if minimum is not None else (f"({above}" if above is not None else None)
    if below is not None and low is not None:
        expected = f"a number in {low}, {below})"
    elif below is not None:
        expected = f"a number < {below}"
    elif above is not None:
        expected = f"a number > {above}"
    else:
        expected = _expected(minimum, maximum, "a number")
    raise ValueError(f"{key}={value!r}: expected {expected}" + (" or null" if allow_none else ""))


def one_of(key: str, value, choices) -> object:
    """``value`` if it is one of ``choices``."""
    if value in choices:
        return value
    raise ValueError(f"{key}={value!r}: expected one of {', '.join(repr(c) for c in choices)}")


def labels(key: str, value, n: int):
    """``value`` as (n,) int64 class labels on the CPU (a tensor or anything ``torch.as_tensor`` takes)."""
    import torch

    y = torch.as_tensor(value)
    if y.ndim != 1 or y.shape[0] != n or y.is_floating_point():
        raise ValueError(f"{key}: got {tuple(y.shape)} {y.dtype}, expected ({n},) integer labels")
    return y.long().cpu()


def interval(key: str, value, above: float, below: float | None = None, maximum: float | None = None, scalar=True):
    """``(lo, hi)`` from ``[lo, hi]`` (lo <= hi, each checked), or ``(v, v)`` from a number ``v`` where ``scalar``."""
    bounds = dict(above=above, below=below, maximum=maximum)
    if scalar and isinstance(value, int | float) and not isinstance(value, bool):
        v = float(number(key, value, **bounds))
        return (v, v)
    items = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else None
    try:
        lo, hi = (float(number(key, v, **bounds)) for v in items)
        if lo <= hi:
            return (lo, hi)
    except (TypeError, ValueError):
        pass
    limits = f"({above}, {below})" if below is not None else f"({above}, {maximum}]" if maximum else f"> {above}"
    expected = f"[min, max] with min <= max, each in {limits}" if maximum or below else "[min, max] with 0 < min <= max"
    raise ValueError(f"{key}={items if items is not None else value!r}: expected {'a number or ' * scalar}{expected}")
