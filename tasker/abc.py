"""The protocols a backend implements: the Scheduler's and the task queue's.

**Scheduler.** A backend is two small objects: a :class:`LockerFactory`, whose locks make sure
at most one replica runs a schedule at a time, and a :class:`StateRepository`, which
remembers the last slot each schedule completed. tasker ships an in-memory pair, an embedded
pair (lock files and SQLite, for one machine) and ``tasker_pg`` (Postgres advisory locks and
a table).

**Task queue.** :class:`QueueBackend` is the core every transport can implement, a message
broker included: put tasks, take them with a lease, extend leases, settle outcomes, wait for
work, and the clock all of that is measured on. What only some stores can do is a separate,
small capability, declared in :attr:`QueueBackend.capabilities` (:class:`QueueCapability`)
and implemented as its own protocol: :class:`QueueInspection`, :class:`QueueAdministration`,
:class:`FinishAndClaim`, :class:`TransactionalEnqueue`, :class:`ClaimById`,
:class:`TaskCancellation`, :class:`TaskProgress`, :class:`BoundedEnqueue`; unique keys,
chains and groups, rate limits and concurrency keys are declared semantics with no methods
of their own. The queue checks the
declaration once, when it is built, and a call that needs a capability the backend lacks
raises :class:`tasker.queue.MissingCapabilityError` naming both.

**Cancellation.** Every call may be cancelled. What a cancelled call leaves behind is stated
per method; in general a cancelled write may have happened or not, as with any cancelled
database call, and a backend must stay usable afterwards.

A backend of your own implements these protocols and runs the contract suites in
:mod:`tasker.testing`; :mod:`tasker.backends` holds the building blocks tasker's own
backends share.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .scheduler._state import ScheduleState

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .queue._records import (
        CancelResult,
        EnqueueResult,
        GroupSpec,
        HistoryEntry,
        NewTask,
        Outcome,
        TaskRecord,
        TaskState,
        WorkerInfo,
    )

__all__ = [
    "BoundedEnqueue",
    "ClaimById",
    "FinishAndClaim",
    "Locker",
    "LockerFactory",
    "QueueAdministration",
    "QueueBackend",
    "QueueCapability",
    "QueueInspection",
    "ScheduleState",
    "StateRepository",
    "TaskCancellation",
    "TaskProgress",
    "TransactionalEnqueue",
    "WorkerRegistry",
]


@runtime_checkable
class Locker(Protocol):
    """A named, non-blocking, exclusive lock across every replica sharing the backend.

    One ``Locker`` is used by one task at a time: ``try_lock``, then ``wait_lost`` while the
    work runs, then ``unlock``.
    """

    #: Whether a held lock can be lost while its process lives (a database session that
    #: dies): then the Scheduler watches ``wait_lost`` during each run. ``False`` for a lock
    #: file or memory: no watcher task per run.
    can_be_lost: bool

    async def try_lock(self) -> bool:
        """Take the lock if it is free, without waiting.

        Returns:
            True if this locker now holds the lock, False if somebody else holds it.

        Raises:
            Exception: when the backend cannot be reached; nothing is held then.
        """
        ...

    async def wait_lost(self) -> None:
        """Return only if the held lock was lost (its session died); otherwise never return.

        The Scheduler runs this beside the job: when it returns the job is stopped, because
        another replica may already hold the lock. Backends whose locks cannot be lost (a lock
        file, memory) simply sleep forever.
        """
        ...

    async def unlock(self) -> None:
        """Release the lock. Releasing a lock that was lost is not an error.

        Called in a shielded scope, so it must finish by itself (with a timeout of its own when
        it does I/O).
        """
        ...


@runtime_checkable
class LockerFactory(Protocol):
    """Makes the :class:`Locker` for a schedule's name."""

    def locker(self, name: str) -> Locker:
        """Return a locker for ``name``; two lockers for the same name exclude each other."""
        ...

    async def aclose(self) -> None:
        """Release connections and files; calling it again does nothing."""
        ...


