"""``QueueBackend``: the protocol a task-queue store implements.

Small and batch-shaped so that one SQL round trip can serve many tasks: enqueue, claim and
finish take sequences. Backends must make each call atomic: a claimed task belongs to one
worker until its lease expires; a unique key admits one live task; a chain's next step is
enqueued in the same transaction that records its predecessor's success; a group's callback
is enqueued exactly once, when its last member finishes.

Optional: a backend may also offer ``finish_and_claim(outcomes, *, now, queues, limit,
worker, lease, exclude=()) -> list[TaskRecord]``, the same as ``finish`` then ``claim``
(which never takes a task of ``outcomes`` or ``exclude``) in one round trip. Workers use
it when it is there: a flush of outcomes then refills the slots it frees. The contract
suite checks it when present.

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

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ._records import (
    EnqueueResult,
    GroupSpec,
    HistoryEntry,
    NewTask,
    Outcome,
    TaskRecord,
    TaskState,
)

__all__ = ["QueueBackend"]


@runtime_checkable
class QueueBackend(Protocol):
    """Where tasks live between enqueue and their last attempt."""

    async def time(self) -> float:
        """The backend's clock, in POSIX seconds: what leases and due times are compared to.

        Cheap to call often: a remote backend reads its server's clock now and then and
        advances the reading by the local monotonic clock in between.
        """
        ...

    async def enqueue(
        self, tasks: Sequence[NewTask], *, group: GroupSpec | None = None, now: float
    ) -> list[EnqueueResult]:
        """Store ``tasks`` (and their group) atomically; report deduplicated unique keys.

        A task whose ``unique_key`` matches a task that is held, queued or running, or that
        finished before its ``unique_until``, is not stored: its result names the existing
        task and says ``deduplicated=True``.
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
        """
        ...

    async def get(self, task_id: str) -> TaskRecord | None:
        """Return the task with this id, or None."""
        ...

    async def tasks(
        self, *, state: TaskState | None = None, queue: str | None = None, limit: int = 100
    ) -> list[TaskRecord]:
        """List tasks, newest first, optionally of one state and queue."""
        ...

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

    async def counts(self) -> dict[str, dict[TaskState, int]]:
        """Task counts per queue and state."""
        ...

    async def history(self, *, task_id: str | None = None, limit: int = 100) -> list[HistoryEntry]:
        """Finished attempts, newest first."""
        ...

    async def next_run_at(self, queues: Sequence[str]) -> float | None:
        """The earliest ``run_at`` of a queued task in ``queues`` (to sleep until), or None."""
        ...

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Return when new work may be claimable in ``queues``, or after ``timeout`` seconds."""
        ...

    async def purge(self, *, now: float, history_before: float | None = None) -> int:
        """Delete finished tasks whose results expired (and history older than given)."""
        ...
