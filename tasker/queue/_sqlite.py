"""The embedded queue backend: one SQLite file, shared by the worker processes of a machine.

Every call becomes one operation in a batch (``tasker._sqlite_batch``): concurrent calls of
this process are queued and run together in one worker thread, inside one transaction (a
savepoint per operation, so one failing call does not undo the others). A batch that writes
begins ``IMMEDIATE``, taking SQLite's write lock up front, which serialises claims across
processes: a task is leased to one worker. WAL mode lets readers run beside the writer.

Wake-ups: in this process an enqueue sets an event at once; other processes notice new
commits through ``PRAGMA data_version``, checked every 20 ms while a worker is idle.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

from .._sqlite_batch import BatchedConnection, open_database
from .._state_dir import default_state_dir
from ..abc import QueueCapability
from ._machine_clock import boot_id, boot_seconds, read_anchor, shift, stalled, translate
from ._queue import UnstorableRecordError
from ._records import (
    EnqueueResult,
    GroupSpec,
    HistoryEntry,
    NewTask,
    Outcome,
    OutcomeKind,
    TaskRecord,
    TaskState,
)
from ._rows import (
    COLUMNS,
    LIVE_STATES,
    callback_from_json,
    callback_to_json,
    group_payload,
    record_from_row,
)

__all__ = ["SQLiteQueueBackend", "default_queue_path"]

_SCHEMA = [
    """create table if not exists tasks (
        id text primary key,
        name text not null,
        queue text not null,
        payload blob not null,
        priority integer not null,
        run_at real not null,
        state text not null,
        attempts integer not null default 0,
        max_attempts integer not null,
        timeout real,
        unique_key text,
        unique_until real,
        created_at real not null,
        lease_owner text,
        lease_until real,
        result blob,
        result_expires real,
        last_error text,
        traceback text,
        finished_at real,
        chain blob,
        group_id text,
        group_index integer
    )""",
    "create index if not exists tasks_due on tasks (state, queue, priority desc, run_at)",
    "create index if not exists tasks_lease on tasks (state, lease_until)",
    "create index if not exists tasks_unique on tasks (unique_key) where unique_key is not null",
    # The database, not only this code, admits one live task per unique key.
    """create unique index if not exists tasks_unique_live on tasks (unique_key)
        where unique_key is not null and state in ('held', 'queued', 'running')""",
    "create index if not exists tasks_group on tasks (group_id) where group_id is not null",
    """create table if not exists task_groups (
        id text primary key, size integer not null, callback text)""",
    """create table if not exists task_history (
        task_id text not null, name text not null, queue text not null, worker text not null,
        attempt integer not null, started_at real not null, finished_at real not null,
        outcome text not null, error text)""",
    "create index if not exists task_history_task on task_history (task_id)",
    "create index if not exists task_history_time on task_history (finished_at)",
    # The queue's clock (``_machine_clock``): the wall clock at boot-time zero, per boot.
    # ``shifted_through``: leases were moved for a stall of the database up to this time.
    """create table if not exists queue_clock (
        boot_id text not null, anchor real not null, shifted_through real)""",
]

#: Seconds a writer may wait for SQLite's write lock before the wait counts as a stall of
#: the whole database (see :meth:`SQLiteQueueBackend._after_lock`).
_STALL = 1.0

#: Seconds between readings of the stored clock anchor (a re-anchor reaches us within this;
#: claims and heartbeats translate a stale reading meanwhile).
_ANCHOR_REFRESH = 10.0


def _shifted_task(task: NewTask, delta: float) -> NewTask:
    return dataclasses.replace(
        task,
        run_at=task.run_at + delta,
        created_at=task.created_at + delta,
        unique_until=None if task.unique_until is None else task.unique_until + delta,
    )


def _shifted_outcome(outcome: Outcome, delta: float) -> Outcome:
    return dataclasses.replace(
        outcome,
        started_at=outcome.started_at + delta,
        finished_at=outcome.finished_at + delta,
        retry_at=None if outcome.retry_at is None else outcome.retry_at + delta,
        result_expires=None if outcome.result_expires is None else outcome.result_expires + delta,
        follow_ups=tuple(_shifted_task(t, delta) for t in outcome.follow_ups),
    )


def default_queue_path() -> Path:
    """``$TASKER_STATE_DIR/queue.sqlite3``, or ``./.tasker/queue.sqlite3``."""
    return default_state_dir() / "queue.sqlite3"


class SQLiteQueueBackend:
    """Tasks in a SQLite file (WAL): durable across restarts, shared by local processes.

    Declares every capability but ``TRANSACTIONAL_ENQUEUE``.

    Args:
        path: the database file; its directory is created on first use.
    """

    capabilities: frozenset[QueueCapability] = frozenset(QueueCapability) - {
        QueueCapability.TRANSACTIONAL_ENQUEUE
    }

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._db = BatchedConnection(self._open, after_lock=self._after_lock)
        self._work = anyio.Event()
        self._data_version: int | None = None
        self._boot = boot_id()
        self._anchor: float | None = None
        self._anchor_read = -_ANCHOR_REFRESH

    # -- plumbing ------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        connection = open_database(self.path)
        connection.execute("begin immediate")
        try:
            for statement in _SCHEMA:
                connection.execute(statement)
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

    def close(self) -> None:
        """Close the connection (it reopens on the next call)."""
        self._db.close()

    async def aclose(self) -> None:
        """Close the connection and its thread (both come back on the next call)."""
        self.close()
        await anyio.lowlevel.checkpoint()

    # -- operations (run in the worker thread, inside the batch transaction) -------------

    @staticmethod
    def _insert(db: sqlite3.Connection, task: NewTask) -> None:
        db.execute(
            "insert into tasks (id, name, queue, payload, priority, run_at, state,"
            " max_attempts, timeout, unique_key, unique_until, created_at, chain, group_id,"
            " group_index) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                task.id,
                task.name,
                task.queue,
                task.payload,
                task.priority,
                task.run_at,
                "held" if task.held else "queued",
                task.max_attempts,
                task.timeout,
                task.unique_key,
                task.unique_until,
                task.created_at,
                task.chain,
                task.group_id,
                task.group_index,
            ),
        )

    @classmethod
    def _enqueue(
        cls,
        db: sqlite3.Connection,
        arg: tuple[Sequence[NewTask], GroupSpec | None, float, float | None],
    ) -> list[EnqueueResult]:
        tasks, group, now, anchor = arg
        delta = shift(db, anchor)
        if delta:  # read on a stale timeline: move the tasks' times onto the current one
            now += delta
            tasks = [_shifted_task(t, delta) for t in tasks]
            if group is not None and group.callback is not None:
                group = dataclasses.replace(group, callback=_shifted_task(group.callback, delta))
        results = []
        for task in tasks:
            if task.unique_key is not None:
                row = db.execute(
                    "select id, state, unique_until from tasks where unique_key = ?"
                    " order by (state in ('held', 'queued', 'running')) desc, created_at desc"
                    " limit 1",
                    (task.unique_key,),
                ).fetchone()
                if row is not None and (
                    row[1] in LIVE_STATES or (row[2] is not None and now < row[2])
                ):
                    results.append(EnqueueResult(id=row[0], deduplicated=True))
                    continue
            cls._insert(db, task)
            results.append(EnqueueResult(id=task.id))
        if group is not None:
            db.execute(
                "insert into task_groups (id, size, callback) values (?, ?, ?)",
                (
                    group.id,
                    group.size,
                    None if group.callback is None else callback_to_json(group.callback),
                ),
            )
        return results

    @staticmethod
    def _claim(
        db: sqlite3.Connection,
        arg: tuple[Sequence[str], int, str, float, float, Sequence[str], float | None],
    ) -> list[TaskRecord]:
        queues, limit, worker, lease, now, exclude, anchor = arg
        now = translate(db, now, anchor)
        marks = ",".join("?" * len(queues))
        skip = f" and id not in ({','.join('?' * len(exclude))})" if exclude else ""
        # Expired leases on their last attempt die (all of them: they must not use up the
        # limit); then the others are claimed again, oldest lease first.
        dying = db.execute(
            f"select id from tasks where state = 'running' and lease_until <= ?"  # noqa: S608 - placeholders only
            f" and attempts >= max_attempts and queue in ({marks}){skip} order by id",
            (now, *queues, *exclude),
        ).fetchall()
        for (task_id,) in dying:
            db.execute(
                "update tasks set state = 'dead', lease_owner = null, lease_until = null,"
                " last_error = 'lease expired (the worker stopped responding)',"
                " finished_at = ? where id = ?",
                (now, task_id),
            )
            SQLiteQueueBackend._group_member_done(db, task_id, now)
        ids = [
            row[0]
            for row in db.execute(
                f"select id from tasks where state = 'running' and lease_until <= ?"  # noqa: S608
                f" and attempts < max_attempts and queue in ({marks}){skip}"
                " order by lease_until limit ?",
                (now, *queues, *exclude, limit),
            ).fetchall()
        ]
        if len(ids) < limit:
            rows = db.execute(
                f"select id from tasks where state = 'queued' and queue in ({marks})"  # noqa: S608
                f" and run_at <= ?{skip} order by priority desc, run_at, created_at limit ?",
                (*queues, now, *exclude, limit - len(ids)),
            ).fetchall()
            ids.extend(row[0] for row in rows)
        if not ids:
            return []
        id_marks = ",".join("?" * len(ids))
        db.execute(
            f"update tasks set state = 'running', attempts = attempts + 1, lease_owner = ?,"  # noqa: S608
            f" lease_until = ? where id in ({id_marks})",
            (worker, now + lease, *ids),
        )
        rows = db.execute(
            f"select {COLUMNS} from tasks where id in ({id_marks})",  # noqa: S608
            ids,
        ).fetchall()
        order = {task_id: index for index, task_id in enumerate(ids)}
        return sorted((record_from_row(row) for row in rows), key=lambda r: order[r.id])

    @staticmethod
    def _heartbeat(
        db: sqlite3.Connection, arg: tuple[str, Sequence[str], float, float, float | None]
    ) -> set[str]:
        worker, ids, lease, now, anchor = arg
        if not ids:
            return set()
        now = translate(db, now, anchor)
        marks = ",".join("?" * len(ids))
        db.execute(
            f"update tasks set lease_until = ? where state = 'running' and lease_owner = ?"  # noqa: S608
            f" and id in ({marks})",
            (now + lease, worker, *ids),
        )
        rows = db.execute(
            f"select id from tasks where state = 'running' and lease_owner = ?"  # noqa: S608
            f" and id in ({marks})",
            (worker, *ids),
        ).fetchall()
        return {row[0] for row in rows}

    @classmethod
    def _finish(
        cls, db: sqlite3.Connection, arg: tuple[Sequence[Outcome], float, float | None]
    ) -> bool:
        outcomes, now, anchor = arg
        delta = shift(db, anchor)
        if delta:  # read on a stale timeline: move the outcome's times onto the current one
            now += delta
            outcomes = [_shifted_outcome(o, delta) for o in outcomes]
        requeued = False
        for outcome in outcomes:
            row = db.execute(
                "select name, queue, attempts from tasks where id = ? and state = 'running'"
                " and lease_owner = ?",
                (outcome.id, outcome.worker),
            ).fetchone()
            if row is None:
                continue  # the lease was lost: a newer attempt owns the task
            name, queue, attempts = row
            kind = outcome.kind
            if kind is not OutcomeKind.RELEASED:
                db.execute(
                    "insert into task_history (task_id, name, queue, worker, attempt, started_at,"
                    " finished_at, outcome, error) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        outcome.id,
                        name,
                        queue,
                        outcome.worker,
                        attempts,
                        outcome.started_at,
                        outcome.finished_at,
                        kind.value,
                        outcome.error,
                    ),
                )
            if kind is OutcomeKind.SUCCEEDED:
                db.execute(
                    "update tasks set state = 'succeeded', lease_owner = null, lease_until = null,"
                    " result = ?, result_expires = ?, last_error = null, traceback = null,"
                    " finished_at = ? where id = ?",
                    (outcome.result, outcome.result_expires, outcome.finished_at, outcome.id),
                )
                for follow_up in outcome.follow_ups:
                    cls._insert(db, follow_up)
                    requeued = True
                requeued |= cls._group_member_done(db, outcome.id, now)
            elif kind is OutcomeKind.DEAD:
                db.execute(
                    "update tasks set state = 'dead', lease_owner = null, lease_until = null,"
                    " last_error = ?, traceback = ?, finished_at = ? where id = ?",
                    (outcome.error, outcome.traceback, outcome.finished_at, outcome.id),
                )
                requeued |= cls._group_member_done(db, outcome.id, now)
            elif kind is OutcomeKind.RETRY:
                db.execute(
                    "update tasks set state = 'queued', lease_owner = null, lease_until = null,"
                    " run_at = ?, last_error = ?, traceback = ? where id = ?",
                    (outcome.retry_at or now, outcome.error, outcome.traceback, outcome.id),
                )
                requeued = True
            else:
                db.execute(
                    "update tasks set state = 'queued', lease_owner = null, lease_until = null,"
                    " attempts = attempts - 1 where id = ?",
                    (outcome.id,),
                )
                requeued = True
        return requeued

    @classmethod
    def _group_member_done(cls, db: sqlite3.Connection, task_id: str, now: float) -> bool:
        row = db.execute("select group_id from tasks where id = ?", (task_id,)).fetchone()
        if row is None or row[0] is None:
            return False
        group_id = row[0]
        left = db.execute(
            "select count(*) from tasks where group_id = ? and state not in ('succeeded', 'dead')",
            (group_id,),
        ).fetchone()[0]
        if left:
            return False
        group = db.execute(
            "delete from task_groups where id = ? returning callback", (group_id,)
        ).fetchone()
        if group is None or group[0] is None:
            return False  # already fired, or no callback
        results = db.execute(
            "select case when state = 'succeeded' then result end from tasks"
            " where group_id = ? order by group_index",
            (group_id,),
        ).fetchall()
        payload = group_payload([None if r[0] is None else bytes(r[0]) for r in results])
        cls._insert(db, callback_from_json(group[0], payload, now))
        return True

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
            self._enqueue, (tasks, group, now, self._anchor)
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
            self._claim, (list(queues), limit, worker, lease, now, list(exclude), self._anchor)
        )
        return result

    async def heartbeat(
        self, worker: str, ids: Sequence[str], *, lease: float, now: float
    ) -> set[str]:
        """Extend ``worker``'s leases."""
        result: set[str] = await self._call(
            self._heartbeat, (worker, list(ids), lease, now, self._anchor)
        )
        return result

    async def finish(self, outcomes: Sequence[Outcome], *, now: float) -> None:
        """Record outcomes, follow-ups and group callbacks in one transaction."""
        try:
            notify = await self._call(self._finish, (list(outcomes), now, self._anchor))
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
        anchor = self._anchor

        def both(db: sqlite3.Connection, _: object) -> tuple[bool, list[TaskRecord]]:
            notify = self._finish(db, (list(outcomes), now, anchor))
            claimed = self._claim(db, (list(queues), limit, worker, lease, now, skip, anchor))
            return notify, claimed

        try:
            notify, claimed = await self._call(both)
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
                "select task_id, name, queue, worker, attempt, started_at, finished_at, outcome,"
                " error from task_history where (? is null or task_id = ?)"
                " order by finished_at desc, rowid desc limit ?",
                (task_id, task_id, limit),
            ).fetchall()
            return [
                HistoryEntry(
                    task_id=r[0],
                    name=r[1],
                    queue=r[2],
                    worker=r[3],
                    attempt=r[4],
                    started_at=r[5],
                    finished_at=r[6],
                    outcome=r[7],
                    error=r[8],
                )
                for r in rows
            ]

        result: list[HistoryEntry] = await self._call(read, write=False)
        return result

    async def next_run_at(self, queues: Sequence[str]) -> float | None:
        """Earliest run_at of a queued task, or lease expiry of a running one."""
        names = list(queues)
        marks = ",".join("?" * len(names))

        def read(db: sqlite3.Connection, _: object) -> float | None:
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
        due = await self.next_run_at(queues)
        if due is not None:
            timeout = min(timeout, max(0.0, due - await self.time()))
        with anyio.move_on_after(timeout):
            if self._data_version is None:
                self._data_version = await self._call(version, write=False)
            while True:
                with anyio.move_on_after(0.02):
                    await event.wait()
                    return
                current = await self._call(version, write=False)
                if current != self._data_version:
                    self._data_version = current
                    return

    async def purge(self, *, now: float, history_before: float | None = None) -> int:
        """Delete succeeded tasks whose results expired, and old history."""

        def write(db: sqlite3.Connection, _: object) -> int:
            cursor = db.execute(
                "delete from tasks where state = 'succeeded' and result_expires <= ?", (now,)
            )
            if history_before is not None:
                db.execute("delete from task_history where finished_at < ?", (history_before,))
            return cursor.rowcount

        count: int = await self._call(write)
        return count

    def __repr__(self) -> str:
        return f"SQLiteQueueBackend({str(self.path)!r})"
