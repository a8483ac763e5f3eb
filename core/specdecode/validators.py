"""attrs validators for a method's options class, with specdecode's error messages.

Each names the option as users write it, ``method_options.<name>``, with the value and what is allowed::

    @attrs.frozen(kw_only=True)
    class MyOptions:
        depth: int = attrs.field(default=4, validator=validators.integer(minimum=1))
        # 'method_options.depth' must be an integer >= 1 (got 0)

Numbers accept ints and floats but never bools (``True`` is an int to Python, never a sensible depth).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from .errors import invalid

Validator = Callable[[Any, Any, Any], None]

__all__ = ["boolean", "integer", "number", "option_name", "path", "Validator"]


def option_name(attribute: Any) -> str:
    """How users write an option: ``method_options.<name>``."""
    return f"method_options.{attribute.name}"


def _allowed(allowed: str, optional: bool, meaning: str) -> str:
    return allowed + (" or null" if optional else "") + (f" {meaning}" if meaning else "")


def integer(minimum: int | None = None, *, optional: bool = False, meaning: str = "") -> Validator:
    """An int (not a bool) >= ``minimum``; ``optional`` also allows None. ``meaning`` ends the message, e.g.
    "(layers kept in the draft)"."""
    allowed = _allowed("an integer" + (f" >= {minimum}" if minimum is not None else ""), optional, meaning)

    def check(_instance: Any, attribute: Any, value: Any) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            raise invalid(option_name(attribute), value, allowed)

    return check


def number(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
    meaning: str = "",
) -> Validator:
    """A finite int or float (not a bool) within [low, high]; ``low_open``/``high_open`` exclude the bounds.
    Messages read "a number >= 0", "a number in (0, 2]", "a number in [0, 1) or null"."""
    if low is not None and high is not None:
        allowed = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        allowed = f"a number {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        allowed = f"a number {'<' if high_open else '<='} {high:g}"
    else:
        allowed = "a number"
    allowed = _allowed(allowed, optional, meaning)

    def check(_instance: Any, attribute: Any, value: Any) -> None:
        if value is None and optional:
            return
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if not ok:
            raise invalid(option_name(attribute), value, allowed)

    return check


def boolean() -> Validator:
    """True or False (not 0/1 or a string)."""

    def check(_instance: Any, attribute: Any, value: Any) -> None:
        if not isinstance(value, bool):
            raise invalid(option_name(attribute), value, "true or false")

    return check


def path(*, optional: bool = True) -> Validator:
    """A path (str or os.PathLike); ``optional`` (the default) also allows None."""

    def check(_instance: Any, attribute: Any, value: Any) -> None:
        if value is None and optional:
            return
        if not isinstance(value, (str, os.PathLike)):
            raise invalid(option_name(attribute), value, _allowed("a path", optional, ""))

    return check
