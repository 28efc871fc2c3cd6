"""The in-memory queue backend: tests and single-process programs.

Its hot methods (enqueue, claim, heartbeat, finish) do not yield to the event loop: they
are plain dictionary and heap work, and a checkpoint per call would cost more than the call.
A claim costs O(log n) per task. The stores and how a task moves between them are in
``_memory_state``; lookups and administration, off the hot path, in ``_memory_admin``.

``wait_for_work`` sleeps on the backend's clock until the next due time, so a test that
builds the backend on a :class:`tasker.testing.FakeClock` wakes its workers by advancing
the clock, not by waiting in real time.
"""

from __future__ import annotations

import dataclasses
import heapq
import time as _time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import anyio

from .._clock import SystemClock
from ..abc import QueueCapability
from ._errors import QueueFullError
from ._memory_admin import MemoryAdministration
from ._records import (
    EnqueueResult,
    GroupSpec,
    HistoryEntry,
    NewTask,
    Outcome,
    OutcomeKind,
    Progress,
    TaskRecord,
    TaskState,
)
from ._rows import LEASE_EXPIRED, settled_kind, settled_record
from ._rows import replace_record as replace

__all__ = ["MemoryQueueBackend"]


class MemoryQueueBackend(MemoryAdministration):
    """Tasks in dictionaries and heaps: fast, and gone when the process exits.

    Declares every capability (:class:`tasker.abc.QueueCapability`) but
    ``TRANSACTIONAL_ENQUEUE``: there is no database transaction to join. A cancel
    (``CANCEL``) of a running task reaches its worker at the worker's next heartbeat, as
    with the other backends.

    Args:
        clock: the backend's clock (default: the system clock); a test passes a
            :class:`tasker.testing.FakeClock` to move the queue's time (delayed tasks and
            leases fall due, and idle workers wake, when it is advanced).
    """

    capabilities: frozenset[QueueCapability] = frozenset(QueueCapability) - {
        QueueCapability.TRANSACTIONAL_ENQUEUE
    }

    # -- protocol ------------------------------------------------------------------------

    async def time(self) -> float:
        """The clock given at construction, as a timestamp."""
        clock = self._clock
        if type(clock) is SystemClock:  # the same reading, without building a datetime
            return _time.time()
        return clock.now().timestamp()

    async def enqueue(
        self, tasks: Sequence[NewTask], *, group: GroupSpec | None = None, now: float
    ) -> list[EnqueueResult]:
        """Store tasks; deduplicate unique keys."""
        results = []
        for task in tasks:
            duplicate = task.id if task.id in self._tasks else self._duplicate_of(task, now)
            if duplicate is not None:
                results.append(EnqueueResult(id=duplicate, deduplicated=True))
                continue
            self._store(task, now)
            results.append(EnqueueResult(id=task.id))
        if group is not None:
            self._groups[group.id] = group
            self._group_members[group.id] = [t.id for t in tasks]
        self._notify()
        return results

    async def enqueue_bounded(
        self,
        tasks: Sequence[NewTask],
        *,
        max_depth: Mapping[str, int],
        group: GroupSpec | None = None,
        now: float,
    ) -> list[EnqueueResult]:
        """:meth:`enqueue`, unless a bounded queue would exceed its ``max_depth`` (then
        :class:`QueueFullError`, nothing stored). Atomic: nothing yields in between, and
        the depth is a counter (``TaskTable.waiting``), not a scan."""
        adding: dict[str, int] = {}
        ids: set[str] = set()
        keys: set[str] = set()
        for task in tasks:  # what enqueue would store, duplicates within the batch included
            if task.id in ids or task.id in self._tasks or task.unique_key in keys:
                continue
            if self._duplicate_of(task, now) is not None:
                continue
            ids.add(task.id)
            if task.unique_key is not None:
                keys.add(task.unique_key)
            adding[task.queue] = adding.get(task.queue, 0) + 1
        for queue in sorted(adding):
            bound = max_depth.get(queue)
            depth = self._tasks.waiting.get(queue, 0)
            if bound is not None and depth + adding[queue] > bound:
                raise QueueFullError(
                    queue, depth=min(depth, bound), max_depth=bound, adding=adding[queue]
                )
        return await self.enqueue(tasks, group=group, now=now)

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
        book = self._limit_book
        limits = book.limits  # empty without limited tasks: the claim pays one truth test
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
            if record.cancel_requested:  # its worker died before it could stop it
                self._cancel_now(record, now)
                continue
            if record.attempts >= record.max_attempts:
                self._die(record, LEASE_EXPIRED, None, now, now)
                continue
            if limits and not book.admit(record, self._tasks, now):
                kept.append((until, seq, task_id))  # its limits hold it back for now
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
            taken = heapq.heappop(self._queued[best[1]])
            record = self._tasks[taken[3]]
            if limits and not book.admit(record, self._tasks, now):
                skipped.append((best[1], taken))  # held back by its limits: the next one
                continue
            claimed.append(self._lease(record, worker, lease, now))
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
            progress=None,  # each attempt reports its own
        )
        self._tasks[record.id] = leased
        heapq.heappush(self._leases, (now + lease, next(self._seq), record.id))
        return leased

    async def claim_ids(
        self, ids: Sequence[str], *, worker: str, lease: float, now: float
    ) -> list[TaskRecord]:
        """Lease those of ``ids`` that are due, or whose lease expired (one on its last
        attempt dies), whatever their queue, in the order given."""
        claimed: list[TaskRecord] = []
        for task_id in dict.fromkeys(ids):
            record = self._tasks.get(task_id)
            if record is None:
                continue
            if record.state is TaskState.QUEUED and record.run_at <= now:
                # Its heap entry goes stale, and is skipped where it is found.
                claimed.append(self._lease(record, worker, lease, now))
            elif (
                record.state is TaskState.RUNNING
                and record.lease_until is not None
                and record.lease_until <= now
            ):
                if record.cancel_requested:
                    self._cancel_now(record, now)
                elif record.attempts >= record.max_attempts:
                    self._die(record, LEASE_EXPIRED, None, now, now)
                else:
                    claimed.append(self._lease(record, worker, lease, now))
        return claimed

    async def overdue(
        self, *, before: float, queues: Sequence[str] | None = None, limit: int = 100
    ) -> list[TaskRecord]:
        """Queued tasks due and running ones whose lease expired by ``before``, the longest
        overdue first (a scan of every task: this is not a hot path)."""
        wanted = None if queues is None else set(queues)
        found: list[tuple[float, str, TaskRecord]] = []
        for record in self._tasks.values():
            if wanted is not None and record.queue not in wanted:
                continue
            if record.state is TaskState.QUEUED:
                since = record.run_at
            elif record.state is TaskState.RUNNING and record.lease_until is not None:
                since = record.lease_until
            else:
                continue
            if since <= before:
                found.append((since, record.id, record))
        return [record for _, _, record in heapq.nsmallest(limit, found)]

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

    async def report_progress(
        self, worker: str, task_id: str, value: float, text: str, *, now: float
    ) -> bool:
        """Store the progress of a task ``worker`` holds (``tasker.abc.TaskProgress``)."""
        record = self._tasks.get(task_id)
        if record is None or record.state is not TaskState.RUNNING or record.lease_owner != worker:
            await anyio.lowlevel.checkpoint()
            return False
        progress = Progress(value=value, text=text, updated_at=now)
        self._tasks[task_id] = replace(record, progress=progress)
        await anyio.lowlevel.checkpoint()
        return True

    async def cancel_requested(self, worker: str, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` running under ``worker``'s lease whose cancel was requested."""
        found = set()
        for task_id in ids:
            record = self._tasks.get(task_id)
            if (
                record is not None
                and record.cancel_requested
                and record.state is TaskState.RUNNING
                and record.lease_owner == worker
            ):
                found.add(task_id)
        return found

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
            kind = settled_kind(outcome.kind, record.cancel_requested)
            if kind is not outcome.kind:
                outcome = dataclasses.replace(outcome, kind=kind)
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
                        outcome=kind._value_,  # not .value: a property call
                        error=outcome.error,
                    )
                )
            settled = self._tasks[record.id] = settled_record(record, outcome)
            if self._limit_book.frees_slot(record.id):
                notify = True  # a concurrency key's slot is free: its next task may start
            if kind is OutcomeKind.SUCCEEDED and not record.cancel_requested:
                for follow_up in outcome.follow_ups:  # a cancel ends the chain
                    self._store(follow_up, now)
                    notify = True
            if settled.state is TaskState.QUEUED:  # a retry, release or interruption
                self._push(settled, now)
                notify = True
            else:
                self._group_member_done(record.id, now)
        if notify:
            self._notify()

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Wait for an enqueue (any queue), the next due time in ``queues`` on the backend's
        clock, or ``timeout`` (real seconds)."""
        work = self._work
        due = self.next_run_at(queues)
        if due is not None and due <= self._clock.now().timestamp():
            await anyio.lowlevel.checkpoint()
            return
        if due is not None and isinstance(self._clock, SystemClock):
            # The system clock runs with anyio's: one timeout covers both (no extra task).
            timeout = min(timeout, max(0.0, due - self._clock.now().timestamp()))
            due = None
        with anyio.move_on_after(timeout):
            if due is None:
                await work.wait()
                return
            # On the clock, not ``anyio.sleep(due - now)``: a FakeClock moves by steps.
            async with anyio.create_task_group() as tg:

                async def until_due() -> None:
                    await self._clock.sleep_until(datetime.fromtimestamp(due, UTC))
                    tg.cancel_scope.cancel()

                tg.start_soon(until_due)
                await work.wait()
                tg.cancel_scope.cancel()

    async def aclose(self) -> None:
        """Nothing to release (the tasks stay until the object is dropped)."""
        await anyio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        return f"MemoryQueueBackend(tasks={len(self._tasks)})"
