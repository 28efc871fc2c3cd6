"""A process's view of the queue: every task record, indexed for claims, fed by an ordered
consumer and by the process's own writes.

Design notes:

- **The stream is the truth; the view is a hint.** Each record is stored under its own
  subject with history 1, so its revision (the stream sequence of its last message) is its
  version: every change is a publish that expects the revision the writer read
  (``Nats-Expected-Last-Subject-Sequence``). A view that is behind proposes a stale
  candidate, whose write then fails and is skipped: it costs a round trip, never a wrong
  answer.
- **Fed twice.** An ordered push consumer with idle heartbeats (it notices a consumer lost
  to a server restart and makes a new one from the last sequence it saw, which
  ``kv.watch`` does not) replays the last message of every task subject at start, then
  every change; the process's own writes are applied as soon as their acknowledgement gives
  their revision. A message is applied only if its revision is newer than the one held, so
  the consumer's later echo of an own write changes nothing. A deletion leaves its revision
  behind until the consumer has passed it, so a late echo cannot bring the task back.
- **Indexes**, per queue, each a heap whose stale entries (a revision that is no longer
  the record's) are dropped when they reach the top: ``waiting`` (queued tasks by
  ``run_at``: the next due time), ``pending`` (queued tasks not yet due, moved to ``ready``
  by a claim once due), ``ready`` (due tasks by priority, then ``run_at``, then creation),
  ``leases`` (running tasks by lease expiry) and the held tasks. Counts per queue and state
  are kept as records change.
- **Memory**: every record, payload included, is held in every process that uses the
  backend: about the stored size of the backlog, plus some 300 bytes a task.
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Iterable, Sequence

import anyio

from tasker.queue import TaskRecord, TaskState

__all__ = ["View"]

_QUEUED, _RUNNING, _HELD = TaskState.QUEUED, TaskState.RUNNING, TaskState.HELD


class _Queue:
    """The indexes of one queue."""

    __slots__ = ("held", "leases", "pending", "ready", "waiting")

    def __init__(self) -> None:
        self.waiting: list[tuple[float, float, str, int]] = []
        self.pending: list[tuple[float, float, str, int]] = []
        self.ready: list[tuple[int, float, float, str, int]] = []
        self.leases: list[tuple[float, str, int]] = []
        self.held: set[str] = set()


class View:
    """The records of every task, indexed (see the module notes)."""

    def __init__(self) -> None:
        self.records: dict[str, tuple[int, TaskRecord]] = {}
        #: Deleted tasks' revisions, until the consumer has passed them (and the same, in
        #: the order they came, to forget them in O(1) each).
        self._gone: dict[str, int] = {}
        self._gone_order: collections.deque[tuple[int, str]] = collections.deque()
        self._queues: dict[str, _Queue] = {}
        self._counts: dict[str, dict[TaskState, int]] = {}
        #: The last stream sequence the consumer delivered.
        self.delivered = 0
        self._work = anyio.Event()

    # -- changes ---------------------------------------------------------------------------

    def apply(self, task_id: str, revision: int, record: TaskRecord | None) -> bool:
        """Take the message of ``task_id`` at ``revision`` (``None``: deleted) if it is newer
        than what the view holds; return whether it was."""
        held = self.records.get(task_id)
        if held is not None and held[0] >= revision:
            return False
        gone = self._gone.get(task_id)
        if gone is not None and gone >= revision:
            return False
        if held is not None:
            self._count(held[1], -1)
            if held[1].state is _HELD:
                self._queue(held[1].queue).held.discard(task_id)
        if record is None:
            self.records.pop(task_id, None)
            self._gone[task_id] = revision
            self._gone_order.append((revision, task_id))
            return True
        self._gone.pop(task_id, None)
        self.records[task_id] = (revision, record)
        self._count(record, 1)
        queue = self._queue(record.queue)
        state = record.state
        if state is _QUEUED:
            entry = (record.run_at, record.created_at, task_id, revision)
            heapq.heappush(queue.waiting, entry)
            heapq.heappush(queue.pending, entry)
            self._wake()
        elif state is _RUNNING and record.lease_until is not None:
            heapq.heappush(queue.leases, (record.lease_until, task_id, revision))
            if held is None or held[1].state is not _RUNNING:
                self._wake()  # a new lease (a waiter's next due time); not a heartbeat
        elif state is _HELD:
            queue.held.add(task_id)
        return True

    def passed(self, sequence: int) -> None:
        """The consumer delivered ``sequence``: forget deletions it has gone past."""
        self.delivered = max(self.delivered, sequence)
        order, gone = self._gone_order, self._gone
        while order and order[0][0] <= self.delivered:
            revision, task_id = order.popleft()
            if gone.get(task_id) == revision:
                del gone[task_id]

    def _count(self, record: TaskRecord, delta: int) -> None:
        per_queue = self._counts.setdefault(record.queue, {})
        count = per_queue.get(record.state, 0) + delta
        if count:
            per_queue[record.state] = count
        else:
            per_queue.pop(record.state, None)
            if not per_queue:
                del self._counts[record.queue]

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue()
        return queue

    def _wake(self) -> None:
        self._work.set()
        self._work = anyio.Event()

    @property
    def work(self) -> anyio.Event:
        """Set when a task becomes queued or running (a wait for work ends)."""
        return self._work

    # -- reading ---------------------------------------------------------------------------

    def _valid(self, task_id: str, revision: int, state: TaskState) -> TaskRecord | None:
        held = self.records.get(task_id)
        if held is None or held[0] != revision or held[1].state is not state:
            return None
        return held[1]

    def expired(
        self, queues: Sequence[str], now: float, exclude: frozenset[str]
    ) -> list[tuple[int, TaskRecord]]:
        """Running tasks of ``queues`` whose lease expired by ``now`` (not in ``exclude``),
        oldest expiry first."""
        found: list[tuple[float, int, TaskRecord]] = []
        for name in queues:
            queue = self._queues.get(name)
            if queue is None:
                continue
            leases = queue.leases
            looked: list[tuple[float, str, int]] = []
            while leases and leases[0][0] <= now:
                entry = heapq.heappop(leases)
                record = self._valid(entry[1], entry[2], _RUNNING)
                if record is None:
                    continue  # stale: dropped for good
                looked.append(entry)
                if entry[1] not in exclude:
                    found.append((entry[0], entry[2], record))
            for entry in looked:  # they stay until a write moves them
                heapq.heappush(leases, entry)
        found.sort(key=lambda item: item[0])
        return [(revision, record) for _, revision, record in found]

    def _promote(self, queue: _Queue, now: float) -> None:
        pending = queue.pending
        while pending and pending[0][0] <= now:
            run_at, created_at, task_id, revision = heapq.heappop(pending)
            record = self._valid(task_id, revision, _QUEUED)
            if record is not None:
                heapq.heappush(
                    queue.ready, (-record.priority, run_at, created_at, task_id, revision)
                )

    def due(
        self, queues: Sequence[str], now: float, exclude: frozenset[str], limit: int
    ) -> list[tuple[int, TaskRecord]]:
        """Up to ``limit`` queued tasks of ``queues`` due by ``now`` (not in ``exclude``), in
        claim order: highest priority, then oldest ``run_at``, then oldest creation. Nothing
        is taken out of the view: a claim's writes do that."""
        candidates: list[tuple[int, float, float, str, int]] = []
        for name in dict.fromkeys(queues):
            queue = self._queues.get(name)
            if queue is None:
                continue
            self._promote(queue, now)
            ready = queue.ready
            taken: list[tuple[int, float, float, str, int]] = []
            wanted = 0
            while ready and wanted < limit:
                entry = heapq.heappop(ready)
                if self._valid(entry[3], entry[4], _QUEUED) is None:
                    continue  # stale: dropped for good
                taken.append(entry)
                if entry[3] not in exclude:
                    wanted += 1
            for entry in taken:  # only looked at: they stay until a write moves them
                heapq.heappush(ready, entry)
            candidates.extend(e for e in taken if e[3] not in exclude)
        candidates.sort()
        found: list[tuple[int, TaskRecord]] = []
        for entry in candidates[:limit]:
            record = self._valid(entry[3], entry[4], _QUEUED)
            assert record is not None
            found.append((entry[4], record))
        return found

    def next_run_at(self, queues: Iterable[str]) -> float | None:
        """The earliest ``run_at`` of a queued task or lease expiry of a running one in
        ``queues`` (None when there is neither)."""
        best: float | None = None
        for name in dict.fromkeys(queues):
            queue = self._queues.get(name)
            if queue is None:
                continue
            waiting, leases = queue.waiting, queue.leases
            while waiting and self._valid(waiting[0][2], waiting[0][3], _QUEUED) is None:
                heapq.heappop(waiting)
            while leases and self._valid(leases[0][1], leases[0][2], _RUNNING) is None:
                heapq.heappop(leases)
            for top in (waiting[0][0] if waiting else None, leases[0][0] if leases else None):
                if top is not None and (best is None or top < best):
                    best = top
        return best

    def held(self, queue: str) -> list[tuple[int, TaskRecord]]:
        """The held tasks of ``queue``, in dispatch order (priority, then creation)."""
        entries = (
            [self.records[i] for i in self._queues[queue].held] if queue in self._queues else []
        )
        return sorted(entries, key=lambda e: (-e[1].priority, e[1].created_at, e[1].id))

    def counts(self) -> dict[str, dict[TaskState, int]]:
        """Task counts per queue and state."""
        return {queue: dict(states) for queue, states in self._counts.items()}
