"""The one error type for bad user input, and the checks that raise it.

Each component validates its own settings with these, in one place (a ``validate()`` on its
settings dataclass), and its constructor runs the same code, so the command line and the
Python API refuse the same input with the same one-line message.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


class InputError(ValueError):
    """Bad input from the user. The message names the problem and the fix, in one line.

    The command line prints it without a traceback; library users catch it as ``ValueError``.
    """


def check_number(
    key: str, value, *, low: float = -math.inf, high: float = math.inf, low_open: bool = False,
    high_open: bool = False, integer: bool = False,
) -> None:  # fmt: skip
    """Raise InputError unless ``value`` is a finite number (an int if ``integer``) in the interval.

    ``low_open``/``high_open`` exclude the bound itself: ``check_number("optim.lr", lr, low=0,
    low_open=True)`` asks for lr > 0.
    """
    kind = "an integer" if integer else "a finite number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise InputError(f"{key} must be {kind}, got {value!r}")
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if below or above or not math.isfinite(value):
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        if high == math.inf and low == -math.inf:
            wanted = ""
        elif high == math.inf:
            wanted = f"> {low:g}" if low_open else f">= {low:g}"
        elif low == -math.inf:
            wanted = f"< {high:g}" if high_open else f"<= {high:g}"
        else:
            wanted = f"in {lo}{low:g}, {high:g}{hi}"
        raise InputError(f"{key} must be {kind}{' ' if wanted else ''}{wanted}, got {value:g}")


def check_choice(key: str, value, choices: Iterable[str]) -> None:
    """Raise InputError unless ``value`` is one of ``choices`` (the message lists them)."""
    choices = tuple(choices)
    if value not in choices:
        raise InputError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
