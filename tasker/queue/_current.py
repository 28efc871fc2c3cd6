"""The task a handler is running: ``tasker.queue.current_task()``."""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

from .._context import Context, StopReason
from ._progress import progress_reports
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

    async def report_progress(self, value: float, text: str = "") -> None:
        """Report how far this attempt got: ``value`` a fraction from 0.0 to 1.0, ``text``
        a short description (``"resized 4 of 10"``, at most 200 characters).

        It is stored by the backend (``QueueCapability.PROGRESS``) and shown by
        :meth:`Queue.get` (``TaskInfo.progress``), ``tasker status`` and the dashboard.
        Cheap to call often: the first report of an attempt is written at once, and then
        at most one every 0.5 s; a report in between is kept (the latest wins) and written
        by the next report after that, the worker's next heartbeat (``lease / 3``) or,
        at the latest, before the attempt's outcome is recorded, so that a handler which
        returns or raises has its last report stored. Only the worker holding the task's
        lease writes it: after a lost lease a report changes nothing.

        What happens to it next: each attempt starts without progress (a retry's attempt
        too, once claimed); until then a task waiting for its retry shows how far its last
        attempt got, and a finished task (succeeded, dead, cancelled) keeps its last one.
        Values need not grow. A write that fails (the backend unreachable) is logged and
        kept for the next chance; the handler is not failed for it.

        Raises:
            MissingCapabilityError: the backend lacks ``QueueCapability.PROGRESS``
                (tasker_redis, tasker_nats, tasker_amqp): use memory, SQLite or Postgres.
            ValueError: ``value`` is NaN or outside 0..1, or ``text`` is longer than 200
                characters.
            TypeError: ``value`` is not a number, or ``text`` not a str.
        """
        reports = progress_reports.get()
        if reports is None:  # a RunningTask is only made inside a worker's runner
            raise RuntimeError("report_progress(): not inside a queue worker's handler")
        await reports.report(self.id, value, text)


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
