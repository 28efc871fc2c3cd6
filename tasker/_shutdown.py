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

from ._context import Context, StopReason, to_seconds
from ._job import Job, job_name, takes_argument

__all__ = ["DEFAULT_SHUTDOWN_TIMEOUT", "with_shutdown"]

logger = logging.getLogger("tasker")

DEFAULT_SHUTDOWN_TIMEOUT = 25.0

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
    timeout: float | timedelta = DEFAULT_SHUTDOWN_TIMEOUT,
) -> Job:
    """Return a job that runs a server's blocking ``serve`` and stops it with ``shutdown``.

    ``serve`` and ``shutdown`` are async callables taking either no argument or a context.
    When the job's context is done, ``shutdown`` is called with a fresh context whose
    :attr:`~tasker.Context.deadline` is ``timeout`` seconds away; ``serve`` is expected to
    return once the server has stopped. If ``serve`` is still running at the deadline (or
    ``shutdown`` failed), ``serve`` is cancelled.

    - **On error**: if ``serve`` fails (e.g. it cannot bind its port) the job fails at once
      with that exception; a failure of ``shutdown`` propagates after ``serve`` was cancelled.
      If ``serve`` returns by itself before any shutdown, the job returns.
    - **On cancellation**: ``serve`` (and a running ``shutdown``) is cancelled at once.
    - **On shutdown**: as above; a server cut off at the deadline is logged as a warning and
      the job returns normally.

    Raises:
        TypeError: at construction, if ``serve`` or ``shutdown`` is not callable.
        ValueError: at construction, if ``timeout`` is negative or not finite.
    """
    run_serve = _adapt(serve, "serve")
    run_shutdown = _adapt(shutdown, "shutdown")
    timeout_s = to_seconds(timeout, "timeout")

    async def shutdown_job(ctx: Context) -> None:
        serve_scope = anyio.CancelScope()
        serve_done = anyio.Event()
        wake = anyio.Event()
        serve_error: Exception | None = None
        shutdown_error: Exception | None = None

        async def serving() -> None:
            nonlocal serve_error
            try:
                with serve_scope:
                    await run_serve(ctx)
            except Exception as exc:
                serve_error = exc
            finally:
                serve_done.set()
                wake.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(serving)
            ctx._add_callback(wake.set)
            try:
                await wake.wait()
            finally:
                ctx._remove_callback(wake.set)
            if not serve_done.is_set():
                deadline = anyio.current_time() + timeout_s
                stop_ctx = Context._create(grace=ctx.grace, clock=ctx.clock, deadline=deadline)
                with anyio.move_on_after(timeout_s):
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
                            timeout_s,
                        )
                    serve_scope.cancel()
        if serve_error is not None:
            raise serve_error
        if shutdown_error is not None:
            raise shutdown_error

    shutdown_job.__name__ = shutdown_job.__qualname__ = f"with_shutdown({job_name(serve)})"
    return shutdown_job
