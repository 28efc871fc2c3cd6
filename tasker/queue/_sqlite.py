"""The embedded queue backend: one SQLite file, shared by the worker processes of a machine.

Every call becomes one operation in a batch (``tasker._sqlite_batch``): concurrent calls of
this process are queued and run together in one worker thread, inside one transaction (a
savepoint per operation, so one failing call does not undo the others). A batch that writes
begins ``IMMEDIATE``, taking SQLite's write lock up front, which serialises claims across
processes: a task is leased to one worker. WAL mode lets readers run beside the writer.

Wake-ups: a commit that may make work due pokes the Unix datagram socket of every process
waiting on the file (``tasker.queue._sqlite_wake``), this one's included, so a worker
elsewhere starts within about a millisecond; ``PRAGMA data_version``, checked every 100 ms
while a worker waits (every 20 ms where sockets cannot work), is the fallback.
"""

from __future__ import annotations

import math
import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio

from .._sqlite_batch import BatchedConnection, open_database
from .._state_dir import default_state_dir
from ..abc import QueueCapability
from . import _sqlite_limits as limits
from . import _sqlite_ops as ops
from ._errors import UnstorableRecordError
from ._machine_clock import boot_id, boot_seconds, read_anchor, stalled
from ._records import (
    CancelResult,
    CancelStatus,
    EnqueueResult,
    GroupSpec,
    HistoryEntry,
    NewTask,
    Outcome,
    TaskRecord,
    TaskState,
)
from ._rows import (
    COLUMNS,
    HISTORY_COLUMNS,
    history_from_row,
    record_from_row,
)
from ._sqlite_wake import WakeChannel
from ._sqlite_workers import SQLiteWorkerRegistry

__all__ = ["SQLiteQueueBackend", "default_queue_path"]

#: Seconds a writer may wait for SQLite's write lock before the wait counts as a stall of
#: the whole database (see :meth:`SQLiteQueueBackend._after_lock`).
_STALL = 1.0

#: Seconds between readings of the stored clock anchor (a re-anchor reaches us within this;
#: claims and heartbeats translate a stale reading meanwhile).
_ANCHOR_REFRESH = 10.0

#: Seconds between ``PRAGMA data_version`` checks while a wake-up socket waits: only a
#: fallback (a process whose pokes cannot reach this one, another user's, say).
_FALLBACK_POLL = 0.1

# anyio 4.7 renamed it; 4.4 (the oldest tasker supports) has the old name.
_wait_readable: Any = getattr(anyio, "wait_readable", None) or anyio.wait_socket_readable


def default_queue_path() -> Path:
    """``$TASKER_STATE_DIR/queue.sqlite3``, or ``./.tasker/queue.sqlite3``."""
    return default_state_dir() / "queue.sqlite3"


