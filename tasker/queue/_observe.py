"""What a queue tells an observer (metrics): enqueues, starts and ends of attempts.

The observer sits on the queue's :class:`~tasker.queue._registry.Registry`, which the Queue
and its workers share, so that one set on the queue reaches every worker, made before or
after. With none set, each hook costs the worker one attribute read and a comparison: the
Prometheus collectors (``tasker.metrics``) cost nothing when they are not used.

Hooks run on the event loop, in the worker's hot path: they must be quick, never block and
never raise (an observer that fails is a bug of the observer; the worker does not guard
against it, as a guard would cost every task).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ._records import NewTask, Outcome, TaskRecord

__all__ = ["QueueObserver"]


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
