"""``Interval``: slots every fixed duration, anchored so that replicas agree."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ._base import check_aware

__all__ = ["EPOCH", "Interval"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True, init=False, repr=False)
class Interval:
    """Slots every ``every``, at ``anchor + k * every`` for every integer ``k``.

    The anchor defaults to the Unix epoch (UTC), so every replica of a service computes the
    same slots without talking to the others: ``Interval(3600)`` fires at the top of each UTC
    hour. Arithmetic is exact, in integer microseconds. Zones and DST do not matter: an
    interval measures elapsed time.

    Args:
        every: the period, in seconds or as a timedelta; at least one microsecond.
        anchor: an aware datetime that is a slot.

    Raises:
        ValueError: for a zero, negative, NaN or infinite ``every``, or a naive ``anchor``.
        TypeError: for an ``every`` that is not a number or a timedelta.
    """

    every: timedelta
    anchor: datetime = field(default=EPOCH, kw_only=True)
    _step: int = field(init=False, repr=False, compare=False)

    def __init__(self, every: float | timedelta, *, anchor: datetime | None = None) -> None:
        if isinstance(every, timedelta):
            period = every
        elif isinstance(every, int | float) and not isinstance(every, bool):
            if math.isnan(every) or math.isinf(every):
                raise ValueError(f"Interval every must be finite, got {every!r}")
            period = timedelta(seconds=every)
        else:
            raise TypeError(f"Interval every must be seconds or a timedelta, got {every!r}")
        step = period // _MICRO
        if step <= 0:
            raise ValueError(f"Interval every must be positive, got {every!r}")
        object.__setattr__(self, "every", period)
        object.__setattr__(
            self, "anchor", EPOCH if anchor is None else check_aware(anchor, "Interval anchor")
        )
        object.__setattr__(self, "_step", step)

    def next_after(self, moment: datetime, /) -> datetime:
        """Return the first slot strictly after ``moment`` (in UTC)."""
        check_aware(moment, "Interval.next_after")
        elapsed = (moment - self.anchor) // _MICRO
        slots = elapsed // self._step + 1
        return (self.anchor + timedelta(microseconds=slots * self._step)).astimezone(UTC)

    def __repr__(self) -> str:
        seconds = self.every.total_seconds()
        every = f"{seconds:g}" if seconds == int(seconds) or seconds < 1e6 else repr(self.every)
        if self.anchor == EPOCH:
            return f"Interval({every})"
        return f"Interval({every}, anchor={self.anchor.isoformat()!r})"
