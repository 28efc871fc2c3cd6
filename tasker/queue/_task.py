"""``Task``: a registered handler as a typed handle to enqueue it, chain it and read its result.

``@queue.task`` returns a :class:`Task` generic in the handler's payload type ``P`` and result
type ``R``, which mypy infers from ``async def handler(ctx: Context, payload: P) -> R`` (a
ctx-only handler is a ``Task[None, R]``). The task adds types and nothing else: its methods
call the Queue's by name (``queue.enqueue(task.name, ...)``), so the validation, the errors and
what is stored are the same as for an enqueue by name, which keeps working beside it.

The types are checked where the code is written, not when a task runs: a worker hands the
handler whatever the serialiser decoded, and a result comes back as the serialiser decodes it
(with JSON, a tuple as a list; type payloads and results as JSON-shaped values, such as a
``TypedDict``). Hence :meth:`Task.get` answers ``TaskInfo[R | None]``: the result is None
until the task succeeded, and again once it expired.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar, overload

from .._context import Context
from .._job import job_name
from ._chain import Step
from ._info import Enqueued, TaskInfo
from ._records import HeaderValue
from ._registry import Handler, Registration

if TYPE_CHECKING:
    from ._queue import Queue

__all__ = ["Task", "TaskDecorator"]

P = TypeVar("P")
R = TypeVar("R")


class Task(Generic[P, R]):
    """A registered task handler, typed by its payload ``P`` and its result ``R``.

    Made by :meth:`Queue.task` (``@queue.task`` or ``@queue.task(name, ...)``) and
    :meth:`Queue.register`; it has no public constructor. It enqueues its task with a payload
    checked against ``P`` (:meth:`enqueue`), makes steps of chains and groups (:meth:`step`)
    and reads results typed ``R`` (:meth:`get`). Called, it runs the handler directly
    (``await task(ctx, payload)``), which is how a unit test calls a handler; it carries the
    handler's ``__name__``, ``__qualname__``, ``__module__`` and ``__doc__``, and the
    handler itself as ``__wrapped__``.
    """

    # No __slots__: functools.update_wrapper copies the handler's __dict__ into the task.
    _owner: Queue
    _name: str
    _queue: str
    _handler: Handler
    # Set by functools.update_wrapper (``__module__`` and ``__doc__`` every object has).
    __name__: str
    __qualname__: str
    __wrapped__: Callable[..., Any]

    if not TYPE_CHECKING:  # keeps mypy's view of the class intact

        def __new__(cls, *args: Any, **kwargs: Any) -> NoReturn:
            raise TypeError(
                "Task has no public constructor: @queue.task and queue.register() make tasks"
            )

    @classmethod
    def _create(
        cls, owner: Queue, registration: Registration, function: Callable[..., Any]
    ) -> Task[Any, Any]:
        self = object.__new__(cls)
        functools.update_wrapper(self, function)
        self._owner = owner
        self._name = registration.name
        self._queue = registration.queue
        # The registration's (ctx, payload) form, as the worker calls it.
        self._handler = registration.handler
        return self

    @property
    def name(self) -> str:
        """The task name it is registered under (what :meth:`Queue.enqueue` takes)."""
        return self._name

    @property
    def queue(self) -> str:
        """The queue its enqueues go to unless they say otherwise."""
        return self._queue

    @overload
    async def __call__(self: Task[None, R], ctx: Context, /) -> R: ...

    @overload
    async def __call__(self, ctx: Context, payload: P, /) -> R: ...

    async def __call__(self, ctx: Context, payload: Any = None, /) -> R:
        """Run the handler now, here: no queue, no worker, no retry, no timeout.

        ``await task(ctx, payload)`` (``await task(ctx)`` for a task without a payload)
        returns what the handler returns and raises what it raises; the payload is passed
        as it is, not serialised.
        """
        result: R = await self._handler(ctx, payload)
        return result

    @overload
    async def enqueue(
        self: Task[None, R],
        payload: None = None,
        *,
        delay: float | timedelta | None = ...,
        at: datetime | None = ...,
        priority: int | None = ...,
        queue: str | None = ...,
        max_attempts: int | None = ...,
        timeout: float | timedelta | None = ...,
        unique_key: str | None = ...,
        unique_for: float | timedelta | None = ...,
        held: bool = ...,
        headers: Mapping[str, HeaderValue] | None = ...,
        connection: Any = ...,
        task_id: str | None = ...,
        concurrency_key: str | None = ...,
    ) -> Enqueued[R]: ...

    @overload
    async def enqueue(
        self,
        payload: P,
        *,
        delay: float | timedelta | None = ...,
        at: datetime | None = ...,
        priority: int | None = ...,
        queue: str | None = ...,
        max_attempts: int | None = ...,
        timeout: float | timedelta | None = ...,
        unique_key: str | None = ...,
        unique_for: float | timedelta | None = ...,
        held: bool = ...,
        headers: Mapping[str, HeaderValue] | None = ...,
        connection: Any = ...,
        task_id: str | None = ...,
        concurrency_key: str | None = ...,
    ) -> Enqueued[R]: ...

    async def enqueue(
        self,
        payload: Any = None,
        *,
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
        connection: Any = None,
        task_id: str | None = None,
        concurrency_key: str | None = None,
    ) -> Enqueued[R]:
        """Enqueue this task with ``payload`` (a ``P``; none for a ``Task[None, R]``).

        The same as ``queue.enqueue(task.name, payload, ...)``: the options, their
        validation and the errors are those of :meth:`Queue.enqueue`.

        Returns:
            The :class:`Enqueued` to ask :meth:`get` about, typed by the result.

        Raises:
            PayloadError: the serialiser cannot represent ``payload`` (a ``TypeError``).
            ValueError: a negative delay, a naive ``at``, a priority out of range, a bad
                option.
        """
        return await self._owner.enqueue(
            self._name,
            payload,
            delay=delay,
            at=at,
            priority=priority,
            queue=queue,
            max_attempts=max_attempts,
            timeout=timeout,
            unique_key=unique_key,
            unique_for=unique_for,
            held=held,
            headers=headers,
            connection=connection,
            task_id=task_id,
            concurrency_key=concurrency_key,
        )

    @overload
    def step(
        self,
        *,
        queue: str | None = ...,
        priority: int | None = ...,
        max_attempts: int | None = ...,
        timeout: float | timedelta | None = ...,
    ) -> Step: ...

    @overload
    def step(
        self,
        payload: P,
        *,
        queue: str | None = ...,
        priority: int | None = ...,
        max_attempts: int | None = ...,
        timeout: float | timedelta | None = ...,
    ) -> Step: ...

    def step(
        self,
        payload: Any = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        timeout: float | timedelta | None = None,
    ) -> Step:
        """This task as a step of :meth:`Queue.enqueue_chain` or :meth:`Queue.enqueue_group`.

        The same as ``queue.step(task.name, payload, ...)``. Give the payload (a ``P``) for
        a chain's first step or a group's member; leave it out for a chain's later steps and
        a group's ``then``, which receive the previous result (or the list of results)
        instead, and for a task without a payload.

        Raises:
            ValueError: for an option out of range.
        """
        return self._owner.step(
            self._name,
            payload,
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            timeout=timeout,
        )

    async def get(self, task: str | Enqueued[R]) -> TaskInfo[R | None] | None:
        """What :meth:`Queue.get` reports about ``task`` (an id, or what :meth:`enqueue`
        returned), with the result typed: ``R`` once the task succeeded, None before and
        once the result expired.

        Returns:
            None if the task is unknown or purged.

        Raises:
            ValueError: the id is of another task (its result would not be an ``R``).
            MissingCapabilityError: the backend lacks ``QueueCapability.INSPECTION``.
        """
        task_id = task.id if isinstance(task, Enqueued) else task
        info = await self._owner.get(task_id)
        if info is not None and info.name != self._name:
            raise ValueError(
                f"{self!r}.get(): the task {task_id!r} is a {info.name!r} task, not {self._name!r}"
            )
        return info

    def __repr__(self) -> str:
        return (
            f"<tasker.queue.Task {self._name!r} queue={self._queue!r}"
            f" handler={job_name(self.__wrapped__)}>"
        )


class TaskDecorator:
    """What ``queue.task(name, ...)`` returns: applied to a handler, it registers the
    handler with those options and returns its :class:`Task`."""

    __slots__ = ("_register",)

    def __init__(self, register: Callable[[Callable[..., Any]], Task[Any, Any]]) -> None:
        self._register = register

    @overload
    def __call__(self, handler: Callable[[Context, P], Awaitable[R]], /) -> Task[P, R]: ...

    @overload
    def __call__(self, handler: Callable[[Context], Awaitable[R]], /) -> Task[None, R]: ...

    @overload
    def __call__(self, handler: Callable[[Context, P], R], /) -> Task[P, R]: ...

    @overload
    def __call__(self, handler: Callable[[Context], R], /) -> Task[None, R]: ...

    def __call__(self, handler: Callable[..., Any], /) -> Task[Any, Any]:
        """Register ``handler`` and return its :class:`Task`."""
        return self._register(handler)
