"""``with_retry`` (a short job that may fail transiently) and ``with_restart`` (a supervisor)."""

from __future__ import annotations

import logging
from collections import deque
from datetime import timedelta

import anyio

from ._backoff import Backoff
from ._budget import inherit_budget
from ._context import Context, to_seconds
from ._errors import RestartLimitError
from ._job import Job, check_job, job_name

__all__ = ["with_restart", "with_retry"]

logger = logging.getLogger("tasker")


def _check_types(types: tuple[type[Exception], ...], where: str) -> tuple[type[Exception], ...]:
    if not types:
        raise ValueError(f"{where}: retry_on must name at least one exception type")
    for kind in types:
        if not (isinstance(kind, type) and issubclass(kind, Exception)):
            raise TypeError(f"{where}: retry_on member {kind!r} is not an Exception subclass")
    return types


def _check_backoff(backoff: Backoff | float | timedelta, where: str) -> Backoff:
    if isinstance(backoff, Backoff):
        return backoff
    if isinstance(backoff, int | float | timedelta) and not isinstance(backoff, bool):
        return Backoff.fixed(backoff)
    raise TypeError(f"{where}: backoff must be a Backoff, seconds or a timedelta, got {backoff!r}")


def with_retry(
    job: Job,
    *,
    attempts: int = 3,
    backoff: Backoff | float | timedelta = Backoff(),  # noqa: B008 - frozen value object
    retry_on: tuple[type[Exception], ...] = (Exception,),
) -> Job:
    """Return a job that runs ``job`` up to ``attempts`` times until one attempt succeeds.

    Between attempts it waits per ``backoff`` (a plain number means a fixed delay).

    - **On error**: a failure of a type in ``retry_on`` is retried; when the attempts run out
      the last failure propagates as it is. Other failures propagate at once.
    - **On cancellation**: the attempt (or the wait) is cancelled; it propagates.
    - **On shutdown**: no new attempt starts once ``ctx`` is done; if the last attempt had
      failed, that failure propagates (it is not dropped because of the shutdown).

    Raises:
        TypeError: at construction, for a non-async job or a bad ``backoff``/``retry_on``.
        ValueError: at construction, if ``attempts < 1``.
    """
    job = check_job(job, "with_retry()")
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"with_retry(): attempts must be an integer >= 1, got {attempts!r}")
    delays = _check_backoff(backoff, "with_retry()")
    retryable = _check_types(retry_on, "with_retry()")

    async def retry_job(ctx: Context) -> None:
        attempt = 1
        while True:
            try:
                await job(ctx)
                return
            except retryable as exc:
                if attempt >= attempts:
                    raise
                delay = delays.delay(attempt)
                logger.warning(
                    "%s failed (attempt %d of %d), retrying in %.3gs: %r",
                    job_name(job),
                    attempt,
                    attempts,
                    delay,
                    exc,
                )
                if not await ctx.sleep(delay):
                    raise
            attempt += 1

    retry_job.__name__ = retry_job.__qualname__ = f"with_retry({job_name(job)})"
    inherit_budget(retry_job, job)
    return retry_job


def with_restart(
    job: Job,
    *,
    max_restarts: int = 5,
    window: float | timedelta = 60.0,
    backoff: Backoff | float | timedelta = Backoff(initial=0.5, maximum=30.0),  # noqa: B008
) -> Job:
    """Return a supervisor that restarts the long-lived ``job`` whenever it fails.

    As in an Erlang supervisor, the job is restarted after each failure (waiting per
    ``backoff``) until it fails more than ``max_restarts`` times within ``window`` seconds;
    then it gives up. A job that returns normally is not restarted: the supervisor returns.

    - **On error**: each failure is logged with its traceback and the job restarted; past the
      limit :class:`tasker.RestartLimitError` is raised from the last failure.
    - **On cancellation**: the job (or the backoff wait) is cancelled; it propagates.
    - **On shutdown**: the job sees ``ctx.done`` and is not restarted; if it failed while
      stopping, that failure propagates.

    Raises:
        TypeError: at construction, for a non-async job or a bad ``backoff``.
        ValueError: at construction, for a negative ``max_restarts`` or bad ``window``.
    """
    job = check_job(job, "with_restart()")
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise ValueError(
            f"with_restart(): max_restarts must be an integer >= 0, got {max_restarts!r}"
        )
    window_s = to_seconds(window, "window", allow_zero=False)
    delays = _check_backoff(backoff, "with_restart()")

    async def restart_job(ctx: Context) -> None:
        failures: deque[float] = deque()
        consecutive = 0
        while True:
            started = anyio.current_time()
            try:
                await job(ctx)
                return
            except Exception as exc:
                now = anyio.current_time()
                if ctx.done:
                    raise
                # A run that lasted longer than the window resets the backoff: the job
                # was healthy for a while, so it is not in a crash loop.
                consecutive = 1 if now - started > window_s else consecutive + 1
                failures.append(now)
                while failures and now - failures[0] > window_s:
                    failures.popleft()
                if len(failures) > max_restarts:
                    raise RestartLimitError(len(failures) - 1, window_s) from exc
                delay = delays.delay(consecutive)
                logger.error(
                    "%s failed; restarting in %.3gs (%d of %d restarts in %gs)",
                    job_name(job),
                    delay,
                    len(failures),
                    max_restarts,
                    window_s,
                    exc_info=exc,
                )
                del exc
                if not await ctx.sleep(delay):
                    return

    restart_job.__name__ = restart_job.__qualname__ = f"with_restart({job_name(job)})"
    inherit_budget(restart_job, job)
    return restart_job
