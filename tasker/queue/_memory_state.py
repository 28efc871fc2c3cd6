"""The in-memory queue backend's state: its records, heaps and groups, and the helpers that
keep them consistent (``MemoryQueueBackend`` in ``_memory`` builds on it).

New and retried tasks wait in a heap by ``run_at``; a claim moves the due ones into one heap
per queue ordered by (priority desc, run_at, arrival), so a delayed high-priority task never
hides a due one. Running tasks sit in a heap by lease expiry. Stale heap entries (a task that
moved on) are skipped lazily.

The tasks' dictionary keeps a count of the waiting (held or queued) tasks per queue as they
are stored, replaced and deleted (:class:`TaskTable`), so that a bounded enqueue
(``BOUNDED_QUEUES``) knows a queue's depth without a scan. Rejected: counting in each method
that moves a task; one missed transition would skew the count for good.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections.abc import Callable, Sequence

import anyio

from .._clock import SYSTEM_CLOCK, Clock
from ._memory_limits import LimitBook
from ._records import (
    TERMINAL,
    GroupSpec,
    HistoryEntry,
    NewTask,
    TaskRecord,
    TaskState,
    WorkerInfo,
)
from ._rows import dead_record, group_payload, record_from_new, replace_record

__all__ = ["LIVE", "MemoryState", "TaskTable"]


LIVE = frozenset({TaskState.HELD, TaskState.QUEUED, TaskState.RUNNING})
#: The states of a task that counts towards its queue's depth.
WAITING = frozenset({TaskState.HELD, TaskState.QUEUED})


class TaskTable(dict[str, TaskRecord]):
    """The tasks by id, with the number of waiting (held or queued) ones per queue.

    Every change goes through ``[key] = record`` or ``del [key]`` (``pop`` too), which keep
    :attr:`waiting` in step; the other mutators of ``dict`` are not used on it.
    """

    __slots__ = ("waiting",)

    def __init__(self) -> None:
        super().__init__()
        #: Held or queued tasks per queue (a queue with none may be missing).
        self.waiting: dict[str, int] = {}

    def __setitem__(self, key: str, record: TaskRecord) -> None:
        # Identity, not ``in WAITING``: an enum's hash is a Python call (a hot path).
        old = dict.get(self, key)
        if old is not None:
            state = old.state
            if state is TaskState.QUEUED or state is TaskState.HELD:
                self.waiting[old.queue] -= 1
        state = record.state
        if state is TaskState.QUEUED or state is TaskState.HELD:
            self.waiting[record.queue] = self.waiting.get(record.queue, 0) + 1
        dict.__setitem__(self, key, record)

    def __delitem__(self, key: str) -> None:
        old = self[key]
        if old.state in WAITING:
            self.waiting[old.queue] -= 1
        dict.__delitem__(self, key)

    def pop(self, key: str, *default: TaskRecord | None) -> TaskRecord | None:  # type: ignore[override]
        if key not in self:
            return dict.pop(self, key, *default)
        record = self[key]
        del self[key]
        return record


class MemoryState:
    """The stores of the in-memory backend, and how a task moves between them."""

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock = clock or SYSTEM_CLOCK
        self._tasks = TaskTable()
        self._unique: dict[str, tuple[str, float | None]] = {}  # key -> (task id, until)
        self._delayed: list[tuple[float, int, str]] = []
        self._queued: dict[str, list[tuple[int, float, int, str]]] = {}
        self._leases: list[tuple[float, int, str]] = []
        self._groups: dict[str, GroupSpec] = {}
        self._group_members: dict[str, list[str]] = {}
        self._history: list[HistoryEntry] = []
        self._workers: dict[str, WorkerInfo] = {}
        self._seq = itertools.count()
        self._work = anyio.Event()
        #: Rate limits and concurrency keys (``RATE_LIMITS``, ``CONCURRENCY_KEYS``).
        self._limit_book = LimitBook()

    @property
    def clock(self) -> Clock:
        """The clock the backend was built with: what ``time()`` reads and waits follow."""
        return self._clock

    def _push(self, record: TaskRecord, now: float) -> None:
        """File a queued ``record``: due at ``now``, straight into its queue's heap (a
        backlog enqueued ahead of the workers is not moved there by the first claim, all of
        it at once: 400,000 tasks cost that claim a second); else by its due time."""
        if record.run_at <= now:
            heap = self._queued.get(record.queue)
            if heap is None:
                heap = self._queued[record.queue] = []
            heapq.heappush(heap, (-record.priority, record.run_at, next(self._seq), record.id))
        else:
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
        if record.state in LIVE or (until is not None and now < until):
            return task_id
        return None

    def _store(self, task: NewTask, now: float) -> None:
        record = record_from_new(task)
        self._tasks[task.id] = record
        if task.unique_key is not None:
            self._unique[task.unique_key] = (task.id, task.unique_until)
        self._limit_book.add(task)
        if record.state is TaskState.QUEUED:
            self._push(record, now)

    def _die(
        self,
        record: TaskRecord,
        error: str,
        traceback: str | None,
        finished_at: float,
        now: float,
    ) -> None:
        self._tasks[record.id] = dead_record(record, error, traceback, finished_at)
        self._group_member_done(record.id, now)

    def _cancel_now(self, record: TaskRecord, now: float) -> None:
        """``record`` (held, queued, or running with an expired lease) cancelled: it never
        runs (again); its heap entries go stale, its group is told."""
        self._tasks[record.id] = replace_record(
            record,
            state=TaskState.CANCELLED,
            lease_owner=None,
            lease_until=None,
            finished_at=now,
        )
        self._group_member_done(record.id, now)

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
            # Due from now, as in the SQL backends: it was never runnable before.
            self._store(dataclasses.replace(group.callback, payload=payload, run_at=now), now)
            self._notify()

    def next_run_at(self, queues: Sequence[str]) -> float | None:
        """The earliest ``run_at`` of a queued task, or lease expiry of a running one, in
        ``queues`` (None when there is neither).

        Read from the heaps, not from every task: an idle worker asks at each wait, and a
        scan would cost it the whole backlog each time (100,000 delayed tasks, ~10 ms). The
        heaps keep stale entries (lazy deletion): those at their tops are dropped here.
        With limited tasks stored, their limits decide when they are due: every task is
        looked at then.
        """
        book = self._limit_book
        if book.limits:
            return self._next_run_at_limited(queues)
        tasks = self._tasks
        wanted = set(queues)
        found: list[float] = []
        for queue in wanted:
            heap = self._queued.get(queue)
            if not heap:
                continue
            # Promoted: due already. Rare at a wait (the claim before it took them, unless
            # they are the worker's own), so a look at each entry costs little.
            live = [
                run_at
                for _, run_at, _, task_id in heap
                if (record := tasks.get(task_id)) is not None
                and record.state is TaskState.QUEUED
                and record.run_at == run_at
            ]
            if live:
                found.append(min(live))
            else:
                heap.clear()  # every entry stale

        def queued(entry: tuple[float, int, str]) -> bool:
            record = tasks.get(entry[2])
            return (
                record is not None
                and record.state is TaskState.QUEUED
                and record.run_at == entry[0]
                and record.queue in wanted
            )

        def leased(entry: tuple[float, int, str]) -> bool:
            record = tasks.get(entry[2])
            return (
                record is not None
                and record.state is TaskState.RUNNING
                and record.lease_until == entry[0]
                and record.queue in wanted
            )

        for timed, live_in in ((self._delayed, queued), (self._leases, leased)):
            entry = _first(timed, live_in)
            if entry is not None:
                found.append(entry[0])
        return min(found, default=None)

    def _next_run_at_limited(self, queues: Sequence[str]) -> float | None:
        book = self._limit_book
        # A limited task is due when its limits let it start (on the backend's clock).
        now = self._clock.now().timestamp() if book.limits else 0.0
        times = [
            t.lease_until
            if t.state is TaskState.RUNNING
            else (book.due_at(t, self._tasks, now) if book.limits else t.run_at)
            for t in self._tasks.values()
            if t.queue in queues
            and (
                t.state is TaskState.QUEUED
                or (t.state is TaskState.RUNNING and t.lease_until is not None)
            )
        ]
        return min((t for t in times if t is not None), default=None)


def _first(
    heap: list[tuple[float, int, str]], live: Callable[[tuple[float, int, str]], bool]
) -> tuple[float, int, str] | None:
    """The smallest entry of ``heap`` that is ``live``, walking it in order without
    changing it: the top's children, then theirs, smallest first (usually one step)."""
    if not heap:
        return None
    frontier = [(heap[0], 0)]
    size = len(heap)
    while frontier:
        entry, index = heapq.heappop(frontier)
        if live(entry):
            return entry
        for child in (2 * index + 1, 2 * index + 2):
            if child < size:
                heapq.heappush(frontier, (heap[child], child))
    return None
