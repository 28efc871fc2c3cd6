"""The embedded Scheduler backend: lock files and a SQLite state file, for one machine.

Locks are ``flock(2)`` locks on one file per schedule name: they exclude other processes and
other tasks of the same process (each locker opens its own file description), cost two
system calls, and vanish when the process dies, so a replica killed with SIGKILL never leaves
a stale lock behind. State lives in SQLite (WAL) through the standard library, in a worker
thread so the event loop never waits on the disk (see ``_sqlite_batch``).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

from .._sqlite_batch import BatchedConnection, open_database
from ._state import ScheduleState, check_name

__all__ = ["FileLockerFactory", "SQLiteStateRepository"]

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


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
        # A Scheduler asks for a locker at every attempt; the file name (a hash, a regex,
        # two path joins) is worked out once per name.
        self._paths: dict[str, Path] = {}

    def locker(self, name: str) -> _FileLocker:
        """Return a locker for ``name``."""
        path = self._paths.get(name)
        if path is None:
            check_name(name, "FileLockerFactory.locker")
            path = self._paths[name] = self.directory / "locks" / _lock_file_name(name)
        return _FileLocker(path, name)

    async def aclose(self) -> None:
        """Nothing to release: each lock file is closed when its lock is released."""
        await anyio.lowlevel.checkpoint()

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


class SQLiteStateRepository:
    """Schedule states in a SQLite file, durable across restarts and shared by processes.

    Args:
        path: the database file (its directory is created on first use).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        # A hundred schedules due at the same second cost one thread hop and one commit.
        self._db = BatchedConnection(self._open)

    def _open(self) -> sqlite3.Connection:
        connection = open_database(self.path)
        connection.execute(_SCHEMA)
        return connection

    def close(self) -> None:
        """Close the database connection (it reopens on the next use)."""
        self._db.close()

    async def aclose(self) -> None:
        """Close the database connection and its thread (both come back on the next use)."""
        self.close()
        await anyio.lowlevel.checkpoint()

    @staticmethod
    def _get(connection: sqlite3.Connection, name: str) -> ScheduleState | None:
        row = connection.execute(
            "select name, last_slot, last_started, last_finished, last_error, run_count,"
            " failure_count, next_due from schedule_state where name = ?",
            (name,),
        ).fetchone()
        return None if row is None else SQLiteStateRepository._state(row)

    @staticmethod
    def _all(connection: sqlite3.Connection, _: object) -> list[ScheduleState]:
        rows = connection.execute(
            "select name, last_slot, last_started, last_finished, last_error, run_count,"
            " failure_count, next_due from schedule_state order by name"
        ).fetchall()
        return [SQLiteStateRepository._state(row) for row in rows]

    @staticmethod
    def _state(row: Any) -> ScheduleState:
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

    @staticmethod
    def _save(connection: sqlite3.Connection, state: ScheduleState) -> None:
        connection.execute(
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

    @staticmethod
    def _delete(connection: sqlite3.Connection, name: str) -> None:
        connection.execute("delete from schedule_state where name = ?", (name,))

    async def now(self) -> datetime | None:
        """None: one machine, one clock."""
        return None

    async def get(self, name: str) -> ScheduleState | None:
        """Read the state of ``name`` (in a worker thread)."""
        return await self._db.call(self._get, name, write=False)

    async def all(self) -> list[ScheduleState]:
        """Every stored state, by name (for status displays)."""
        return await self._db.call(self._all, None, write=False)

    async def save(self, state: ScheduleState) -> None:
        """Write ``state`` in a worker thread; once this returns it survives a crash."""
        await self._db.call(self._save, state, write=True)

    async def delete(self, name: str) -> None:
        """Delete the state of ``name`` (a no-op if there is none); once this returns the
        deletion survives a crash."""
        await self._db.call(self._delete, name, write=True)

    def __repr__(self) -> str:
        return f"SQLiteStateRepository({str(self.path)!r})"
