"""The memory backend's rate limits and concurrency keys (see ``_limits`` for the rule).

The settings of the tasks that have any are kept by task id (a task without limits costs a
claim one dictionary lookup); each rate-limited name has a heap of its log's expiries, and
each concurrency key the ids of its tasks, whose running ones under a live lease are
counted when a task of the key is to start. Everything runs inside the backend's
non-yielding calls, so a count and the start it allows are one step.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

from ._limits import RateLimit
from ._records import NewTask, TaskRecord, TaskState

__all__ = ["LimitBook"]


class LimitBook:
    """The limits of the memory backend's tasks, and the starts they have allowed."""

    __slots__ = ("keyed", "limits", "log")

    def __init__(self) -> None:
        #: Task id -> (rate limit, concurrency key, concurrency limit), for limited tasks.
        self.limits: dict[str, tuple[RateLimit | None, str | None, int]] = {}
        #: Task name -> heap of the expiries of its log's entries.
        self.log: dict[str, list[float]] = {}
        #: Concurrency key -> ids of its tasks not known to be purged.
        self.keyed: dict[str, set[str]] = {}

    def add(self, task: NewTask) -> None:
        """Note the limits of ``task`` as it is stored (nothing for a task without)."""
        if task.rate_limit is None and task.concurrency_key is None:
            return
        self.limits[task.id] = (task.rate_limit, task.concurrency_key, task.concurrency_limit)
        if task.concurrency_key is not None:
            self.keyed.setdefault(task.concurrency_key, set()).add(task.id)

    def used(self, name: str, now: float) -> list[float]:
        """The unexpired entries of ``name``'s log at ``now`` (expired ones dropped)."""
        heap = self.log.get(name)
        if heap is None:
            return []
        while heap and heap[0] <= now:
            heapq.heappop(heap)
        return heap

    def running(self, key: str, tasks: Mapping[str, TaskRecord], now: float) -> int:
        """How many tasks of ``key`` run under a lease that expires after ``now``."""
        ids = self.keyed.get(key, set())
        count = 0
        for task_id in list(ids):
            record = tasks.get(task_id)
            if record is None:  # purged: forget it (a finished one may be requeued)
                ids.discard(task_id)
                self.limits.pop(task_id, None)
                continue
            if (
                record.state is TaskState.RUNNING
                and record.lease_until is not None
                and record.lease_until > now
            ):
                count += 1
        return count

    def admit(self, record: TaskRecord, tasks: Mapping[str, TaskRecord], now: float) -> bool:
        """Whether ``record`` may start at ``now``; if so, its start is logged. The caller
        leases it at once (before the next admission counts the key's running tasks)."""
        spec = self.limits.get(record.id)
        if spec is None:
            return True
        rate, key, limit = spec
        if rate is not None and len(self.used(record.name, now)) >= rate.count:
            return False
        if key is not None and self.running(key, tasks, now) >= limit:
            return False
        if rate is not None:
            heapq.heappush(self.log.setdefault(record.name, []), now + rate.seconds)
        return True

    def due_at(
        self, record: TaskRecord, tasks: Mapping[str, TaskRecord], now: float
    ) -> float | None:
        """When the queued ``record`` may next be claimed, as far as its limits tell:
        ``run_at``, or later when its name's log is full (the expiry that frees a slot);
        None while its concurrency key is at its limit (a finish, or a running task's lease
        expiry, frees a slot: the one wakes waiters, the other is a due time of its own)."""
        spec = self.limits.get(record.id)
        if spec is None:
            return record.run_at
        rate, key, limit = spec
        if key is not None and self.running(key, tasks, now) >= limit:
            return None
        if rate is None:
            return record.run_at
        entries = sorted(self.used(record.name, now))
        if len(entries) < rate.count:
            return record.run_at
        return max(record.run_at, entries[len(entries) - rate.count])

    def frees_slot(self, task_id: str) -> bool:
        """Whether ``task_id``, leaving ``RUNNING``, frees a concurrency key's slot."""
        spec = self.limits.get(task_id)
        return spec is not None and spec[1] is not None
