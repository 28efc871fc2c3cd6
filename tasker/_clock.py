"""Wall-clock time, injectable.

Schedules speak in aware datetimes, so the jobs that follow them need "now" and "sleep until
this moment". Both go through a :class:`Clock` carried by the context, which lets tests swap
in :class:`tasker.testing.FakeClock` and run months of daily slots in milliseconds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

import anyio

__all__ = ["Clock", "SystemClock"]

# A wall clock can be stepped (NTP) while a monotonic sleep is in progress; waking up early
# is re-checked against the wall clock, waking up late is bounded by this slice.
_MAX_SLICE = 60.0


@runtime_checkable
class Clock(Protocol):
    """The source of wall-clock time for schedules.

    ``now()`` returns an aware datetime; ``sleep_until(moment)`` returns no earlier than
    ``moment`` by that clock. Both are used from the event loop's thread only.
    """

    def now(self) -> datetime:
        """Return the current time as an aware datetime."""
        ...

    async def sleep_until(self, moment: datetime, /) -> None:
        """Return once ``now() >= moment``; cancellable like any anyio sleep."""
        ...


class SystemClock:
    """The real clock: :func:`datetime.now` in UTC and anyio's sleep.

    ``sleep_until`` re-checks the wall clock after each sleep, so it never returns early,
    and sleeps at most a minute at a time, so a clock stepped backwards or forwards is
    noticed within a minute.
    """

    __slots__ = ()

    def now(self) -> datetime:
        """Return the current UTC time."""
        return datetime.now(UTC)

    async def sleep_until(self, moment: datetime, /) -> None:
        """Sleep until the wall clock reaches ``moment``."""
        while True:
            remaining = (moment - datetime.now(UTC)).total_seconds()
            if remaining <= 0:
                return
            await anyio.sleep(min(remaining, _MAX_SLICE))

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()
