"""The reference model of the queue contract: what every backend's answers are checked against.

It is the contract written as plain Python over a dictionary of tasks: which tasks are due
and in which order a claim takes them, what an outcome does to its task (and to the next step
of its chain, or to its group), which held tasks a dispatch releases, what a cancel does,
what a purge deletes, and when work next falls due in a set of queues. The rules (the other
modules) drive the backend and this model side by side and compare.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ...backends import decode_chain, encode_chain, group_payload
from ...queue._records import (
    TERMINAL,
    CancelStatus,
    NewTask,
    Outcome,
    OutcomeKind,
    TaskRecord,
    TaskState,
)

__all__ = [
    "LEASE",
    "LIVE",
    "QUEUES",
    "RESULT_TTL",
    "RETRY_DELAY",
    "Model",
    "ModelGroup",
    "ModelTask",
]

QUEUES = ("q1", "q2")
#: Every lease is this long, every success's result kept this long, every retry this late.
LEASE = 10.0
RESULT_TTL = 20.0
RETRY_DELAY = 5.0
LIVE = frozenset({TaskState.HELD, TaskState.QUEUED, TaskState.RUNNING})


@dataclass
class ModelTask:
    """One task as the contract says it must be stored."""

    id: str
    name: str
    queue: str
    payload: bytes
    priority: int
    run_at: float
    max_attempts: int
    created_at: float
    unique_key: str | None = None
    chain: bytes | None = None
    group_id: str | None = None
    group_index: int | None = None
    state: TaskState = TaskState.QUEUED
    attempts: int = 0
    owner: str | None = None
    lease_until: float | None = None
    result: bytes | None = None
    #: The outcomes of its finished attempts (``OutcomeKind`` values), oldest first.
    history: list[str] = field(default_factory=list)
    #: When it last became succeeded or dead, and when a success's result expires.
    finished_at: float | None = None
    expires: float | None = None
    #: Its last lease expired on its last attempt and a claim that may have made it dead
    #: ran, on a backend that cannot be asked (no ``INSPECTION``): dead or still running.
    limbo: bool = False
    #: A cancel was requested while it ran (``CANCEL``): it never runs again.
    cancel_requested: bool = False
    #: The progress its current (or last) attempt reported (``PROGRESS``): value, text.
    progress: tuple[float, str] | None = None
    #: Its rate limit as (count, per) (``RATE_LIMITS``), and its concurrency key and the
    #: key's limit (``CONCURRENCY_KEYS``).
    rate: tuple[int, float] | None = None
    key: str | None = None
    key_limit: int = 1

    @classmethod
    def from_new(cls, task: NewTask) -> ModelTask:
        return cls(
            id=task.id,
            name=task.name,
            queue=task.queue,
            payload=task.payload,
            priority=task.priority,
            run_at=task.run_at,
            max_attempts=task.max_attempts,
            created_at=task.created_at,
            unique_key=task.unique_key,
            chain=task.chain,
            group_id=task.group_id,
            group_index=task.group_index,
            state=TaskState.HELD if task.held else TaskState.QUEUED,
            rate=None
            if task.rate_limit is None
            else (task.rate_limit.count, task.rate_limit.seconds),
            key=task.concurrency_key,
            key_limit=task.concurrency_limit,
        )

    @property
    def claim_key(self) -> tuple[int, float]:
        """The claim order: highest priority first, then the oldest ``run_at`` (FIFO)."""
        return (-self.priority, self.run_at)

    @property
    def dispatch_key(self) -> tuple[int, float]:
        """The dispatch order: highest priority first, then the oldest enqueue (FIFO)."""
        return (-self.priority, self.created_at)

    def mismatch(self, record: TaskRecord) -> str | None:
        """What ``record`` (the backend's copy) gets wrong about this task, if anything."""
        expected: dict[str, object] = {
            "name": self.name,
            "queue": self.queue,
            "payload": self.payload,
            "priority": self.priority,
            "max_attempts": self.max_attempts,
            "chain": self.chain,
            "group_id": self.group_id,
            "group_index": self.group_index,
            "state": self.state,
            "attempts": self.attempts,
            "cancel_requested": self.cancel_requested,
        }
        if self.state in (TaskState.HELD, TaskState.QUEUED):
            expected["run_at"] = self.run_at
        if self.state is TaskState.RUNNING:
            expected["lease_owner"] = self.owner
        if self.state is TaskState.SUCCEEDED:
            expected["result"] = self.result
        wrong = {
            name: (getattr(record, name), value)
            for name, value in expected.items()
            if getattr(record, name) != value
        }
        stored = record.progress
        progress = None if stored is None else (stored.value, stored.text)
        if progress != self.progress:
            wrong["progress"] = (progress, self.progress)
        return f"task {self.id}: (stored, expected) {wrong}" if wrong else None


@dataclass
class ModelGroup:
    """A group: its members in index order, its callback, and whether it is still open."""

    members: list[str]
    callback: NewTask | None
    open: bool = True


class Model:
    """The tasks and groups a backend must hold, and what each call must do to them."""

    def __init__(self, scale: float = 1.0) -> None:
        #: The lease, result TTL and retry delay of this run (scaled in real time).
        self.lease_for = LEASE * scale
        self.result_ttl = RESULT_TTL * scale
        self.retry_delay = RETRY_DELAY * scale
        self.tasks: dict[str, ModelTask] = {}
        self.groups: dict[str, ModelGroup] = {}
        #: History of tasks purged from the model (the backend keeps their history).
        self.purged_history: dict[str, list[str]] = {}
        #: The rate log: per task name, the expiries of the starts its claims allowed.
        self.rate_log: dict[str, list[float]] = {}
        self._ids = itertools.count()

    def new_id(self, prefix: str = "t") -> str:
        return f"{prefix}{next(self._ids)}"

    def add(self, task: NewTask) -> ModelTask:
        self.tasks[task.id] = model = ModelTask.from_new(task)
        return model

    # -- what is where -------------------------------------------------------------------

    def live_holder(self, key: str | None) -> ModelTask | None:
        """The held, queued or running task holding unique ``key``."""
        if key is None:
            return None
        return next(
            (t for t in self.tasks.values() if t.unique_key == key and t.state in LIVE), None
        )

    def running(self) -> list[ModelTask]:
        """Running tasks (not those that may have died unseen), in id order."""
        found = (t for t in self.tasks.values() if t.state is TaskState.RUNNING and not t.limbo)
        return sorted(found, key=lambda t: t.id)

    def expired(
        self, queues: Sequence[str], now: float, exclude: Iterable[str] = ()
    ) -> list[ModelTask]:
        """Running tasks of ``queues`` whose lease expired by ``now`` (a claim takes those
        with attempts left again, and settles the others: see :meth:`reclaimable`)."""
        skip = set(exclude)
        return [
            t
            for t in self.tasks.values()
            if t.state is TaskState.RUNNING
            and t.queue in queues
            and t.lease_until is not None
            and t.lease_until <= now
            and t.id not in skip
        ]

    def due(
        self, queues: Sequence[str], now: float, exclude: Iterable[str] = ()
    ) -> list[ModelTask]:
        """Queued tasks of ``queues`` due by ``now``, in claim order (ties: any order)."""
        skip = set(exclude)
        found = [
            t
            for t in self.tasks.values()
            if t.state is TaskState.QUEUED
            and t.queue in queues
            and t.run_at <= now
            and t.id not in skip
        ]
        return sorted(found, key=lambda t: t.claim_key)

    def next_due(self, queues: Sequence[str], now: float = -math.inf) -> float | None:
        """When work next falls due in ``queues``: the earliest ``run_at`` of a queued task or
        lease expiry of a running one (None when there is neither). Held tasks never fall
        due, nor does anything in another queue. A queued task with limits falls due, at
        ``now``, when they let it start (:meth:`limited_due`)."""
        times = [
            (self.limited_due(t, now) if t.rate or t.key else t.run_at)
            if t.state is TaskState.QUEUED
            else t.lease_until
            for t in self.tasks.values()
            if t.queue in queues and t.state in (TaskState.QUEUED, TaskState.RUNNING)
        ]
        return min((t for t in times if t is not None), default=None)

    # -- rate limits and concurrency keys --------------------------------------------------

    def live_in_key(self, key: str, now: float) -> int:
        """How many tasks of concurrency ``key`` run under a lease expiring after ``now``."""
        return sum(
            1
            for t in self.tasks.values()
            if t.key == key
            and t.state is TaskState.RUNNING
            and t.lease_until is not None
            and t.lease_until > now
        )

    def blocked(self, t: ModelTask, now: float, taken: Iterable[ModelTask] = ()) -> bool:
        """Whether ``t``'s limits keep it from starting at ``now``, once the tasks of
        ``taken`` (claimed by the same call, not yet leased here) have started too."""
        before = list(taken)
        if t.rate is not None:
            used = sum(1 for e in self.rate_log.get(t.name, []) if e > now)
            used += sum(1 for o in before if o.name == t.name and o.rate is not None)
            if used >= t.rate[0]:
                return True
        if t.key is not None:
            live = self.live_in_key(t.key, now)
            live += sum(
                1
                for o in before
                if o.key == t.key and not (o.lease_until is not None and o.lease_until > now)
            )
            if live >= t.key_limit:
                return True
        return False

    def started(self, t: ModelTask, now: float) -> None:
        """A claim started ``t``: its rate limit's log has an entry more (``claim_ids``
        writes none)."""
        if t.rate is not None:
            self.rate_log.setdefault(t.name, []).append(now + t.rate[1])

    def limited_due(self, t: ModelTask, now: float) -> float | None:
        """When the queued ``t`` may start as far as its limits tell: ``run_at``, or the
        expiry that frees a slot of its name's full log; None while its key is full."""
        if t.key is not None and self.live_in_key(t.key, now) >= t.key_limit:
            return None
        if t.rate is None:
            return t.run_at
        entries = sorted(e for e in self.rate_log.get(t.name, []) if e > now)
        if len(entries) < t.rate[0]:
            return t.run_at
        return max(t.run_at, entries[len(entries) - t.rate[0]])

    def held(self, queue: str, name: str | None) -> list[ModelTask]:
        """Held tasks of ``queue`` (of one name), in dispatch order."""
        found = [
            t
            for t in self.tasks.values()
            if t.state is TaskState.HELD and t.queue == queue and name in (None, t.name)
        ]
        return sorted(found, key=lambda t: t.dispatch_key)

    def counts(self) -> dict[str, dict[TaskState, int]]:
        expected: dict[str, dict[TaskState, int]] = {}
        for t in self.tasks.values():
            per_queue = expected.setdefault(t.queue, {})
            per_queue[t.state] = per_queue.get(t.state, 0) + 1
        return expected

    # -- what calls do -------------------------------------------------------------------

    def lease(self, t: ModelTask, worker: str, now: float) -> None:
        t.state, t.owner, t.lease_until, t.limbo = (
            TaskState.RUNNING,
            worker,
            now + self.lease_for,
            False,
        )
        t.attempts += 1
        t.progress = None  # each attempt starts without progress

    def depth(self, queue: str) -> int:
        """The tasks of ``queue`` waiting to run (``BOUNDED_QUEUES``): held and queued,
        delayed ones included."""
        return sum(
            1
            for t in self.tasks.values()
            if t.queue == queue and t.state in (TaskState.HELD, TaskState.QUEUED)
        )

    def outcome(self, t: ModelTask, kind: OutcomeKind, worker: str, now: float) -> Outcome:
        """A worker's report, built as tasker's worker builds it: a success carries its
        result and, for a chain step, the next step; a failure an error."""
        succeeded = kind is OutcomeKind.SUCCEEDED
        result = json.dumps(f"{t.id}/{t.attempts}").encode() if succeeded else None
        return Outcome(
            id=t.id,
            worker=worker,
            kind=kind,
            started_at=now,
            finished_at=now,
            result=result,
            result_expires=now + self.result_ttl if succeeded else None,
            error=None if succeeded else "Boom: x",
            retry_at=now + self.retry_delay if kind is OutcomeKind.RETRY else None,
            follow_ups=self._next_step(t, result, now) if result is not None else (),
        )

    def _next_step(self, t: ModelTask, result: bytes, now: float) -> tuple[NewTask, ...]:
        # As ``tasker.queue``'s worker does: the first step of the rest of the chain, with
        # the result as its payload and the steps after it as its own chain.
        if t.chain is None:
            return ()
        head, *rest = decode_chain(t.chain)
        return (
            NewTask(
                id=self.new_id(),
                name=head.name,
                queue=head.queue or t.queue,
                payload=result,
                priority=head.priority or 0,
                run_at=now,
                max_attempts=head.max_attempts or 1,
                timeout=head.timeout,
                chain=encode_chain(rest),
                created_at=now,
            ),
        )

    @staticmethod
    def reclaimable(t: ModelTask) -> bool:
        """Whether a claim takes ``t`` again once its lease expired: not on its last attempt
        (it dies), nor with its cancel requested (it is cancelled)."""
        return t.attempts < t.max_attempts and not t.cancel_requested

    def settle(self, outcome: Outcome, now: float) -> None:
        """Apply a finished attempt; one for a task the worker does not hold is ignored.

        A task whose cancel was requested ends cancelled by any outcome but a success (a
        retry, a release, an interruption included), and a success of it enqueues no
        follow-up: a cancel ends a chain."""
        t = self.tasks.get(outcome.id)
        if t is None or t.state is not TaskState.RUNNING or t.owner != outcome.worker:
            return
        t.owner, t.lease_until = None, None
        kind = outcome.kind
        if t.cancel_requested and kind is not OutcomeKind.SUCCEEDED:
            kind = OutcomeKind.CANCELLED
        if kind is OutcomeKind.SUCCEEDED:
            t.state, t.result = TaskState.SUCCEEDED, outcome.result
            t.finished_at, t.expires = outcome.finished_at, outcome.result_expires
            for follow_up in () if t.cancel_requested else outcome.follow_ups:
                self.add(follow_up)  # the next step, in the same finish
        elif kind is OutcomeKind.DEAD:  # a dead step ends its chain
            t.state, t.finished_at = TaskState.DEAD, outcome.finished_at
        elif kind is OutcomeKind.CANCELLED:  # so does a cancelled one
            t.state, t.finished_at = TaskState.CANCELLED, outcome.finished_at
        elif kind is OutcomeKind.RETRY:
            assert outcome.retry_at is not None
            t.state, t.run_at = TaskState.QUEUED, outcome.retry_at
        else:
            t.state, t.attempts = TaskState.QUEUED, t.attempts - 1
        if kind is not OutcomeKind.RELEASED:
            t.history.append(kind.value)
        self.member_settled(t, now)

    def died(self, t: ModelTask, now: float) -> ModelTask | None:
        """A claim made ``t`` dead (its last lease expired); returns its group's callback if
        that fired."""
        t.state, t.owner, t.lease_until, t.limbo = TaskState.DEAD, None, None, False
        t.finished_at = now
        return self.member_settled(t, now)

    def cancelled(self, t: ModelTask, now: float) -> ModelTask | None:
        """``t`` cancelled by a cancel (held, queued, or its lease expired) or by a claim
        (its lease expired after its cancel was requested); returns its group's callback if
        that fired. No history row: no attempt ended."""
        t.state, t.owner, t.lease_until, t.limbo = TaskState.CANCELLED, None, None, False
        t.finished_at = now
        return self.member_settled(t, now)

    def cancel(self, t: ModelTask | None, now: float) -> CancelStatus:
        """What a cancel of ``t`` (None: an unknown id) does, applied."""
        if t is None:
            return CancelStatus.UNKNOWN
        if t.state not in LIVE:
            return CancelStatus.FINISHED
        if t.state is TaskState.RUNNING and t.lease_until is not None and t.lease_until > now:
            t.cancel_requested = True
            return CancelStatus.REQUESTED
        self.cancelled(t, now)
        return CancelStatus.CANCELLED

    def member_settled(self, t: ModelTask, now: float) -> ModelTask | None:
        """After ``t`` changed: if it was the last open member of its group to settle
        (succeed, die or be cancelled), the group closes and its callback is enqueued, due
        ``now``, with the members' results in index order (null for a dead or cancelled
        one). Exactly once: a closed group never fires again, whatever its members do later
        (a requeued one)."""
        group = self.groups.get(t.group_id) if t.group_id is not None else None
        if group is None or not group.open:
            return None
        members = [self.tasks[m] for m in group.members]
        if any(m.state not in TERMINAL for m in members):
            return None
        group.open = False
        if group.callback is None:
            return None
        ordered = sorted(members, key=lambda m: m.group_index or 0)
        payload = group_payload(
            [m.result if m.state is TaskState.SUCCEEDED else None for m in ordered]
        )
        return self.add(dataclasses.replace(group.callback, payload=payload, run_at=now))

    def requeue(self, t: ModelTask, now: float) -> None:
        t.state, t.attempts, t.run_at, t.finished_at = TaskState.QUEUED, 0, now, None

    def purgeable(self, now: float, dead_before: float | None) -> list[ModelTask]:
        """What a purge deletes: expired successes and dead or cancelled tasks older than
        ``dead_before``, never a member of a group still open."""
        return [
            t
            for t in self.tasks.values()
            if not (t.group_id is not None and self.groups[t.group_id].open)
            and (
                (t.state is TaskState.SUCCEEDED and t.expires is not None and t.expires <= now)
                or (
                    t.state in (TaskState.DEAD, TaskState.CANCELLED)
                    and dead_before is not None
                    and t.finished_at is not None
                    and t.finished_at < dead_before
                )
            )
        ]

    def purge(self, gone: Iterable[ModelTask]) -> None:
        for t in gone:
            if t.history:
                self.purged_history[t.id] = t.history
            del self.tasks[t.id]
