"""``on_error`` and ``ignore_error``: reshape a job's failure.

Neither ever sees cancellation (a ``BaseException``): a hard stop stays a hard stop.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TypeAlias

from ._budget import inherit_budget
from ._context import Context
from ._job import Job, check_job, job_name, takes_argument

__all__ = ["ErrorHandler", "ignore_error", "on_error"]

_Result: TypeAlias = BaseException | Awaitable[BaseException | None] | None

#: A failure handler: ``handler(exc)`` or ``handler(exc, ctx)``, sync or async. It returns
#: None to swallow the failure, or an exception to raise instead; what it raises propagates.
ErrorHandler: TypeAlias = Callable[[Exception], _Result] | Callable[[Exception, Context], _Result]


def _accepts_context(handler: Callable[..., object]) -> bool:
    try:
        inspect.signature(handler).bind(None, None)
    except TypeError:
        return False
    except ValueError:  # no signature available (some builtins)
        return False
    return True


def on_error(job: Job, handler: ErrorHandler) -> Job:
    """Return a job that hands ``job``'s failure to ``handler``.

    ``handler`` receives the exception, and the context if it accepts a second argument; it
    may be sync or async. If it returns None the failure is swallowed and the job returns
    normally; if it returns an exception, that exception is raised (chained to the original);
    if it raises, that propagates.

    - **On error**: as above; only ``Exception`` subclasses reach the handler.
    - **On cancellation**: propagates; the handler is not called.
    - **On shutdown**: nothing special; a job that returns normally never calls the handler.

    Raises:
        TypeError: at construction, if ``job`` is not an async callable, ``handler`` is not
            callable, or ``handler`` accepts neither one nor two arguments.
    """
    job = check_job(job, "on_error()")
    if not callable(handler):
        raise TypeError(f"on_error(): handler must be callable, got {handler!r}")
    with_ctx = _accepts_context(handler)
    if not with_ctx and not takes_argument(handler):
        raise TypeError(
            f"on_error(): handler {handler!r} must accept the exception (and optionally the"
            " context)"
        )

    async def on_error_job(ctx: Context) -> None:
        try:
            await job(ctx)
        except Exception as exc:
            result = handler(exc, ctx) if with_ctx else handler(exc)  # type: ignore[call-arg]
            if inspect.isawaitable(result):
                result = await result
            if result is None:
                return
            if not isinstance(result, BaseException):
                raise TypeError(
                    f"on_error(): handler {handler!r} returned {result!r}; expected None or an"
                    " exception"
                ) from exc
            raise result from exc

    on_error_job.__name__ = on_error_job.__qualname__ = f"on_error({job_name(job)})"
    inherit_budget(on_error_job, job)
    return on_error_job


def ignore_error(job: Job, *types: type[Exception]) -> Job:
    """Return a job that swallows ``job``'s failures of the given types.

    With no types every ``Exception`` is swallowed. With types, an exception that is an
    instance of one is swallowed; an ``ExceptionGroup`` has its matching members removed and
    the rest re-raised (as :meth:`BaseExceptionGroup.split` does), so nothing else is lost.

    - **On error**: as above.
    - **On cancellation**: propagates; cancellation is never ignored.
    - **On shutdown**: nothing special.

    Raises:
        TypeError: at construction, if ``job`` is not an async callable or a type is not an
            ``Exception`` subclass.
    """
    job = check_job(job, "ignore_error()")
    for kind in types:
        if not (isinstance(kind, type) and issubclass(kind, Exception)):
            raise TypeError(f"ignore_error(): {kind!r} is not an Exception subclass")
    matching: tuple[type[Exception], ...] = types or (Exception,)

    async def ignore_error_job(ctx: Context) -> None:
        try:
            await job(ctx)
        except BaseExceptionGroup as group:
            matched, rest = group.split(matching)
            if matched is None:
                raise
            if rest is not None:
                raise rest from None
        except matching:
            return

    ignore_error_job.__name__ = ignore_error_job.__qualname__ = f"ignore_error({job_name(job)})"
    inherit_budget(ignore_error_job, job)
    return ignore_error_job
