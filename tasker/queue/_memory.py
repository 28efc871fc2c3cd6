"""The in-memory queue backend: tests and single-process programs.

Its hot methods (enqueue, claim, heartbeat, finish) do not yield to the event loop: they
are plain dictionary and heap work, and a checkpoint per call would cost more than the call.

New and retried tasks wait in a heap by ``run_at``; a claim moves the due ones into one heap
per queue ordered by (priority desc, run_at, arrival), so a delayed high-priority task never
hides a due one. Running tasks sit in a heap by lease expiry. A claim costs O(log n) per
task; stale heap entries (a task that moved on) are skipped lazily.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections.abc import Sequence

import anyio

from .._clock import SYSTEM_CLOCK, Clock
from ..abc import QueueCapability
from ._records import (
    TERMINAL,
    EnqueueResult,
    GroupSpec,
    HistoryEntry,
    NewTask,
    Outcome,
    OutcomeKind,
    TaskRecord,
    TaskState,
)
from ._rows import group_payload, record_from_new

__all__ = ["MemoryQueueBackend"]


def replace(record: TaskRecord, **changes: object) -> TaskRecord:
    """``dataclasses.replace`` without its per-call field introspection (hot path)."""
    fields = {name: getattr(record, name) for name in _FIELDS}
    fields.update(changes)
    return TaskRecord(**fields)


_FIELDS = tuple(TaskRecord.__dataclass_fields__)

_LIVE = frozenset({TaskState.HELD, TaskState.QUEUED, TaskState.RUNNING})


class MemoryQueueBackend:
    """Tasks in dictionaries and heaps: fast, and gone when the process exits.

    Declares every capability (:class:`tasker.abc.QueueCapability`) but
    ``TRANSACTIONAL_ENQUEUE``: there is no database transaction to join.

    Args:
        clock: the backend's clock (default: the system clock); a test passes a
            :class:`tasker.testing.FakeClock` to move the queue's time.
    """

    capabilities: frozenset[QueueCapability] = frozenset(QueueCapability) - {
        QueueCapability.TRANSACTIONAL_ENQUEUE
    }

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock = clock or SYSTEM_CLOCK
        self._tasks: dict[str, TaskRecord] = {}
        self._unique: dict[str, tuple[str, float | None]] = {}  # key -> (task id, until)
        self._delayed: list[tuple[float, int, str]] = []
        self._queued: dict[str, list[tuple[int, float, int, str]]] = {}
        self._leases: list[tuple[float, int, str]] = []
        self._groups: dict[str, GroupSpec] = {}
        self._group_members: dict[str, list[str]] = {}
        self._history: list[HistoryEntry] = []
        self._seq = itertools.count()
        self._work = anyio.Event()

    # -- helpers -------------------------------------------------------------------------

    def _push(self, record: TaskRecord) -> None:
        heapq.heappush(self._delayed, (record.run_at, next(self._seq), record.id))

    def _promote(self, now: float) -> None:
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            run_at, seq, task_id = heapq.heappop(delayed)
            record = self._tasks.get(task_id)
            if record is None or record.state is not TaskState.QUEUED or record.run_at != run_at:
                continue
            heap = self._queued.setdefault(record.queue, [])
            heapq.heappush(heap, (-record.priority, run_at, seq, task_id))

    def _notify(self) -> None:
        self._work.set()
        self._work = anyio.Event()

    def _duplicate_of(self, task: NewTask, now: float) -> str | None:
        if task.unique_key is None:
            return None
        existing = self._unique.get(task.unique_key)
        if existing is None:
            return None
        task_id, until = existing
        record = self._tasks.get(task_id)
        if record is None:
            return None
        if record.state in _LIVE or (until is not None and now < until):
            return task_id
        return None

    def _store(self, task: NewTask) -> None:
        record = record_from_new(task)
        self._tasks[task.id] = record
        if task.unique_key is not None:
            self._unique[task.unique_key] = (task.id, task.unique_until)
        if record.state is TaskState.QUEUED:
            self._push(record)

    # -- protocol ------------------------------------------------------------------------

    async def time(self) -> float:
        """The clock given at construction, as a timestamp."""
        return self._clock.now().timestamp()

    async def enqueue(
        self, tasks: Sequence[NewTask], *, group: GroupSpec | None = None, now: float
    ) -> list[EnqueueResult]:
        """Store tasks; deduplicate unique keys."""
        results = []
        for task in tasks:
            duplicate = self._duplicate_of(task, now)
            if duplicate is not None:
                results.append(EnqueueResult(id=duplicate, deduplicated=True))
                continue
            self._store(task)
            results.append(EnqueueResult(id=task.id))
        if group is not None:
            self._groups[group.id] = group
            self._group_members[group.id] = [t.id for t in tasks]
        self._notify()
        return results

    async def claim(
        self,
        queues: Sequence[str],
        limit: int,
        *,
        worker: str,
        lease: float,
        now: float,
        exclude: Sequence[str] = (),
    ) -> list[TaskRecord]:
        """Lease due tasks, expired leases first (never those in ``exclude``)."""
        return self._claim(queues, limit, worker, lease, now, frozenset(exclude))

    async def finish_and_claim(
        self,
        outcomes: Sequence[Outcome],
        *,
        now: float,
        queues: Sequence[str],
        limit: int,
        worker: str,
        lease: float,
        exclude: Sequence[str] = (),
    ) -> list[TaskRecord]:
        """:meth:`finish`, then :meth:`claim` (never of ``outcomes`` or ``exclude``)."""
        await self.finish(outcomes, now=now)
        skip = frozenset(exclude).union(o.id for o in outcomes)
        return self._claim(queues, limit, worker, lease, now, skip)

    def _claim(
        self,
        queues: Sequence[str],
        limit: int,
        worker: str,
        lease: float,
        now: float,
        exclude: frozenset[str],
    ) -> list[TaskRecord]:
        claimed: list[TaskRecord] = []
        wanted = set(queues)
        # Expired leases: their worker is gone.
        kept: list[tuple[float, int, str]] = []
        while self._leases and self._leases[0][0] <= now and len(claimed) < limit:
            until, seq, task_id = heapq.heappop(self._leases)
            record = self._tasks.get(task_id)
            if (
                record is None
                or record.state is not TaskState.RUNNING
                or record.lease_until != until
            ):
                continue
            if record.queue not in wanted or task_id in exclude:
                kept.append((until, seq, task_id))
                continue
            if record.attempts >= record.max_attempts:
                self._die(record, "lease expired (the worker stopped responding)", None, now)
                continue
            claimed.append(self._lease(record, worker, lease, now))
        for entry in kept:
            heapq.heappush(self._leases, entry)
        self._promote(now)
        skipped: list[tuple[str, tuple[int, float, int, str]]] = []
        while len(claimed) < limit:
            best: tuple[tuple[int, float, int, str], str] | None = None
            for queue in queues:
                heap = self._queued.get(queue)
                while heap:
                    _, run_at, _, task_id = heap[0]
                    record = self._tasks.get(task_id)
                    if (
                        record is None
                        or record.state is not TaskState.QUEUED
                        or record.run_at != run_at
                    ):
                        heapq.heappop(heap)  # stale
                        continue
                    if task_id in exclude:  # put back below, after this claim
                        skipped.append((queue, heapq.heappop(heap)))
                        continue
                    break
                if heap and (best is None or heap[0] < best[0]):
                    best = (heap[0], queue)
            if best is None:
                break
            heapq.heappop(self._queued[best[1]])
            claimed.append(self._lease(self._tasks[best[0][3]], worker, lease, now))
        for queue, queued in skipped:
            heapq.heappush(self._queued[queue], queued)
        return claimed

    def _lease(self, record: TaskRecord, worker: str, lease: float, now: float) -> TaskRecord:
        leased = replace(
            record,
            state=TaskState.RUNNING,
            attempts=record.attempts + 1,
            lease_owner=worker,
            lease_until=now + lease,
        )
        self._tasks[record.id] = leased
        heapq.heappush(self._leases, (now + lease, next(self._seq), record.id))
        return leased

    def _die(self, record: TaskRecord, error: str, traceback: str | None, now: float) -> None:
        self._tasks[record.id] = replace(
            record,
            state=TaskState.DEAD,
            lease_owner=None,
            lease_until=None,
            last_error=error,
            traceback=traceback,
            finished_at=now,
        )
        self._group_member_done(record.id, now)

    async def heartbeat(
        self, worker: str, ids: Sequence[str], *, lease: float, now: float
    ) -> set[str]:
        """Extend leases still held by ``worker``."""
        held = set()
        for task_id in ids:
            record = self._tasks.get(task_id)
            if record is None or record.state is not TaskState.RUNNING:
                continue
            if record.lease_owner != worker:
                continue
            self._tasks[task_id] = replace(record, lease_until=now + lease)
            heapq.heappush(self._leases, (now + lease, next(self._seq), task_id))
            held.add(task_id)
        return held

    async def finish(self, outcomes: Sequence[Outcome], *, now: float) -> None:
        """Record outcomes of tasks the workers still hold."""
        notify = False
        for outcome in outcomes:
            record = self._tasks.get(outcome.id)
            if (
                record is None
                or record.state is not TaskState.RUNNING
                or record.lease_owner != outcome.worker
            ):
                continue  # the lease was lost: a newer attempt owns the task
            kind = outcome.kind
            if kind is not OutcomeKind.RELEASED:
                self._history.append(
                    HistoryEntry(
                        task_id=record.id,
                        name=record.name,
                        queue=record.queue,
                        worker=outcome.worker,
                        attempt=record.attempts,
                        started_at=outcome.started_at,
                        finished_at=outcome.finished_at,
                        outcome=kind.value,
                        error=outcome.error,
                    )
                )
            if kind is OutcomeKind.SUCCEEDED:
                self._tasks[record.id] = replace(
                    record,
                    state=TaskState.SUCCEEDED,
                    lease_owner=None,
                    lease_until=None,
                    result=outcome.result,
                    result_expires=outcome.result_expires,
                    last_error=None,
                    traceback=None,
                    finished_at=outcome.finished_at,
                )
                for follow_up in outcome.follow_ups:
                    self._store(follow_up)
                    notify = True
                self._group_member_done(record.id, now)
            elif kind is OutcomeKind.DEAD:
                self._die(record, outcome.error or "failed", outcome.traceback, outcome.finished_at)
            else:
                retry = kind is OutcomeKind.RETRY
                queued = replace(
                    record,
                    state=TaskState.QUEUED,
                    lease_owner=None,
                    lease_until=None,
                    attempts=record.attempts if retry else record.attempts - 1,
                    run_at=outcome.retry_at
                    if retry and outcome.retry_at is not None
                    else record.run_at,
                    last_error=outcome.error if retry else record.last_error,
                    traceback=outcome.traceback if retry else record.traceback,
                )
                self._tasks[record.id] = queued
                self._push(queued)
                notify = True
        if notify:
            self._notify()

    def _group_member_done(self, task_id: str, now: float) -> None:
        record = self._tasks[task_id]
        if record.group_id is None or record.group_id not in self._groups:
            return
        members = [self._tasks[m] for m in self._group_members[record.group_id]]
        if any(m.state not in TERMINAL for m in members):
            return
        group = self._groups.pop(record.group_id)
        if group.callback is not None:
            ordered = sorted(members, key=lambda m: m.group_index or 0)
            payload = group_payload(
                [m.result if m.state is TaskState.SUCCEEDED else None for m in ordered]
            )
            self._store(dataclasses.replace(group.callback, payload=payload))
            self._notify()

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

    async def requeue(self, task_id: str, *, now: float) -> bool:
        """Give a dead task a fresh set of attempts."""
        await anyio.lowlevel.checkpoint()
        record = self._tasks.get(task_id)
        if record is None or record.state is not TaskState.DEAD:
            return False
        if record.unique_key is not None:
            holder = self._unique.get(record.unique_key)
            other = self._tasks.get(holder[0]) if holder and holder[0] != task_id else None
            if other is not None and other.state in _LIVE:
                return False  # a newer task holds the unique key
            self._unique[record.unique_key] = (task_id, None)
        queued = replace(record, state=TaskState.QUEUED, attempts=0, run_at=now, finished_at=None)
        self._tasks[task_id] = queued
        self._push(queued)
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
            self._push(queued)
        if held:
            self._notify()
        return len(held)

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

    def next_run_at(self, queues: Sequence[str]) -> float | None:
        """The earliest ``run_at`` of a queued task, or lease expiry of a running one, in
        ``queues`` (None when there is neither)."""
        times = [
            t.lease_until if t.state is TaskState.RUNNING else t.run_at
            for t in self._tasks.values()
            if t.queue in queues
            and (
                t.state is TaskState.QUEUED
                or (t.state is TaskState.RUNNING and t.lease_until is not None)
            )
        ]
        return min((t for t in times if t is not None), default=None)

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Wait for an enqueue (any queue), the next due time in ``queues``, or the timeout."""
        due = self.next_run_at(queues)
        if due is not None:
            timeout = min(timeout, max(0.0, due - self._clock.now().timestamp()))
        with anyio.move_on_after(timeout):
            await self._work.wait()

    async def aclose(self) -> None:
        """Nothing to release (the tasks stay until the object is dropped)."""
        await anyio.lowlevel.checkpoint()

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
                    t.state is TaskState.DEAD
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

    def __repr__(self) -> str:
        return f"MemoryQueueBackend(tasks={len(self._tasks)})"
