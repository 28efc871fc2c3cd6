"""``with_timeout``: a time limit with the same soft-then-hard stop as a shutdown."""

from __future__ import annotations

from datetime import timedelta

import anyio

from ._budget import inherit_budget
from ._context import Context, StopReason, to_seconds
from ._errors import JobTimeoutError
from ._job import Job, check_job, job_name
from ._stopping import Stopper, run_stoppable

__all__ = ["with_timeout"]


def with_timeout(job: Job, seconds: float | timedelta) -> Job:
    """Return a job that gives ``job`` at most ``seconds`` to finish.

    At the limit the job's context becomes done with :attr:`StopReason.TIMEOUT`; if the job
    has not returned after the grace period it is cancelled.

    - **On error**: the job's own exception propagates as it is, even after the limit.
    - **On timeout**: :class:`tasker.JobTimeoutError` (a ``TimeoutError``) is raised once
      the job has stopped, whether it returned by itself after the soft stop or was cancelled.
    - **On cancellation**: the job is cancelled and the cancellation propagates.
    - **On shutdown**: the job sees ``ctx.done``; returning then is a success.

    Raises:
        TypeError: at construction, if ``job`` is not an async callable.
        ValueError: at construction, if ``seconds`` is negative or not finite.
    """
    job = check_job(job, "with_timeout()")
    limit = to_seconds(seconds, "seconds")

    async def timeout_job(ctx: Context) -> None:
        expired = False

        async def watch(stopper: Stopper) -> None:
            nonlocal expired
            await anyio.sleep(limit)
            if not stopper.ctx.done:
                expired = True
                stopper.soft_stop(StopReason.TIMEOUT)

        await run_stoppable(job, ctx.child(), watch)
        if expired:
            raise JobTimeoutError(limit)

    timeout_job.__name__ = timeout_job.__qualname__ = f"with_timeout({job_name(job)}, {limit:g})"
    inherit_budget(timeout_job, job)
    return timeout_job
