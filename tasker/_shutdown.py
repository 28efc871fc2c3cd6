"""``with_shutdown``: a server's serve/shutdown pair as one job.

A server such as uvicorn stops best when asked (``should_exit``), not when its ``serve()`` is
cancelled: asking lets in-flight requests finish. So the soft stop calls ``shutdown``, and
cancelling ``serve`` is only the last resort once the shutdown deadline has passed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

import anyio

from ._budget import declare_budget, drain_time
from ._context import Context, StopReason, to_seconds
from ._job import Job, job_name, takes_argument

__all__ = ["with_shutdown"]

logger = logging.getLogger("tasker")

ServeFunc = Callable[..., Awaitable[object]]


def _adapt(func: object, name: str) -> Callable[[Context], Awaitable[object]]:
    if not callable(func):
        raise TypeError(f"with_shutdown(): {name} must be an async callable, got {func!r}")
    if takes_argument(func):
        return func
    return lambda ctx: func()


def with_shutdown(
    serve: ServeFunc,
    shutdown: ServeFunc,
    *,
    timeout: float | timedelta | None = None,
) -> Job:
    """Return a job that runs a server's blocking ``serve`` and stops it with ``shutdown``.

    ``serve`` and ``shutdown`` are async callables taking either no argument or a context.

    The rule (Go's ``Shutdown`` pattern, made deterministic): ``shutdown`` is called exactly
    once if the job's context is done before ``serve`` returns, that is, while ``serve``
    runs, before it started (a context already done when the job starts), or when ``serve``
    itself returned *because* the context became done. Whether the context was done is read
    at the moment ``serve`` returns, so a ``serve`` that waits on the context gets its
    ``shutdown`` every time. ``shutdown`` is not called when ``serve`` returned or failed while
    the context was still running. ``shutdown`` may therefore run before ``serve`` has reached
    its blocking point; a server should treat it as "stop as soon as you have started" (as
    uvicorn's ``should_exit`` and hypercorn's shutdown trigger do).

    ``shutdown`` gets a fresh context whose :attr:`~tasker.Context.deadline` is the end of the
    drain; ``serve`` is expected to return once the server has stopped. If ``serve`` is still
    running at the deadline (or ``shutdown`` failed), ``serve`` is cancelled. The job never
    waits longer than the drain after its context is done.

    The drain (one stop budget for the whole program): by default (``timeout=None``) the
    context's grace less a margin (a fifth of it, at most a second), so that a server closes
    what is still in flight itself before the hard stop cancels it. A ``timeout`` within the
    grace is kept; :func:`tasker.main` rejects one that exceeds its grace at construction, and
    one it could not see (inside a combinator of your own) is cut to fit, with a warning.

    - **On error**: if ``serve`` fails while the context is running (e.g. it cannot bind its
      port) the job fails at once with that exception, and ``shutdown`` is not called. A
      failure of ``shutdown`` propagates after ``serve`` was cancelled. If both fail, an
      ``ExceptionGroup`` of the two (``serve``'s first) is raised. If ``serve`` returns by
      itself while the context is running, the job returns.
    - **On cancellation**: ``serve`` (and a running ``shutdown``) is cancelled at once.
    - **On shutdown**: as above; a server cut off at the deadline is logged as a warning and
      the job returns normally.

    Raises:
        TypeError: at construction, if ``serve`` or ``shutdown`` is not callable, or
            ``timeout`` is not a number or a timedelta.
        ValueError: at construction, if ``timeout`` is negative or not finite.
    """
    run_serve = _adapt(serve, "serve")
    run_shutdown = _adapt(shutdown, "shutdown")
    timeout_s = None if timeout is None else to_seconds(timeout, "with_shutdown(): timeout")

    async def shutdown_job(ctx: Context) -> None:
        serve_scope = anyio.CancelScope()
        serve_done = anyio.Event()
        wake = anyio.Event()
        serve_error: Exception | None = None
        shutdown_error: Exception | None = None
        # Read synchronously when serve returns: "was the context done by then?" has one
        # answer, whatever order the event loop wakes this task and the serving one in.
        done_when_served = False

        async def serving() -> None:
            nonlocal serve_error, done_when_served
            try:
                with serve_scope:
                    await run_serve(ctx)
            except Exception as exc:
                serve_error = exc
            finally:
                done_when_served = ctx.done
                serve_done.set()
                wake.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(serving)
            # Fires at once for a context that is already done.
            ctx._add_callback(wake.set)
            try:
                await wake.wait()
            finally:
                ctx._remove_callback(wake.set)
            if not serve_done.is_set() or done_when_served:
                drain = drain_time(timeout_s, ctx.grace, shutdown_job)
                deadline = anyio.current_time() + drain
                stop_ctx = Context._create(grace=ctx.grace, clock=ctx.clock, deadline=deadline)
                with anyio.CancelScope(deadline=deadline):
                    try:
                        await run_shutdown(stop_ctx)
                    except Exception as exc:
                        shutdown_error = exc
                    else:
                        await serve_done.wait()
                stop_ctx.stop(StopReason.TIMEOUT)
                if not serve_done.is_set():
                    if shutdown_error is None:
                        logger.warning(
                            "%s did not stop within %gs of shutdown; cancelling it",
                            job_name(serve),
                            drain,
                        )
                    serve_scope.cancel()
        if serve_error is not None and shutdown_error is not None:
            raise ExceptionGroup(
                f"{job_name(serve)} and its shutdown both failed", [serve_error, shutdown_error]
            )
        if serve_error is not None:
            raise serve_error
        if shutdown_error is not None:
            raise shutdown_error

    shutdown_job.__name__ = shutdown_job.__qualname__ = f"with_shutdown({job_name(serve)})"
    if timeout_s is not None:
        declare_budget(shutdown_job, timeout_s, shutdown_job.__name__)
    return shutdown_job
