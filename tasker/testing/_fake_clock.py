"""``FakeClock``: wall-clock time that moves only when a test says so."""

from __future__ import annotations

import heapq
import itertools
from datetime import UTC, datetime, timedelta

import anyio

__all__ = ["FakeClock"]


class FakeClock:
    """A :class:`tasker.Clock` for tests: ``now()`` stands still until advanced.

    Pass it to :func:`tasker.run` (``clock=``) and every schedule in the job tree follows it.
    ``advance`` moves time forward and wakes the sleepers that are due; ``run_until`` jumps
    from one sleeper's wake-up time to the next (after letting all tasks settle), so a test
    can run months of daily slots in milliseconds with no real sleeping.

    Only the wall clock is faked: grace periods and timeouts (anyio's monotonic clock) run in
    real time.
    """

    def __init__(self, start: datetime | None = None) -> None:
        if start is None:
            start = datetime(2026, 1, 1, tzinfo=UTC)
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError(f"FakeClock start must be an aware datetime, got {start!r}")
        self._now = start
        self._sleepers: list[tuple[datetime, int, anyio.Event]] = []
        self._counter = itertools.count()
        #: How many times a sleeper was woken (a measure of idle wake-ups in tests).
        self.wakeups = 0
        self._calls = 0  # now() and sleep_until() calls: a sign that tasks are busy

    def now(self) -> datetime:
        """Return the fake current time."""
        self._calls += 1
        return self._now

    async def sleep_until(self, moment: datetime, /) -> None:
        """Return once the fake time has been advanced to ``moment`` or past it."""
        self._calls += 1
        if moment <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        entry = (moment, next(self._counter), event)
        heapq.heappush(self._sleepers, entry)
        try:
            await event.wait()
        finally:
            if not event.is_set():
                self._sleepers.remove(entry)
                heapq.heapify(self._sleepers)

    @property
    def next_wakeup(self) -> datetime | None:
        """The earliest moment somebody sleeps until, or None."""
        return self._sleepers[0][0] if self._sleepers else None

    def advance(self, delta: float | timedelta) -> None:
        """Move time forward by ``delta`` and wake every sleeper that is now due."""
        seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
        if seconds < 0:
            raise ValueError(f"FakeClock cannot go backwards (delta {delta!r})")
        self.set(self._now + timedelta(seconds=seconds))

    def set(self, moment: datetime) -> None:
        """Jump to ``moment`` (forwards or backwards) and wake the sleepers now due."""
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError(f"FakeClock.set needs an aware datetime, got {moment!r}")
        self._now = moment
        while self._sleepers and self._sleepers[0][0] <= moment:
            _, _, event = heapq.heappop(self._sleepers)
            self.wakeups += 1
            event.set()

    async def settle(self) -> None:
        """Wait (in real time) until the tasks using this clock have gone quiet.

        "Quiet" means: for three rounds of 2 ms nobody read the clock or started a sleep.
        anyio's ``wait_all_tasks_blocked`` is not enough on its own: it counts a task waiting
        for a worker thread (SQLite, say) as blocked, and on asyncio it polls every 100 ms.
        """
        quiet = 0
        while quiet < 3:
            before = (self._calls, len(self._sleepers))
            await anyio.sleep(0.002)
            quiet = quiet + 1 if (self._calls, len(self._sleepers)) == before else 0

    async def wait_for_sleepers(self, count: int = 1, *, timeout: float = 10.0) -> None:
        """Wait (in real time, at most ``timeout`` seconds) until ``count`` tasks sleep on it.

        Use it before driving time when the tasks under test start with slow I/O (a worker
        thread), so the first jump does not happen before they are asleep.

        Raises:
            TimeoutError: if fewer than ``count`` tasks sleep after ``timeout`` seconds.
        """
        with anyio.fail_after(timeout):
            while len(self._sleepers) < count:  # noqa: ASYNC110 - sleepers come from other tasks
                await anyio.sleep(0.001)

    async def run_until(self, moment: datetime) -> None:
        """Advance through every wake-up up to ``moment``, letting tasks run between them.

        Each step waits until the tasks have settled (see :meth:`settle`), then jumps to the
        next sleeper's time; finally the clock is set to ``moment``.
        """
        while True:
            await self.settle()
            due = self.next_wakeup
            if due is None or due > moment:
                break
            self.set(due)
        self.set(max(moment, self._now))
        await self.settle()

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now.isoformat()}, sleepers={len(self._sleepers)})"