class SQLiteQueueBackend(SQLiteWorkerRegistry):
    """Tasks in a SQLite file (WAL): durable across restarts, shared by local processes.

    Declares every capability but ``TRANSACTIONAL_ENQUEUE`` and ``HEADERS``. A file made by
    an earlier version gets the columns added since when it is opened.

    Args:
        path: the database file; its directory is created on first use.
    """

    capabilities: frozenset[QueueCapability] = frozenset(QueueCapability) - {
        QueueCapability.TRANSACTIONAL_ENQUEUE,
        QueueCapability.HEADERS,  # a broker's: they are not stored
    }

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._db = BatchedConnection(self._open, after_lock=self._after_lock)
        self._work = anyio.Event()
        self._wake = WakeChannel(self.path)
        self._data_version: int | None = None
        self._boot = boot_id()
        self._anchor: float | None = None
        self._anchor_read = -_ANCHOR_REFRESH

    # -- plumbing ------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        connection = open_database(self.path)
        connection.execute("begin immediate")
        try:
            for statement in ops.SCHEMA:
                connection.execute(statement)
            ops.migrate(connection)  # a file made by an earlier version
            connection.execute("commit")
        except BaseException:
            connection.execute("rollback")
            raise
        return connection

    async def _call(
        self, func: Callable[[sqlite3.Connection, Any], Any], arg: Any = None, *, write: bool = True
    ) -> Any:
        return await self._db.call(func, arg, write=write)

    @staticmethod
    def _after_lock(db: sqlite3.Connection, waited: float) -> None:
        """A long wait for the write lock: the time the database was held does not count
        against leases.

        Another process held the lock (paused while holding it, or stuck on a slow disk):
        no worker could renew a lease meanwhile, so leases that ran out during the wait say
        nothing about their workers. They are moved on by the stall's length, once for all
        processes (``shifted_through``), and their owners renew them in their next batch.
        """
        stalled(waited if waited >= _STALL else 0.0)
        if waited < _STALL:
            return
        row = db.execute("select anchor, shifted_through from queue_clock").fetchone()
        if row is None:
            return
        now = float(row[0]) + boot_seconds()
        since = max(now - waited, float(row[1]) if row[1] is not None else -math.inf)
        if now <= since:
            return
        db.execute(
            "update tasks set lease_until = lease_until + ? where state = 'running'"
            " and lease_until > ?",
            (now - since, since),
        )
        db.execute("update queue_clock set shifted_through = ?", (now,))

    def _notify(self) -> None:
        self._work.set()
        self._work = anyio.Event()
        self._wake.poke()  # the other processes waiting on this file (and this one's socket)

    def close(self) -> None:
        """Close the connection and the wake-up socket (both come back on the next call)."""
        self._db.close()
        self._wake.close()

    async def aclose(self) -> None:
        """Close the connection and its thread (both come back on the next call)."""
        self.close()
        await anyio.lowlevel.checkpoint()

    # -- operations (run in the worker thread, inside the batch transaction) -------------

    # -- protocol ------------------------------------------------------------------------

    async def time(self) -> float:
        """The machine's clock as the queue keeps it: immune to wall-clock steps.

        See ``tasker.queue._machine_clock``: the wall clock at boot-time zero is stored per
        boot, and every process of the machine advances it by the same boot-time clock.
        """
        # Without a boot id the anchor is this process's own, taken once (see _machine_clock).
        refresh = self._boot is not None and boot_seconds() - self._anchor_read >= _ANCHOR_REFRESH
        if self._anchor is None or refresh:
            self._anchor = await self._call(read_anchor, self._boot)
            self._anchor_read = boot_seconds()
        return self._anchor + boot_seconds()

    async def enqueue(
        self, tasks: Sequence[NewTask], *, group: GroupSpec | None = None, now: float
    ) -> list[EnqueueResult]:
        """Store tasks in one transaction; deduplicate unique keys."""
        results: list[EnqueueResult] = await self._call(
            ops.enqueue, (tasks, group, now, self._anchor)
        )
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
        """:meth:`enqueue` and the depth check in one write transaction: SQLite's write
        lock serialises it with every other process's enqueues and claims, so producers on
        several processes never pass a bound together (``QueueFullError`` stores nothing)."""
        results: list[EnqueueResult] = await self._call(
            ops.enqueue_bounded, (tasks, dict(max_depth), group, now, self._anchor)
        )
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
        """Lease due tasks (expired leases first, never those in ``exclude``) under SQLite's
        write lock."""
        result: list[TaskRecord] = await self._call(
            ops.claim, (list(queues), limit, worker, lease, now, list(exclude), self._anchor)
        )
        return result

    async def claim_ids(
        self, ids: Sequence[str], *, worker: str, lease: float, now: float
    ) -> list[TaskRecord]:
        """Lease those of ``ids`` that are due or whose lease expired, whatever their queue,
        in the order given (one on its last attempt dies), under SQLite's write lock."""
        result: list[TaskRecord] = await self._call(
            ops.claim_ids, (list(ids), worker, lease, now, self._anchor)
        )
        return result

    async def overdue(
        self, *, before: float, queues: Sequence[str] | None = None, limit: int = 100
    ) -> list[TaskRecord]:
        """Queued tasks due and running ones whose lease expired by ``before``, the longest
        overdue first (off the hot path: it reads every queued row of ``queues``)."""
        result: list[TaskRecord] = await self._call(
            ops.overdue,
            (before, None if queues is None else list(queues), limit, self._anchor),
            write=False,
        )
        return result

    async def heartbeat(
        self, worker: str, ids: Sequence[str], *, lease: float, now: float
    ) -> set[str]:
        """Extend ``worker``'s leases."""
        result: set[str] = await self._call(
            ops.heartbeat, (worker, list(ids), lease, now, self._anchor)
        )
        return result

    async def report_progress(
        self, worker: str, task_id: str, value: float, text: str, *, now: float
    ) -> bool:
        """Store the progress of a task ``worker`` holds (one update by primary key)."""
        stored: bool = await self._call(
            ops.report_progress, (worker, task_id, value, text, now, self._anchor)
        )
        return stored

    async def cancel_requested(self, worker: str, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` running under ``worker``'s lease whose cancel was requested (a
        read: it never waits for the write lock)."""
        result: set[str] = await self._call(ops.cancel_requested, (worker, list(ids)), write=False)
        return result

    async def cancel(self, task_id: str, *, now: float) -> CancelResult:
        """Cancel a task in one transaction: at once if it has not started (or its lease
        expired), else request it of its worker."""
        result: CancelResult = await self._call(ops.cancel, (task_id, now, self._anchor))
        if result.status is CancelStatus.CANCELLED:
            self._notify()  # its group's callback may be due now
        return result

    async def finish(self, outcomes: Sequence[Outcome], *, now: float) -> None:
        """Record outcomes, follow-ups and group callbacks in one transaction."""
        try:
            notify = await self._call(ops.finish, (list(outcomes), now, self._anchor))
        except sqlite3.DataError as exc:  # a value too big for SQLite: it fails every time
            raise UnstorableRecordError(f"{type(exc).__name__}: {exc}") from exc
        if notify:
            self._notify()

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
        """:meth:`finish`, then :meth:`claim` (never of ``outcomes`` or ``exclude``), in one
        transaction."""
        skip = list(dict.fromkeys([*exclude, *(o.id for o in outcomes)]))
        arg = (list(outcomes), now, list(queues), limit, worker, lease, skip, self._anchor)
        try:
            notify, claimed = await self._call(ops.finish_and_claim, arg)
        except sqlite3.DataError as exc:  # a value too big for SQLite: it fails every time
            raise UnstorableRecordError(f"{type(exc).__name__}: {exc}") from exc
        if notify:
            self._notify()
        result: list[TaskRecord] = claimed
        return result

    async def get(self, task_id: str) -> TaskRecord | None:
        """Return a task by id."""

        def read(db: sqlite3.Connection, _: object) -> TaskRecord | None:
            row = db.execute(f"select {COLUMNS} from tasks where id = ?", (task_id,)).fetchone()  # noqa: S608
            return None if row is None else record_from_row(row)

        result: TaskRecord | None = await self._call(read, write=False)
        return result

    async def tasks(
        self, *, state: TaskState | None = None, queue: str | None = None, limit: int = 100
    ) -> list[TaskRecord]:
        """List tasks, newest first."""

        def read(db: sqlite3.Connection, _: object) -> list[TaskRecord]:
            rows = db.execute(
                f"select {COLUMNS} from tasks where (? is null or state = ?)"  # noqa: S608
                " and (? is null or queue = ?) order by created_at desc limit ?",
                (
                    None if state is None else state.value,
                    None if state is None else state.value,
                    queue,
                    queue,
                    limit,
                ),
            ).fetchall()
            return [record_from_row(row) for row in rows]

        result: list[TaskRecord] = await self._call(read, write=False)
        return result

    async def requeue(self, task_id: str, *, now: float) -> bool:
        """Give a dead task fresh attempts."""

        def write(db: sqlite3.Connection, _: object) -> bool:
            cursor = db.execute(
                "update tasks set state = 'queued', attempts = 0, run_at = ?, finished_at = null"
                " where id = ? and state = 'dead' and (unique_key is null or not exists ("
                " select 1 from tasks other where other.unique_key = tasks.unique_key"
                " and other.state in ('held', 'queued', 'running')))",
                (now, task_id),
            )
            return cursor.rowcount == 1

        done: bool = await self._call(write)
        if done:
            self._notify()
        return done

    async def dispatch(
        self, queue: str, *, name: str | None = None, limit: int | None = None, now: float
    ) -> int:
        """Release held tasks."""

        def write(db: sqlite3.Connection, _: object) -> int:
            cursor = db.execute(
                "update tasks set state = 'queued', run_at = min(run_at, ?) where id in ("
                " select id from tasks where state = 'held' and queue = ?"
                " and (? is null or name = ?) order by priority desc, created_at limit ?)",
                (now, queue, name, name, -1 if limit is None else limit),
            )
            return cursor.rowcount

        count: int = await self._call(write)
        if count:
            self._notify()
        return count

    async def counts(self) -> dict[str, dict[TaskState, int]]:
        """Counts per queue and state."""

        def read(db: sqlite3.Connection, _: object) -> dict[str, dict[TaskState, int]]:
            result: dict[str, dict[TaskState, int]] = {}
            for queue, state, count in db.execute(
                "select queue, state, count(*) from tasks group by queue, state"
            ):
                result.setdefault(queue, {})[TaskState(state)] = count
            return result

        result: dict[str, dict[TaskState, int]] = await self._call(read, write=False)
        return result

    async def history(self, *, task_id: str | None = None, limit: int = 100) -> list[HistoryEntry]:
        """Attempts, newest first."""

        def read(db: sqlite3.Connection, _: object) -> list[HistoryEntry]:
            rows = db.execute(
                f"select {HISTORY_COLUMNS} from task_history where (? is null or task_id = ?)"  # noqa: S608
                " order by finished_at desc, rowid desc limit ?",
                (task_id, task_id, limit),
            ).fetchall()
            return [history_from_row(row) for row in rows]

        result: list[HistoryEntry] = await self._call(read, write=False)
        return result

    async def next_run_at(self, queues: Sequence[str]) -> float | None:
        """Earliest run_at of a queued task, or lease expiry of a running one; for a task
        with limits, when they let it start (``_sqlite_limits.limited_due``, at the
        backend's ``time()``)."""
        names = list(queues)
        marks = ",".join("?" * len(names))
        now = await self.time()

        def read(db: sqlite3.Connection, _: object) -> float | None:
            if db.execute(limits.ANY_LIMITED).fetchone() is not None:
                limited, _any = limits.limited_due(db, names, now)
                row = db.execute(
                    f"select min(t) from (select min(run_at) as t from tasks"  # noqa: S608
                    f" where state = 'queued' and queue in ({marks}) and rate_count is null"
                    " and concurrency_key is null union all select min(lease_until)"
                    f" from tasks where state = 'running' and queue in ({marks}))",
                    (*names, *names),
                ).fetchone()
                found = [t for t in (row[0] if row else None, limited) if t is not None]
                return min(found, default=None)
            row = db.execute(
                f"select min(t) from (select min(run_at) as t from tasks where state = 'queued'"  # noqa: S608
                f" and queue in ({marks}) union all select min(lease_until) from tasks"
                f" where state = 'running' and queue in ({marks}))",
                (*names, *names),
            ).fetchone()
            return None if row is None else row[0]

        result: float | None = await self._call(read, write=False)
        return result

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Wait for an enqueue here, a commit by another process, the next due time in
        ``queues``, or the timeout."""

        def version(db: sqlite3.Connection, _: object) -> int:
            return int(db.execute("pragma data_version").fetchone()[0])

        event = self._work
        sock, fresh = self._wake.listen()
        if fresh:
            # Bound just now: commits poked before could not reach it; the claim after this
            # sees them.
            await anyio.lowlevel.checkpoint()
            return
        due = await self.next_run_at(queues)
        if due is not None:
            timeout = min(timeout, max(0.0, due - await self.time()))
        with anyio.move_on_after(timeout):
            if self._data_version is None:
                self._data_version = await self._call(version, write=False)
            while True:
                if sock is None:
                    with anyio.move_on_after(0.02):
                        await event.wait()
                        return
                else:
                    # A poke, from this process or another; else the fallback poll.
                    with anyio.move_on_after(_FALLBACK_POLL):
                        await _wait_readable(sock)
                        self._wake.drain()
                        return
                current = await self._call(version, write=False)
                if current != self._data_version:
                    self._data_version = current
                    return

    async def purge(
        self,
        *,
        now: float,
        history_before: float | None = None,
        dead_before: float | None = None,
    ) -> int:
        """Delete what retention no longer keeps (``QueueAdministration.purge``)."""

        def write(db: sqlite3.Connection, _: object) -> int:
            cursor = db.execute(
                "delete from tasks where ((state = 'succeeded' and result_expires <= ?)"
                " or (state in ('dead', 'cancelled') and ? is not null and finished_at < ?))"
                " and (unique_until is null or unique_until <= ?)"
                " and (group_id is null or group_id not in (select id from task_groups))",
                (now, dead_before, dead_before, now),
            )
            if history_before is not None:
                db.execute("delete from task_history where finished_at < ?", (history_before,))
            return cursor.rowcount

        count: int = await self._call(write)
        return count

    def __repr__(self) -> str:
        return f"SQLiteQueueBackend({str(self.path)!r})"
