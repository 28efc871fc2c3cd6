"""Blocking code in a thread: :func:`in_thread` (a sync job) and what sync task handlers use.

Design notes:

- A thread cannot be killed. When the awaiting task is cancelled (a hard stop, a timeout, a
  lost lease), the await ends at once and the thread is *abandoned*: it runs on to its end,
  its result is dropped, and an exception it raises then is logged (never lost silently).
  The other choice, waiting for the thread, would let one stuck call hold a shutdown past
  its deadline; a service must exit when its budget says so.
- Each call gets its own daemon thread rather than a pooled one: anyio's asyncio worker
  threads are not daemon threads, so an abandoned call would keep the interpreter from
  exiting after ``main()`` returned. A thread costs tens of microseconds to start, nothing
  beside the blocking work it exists for.
- The thread runs in a copy of the caller's context variables, so ``current_task()`` and
  ``current_readiness()`` work in it as in the caller.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

from ._backend import current_backend
from ._context import Context
from ._job import Job, is_async_callable, job_name, takes_argument

__all__ = ["in_thread", "is_sync_callable", "run_in_thread"]

logger = logging.getLogger("tasker")

T = TypeVar("T")


def is_sync_callable(obj: object) -> bool:
    """Whether ``obj`` is a plain (not async) callable: a function, a method or an object
    with a plain ``__call__``, possibly behind ``functools.partial``; not a class."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    return callable(obj) and not inspect.isclass(obj) and not is_async_callable(obj)


def _waker() -> Callable[[Callable[[], object]], None]:
    """A thread-safe way to run a callback in the current event loop."""
    if current_backend() == "trio":
        import trio

        token = trio.lowlevel.current_trio_token()

        def wake_trio(callback: Callable[[], object]) -> None:
            # The loop is gone (an abandoned thread ending late): nobody waits any more.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(callback)

        return wake_trio
    import asyncio

    loop = asyncio.get_running_loop()

    def wake_asyncio(callback: Callable[[], object]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(callback)

    return wake_asyncio


async def run_in_thread(func: Callable[..., T], *args: Any, name: str) -> T:
    """Call ``func(*args)`` in a new daemon thread and return (or raise) what it does.

    Cancelling the await abandons the thread (see the module notes): the cancellation
    propagates at once, and what the thread later returns is dropped, what it raises is
    logged on ``tasker`` with ``name``.
    """
    done = anyio.Event()
    wake = _waker()
    outcome: list[Any] = []  # [True, value] or [False, exception]
    abandoned = False
    context = contextvars.copy_context()

    def work() -> None:
        try:
            outcome.extend((True, context.run(func, *args)))
        except BaseException as exc:  # handed to the awaiting task, whatever it is
            outcome.extend((False, exc))
            if abandoned:
                logger.warning(
                    "%s raised in its thread after the call was abandoned (cancelled)",
                    name,
                    exc_info=exc,
                )
        wake(done.set)

    thread = threading.Thread(target=work, name=f"tasker: {name}", daemon=True)
    thread.start()
    try:
        await done.wait()
    except BaseException:
        abandoned = True
        if outcome and not outcome[0]:  # it failed just before the cancellation arrived
            logger.warning(
                "%s raised in its thread as the call was cancelled",
                name,
                exc_info=outcome[1],
            )
        raise
    ok, value = outcome
    if ok:
        result: T = value
        return result
    raise value


def in_thread(func: Callable[[Context], object] | Callable[[], object], /) -> Job:
    """Return a job that runs the blocking function ``func`` in a thread of its own.

    The Go original's ``ToTask`` in Python terms: ``func`` takes the job's
    :class:`Context` (``def func(ctx)``) or nothing (``def func()``); what it returns is
    ignored, what it raises is the job's error. A blocking function cannot await
    ``ctx.wait()``, but it can read ``ctx.done`` (and ``ctx.reason``) between units of work,
    which is safe from its thread.

    - **On error**: the exception ``func`` raises propagates from the job as it is.
    - **On cancellation**: the job ends at once, and the thread is abandoned: a thread
      cannot be stopped from outside, so it runs on to its end in the background, what it
      returns is dropped and what it raises is logged on ``tasker``. It is a daemon thread:
      it does not keep the process alive once :func:`tasker.main` returns.
    - **On shutdown**: ``ctx.done`` turns true for ``func`` to see; after the grace period
      the job is cancelled as above.

    Raises:
        TypeError: if ``func`` is an async function (it is a job already: pass it as it
            is), a coroutine, or not callable.
    """
    given: object = func  # checked as what a caller may really pass
    if inspect.iscoroutine(given):
        given.close()
        raise TypeError(
            f"in_thread(): got a coroutine object {given!r}; pass a plain function"
            " (an async function is a job already)"
        )
    if not callable(given):
        raise TypeError(f"in_thread(): expected a plain function, got {given!r}")
    if not is_sync_callable(func):
        raise TypeError(
            f"in_thread(): {func!r} is an async function, which is a job already: pass it"
            " without in_thread()"
        )
    with_ctx = takes_argument(func)
    name = f"in_thread({job_name(func)})"

    async def thread_job(ctx: Context) -> None:
        if with_ctx:
            await run_in_thread(func, ctx, name=name)
        else:
            await run_in_thread(func, name=name)

    thread_job.__name__ = thread_job.__qualname__ = name
    thread_job.__doc__ = getattr(func, "__doc__", None)
    return thread_job
