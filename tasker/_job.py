"""The ``Job`` type and the checks every combinator applies to the jobs it is given."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeAlias

from ._context import Context

__all__ = ["Job", "check_job", "check_jobs", "is_async_callable", "job_name", "takes_argument"]

#: A job: an async callable that receives a :class:`Context` and returns when done.
Job: TypeAlias = Callable[[Context], Awaitable[None]]


def is_async_callable(obj: object) -> bool:
    """Whether ``obj`` is an async function (or has an async ``__call__``), possibly behind
    ``functools.partial``."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    if inspect.iscoroutinefunction(obj):
        return True
    call = getattr(obj, "__call__", None)  # noqa: B004 - we need the bound method itself
    return call is not None and inspect.iscoroutinefunction(call)


def check_job(job: object, where: str) -> Job:
    """Return ``job`` if it is an async callable, else raise a TypeError naming it."""
    if inspect.iscoroutine(job):
        job.close()  # it will never run; closing it avoids a "never awaited" warning
        raise TypeError(
            f"{where}: got a coroutine object {job!r}; pass the async function itself"
            " (without calling it)"
        )
    if not callable(job):
        raise TypeError(f"{where}: a job must be an async callable, got {job!r}")
    if not is_async_callable(job):
        raise TypeError(
            f"{where}: {job!r} is not an async function; a job is `async def job(ctx) -> None`"
        )
    return job


def check_jobs(jobs: Sequence[object], where: str) -> tuple[Job, ...]:
    """Check every job of a combinator's arguments."""
    return tuple(check_job(job, where) for job in jobs)


def job_name(job: object) -> str:
    """A short, human name for a job in log lines."""
    while isinstance(job, functools.partial):
        job = job.func
    name = getattr(job, "__qualname__", None) or getattr(job, "__name__", None)
    return str(name) if name else repr(job)


def takes_argument(func: Callable[..., object]) -> bool:
    """True if ``func`` accepts one positional argument (used for ``f()`` vs ``f(ctx)``)."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):  # builtins without a signature: assume the plain form
        return False
    try:
        signature.bind(None)
    except TypeError:
        return False
    return True