@runtime_checkable
class StateRepository(Protocol):
    """Stores one :class:`ScheduleState` per schedule name."""

    async def now(self) -> datetime | None:
        """The backend's clock, or None to use the local one.

        A shared database answers with its own ``now()``, so replicas whose clocks disagree
        still agree on which slot is due.
        """
        ...

    async def get(self, name: str) -> ScheduleState | None:
        """Return the stored state of ``name``, or None if it was never saved."""
        ...

    async def save(self, state: ScheduleState) -> None:
        """Store ``state``, replacing the previous state of the same name.

        A cancelled save stored the new state or left the old one.
        """
        ...

    async def delete(self, name: str) -> None:
        """Delete the stored state of ``name``, so that ``get`` returns None until the next
        ``save`` (:meth:`tasker.Scheduler.forget` calls it under the name's lock).

        Deleting a name that has no state is not an error. A save after a delete stores
        its state whatever ``last_slot`` the deleted one had: a backend that refuses saves
        which would move a schedule back must forget that slot too. A cancelled delete
        deleted the state or left it.
        """
        ...

    async def aclose(self) -> None:
        """Release connections and files; calling it again does nothing."""
        ...


# -- the task queue ----------------------------------------------------------------------


class QueueCapability(enum.Enum):
    """What a queue backend can do beyond the core :class:`QueueBackend`.

    A backend lists its capabilities in ``capabilities``; each one with methods is also a
    protocol the backend must implement.
    """

    #: Look tasks up: :class:`QueueInspection` (``get``, ``tasks``, ``counts``, ``history``).
    INSPECTION = "inspection (get, tasks, counts, history)"
    #: Manage stored tasks: :class:`QueueAdministration` (``requeue`` dead tasks, ``dispatch``
    #: held ones, ``purge`` finished ones past their retention).
    ADMINISTRATION = "administration (requeue, held tasks and dispatch, purge)"
    #: Unique keys with a window (``NewTask.unique_key`` and ``unique_until``).
    UNIQUE_KEYS = "unique keys"
    #: Chains (``Outcome.follow_ups`` enqueued with the outcome) and groups (``enqueue``'s
    #: ``group``, the callback enqueued exactly once).
    WORKFLOWS = "chains and groups"
    #: Record outcomes and claim in one round trip: :class:`FinishAndClaim`.
    FINISH_AND_CLAIM = "finish and claim in one call"
    #: Enqueue inside the caller's own database transaction: :class:`TransactionalEnqueue`.
    TRANSACTIONAL_ENQUEUE = "enqueue inside the caller's transaction"
    #: Know the running workers, idle ones too: :class:`WorkerRegistry`.
    WORKERS = "a registry of running workers"
    #: Carry per-task headers (``NewTask.headers``, ``enqueue(headers=...)``) to the broker
    #: and back to the handler (``current_task().headers``).
    HEADERS = "per-task headers"
    #: Caller-chosen task ids (``enqueue(task_id=...)``): a task whose id names a task
    #: already stored, in any state, is not stored again (its result says
    #: ``deduplicated=True``), so an enqueue retried with its id is idempotent.
    TASK_IDS = "caller-chosen task ids"
    #: Claim the tasks named by id, and list the overdue ones: :class:`ClaimById` (what a
    #: store needs to keep a message broker's tasks, which the broker delivers by id).
    CLAIM_BY_ID = "claim named tasks, list overdue ones"
    #: Cancel tasks: :class:`TaskCancellation` (``cancel`` a held, queued or running task;
    #: ``cancel_requested``, which a worker asks at each heartbeat).
    CANCEL = "task cancellation (cancel, cancel_requested)"
    #: Rate limits per task name (``NewTask.rate_limit``), enforced by ``claim`` and
    #: ``finish_and_claim`` across every worker: see :class:`tasker.queue.RateLimit`.
    RATE_LIMITS = "rate limits per task name"
    #: Concurrency keys (``NewTask.concurrency_key`` and ``concurrency_limit``): at most
    #: that many tasks of a key run at once, enforced by ``claim`` and ``finish_and_claim``.
    CONCURRENCY_KEYS = "concurrency keys"
    #: Store a running task's progress: :class:`TaskProgress` (``report_progress``, which
    #: ``current_task().report_progress`` reaches; ``TaskRecord.progress``).
    PROGRESS = "task progress (report_progress)"
    #: Refuse an enqueue that would make a queue deeper than a bound, atomically:
    #: :class:`BoundedEnqueue` (``enqueue_bounded``; ``Queue(max_depth=...)``).
    BOUNDED_QUEUES = "bounded queues (enqueue_bounded)"


