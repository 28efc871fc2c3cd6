"""The registered task handlers, and the tasks built from them (shared by queue and worker).

The :class:`Queue` registers handlers and builds each enqueue's :class:`NewTask` here; its
workers look handlers up, deserialise payloads, serialise results and build a chain's next
step here too. Neither reaches into the other's private state.

A handler takes ``(ctx, payload)``, or only ``ctx`` for a task without a payload. The
registration keeps one calling convention for the worker: a ctx-only handler is stored behind
an adapter that drops the payload (None, or a chain's previous result), so the worker always
calls ``handler(ctx, payload)``. A plain ``def`` handler is stored behind an adapter that runs
it in a thread of its own (``tasker._threads``), so the worker always awaits.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .._backoff import Backoff
from .._context import Context, to_seconds
from .._job import check_job
from .._threads import is_sync_callable, run_in_thread
from ._checks import check_headers, check_int, check_name, check_priority, check_task_id
from ._errors import PayloadError, UnknownTaskError
from ._ids import new_id
from ._limits import RateLimit, check_concurrency_limit, rate_limit_of
from ._observe import QueueObserver, QueueTracer
from ._records import HeaderValue, NewTask
from ._serializer import Serializer

__all__ = ["Handler", "Registration", "Registry"]

#: A task handler: ``async def handler(ctx, payload) -> result`` (result serialisable or None).
Handler = Callable[[Context, Any], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Registration:
    """A handler and the defaults of its enqueues.

    ``handler`` is called as ``handler(ctx, payload)``: for a ctx-only handler
    (``takes_payload`` false) it is an adapter that drops the payload, and for a plain
    ``def`` handler (``in_thread``) one that runs it in a thread.
    """

    name: str
    handler: Handler
    takes_payload: bool
    in_thread: bool
    queue: str
    max_attempts: int
    backoff: Backoff
    timeout: float | None
    priority: int
    #: ``unique_key(payload)``: the key of an enqueue that gives none (None: no key).
    unique_key: Callable[[Any], str | None] | None = None
    #: The window of an enqueue with a unique key that gives no ``unique_for``.
    unique_for: float | None = None
    #: Every attempt of this name counts against it (``RATE_LIMITS``).
    rate_limit: RateLimit | None = None
    #: ``concurrency_key(payload)``: the key of an enqueue that gives none (None: no key).
    concurrency_key: Callable[[Any], str | None] | None = None
    #: How many tasks of one concurrency key run at once.
    concurrency_limit: int = 1


class Registry:
    """Handlers by task name, their serialiser and how long results are kept."""

    __slots__ = ("handlers", "observer", "result_ttl", "serializer", "tracer")

    def __init__(self, serializer: Serializer, result_ttl: float) -> None:
        self.handlers: dict[str, Registration] = {}
        self.serializer = serializer
        self.result_ttl = result_ttl
        #: Told of enqueues and attempts (``tasker.metrics``); shared by the queue and its
        #: workers, so one set on the queue reaches every worker.
        self.observer: QueueObserver | None = None
        #: Makes spans of enqueues and attempts (``tasker.tracing``); shared likewise.
        self.tracer: QueueTracer | None = None

    def add(
        self,
        name: str,
        handler: Callable[..., Any],
        *,
        queue: str,
        max_attempts: int,
        backoff: Backoff | float | timedelta,
        timeout: float | timedelta | None,
        priority: int,
        unique_key: Callable[[Any], str | None] | None = None,
        unique_for: float | timedelta | None = None,
        rate_limit: RateLimit | str | None = None,
        concurrency_key: Callable[[Any], str | None] | None = None,
        concurrency_limit: int = 1,
    ) -> Registration:
        """Register ``handler`` under ``name`` (see :meth:`tasker.queue.Queue.register`)."""
        check_name(name, "task name")
        if name in self.handlers:
            raise ValueError(f"Queue.register(): the task name {name!r} is already registered")
        sync = is_sync_callable(handler)
        if not sync:
            check_job(handler, f"Queue.register({name!r})")
        takes_payload = _takes_payload(handler, name)
        if not isinstance(backoff, Backoff):
            backoff = Backoff.fixed(to_seconds(backoff, "backoff"))
        if unique_key is not None and not callable(unique_key):
            raise TypeError(
                f"Queue.register({name!r}): unique_key must be a function of the payload"
                f" returning a str or None, got {unique_key!r} (give a fixed key per enqueue)"
            )
        if concurrency_key is not None and not callable(concurrency_key):
            raise TypeError(
                f"Queue.register({name!r}): concurrency_key must be a function of the payload"
                f" returning a str or None, got {concurrency_key!r} (give a fixed key per"
                " enqueue)"
            )
        limit = check_concurrency_limit(concurrency_limit)
        rate = rate_limit_of(rate_limit)
        if sync:
            adapted = _in_thread(handler, name, takes_payload)
        elif takes_payload:
            adapted = handler
        else:
            adapted = _without_payload(handler)
        registration = Registration(
            name=name,
            handler=adapted,
            takes_payload=takes_payload,
            in_thread=sync,
            queue=check_name(queue, "queue"),
            max_attempts=check_int(max_attempts, "max_attempts", 1),
            backoff=backoff,
            timeout=None if timeout is None else to_seconds(timeout, "timeout", allow_zero=False),
            priority=check_priority(priority),
            unique_key=unique_key,
            unique_for=None if unique_for is None else to_seconds(unique_for, "unique_for"),
            rate_limit=rate,
            concurrency_key=concurrency_key,
            concurrency_limit=limit,
        )
        self.handlers[name] = registration  # only once every option is valid
        return registration

    def serialize(self, name: str, value: Any) -> bytes:
        """``value`` serialised for task ``name``; a value it cannot take is a PayloadError."""
        try:
            return self.serializer.dumps(value)
        except RecursionError as exc:  # before ValueError: a subclass of RuntimeError
            raise PayloadError(name, "nested too deeply to serialise") from exc
        except (TypeError, ValueError, OverflowError) as exc:
            raise PayloadError(name, str(exc)) from exc

    def new_task(
        self,
        name: str,
        payload: Any,
        *,
        now: float,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        timeout: float | timedelta | None = None,
        unique_key: str | None = None,
        unique_for: float | timedelta | None = None,
        held: bool = False,
        headers: Mapping[str, HeaderValue] | None = None,
        chain: bytes | None = None,
        group: tuple[str, int] | None = None,
        raw_payload: bytes | None = None,
        task_id: str | None = None,
        derive_key: bool = False,
        concurrency_key: str | None = None,
    ) -> NewTask:
        """The :class:`NewTask` for an enqueue of ``name`` at backend time ``now``: the
        registration's defaults, with the options given; every option validated here.

        ``derive_key``: an enqueue without ``unique_key`` (``concurrency_key``) takes the
        registration's ``unique_key(payload)`` (``concurrency_key(payload)``): a top-level
        enqueue; not a chain's or a group's steps. The rate limit is the registration's.
        """
        registration = self.handlers.get(name)
        if registration is None:
            raise UnknownTaskError(name)
        if unique_key is None and derive_key and registration.unique_key is not None:
            unique_key = _derived_key(registration, payload)
        if unique_key is not None and unique_for is None:
            unique_for = registration.unique_for
        if concurrency_key is None and derive_key and registration.concurrency_key is not None:
            concurrency_key = _derived_key(registration, payload, "concurrency_key")
        if concurrency_key is not None:
            check_name(concurrency_key, "concurrency_key")
        if delay is not None and at is not None:
            raise ValueError("enqueue(): give delay or at, not both")
        run_at = now
        if delay is not None:
            run_at = now + to_seconds(delay, "delay")
        if at is not None:
            if at.tzinfo is None or at.utcoffset() is None:
                raise ValueError(f"enqueue(): at must be an aware datetime, got {at!r}")
            run_at = at.timestamp()
        if unique_for is not None and unique_key is None and registration.unique_key is None:
            raise ValueError("enqueue(): unique_for needs a unique_key")
        if unique_key is not None:
            check_name(unique_key, "unique_key")
        if payload is not None and raw_payload is None and not registration.takes_payload:
            # The type only: a payload may hold secrets.
            raise TypeError(
                f"enqueue(): task {name!r} takes no payload (its handler takes only ctx),"
                f" got a {type(payload).__name__}"
            )
        return NewTask(
            id=new_id() if task_id is None else check_task_id(task_id),
            name=name,
            queue=check_name(queue, "queue") if queue is not None else registration.queue,
            payload=raw_payload if raw_payload is not None else self.serialize(name, payload),
            priority=registration.priority if priority is None else check_priority(priority),
            run_at=run_at,
            max_attempts=registration.max_attempts
            if max_attempts is None
            else check_int(max_attempts, "max_attempts", 1),
            timeout=registration.timeout
            if timeout is None
            else to_seconds(timeout, "timeout", allow_zero=False),
            unique_key=unique_key,
            unique_until=None if unique_for is None else now + to_seconds(unique_for, "unique_for"),
            held=held,
            headers=check_headers(headers),
            chain=chain,
            group_id=group[0] if group else None,
            group_index=group[1] if group else None,
            created_at=now,
            rate_limit=registration.rate_limit,
            concurrency_key=concurrency_key,
            concurrency_limit=registration.concurrency_limit,
        )


def _without_payload(handler: Callable[[Context], Awaitable[Any]]) -> Handler:
    """``handler(ctx)`` called as ``(ctx, payload)``, the payload dropped."""

    @functools.wraps(handler)
    async def without_payload(ctx: Context, payload: Any) -> Any:
        return await handler(ctx)

    return without_payload


def _derived_key(
    registration: Registration, payload: Any, option: str = "unique_key"
) -> str | None:
    """``registration.unique_key(payload)`` (or the function named ``option``), checked: a
    str that is a valid key, or None."""
    function = getattr(registration, option)
    assert function is not None
    key = function(payload)
    if key is not None and not isinstance(key, str):
        raise TypeError(
            f"enqueue(): the {option} function of task {registration.name!r} returned a"
            f" {type(key).__name__}; it must return a str or None"
        )
    return key


def _in_thread(handler: Callable[..., Any], name: str, takes_payload: bool) -> Handler:
    """The plain ``def`` ``handler`` as an async one that runs it in a thread of its own."""
    label = f"task {name!r}"
    if takes_payload:

        @functools.wraps(handler)
        async def in_thread(ctx: Context, payload: Any) -> Any:
            return await run_in_thread(handler, ctx, payload, name=label)

    else:

        @functools.wraps(handler)
        async def in_thread(ctx: Context, payload: Any) -> Any:
            return await run_in_thread(handler, ctx, name=label)

    return in_thread


def _takes_payload(handler: Callable[..., object], name: str) -> bool:
    """Whether ``handler`` takes ``(ctx, payload)`` (True) or only ``ctx`` (False).

    A handler that takes neither used to be accepted and then died on every attempt (the
    worker always passes a ctx): it is refused here, where the mistake is. A callable whose
    signature cannot be read is called as ``(ctx, payload)``, as it always was.
    """
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):
        return True
    if _binds(signature, None, None):
        return True
    if _binds(signature, None):
        return False
    raise TypeError(f"Queue.register(): handler for {name!r} must take (ctx, payload) or (ctx)")


def _binds(signature: inspect.Signature, *arguments: object) -> bool:
    try:
        signature.bind(*arguments)
    except TypeError:
        return False
    return True
