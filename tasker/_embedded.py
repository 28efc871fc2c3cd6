"""The embedded Scheduler backend: lock files and a SQLite state file, for one machine.

Locks are ``flock(2)`` locks on one file per schedule name: they exclude other processes and
other tasks of the same process (each locker opens its own file description), cost two
system calls, and vanish when the process dies, so a replica killed with SIGKILL never leaves
a stale lock behind. State lives in SQLite (WAL) through the standard library, in a worker
thread so the event loop never waits on the disk.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Generic, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from ._schedule_state import ScheduleState, check_name

__all__ = ["DEFAULT_STATE_DIR", "FileLockerFactory", "SQLiteStateRepository", "default_state_dir"]

DEFAULT_STATE_DIR = ".tasker"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
T = TypeVar("T")
R = TypeVar("R")


def default_state_dir() -> Path:
    """``$TASKER_STATE_DIR`` if set, else ``./.tasker`` (relative to the working directory)."""
    return Path(os.environ.get("TASKER_STATE_DIR") or DEFAULT_STATE_DIR)


def _lock_file_name(name: str) -> str:
    # Readable prefix for humans, hash for uniqueness (names may contain any character).
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{_SAFE.sub('_', name)[:40]}-{digest}.lock"


class _FileLocker:
    __slots__ = ("_fd", "_name", "_path")

    #: A flock is held until this process unlocks or dies: the Scheduler need not watch it.
    can_be_lost = False

    def __init__(self, path: Path, name: str) -> None:
        self._path = path
        self._name = name
        self._fd: int | None = None

    async def try_lock(self) -> bool:
        await anyio.lowlevel.checkpoint()
        if self._fd is not None:
            return False
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:  # first use: create the directory
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._fd = fd
        return True

    async def wait_lost(self) -> None:
        await anyio.sleep_forever()  # held until this process unlocks or dies

    async def unlock(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor releases the flock

    def __repr__(self) -> str:
        return f"<FileLocker {self._name!r} held={self._fd is not None}>"


class FileLockerFactory:
    """Cross-process locks on one machine: one ``flock``-ed file per name in ``directory``.

    Args:
        directory: where the lock files live (created on first use).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def locker(self, name: str) -> _FileLocker:
        """Return a locker for ``name``."""
        check_name(name, "FileLockerFactory.locker")
        return _FileLocker(self.directory / "locks" / _lock_file_name(name), name)

    def __repr__(self) -> str:
        return f"FileLockerFactory({str(self.directory)!r})"


_SCHEMA = """
create table if not exists schedule_state (
    name text primary key,
    last_slot text not null,
    last_started text,
    last_finished text,
    last_error text,
    run_count integer not null default 0,
    failure_count integer not null default 0,
    next_due text
)
"""


def _to_text(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


def _from_text(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


class _Request(Generic[T, R]):
    __slots__ = ("arg", "done", "error", "func", "result", "write")

    def __init__(self, func: Callable[[T], R], arg: T, write: bool) -> None:
        self.func = func
        self.arg = arg
        self.write = write
        self.result: R | None = None
        self.error: Exception | None = None
        self.done = anyio.Event()


def _run_batch(connection: sqlite3.Connection, batch: list[_Request[object, object]]) -> None:
    # One transaction for the whole batch (a savepoint per request, so one failing request
    # does not undo the others): a hundred saves cost one commit, not a hundred.
    # Reads alone take no write lock (WAL readers never wait for another process's writer).
    connection.execute("begin immediate" if any(r.write for r in batch) else "begin")
    try:
        for request in batch:
            connection.execute("savepoint request")
            try:
                request.result = request.func(request.arg)
            except Exception as exc:
                connection.execute("rollback to request")
                request.error = exc
            connection.execute("release request")
        connection.execute("commit")
    except BaseException:
        if connection.in_transaction:
            connection.execute("rollback")
        raise


class SQLiteStateRepository:
    """Schedule states in a SQLite file, durable across restarts and shared by processes.

    Args:
        path: the database file (its directory is created on first use).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._connection: sqlite3.Connection | None = None
        # Operations are queued and run in batches, one batch at a time, on one connection
        # in a worker thread: a hundred schedules due at the same second cost one thread hop
        # instead of a hundred, and writers of this process never meet SQLite's busy handler
        # (which sleeps up to 100 ms). Other processes coordinate through SQLite's locking.
        self._pending: list[_Request[object, object]] = []
        self._draining = False

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            connection.execute("pragma journal_mode=wal")
            connection.execute("pragma synchronous=normal")
            connection.execute(_SCHEMA)
            self._connection = connection
        return self._connection

    def close(self) -> None:
        """Close the database connection (it reopens on the next use)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    async def _call(self, func: Callable[[T], R], arg: T, *, write: bool) -> R:
        request: _Request[T, R] = _Request(func, arg, write)
        self._pending.append(request)  # type: ignore[arg-type]
        if self._draining:
            await request.done.wait()
        else:
            self._draining = True
            try:
                # Shielded: the other callers' requests ride on this drain.
                with anyio.CancelScope(shield=True):
                    # One turn of the event loop first: the requests of the other schedules
                    # due at the same moment join this batch.
                    await anyio.lowlevel.checkpoint()
                    while self._pending:
                        batch, self._pending = self._pending, []
                        try:
                            await anyio.to_thread.run_sync(self._run_batch, batch)
                        except Exception as exc:  # the database itself failed
                            for item in batch:
                                if item.error is None:
                                    item.error = exc
                        for item in batch:
                            item.done.set()
            finally:
                self._draining = False
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[return-value]

    def _run_batch(self, batch: list[_Request[object, object]]) -> None:
        _run_batch(self._connect(), batch)

    def _get(self, name: str) -> ScheduleState | None:
        row = (
            self._connect()
            .execute(
                "select name, last_slot, last_started, last_finished, last_error, run_count,"
                " failure_count, next_due from schedule_state where name = ?",
                (name,),
            )
            .fetchone()
        )
        if row is None:
            return None
        last_slot = _from_text(row[1])
        assert last_slot is not None  # the column is not null
        return ScheduleState(
            name=row[0],
            last_slot=last_slot,
            last_started=_from_text(row[2]),
            last_finished=_from_text(row[3]),
            last_error=row[4],
            run_count=row[5],
            failure_count=row[6],
            next_due=_from_text(row[7]),
        )

    def _save(self, state: ScheduleState) -> None:
        self._connect().execute(
            "insert into schedule_state (name, last_slot, last_started, last_finished,"
            " last_error, run_count, failure_count, next_due) values (?, ?, ?, ?, ?, ?, ?, ?)"
            " on conflict (name) do update set last_slot = excluded.last_slot,"
            " last_started = excluded.last_started, last_finished = excluded.last_finished,"
            " last_error = excluded.last_error, run_count = excluded.run_count,"
            " failure_count = excluded.failure_count, next_due = excluded.next_due",
            (
                state.name,
                _to_text(state.last_slot),
                _to_text(state.last_started),
                _to_text(state.last_finished),
                state.last_error,
                state.run_count,
                state.failure_count,
                _to_text(state.next_due),
            ),
        )

    async def now(self) -> datetime | None:
        """None: one machine, one clock."""
        return None

    async def get(self, name: str) -> ScheduleState | None:
        """Read the state of ``name`` (in a worker thread)."""
        return await self._call(self._get, name, write=False)

    async def save(self, state: ScheduleState) -> None:
        """Write ``state`` in a worker thread; once this returns it survives a crash."""
        await self._call(self._save, state, write=True)

    def __repr__(self) -> str:
        return f"SQLiteStateRepository({str(self.path)!r})"
