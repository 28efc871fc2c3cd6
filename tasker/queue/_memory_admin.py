"""The in-memory queue backend's lookups, administration and cancels (``INSPECTION``,
``ADMINISTRATION``, ``CANCEL``): off the hot path, so each call yields to the event loop
once."""

from __future__ import annotations

import anyio

from ._memory_state import LIVE, MemoryState
from ._records import CancelResult, CancelStatus, HistoryEntry, TaskRecord, TaskState, WorkerInfo
from ._rows import replace_record as replace

__all__ = ["MemoryAdministration"]


class MemoryAdministration(MemoryState):
    """``get``, ``tasks``, ``counts`` and ``history``; ``requeue``, ``dispatch``, ``purge``;
    ``cancel``."""

    async def get(self, task_id: str) -> TaskRecord | None:
        """Return a task by id."""
        await anyio.lowlevel.checkpoint()
        return self._tasks.get(task_id)

    async def tasks(
        self, *, state: TaskState | None = None, queue: str | None = None, limit: int = 100
    ) -> list[TaskRecord]:
        """List tasks, newest first."""
        await anyio.lowlevel.checkpoint()
        found = [
            t
            for t in self._tasks.values()
            if (state is None or t.state is state) and (queue is None or t.queue == queue)
        ]
        found.sort(key=lambda t: t.created_at, reverse=True)
        return found[:limit]

    async def counts(self) -> dict[str, dict[TaskState, int]]:
        """Counts per queue and state."""
        await anyio.lowlevel.checkpoint()
        result: dict[str, dict[TaskState, int]] = {}
        for task in self._tasks.values():
            per_queue = result.setdefault(task.queue, {})
            per_queue[task.state] = per_queue.get(task.state, 0) + 1
        return result

    async def history(self, *, task_id: str | None = None, limit: int = 100) -> list[HistoryEntry]:
        """Attempts, newest first."""
        await anyio.lowlevel.checkpoint()
        entries = [h for h in self._history if task_id is None or h.task_id == task_id]
        return entries[::-1][:limit]

    async def requeue(self, task_id: str, *, now: float) -> bool:
        """Give a dead task a fresh set of attempts."""
        await anyio.lowlevel.checkpoint()
        record = self._tasks.get(task_id)
        if record is None or record.state is not TaskState.DEAD:
            return False
        if record.unique_key is not None:
            holder = self._unique.get(record.unique_key)
            other = self._tasks.get(holder[0]) if holder and holder[0] != task_id else None
            if other is not None and other.state in LIVE:
                return False  # a newer task holds the unique key
            self._unique[record.unique_key] = (task_id, None)
        queued = replace(record, state=TaskState.QUEUED, attempts=0, run_at=now, finished_at=None)
        self._tasks[task_id] = queued
        self._push(queued, now)
        self._notify()
        return True

    async def dispatch(
        self, queue: str, *, name: str | None = None, limit: int | None = None, now: float
    ) -> int:
        """Release held tasks."""
        await anyio.lowlevel.checkpoint()
        held = sorted(
            (
                t
                for t in self._tasks.values()
                if t.state is TaskState.HELD
                and t.queue == queue
                and (name is None or t.name == name)
            ),
            key=lambda t: (-t.priority, t.created_at),
        )[:limit]
        for record in held:
            queued = replace(record, state=TaskState.QUEUED, run_at=min(record.run_at, now))
            self._tasks[record.id] = queued
            self._push(queued, now)
        if held:
            self._notify()
        return len(held)

    async def purge(
        self,
        *,
        now: float,
        history_before: float | None = None,
        dead_before: float | None = None,
    ) -> int:
        """Drop what retention no longer keeps (``tasker.abc.QueueAdministration.purge``)."""
        await anyio.lowlevel.checkpoint()

        def unique_open(t: TaskRecord) -> bool:
            if t.unique_key is None:
                return False
            held = self._unique.get(t.unique_key)
            return held is not None and held[0] == t.id and held[1] is not None and held[1] > now

        expired = [
            t.id
            for t in self._tasks.values()
            if (t.group_id is None or t.group_id not in self._groups)
            and not unique_open(t)
            and (
                (
                    t.state is TaskState.SUCCEEDED
                    and t.result_expires is not None
                    and t.result_expires <= now
                )
                or (
                    t.state in (TaskState.DEAD, TaskState.CANCELLED)
                    and dead_before is not None
                    and t.finished_at is not None
                    and t.finished_at < dead_before
                )
            )
        ]
        for task_id in expired:
            del self._tasks[task_id]
        if history_before is not None:
            self._history = [h for h in self._history if h.finished_at >= history_before]
        return len(expired)

    async def cancel(self, task_id: str, *, now: float) -> CancelResult:
        """Cancel a task: at once if it has not started (or its lease expired), else
        request it of its worker (``tasker.abc.TaskCancellation.cancel``)."""
        await anyio.lowlevel.checkpoint()
        record = self._tasks.get(task_id)
        if record is None:
            return CancelResult(id=task_id, status=CancelStatus.UNKNOWN, state=None)
        if record.state not in LIVE:
            return CancelResult(id=task_id, status=CancelStatus.FINISHED, state=record.state)
        if (
            record.state is TaskState.RUNNING
            and record.lease_until is not None
            and record.lease_until > now
        ):
            self._tasks[task_id] = replace(record, cancel_requested=True)
            return CancelResult(id=task_id, status=CancelStatus.REQUESTED, state=record.state)
        self._cancel_now(record, now)
        return CancelResult(id=task_id, status=CancelStatus.CANCELLED, state=TaskState.CANCELLED)

    # -- the worker registry -----------------------------------------------------------

    async def worker_seen(self, worker: WorkerInfo) -> None:
        """Insert or replace ``worker``'s entry."""
        self._workers[worker.id] = worker
        await anyio.lowlevel.checkpoint()

    async def worker_gone(self, worker_id: str) -> None:
        """Remove ``worker_id``'s entry."""
        self._workers.pop(worker_id, None)
        await anyio.lowlevel.checkpoint()

    async def workers(self, *, now: float) -> list[WorkerInfo]:
        """The live entries, by id; expired ones are dropped."""
        for worker_id in [w.id for w in self._workers.values() if w.expires_at <= now]:
            del self._workers[worker_id]
        await anyio.lowlevel.checkpoint()
        return sorted(self._workers.values(), key=lambda worker: worker.id)
