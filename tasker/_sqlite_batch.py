"""One SQLite connection in a worker thread, with calls batched into transactions.

Both embedded stores (the Scheduler's state and the task queue) use it. Calls made by the
tasks of this process are queued; the first caller drains the queue one batch at a time in a
worker thread, each batch in one transaction with a savepoint per call, so one failing call
does not undo the others and a hundred calls cost one thread hop and one commit. A batch of
reads alone begins a plain transaction (WAL readers never wait for a writer); a batch with a
write begins ``IMMEDIATE``, taking SQLite's write lock up front, which serialises writers
across processes. Writers of this process never meet SQLite's busy handler (which sleeps up
to 100 ms); other processes coordinate through SQLite's own locking.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

__all__ = ["BatchedConnection", "open_database"]

R = TypeVar("R")


def open_database(path: Path) -> sqlite3.Connection:
    """Open ``path`` (creating its directory) in WAL mode, autocommit, for any thread."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    connection.execute("pragma journal_mode=wal")
    connection.execute("pragma synchronous=normal")
    return connection


class _Call:
    __slots__ = ("arg", "done", "error", "func", "result", "write")

    def __init__(self, func: Callable[[sqlite3.Connection, Any], Any], arg: Any, write: bool):
        self.func = func
        self.arg = arg
        self.write = write
        self.result: Any = None
        self.error: Exception | None = None
        self.done = anyio.Event()


class BatchedConnection:
    """A lazily opened connection (``connect()`` runs in the worker thread) and its batches.

    ``after_lock(connection, waited)``, if given, runs in each writing batch right after
    SQLite's write lock was taken, with the seconds it took: a store can tell that the
    database was held by another process (one paused while holding the lock, say).
    """

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        *,
        after_lock: Callable[[sqlite3.Connection, float], None] | None = None,
    ) -> None:
        self._open = connect
        self._after_lock = after_lock
        self._connection: sqlite3.Connection | None = None
        self._pending: list[_Call] = []
        self._draining = False

    def connection(self) -> sqlite3.Connection:
        """The connection, opened on first use (call it from the worker thread)."""
        if self._connection is None:
            self._connection = self._open()
        return self._connection

    def close(self) -> None:
        """Close the connection; the next call opens it again."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    async def call(
        self, func: Callable[[sqlite3.Connection, Any], R], arg: Any = None, *, write: bool
    ) -> R:
        """Run ``func(connection, arg)`` in the next batch; return its result or raise.

        On cancellation the batch still runs (it carries other callers' calls); the caller's
        own call may then have happened or not, as with any cancelled database call.
        """
        call = _Call(func, arg, write)
        self._pending.append(call)
        if self._draining:
            await call.done.wait()
        else:
            self._draining = True
            try:
                with anyio.CancelScope(shield=True):  # the batch carries other callers' calls
                    # One turn of the event loop first: what other tasks send in the same
                    # turn (a hundred schedules due together, a worker's claim right after a
                    # completion freed its slot) joins this batch.
                    await anyio.lowlevel.checkpoint()
                    while self._pending:
                        batch, self._pending = self._pending, []
                        try:
                            await anyio.to_thread.run_sync(self._run, batch)
                        except Exception as exc:  # the database itself failed
                            for item in batch:
                                if item.error is None:
                                    item.error = exc
                        for item in batch:
                            item.done.set()
            finally:
                self._draining = False
        if call.error is not None:
            raise call.error
        result: R = call.result
        return result

    def _run(self, batch: list[_Call]) -> None:
        connection = self.connection()
        write = any(c.write for c in batch)
        begun = time.monotonic()
        connection.execute("begin immediate" if write else "begin")
        try:
            if write and self._after_lock is not None:
                self._after_lock(connection, time.monotonic() - begun)
            for call in batch:
                connection.execute("savepoint call")
                try:
                    call.result = call.func(connection, call.arg)
                except Exception as exc:
                    connection.execute("rollback to call")
                    call.error = exc
                connection.execute("release call")
            connection.execute("commit")
        except BaseException:
            if connection.in_transaction:
                connection.execute("rollback")
            raise
