"""The one error type for bad user input, and the checks that raise it.

Each component validates its own settings with these, in one place (a ``validate()`` on its
settings dataclass), and its constructor runs the same code, so the command line and the
Python API refuse the same input with the same one-line message.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

# torch.Generator.manual_seed takes an unsigned 64-bit seed and training also seeds seed + 1
MAX_SEED = 2**64 - 2


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
        raise InputError(f"{key} must {_interval(low, high, low_open, high_open, integer)}, got {value!r}")


def _interval(low: float, high: float, low_open: bool, high_open: bool, integer: bool) -> str:
    if high == math.inf and low == -math.inf:
        return "be a finite number"
    if high == math.inf:
        if integer and not low_open:
            return f"be at least {low:g}"
        return f"be a finite number {'>' if low_open else '>='} {low:g}"
    if low == -math.inf:
        return f"be a finite number {'<' if high_open else '<='} {high:g}"
    if low_open and high_open:
        return f"lie strictly between {low:g} and {high:g}"
    low_text, high_text = (f"{int(v)}" if integer and float(v).is_integer() else f"{v:g}" for v in (low, high))
    return f"lie in {'(' if low_open else '['}{low_text}, {high_text}{')' if high_open else ']'}"


def check_choice(key: str, value, choices: Iterable[str]) -> None:
    """Raise InputError unless ``value`` is one of ``choices`` (the message lists them)."""
    choices = tuple(choices)
    if value not in choices:
        raise InputError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