@runtime_checkable
class QueueBackend(Protocol):
    """Where tasks live between enqueue and their last attempt: the core every backend has.

    Batch-shaped so that one round trip can serve many tasks: enqueue, claim and finish
    take sequences. Each call is atomic: a claimed task belongs to one worker until its
    lease expires.

    **One clock: the backend's.** Leases and due times are compared on one clock shared by
    every worker and producer, never on each process's own wall clock (a worker whose clock
    runs ahead would otherwise take the tasks other workers hold, and start delayed tasks
    early). ``time()`` reads that clock: a server's (Postgres ``clock_timestamp()``, Redis
    ``TIME``, NATS server time), or, for an embedded store, the machine's clock kept immune to
    wall-clock steps. The ``now`` every time-dependent call takes is the caller's reading of
    ``time()``, advanced by its own monotonic clock in between (the queue and its workers do
    exactly that); a backend may use its server's clock in the statements instead, and must
    then ignore ``now`` consistently in every call. Passing ``now`` lets the contract suite
    move time; a production caller never invents it.
    """

    #: What the backend can do beyond this core (see :class:`QueueCapability`).
    capabilities: frozenset[QueueCapability]

    async def time(self) -> float:
        """The backend's clock, in POSIX seconds: what leases and due times are compared to.

        Cheap to call often: a remote backend reads its server's clock now and then and
        advances the reading by the local monotonic clock in between.
        """
        ...

    async def enqueue(
        self, tasks: Sequence[NewTask], *, group: GroupSpec | None = None, now: float
    ) -> list[EnqueueResult]:
        """Store ``tasks`` (and their ``group``, with ``WORKFLOWS``) atomically.

        With ``UNIQUE_KEYS``: a task whose ``unique_key`` matches a task that is held,
        queued or running, or that finished before its ``unique_until``, is not stored: its
        result names the existing task and says ``deduplicated=True``. A cancelled enqueue
        stored all of the tasks or none.
        """
        ...

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
        """Lease up to ``limit`` due tasks of ``queues`` to ``worker`` for ``lease`` seconds.

        Due: queued with ``run_at <= now``, or running with an expired lease (its worker
        died; the attempt it made counts). Highest priority first, then oldest ``run_at``.
        Each claim counts one attempt. A task whose expired lease used its last attempt
        becomes dead instead of being claimed. A task in ``exclude`` is never taken (nor
        made dead): a worker excludes the tasks it still runs, so that it never takes back
        its own expired lease while the attempt that holds it is still running.

        With ``RATE_LIMITS`` and ``CONCURRENCY_KEYS`` the claim skips (leaves queued, or
        running with its expired lease) a task it may not start, and takes the next due one
        instead, in the same order, atomically with the counting:

        - a task with a ``rate_limit``: started (an entry expiring at ``now + per`` written
          to its name's log) only while fewer than ``count`` entries of its name expire
          after ``now``; so at most ``count`` attempts of a name start in any window of
          ``per``, whichever workers claim.
        - a task with a ``concurrency_key``: started only while fewer than its
          ``concurrency_limit`` tasks of that key are running under a lease that expires
          after ``now`` (an expired lease frees its slot).

        A task taking two of these needs both. ``claim_ids`` applies neither.
        """
        ...

    async def heartbeat(
        self, worker: str, ids: Sequence[str], *, lease: float, now: float
    ) -> set[str]:
        """Extend ``worker``'s leases on ``ids``; return the ids it still holds."""
        ...

    async def finish(self, outcomes: Sequence[Outcome], *, now: float) -> None:
        """Record how claimed tasks ended, with their history, follow-ups and group callbacks.

        An outcome for a task the worker no longer holds (its lease expired and another
        worker claimed it) is ignored, so a slow worker cannot overwrite a newer attempt.
        A record the backend cannot store for its data raises
        :class:`tasker.queue.UnstorableRecordError` (retrying it unchanged would fail the same
        way); any other error is taken for an outage. A cancelled finish recorded all of the
        outcomes or none.
        """
        ...

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Return when work may be claimable in ``queues``, or after ``timeout`` seconds.

        Work may be claimable when a task was enqueued or released, when a delayed task
        falls due, or when a lease expires: a backend that knows when its next delayed task
        is due returns by then. Cancelling the wait leaves nothing behind.
        """
        ...

    async def aclose(self) -> None:
        """Release connections, threads and files; calling it again does nothing."""
        ...


@runtime_checkable
class QueueInspection(Protocol):
    """``QueueCapability.INSPECTION``: tasks can be looked up after they were enqueued."""

    async def get(self, task_id: str) -> TaskRecord | None:
        """Return the task with this id, or None."""
        ...

    async def tasks(
        self, *, state: TaskState | None = None, queue: str | None = None, limit: int = 100
    ) -> list[TaskRecord]:
        """List tasks, newest first, optionally of one state and queue."""
        ...

    async def counts(self) -> dict[str, dict[TaskState, int]]:
        """Task counts per queue and state."""
        ...

    async def history(self, *, task_id: str | None = None, limit: int = 100) -> list[HistoryEntry]:
        """Finished attempts, newest first."""
        ...


@runtime_checkable
class QueueAdministration(Protocol):
    """``QueueCapability.ADMINISTRATION``: dead tasks requeued, held tasks dispatched,
    finished tasks purged."""

    async def requeue(self, task_id: str, *, now: float) -> bool:
        """Put a dead task back in its queue with its attempts reset.

        Returns False if the task is not dead, or if a newer live task holds its unique key.
        """
        ...

    async def dispatch(
        self, queue: str, *, name: str | None = None, limit: int | None = None, now: float
    ) -> int:
        """Release held tasks of ``queue`` (optionally of one name, at most ``limit``)."""
        ...

    async def purge(
        self,
        *,
        now: float,
        history_before: float | None = None,
        dead_before: float | None = None,
    ) -> int:
        """Delete what retention no longer keeps; return how many tasks were deleted.

        Succeeded tasks whose results expired by ``now`` (never one whose unique window is
        still open, nor a member of a group whose callback has not run), dead and cancelled
        tasks that finished before ``dead_before``, and history entries that finished before
        ``history_before``. Running it from several workers at once is safe.
        """
        ...


@runtime_checkable
class FinishAndClaim(Protocol):
    """``QueueCapability.FINISH_AND_CLAIM``: record outcomes and refill the freed slots."""

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
        """``finish(outcomes)``, then ``claim(...)``, in one round trip.

        The claim never takes a task of ``outcomes`` or ``exclude``. Workers use it when it
        is declared: a flush of outcomes then refills the slots it frees.
        """
        ...


@runtime_checkable
class ClaimById(Protocol):
    """``QueueCapability.CLAIM_BY_ID``: a store behind a message broker.

    The broker decides which task a worker takes next (it delivers a message naming the
    task); the store decides whether it may (the task is still due, and nobody else holds
    it) and keeps its state. ``overdue`` finds what the broker should have delivered and
    did not (a publish lost between the two systems), so that it can be published again.
    """

    async def claim_ids(
        self, ids: Sequence[str], *, worker: str, lease: float, now: float
    ) -> list[TaskRecord]:
        """Lease to ``worker`` for ``lease`` seconds those of ``ids`` that a claim could
        take at ``now``, whatever their queue, in the order given.

        Claimable, as for ``claim``: queued with ``run_at <= now``, or running with an
        expired lease (the attempt it made counts). Each claim counts one attempt. A task
        whose expired lease used its last attempt becomes dead, as in ``claim``, and is
        not returned. Every other id (unknown, held, not yet due, under a live lease, or
        finished) is left as it is and not returned; an id given twice is claimed once.
        """
        ...

    async def overdue(
        self, *, before: float, queues: Sequence[str] | None = None, limit: int = 100
    ) -> list[TaskRecord]:
        """The tasks a claim could take at ``before``, changing nothing: queued with
        ``run_at <= before`` and running with ``lease_until <= before``, of ``queues``
        (None: every queue), at most ``limit``, the longest overdue first."""
        ...


@runtime_checkable
class TaskCancellation(Protocol):
    """``QueueCapability.CANCEL``: a task cancelled before it runs, or stopped while it runs.

    A task that has not started (held, queued, delayed, waiting for a retry) is cancelled at
    once: it becomes ``CANCELLED`` and is never claimed. A running one cannot be stopped by
    the store: the cancel is recorded on it (``TaskRecord.cancel_requested``), and the worker
    that holds its lease asks ``cancel_requested`` at each heartbeat and stops it.

    What the store does with a task whose cancel was requested, so that it never runs again
    whatever its worker does:

    - ``finish``: any outcome but ``SUCCEEDED`` (a retry, a release, an interruption, a
      failure) is recorded as ``OutcomeKind.CANCELLED`` (state ``CANCELLED``, the attempt
      counted, a history row saying ``"cancelled"``); a ``SUCCEEDED`` one is recorded as a
      success without its follow-ups (the chain ends there).
    - ``claim`` and ``claim_ids``: once its lease expired (its worker died), it becomes
      ``CANCELLED`` instead of being claimed again or dying, as a task on its last attempt
      dies (it is never returned).

    A cancelled task settles its group as a dead member does (the callback gets ``null``
    for it), releases its unique key as a finished task does (its ``unique_until`` window
    still applies), and is purged with the dead ones (``purge(dead_before=)``).
    """

    async def cancel(self, task_id: str, *, now: float) -> CancelResult:
        """Cancel the task ``task_id``, atomically.

        Held, queued, or running with a lease expired by ``now``: ``CANCELLED`` now, its
        lease released, ``finished_at=now``, its group told (its callback may be enqueued),
        no history row (no attempt ran). Running under a live lease: ``cancel_requested``
        set (again, idempotently), nothing else changed. Finished or unknown: unchanged.

        Returns:
            What it did (:class:`tasker.queue.CancelResult`). A cancelled call cancelled
            the task or left it as it was.
        """
        ...

    async def cancel_requested(self, worker: str, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` that ``worker`` holds (running under its lease) and whose cancel
        was requested; changes nothing. Cheap: a worker calls it at every heartbeat."""
        ...


