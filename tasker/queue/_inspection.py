"""Asking about tasks: the Queue's passthroughs to ``QueueCapability.INSPECTION``.

Each method checks the capability, asks the backend, and turns its records into what users
read: a :class:`TaskInfo` with the result deserialised (unless it expired), counts keyed by
state name.
"""

from __future__ import annotations

from typing import Any

from ..abc import QueueCapability
from ._core import QueueCore
from ._info import TaskInfo
from ._records import HistoryEntry, TaskRecord, TaskState, WorkerInfo

__all__ = ["InspectionMethods"]


class InspectionMethods(QueueCore):
    """The Queue's inspection: :meth:`get`, :meth:`dead`, :meth:`counts`, :meth:`history`."""

    def _info(self, record: TaskRecord, now: float) -> TaskInfo[Any]:
        result = None
        if record.result is not None and (
            record.result_expires is None or record.result_expires > now
        ):
            result = self._registry.serializer.loads(record.result)
        return TaskInfo(
            id=record.id,
            name=record.name,
            queue=record.queue,
            state=record.state,
            attempts=record.attempts,
            max_attempts=record.max_attempts,
            result=result,
            error=record.last_error,
            traceback=record.traceback,
            created_at=record.created_at,
            finished_at=record.finished_at,
            cancel_requested=record.cancel_requested,
            progress=record.progress,
        )

    async def get(self, task_id: str) -> TaskInfo[Any] | None:
        """The task's state and, once it succeeded, its result (None if unknown or purged).

        For a result typed by its task, ask the :class:`Task` instead (:meth:`Task.get`).
        """
        record = await self._require(QueueCapability.INSPECTION, "Queue.get()").get(task_id)
        return None if record is None else self._info(record, await self._now())

    async def dead(self, *, queue: str | None = None, limit: int = 100) -> list[TaskInfo[Any]]:
        """Dead tasks (failed their last attempt), newest first."""
        inspection = self._require(QueueCapability.INSPECTION, "Queue.dead()")
        now = await self._now()
        records = await inspection.tasks(state=TaskState.DEAD, queue=queue, limit=limit)
        return [self._info(r, now) for r in records]

    async def counts(self) -> dict[str, dict[str, int]]:
        """Task counts per queue and state name."""
        raw = await self._require(QueueCapability.INSPECTION, "Queue.counts()").counts()
        return {q: {s.value: n for s, n in states.items()} for q, states in raw.items()}

    async def history(self, *, task_id: str | None = None, limit: int = 100) -> list[HistoryEntry]:
        """Finished attempts (who ran what, when, how long, how it ended), newest first."""
        inspection = self._require(QueueCapability.INSPECTION, "Queue.history()")
        entries: list[HistoryEntry] = await inspection.history(task_id=task_id, limit=limit)
        return entries

    async def workers(self) -> list[WorkerInfo]:
        """The running workers, idle ones too, by id (``QueueCapability.WORKERS``)."""
        registry = self._require(QueueCapability.WORKERS, "Queue.workers()")
        found: list[WorkerInfo] = await registry.workers(now=await self._now())
        return found
