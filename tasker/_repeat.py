"""``with_repeat``: run a job at a schedule's slots until the context is done.

Slots come from the schedule, not from "sleep an interval after each run", so runs do not
drift. After each run the next slot is the first one after *now*: a run that overruns skips
the slots it covered instead of starting a burst of catch-up runs.
"""

from __future__ import annotations

import logging

from ._budget import inherit_budget
from ._context import Context
from ._job import Job, check_job, job_name
from .schedule import Interval, Schedule

__all__ = ["with_repeat"]

logger = logging.getLogger("tasker")


def with_repeat(schedule: Schedule, job: Job, *, run_at_start: bool | None = None) -> Job:
    """Return a job that runs ``job`` at every slot of ``schedule`` until its context is done.

    Runs never overlap: the next slot is computed when a run ends, as the first slot after
    that moment, so an overrunning run skips the slots it covered (no catch-up burst).

    Args:
        schedule: anything with ``next_after(moment) -> datetime`` (see
            :mod:`tasker.schedule`), read on the context's clock.
        job: the job to repeat; it receives the same context each run.
        run_at_start: run once immediately before waiting for the first slot. By default
            True for :class:`tasker.schedule.Interval` (as "every N seconds" reads) and
            False for calendar schedules, which wait for their time.

    - **On error**: the first failing run ends the repetition and its exception propagates
      as it is (the Go library's rule: a broken job should be visible, not retried blindly).
      Wrap ``job`` with :func:`tasker.with_retry`, :func:`tasker.on_error` or
      :func:`tasker.ignore_error` to keep going.
    - **On cancellation**: the running run (or the wait) is cancelled and it propagates.
    - **On shutdown**: no new run starts; a running one sees ``ctx.done``; then it returns.

    Raises:
        TypeError: at construction, if ``job`` is not an async callable or ``schedule`` has
            no ``next_after`` method.
    """
    job = check_job(job, "with_repeat()")
    if not callable(getattr(schedule, "next_after", None)):
        raise TypeError(
            f"with_repeat(): schedule must have a next_after(moment) method, got {schedule!r}"
        )
    at_start = isinstance(schedule, Interval) if run_at_start is None else run_at_start

    async def repeat_job(ctx: Context) -> None:
        if at_start and not ctx.done:
            await job(ctx)
        while not ctx.done:
            due = schedule.next_after(ctx.clock.now())
            if not await ctx.sleep_until(due):
                return
            await job(ctx)

    repeat_job.__name__ = repeat_job.__qualname__ = f"with_repeat({schedule!r}, {job_name(job)})"
    inherit_budget(repeat_job, job)
    return repeat_job