@runtime_checkable
class TaskProgress(Protocol):
    """``QueueCapability.PROGRESS``: a running task's progress, stored for ``get``.

    The record's ``progress`` (:class:`tasker.queue.Progress`) is cleared by every claim
    (each attempt starts without one; a claim of an expired lease too) and kept by every
    outcome: a task waiting for its retry shows how far its last attempt got, as it shows
    that attempt's error, and a finished task how far it got in the end.
    """

    async def report_progress(
        self, worker: str, task_id: str, value: float, text: str, *, now: float
    ) -> bool:
        """Store ``value`` (0..1) and ``text`` as the progress of ``task_id``, with
        ``updated_at=now``, if ``worker`` holds it (running under its lease, as for
        ``heartbeat``: an expired lease not yet taken by another worker still counts).

        Returns:
            True if it was stored; False (nothing changed) for a task ``worker`` does not
            hold, a finished one or an unknown id. A cancelled call stored it or not.
        """
        ...


@runtime_checkable
class BoundedEnqueue(Protocol):
    """``QueueCapability.BOUNDED_QUEUES``: an enqueue that keeps queues within a bound.

    A queue's *depth* is its tasks waiting to run: held and queued (delayed ones and those
    waiting for a retry included), not running nor finished. The check and the insert are
    one atomic step, so that producers enqueueing at once never take a queue past its
    bound together.
    """

    async def enqueue_bounded(
        self,
        tasks: Sequence[NewTask],
        *,
        max_depth: Mapping[str, int],
        group: GroupSpec | None = None,
        now: float,
    ) -> list[EnqueueResult]:
        """As ``enqueue``, unless a queue named in ``max_depth`` would hold more than its
        bound: then nothing is stored and :class:`tasker.queue.QueueFullError` is raised
        (the batch is all or nothing). Queues not named are not bounded.

        Only the tasks the call would store count: one deduplicated (a stored id, a live
        unique key) adds nothing and is never refused. A group's callback is not counted
        (it is enqueued later, by the outcome of the group's last member, unbounded, as
        are a chain's later steps).

        Raises:
            QueueFullError: the first queue (by name) that would exceed its bound, with
                its depth (counted up to the bound) and the bound. A cancelled call stored
                all of the tasks or none.
        """
        ...


