"""Durations: every option that is a length of time takes ``float | timedelta``.

tasker normalises its own durations with a private helper; ``tasker_pg`` uses only tasker's
public API, so it has this small twin. The messages keep the wording tasker_pg always had
(``clock_resync must be >= 0 seconds, got -1``), and a value that is no duration at all is a
``TypeError``, as in tasker.
"""

from __future__ import annotations

import math
from datetime import timedelta

__all__ = ["to_seconds"]


def to_seconds(value: float | timedelta, name: str, *, positive: bool = False) -> float:
    """``value`` in seconds, once, at construction.

    Args:
        value: seconds (an int or a float, not a bool) or a ``timedelta``.
        name: the option's name, for the message.
        positive: reject zero too (an interval); otherwise zero is allowed ("every time").

    Raises:
        TypeError: for anything that is neither a number nor a ``timedelta``.
        ValueError: for a negative, NaN or infinite duration, or zero when ``positive``.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"{name} must be a number of seconds or a timedelta, got {value!r}")
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    if positive and not seconds > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    if not seconds >= 0:
        raise ValueError(f"{name} must be >= 0 seconds, got {value!r}")
    return seconds
