"""What a queue tells an observer (metrics) and a tracer (traces): enqueues, attempts.

The observer sits on the queue's :class:`~tasker.queue._registry.Registry`, which the Queue
and its workers share, so that one set on the queue reaches every worker, made before or
after. With none set, each hook costs the worker one attribute read and a comparison: the
Prometheus collectors (``tasker.metrics``) cost nothing when they are not used. The tracer
(``tasker.tracing``) sits beside it, on ``Registry.tracer``, checked the same way.

Hooks run on the event loop, in the worker's hot path: they must be quick, never block and
never raise (an observer that fails is a bug of the observer; the worker does not guard
against it, as a guard would cost every task).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from ._records import EnqueueResult, GroupSpec, NewTask, Outcome, TaskRecord

__all__ = ["AttemptSpan", "QueueObserver", "QueueTracer"]


class QueueObserver(Protocol):
    """Told about a queue's tasks as they are enqueued, started and finished."""

    def enqueued(self, tasks: Sequence[NewTask], deduplicated: Sequence[bool]) -> None:
        """``tasks`` were enqueued (those ``deduplicated`` were not stored again)."""

    def started(self, record: TaskRecord) -> None:
        """An attempt of ``record`` starts (its handler is about to be called)."""

    def finished(self, record: TaskRecord, outcome: Outcome) -> None:
        """The attempt of ``record`` ended with ``outcome`` (about to be recorded; its
        ``started_at`` and ``finished_at`` are on the backend's clock)."""

    def worker_started(self, worker: object) -> None:
        """A worker of the queue started (for its slots in use)."""

    def worker_stopped(self, worker: object) -> None:
        """That worker stopped."""


class AttemptSpan(Protocol):
    """The open span of one attempt (``QueueTracer.attempt``), current while its handler runs."""

    def detach(self) -> None:
        """The handler is done: its span is no longer the current one (same task)."""

    def end(self, outcome: Outcome) -> None:
        """The attempt ended with ``outcome``: the span records it and ends."""

    def cut(self) -> None:
        """The attempt was cut off (cancelled, a shutdown): the span ends without an outcome."""


class QueueTracer(Protocol):
    """Makes the spans of a queue's enqueues and attempts (``tasker.tracing``).

    Unlike an observer, it wraps what it traces: an enqueue's span must exist before the
    task is stored (the task carries its context), and an attempt's span must be current
    while the handler runs (the handler's own spans are its children).
    """

    async def enqueue(
        self,
        store: Callable[[Sequence[NewTask], GroupSpec | None], Awaitable[list[EnqueueResult]]],
        tasks: Sequence[NewTask],
        group: GroupSpec | None,
    ) -> list[EnqueueResult]:
        """``store(tasks, group)`` under a span per task, each task carrying its span's context."""
        ...

    def attempt(self, record: TaskRecord, worker: str) -> AttemptSpan:
        """Start the span of an attempt of ``record``, made the current one."""
        ...

    def carrier(self) -> str | None:
        """The current trace context as a task carries it (a chain's next step)."""
        ...