@runtime_checkable
class TransactionalEnqueue(Protocol):
    """``QueueCapability.TRANSACTIONAL_ENQUEUE``: enqueue on the caller's own connection."""

    async def enqueue_within(
        self,
        connection: Any,
        tasks: Sequence[NewTask],
        *,
        group: GroupSpec | None = None,
        now: float,
    ) -> list[EnqueueResult]:
        """As ``enqueue``, inside the transaction open on ``connection``: the tasks exist
        only if that transaction commits.

        Raises:
            ValueError: if ``connection`` is not inside a transaction.
        """
        ...


@runtime_checkable
class WorkerRegistry(Protocol):
    """``QueueCapability.WORKERS``: which workers run, busy or idle (for status displays).

    Nothing depends on it for correctness (leases do that): a worker's calls are best
    effort, and a failed one is retried at its next heartbeat. A cancelled call leaves the
    previous entry, or none.
    """

    async def worker_seen(self, worker: WorkerInfo) -> None:
        """Insert or replace the entry of ``worker.id``."""
        ...

    async def worker_gone(self, worker_id: str) -> None:
        """Remove the entry of ``worker_id`` (a no-op if there is none)."""
        ...

    async def workers(self, *, now: float) -> list[WorkerInfo]:
        """The entries whose ``expires_at`` is after ``now``, by id (expired ones may be
        deleted on the way)."""
        ...
