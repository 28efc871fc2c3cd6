"""``run``: a job inside an event loop somebody else owns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

from ._budget import check_budget
from ._clock import SYSTEM_CLOCK, Clock
from ._context import DEFAULT_GRACE, Context, StopReason, to_seconds
from ._job import Job, check_job
from ._readiness import reset_readiness as _reset_readiness
from ._readiness import use_readiness
from ._stopping import Stopper, run_stoppable

__all__ = ["run"]


async def run(
    job: Job,
    *,
    grace: float | timedelta = DEFAULT_GRACE,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    clock: Clock | None = None,
) -> None:
    """Run ``job`` with a fresh root context in the running event loop (asyncio or trio).

    This is the entrypoint for tests and for programs that own their loop;
    :func:`tasker.main` is the one for programs that do not.

    Args:
        job: the job to run.
        grace: seconds a job has, once its context is done, before it is cancelled.
        shutdown_trigger: an async callable; when it returns, the root context is stopped
            with :attr:`StopReason.SHUTDOWN` and the job is cancelled if it has not returned
            within ``grace``. Without one, only the job itself or a cancellation ends the run.
        clock: the wall clock for schedules (default: the system clock;
            :class:`tasker.testing.FakeClock` in tests).

    - **On error**: the job's exception propagates as it is.
    - **On cancellation**: the job is cancelled and the cancellation propagates.
    - **On shutdown**: the job sees ``ctx.done``; if it outlives the grace period it is
      cancelled, a warning is logged, and ``run`` returns normally.

    Raises:
        TypeError: if ``job`` is not an async callable or ``clock`` is not a Clock.
        ValueError: if ``grace`` is negative or not finite.
    """
    job = check_job(job, "run()")
    grace_s = to_seconds(grace, "grace")
    check_budget(job, grace_s, "run()")
    if clock is not None and not isinstance(clock, Clock):
        raise TypeError(f"run(): clock must implement tasker.Clock, got {clock!r}")
    ctx = Context._create(grace=grace_s, clock=clock or SYSTEM_CLOCK)
    token = use_readiness(ctx)
    try:
        if shutdown_trigger is None:
            await job(ctx)
            return
        trigger = shutdown_trigger

        async def watch(stopper: Stopper) -> None:
            await trigger()
            stopper.soft_stop(StopReason.SHUTDOWN)

        await run_stoppable(job, ctx, watch)
    finally:
        _reset_readiness(token)
