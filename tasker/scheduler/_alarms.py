"""Shared wake-ups: the loops of one Scheduler that wait for the same moment share one timer.

Design notes:

- A hundred schedules due at the same second used to arm a hundred timers, and each woke
  through its own clock sleep (a wall-clock reading, a slice loop, an anyio sleep). Now the
  first loop to wait for a moment sleeps on the clock for everybody, and the others wait on
  one event; when it fires, all of them are released in the same turn of the event loop.
  Measured with 1,000 waiters on asyncio: 4 µs per waiter against 9 µs.
- No background task: the *sleeper* is one of the waiters. A waiter leaves early when its own
  context is done, or :meth:`Scheduler.forget` wakes it (a cancel scope of the caller's); if
  the sleeper leaves, it wakes the others and one of them sleeps in its place, so the alarm
  never depends on a waiter that is gone.
- An alarm is keyed by its clock, the moment it stands for (a slot, in the repository's time)
  and a phase (preparing for the slot, or the slot itself). The sleeper sleeps until its own
  local target: with a database clock, the local moment of a slot is computed per loop, and
  they differ by microseconds; the ones that share an alarm wake together at the sleeper's.
"""

from __future__ import annotations

from datetime import datetime

import anyio

from .._clock import Clock
from .._context import Context

__all__ = ["Alarms"]


class _Alarm:
    __slots__ = ("changed", "fired", "fired_at", "sleeping", "waiting")

    def __init__(self) -> None:
        #: Set when the alarm fires, its sleeper leaves, or a waiter's context is done
        #: (then replaced by a fresh one, and the waiters still waiting wait on that).
        self.changed = anyio.Event()
        self.fired = False
        #: ``anyio.current_time()`` when it fired.
        self.fired_at = 0.0
        self.sleeping = False
        #: How many waiters wait on ``changed`` (the sleeper not counted).
        self.waiting = 0

    def poke(self) -> None:
        """Wake the waiters so that each looks at its context again."""
        changed, self.changed = self.changed, anyio.Event()
        changed.set()


class Alarms:
    """The shared alarms of one Scheduler (one event loop)."""

    __slots__ = ("_alarms",)

    def __init__(self) -> None:
        self._alarms: dict[tuple[Clock, datetime, int], _Alarm] = {}

    async def wait(
        self, ctx: Context, moment: datetime, phase: int, target: datetime
    ) -> float | None:
        """Return once the alarm for (``ctx.clock``, ``moment``, ``phase``) fired, or ``ctx``
        is done (then None; also when it already was).

        ``target`` is this waiter's wake-up on the clock, used if it is the one that sleeps.
        Cancellable like any sleep (nothing is left behind). Returns the
        ``anyio.current_time()`` at which the alarm fired.

        A waiter needs no cancel scope of its own (a third of its cost): its context being
        done pokes the alarm, which wakes the waiters to look at their contexts. Only the
        sleeper has a scope, which its context cancels.
        """
        if ctx.done:
            await anyio.lowlevel.checkpoint()
            return None
        clock = ctx.clock
        key = (clock, moment, phase)
        alarm = self._alarms.get(key)
        if alarm is None:
            alarm = self._alarms[key] = _Alarm()

        def poke() -> None:
            alarm.poke()

        ctx._add_callback(poke)
        try:
            while not alarm.fired:
                if alarm.sleeping:
                    alarm.waiting += 1
                    try:
                        await alarm.changed.wait()
                    finally:
                        alarm.waiting -= 1
                    if _done(ctx):  # poked: this waiter's context (or another's) is done
                        return None
                    continue
                if not await self._sleep(ctx, key, alarm, target):
                    return None
            return alarm.fired_at
        finally:
            ctx._remove_callback(poke)

    async def _sleep(
        self, ctx: Context, key: tuple[Clock, datetime, int], alarm: _Alarm, target: datetime
    ) -> bool:
        """Sleep for every waiter of ``alarm``; False if ``ctx`` was done first."""
        alarm.sleeping = True
        try:
            with anyio.CancelScope() as scope:
                ctx._add_callback(scope.cancel)
                try:
                    await ctx.clock.sleep_until(target)
                finally:
                    ctx._remove_callback(scope.cancel)
        except BaseException:
            self._leave(key, alarm)
            raise
        if scope.cancelled_caught or ctx.done:
            self._leave(key, alarm)
            return False
        alarm.sleeping = False
        alarm.fired = True
        alarm.fired_at = anyio.current_time()
        if self._alarms.get(key) is alarm:
            del self._alarms[key]  # a later waiter for the same moment starts afresh
        alarm.changed.set()
        return True

    def _leave(self, key: tuple[Clock, datetime, int], alarm: _Alarm) -> None:
        """The sleeper leaves early: wake the others, one of them sleeps instead."""
        alarm.sleeping = False
        if not alarm.waiting and self._alarms.get(key) is alarm:
            del self._alarms[key]
        alarm.poke()


def _done(ctx: Context) -> bool:
    # A call, not ``ctx.done`` inline: the type checker would take the earlier check of it
    # as still true after the wait.
    return ctx.done
