"""The task a handler is running: ``tasker.queue.current_task()``."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

from .._context import Context, StopReason
from ._records import HeaderValue, TaskRecord

__all__ = ["RunningTask", "current_task"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunningTask:
    """What a handler may know about the attempt it runs (see :func:`current_task`).

    Attributes:
        id: the task's id (stable across attempts: an idempotency key for side effects).
        name, queue: as enqueued.
        attempt: this attempt's number, from 1.
        max_attempts: the attempts the task has in all.
        enqueued_at: when the task was enqueued (backend clock, POSIX seconds).
        worker: the id of the worker running it.
        headers: the headers it was enqueued with (``enqueue(headers=...)``, and those a
            backend adds, as tasker_amqp's per task name), empty on backends without
            :attr:`~tasker.abc.QueueCapability.HEADERS`.
    """

    id: str
    name: str
    queue: str
    attempt: int
    max_attempts: int
    enqueued_at: float
    worker: str
    _ctx: Context = field(repr=False, compare=False)
    headers: Mapping[str, HeaderValue] = field(default_factory=dict)

    @property
    def lease_lost(self) -> bool:
        """True once the worker lost (or could not renew) this attempt's lease: another
        worker may run the task now, and this attempt's outcome will be discarded."""
        return self._ctx.reason is StopReason.LEASE_LOST

    @property
    def last_attempt(self) -> bool:
        """True when a failure of this attempt makes the task dead."""
        return self.attempt >= self.max_attempts


#: The running attempt's record, worker id and context (the worker sets it per attempt).
_current: ContextVar[tuple[TaskRecord, str, Context] | None] = ContextVar(
    "tasker_queue_task", default=None
)


def current_task() -> RunningTask | None:
    """The task the calling handler runs, or None outside a queue handler.

    The dispatcher of the Go original passes the task's UUID to the function; here a handler
    (or anything it calls) asks for it, e.g. to key a side effect by ``current_task().id``.
    """
    current = _current.get()
    if current is None:
        return None
    record, worker, ctx = current
    return RunningTask(
        id=record.id,
        name=record.name,
        queue=record.queue,
        attempt=record.attempts,
        max_attempts=record.max_attempts,
        enqueued_at=record.created_at,
        worker=worker,
        _ctx=ctx,
        headers=dict(record.headers) if record.headers else {},
    )
