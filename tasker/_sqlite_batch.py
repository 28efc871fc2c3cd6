"""One SQLite connection in a thread of its own, with calls batched into transactions.

Both embedded stores (the Scheduler's state and the task queue) use it. Calls made by the
tasks of this process are queued; one caller at a time (the *drainer*) hands the queue to
the connection's thread one batch at a time, each batch in one transaction with a
savepoint per call, so one failing call does not undo the others and a hundred calls cost
one thread hop and one commit. A batch of reads alone begins a plain transaction (WAL
readers never wait for a writer); a batch with a write begins ``IMMEDIATE``, taking
SQLite's write lock up front, which serialises writers across processes. Writers of this
process never meet SQLite's busy handler (which sleeps up to 100 ms); other processes
coordinate through SQLite's own locking.

Why a thread of its own, and a daemon one: a call can wait a long time for the write lock
(another process paused while holding it). Its caller must still be able to give up (a
worker stopping within its grace period), and the process must still be able to exit. So
waiting is cancellable: a cancelled caller leaves its batch to the thread, which answers
the batch's other callers when it is done; a call that was not sent yet is withdrawn and
never happens. The thread is a daemon, so a call stuck in SQLite's busy wait never holds
up the exit (a pool thread would be joined at exit).
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel

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
    __slots__ = ("arg", "done", "error", "func", "result", "withdrawn", "write")

    def __init__(self, func: Callable[[sqlite3.Connection, Any], Any], arg: Any, write: bool):
        self.func = func
        self.arg = arg
        self.write = write
        self.result: Any = None
        self.error: Exception | None = None
        #: Answered (``result`` or ``error`` is set). A flag, not an event: callers wait on
        #: the connection's progress, and an event per call would cost more than its wait.
        self.done = False
        #: Its caller gave up before the thread ran it: the thread skips it.
        self.withdrawn = False


class _Batch:
    __slots__ = ("calls", "done", "token")

    def __init__(self, calls: list[_Call]) -> None:
        self.calls = calls
        self.done = anyio.Event()
        self.token = anyio.lowlevel.current_token()


class _Thread:
    """The connection's thread: its own queue of jobs and its own connection.

    Each thread owns its connection from open to close, so a ``close()`` while a batch is in
    flight (the thread closes after it) never races a new thread's connection.
    """

    def __init__(self, owner: BatchedConnection) -> None:
        #: A batch to run, or None: close the connection and end the thread.
        self.jobs: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self.thread = threading.Thread(
            target=owner._serve, args=(self.jobs,), name="tasker sqlite", daemon=True
        )
        self.thread.start()


class BatchedConnection:
    """A lazily opened connection (``connect()`` runs in its thread) and its batches.

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
        self._pending: list[_Call] = []
        self._draining = False
        #: Batches sent and not yet run (counted by both threads, under ``_counter``).
        self._in_flight = 0
        self._counter = threading.Lock()
        #: Set when a batch was answered or the drainer left; made by the first waiter.
        self._progress: anyio.Event | None = None
        self._thread: _Thread | None = None

    def close(self) -> None:
        """Close the connection (after the batches already sent); the next call reopens it."""
        current, self._thread = self._thread, None
        if current is None:
            return
        current.jobs.put(None)
        if not self._in_flight:
            # Idle: the thread closes at once; wait for it, so the file is closed on return.
            # (With a batch in flight the thread needs this event loop to answer it first.)
            current.thread.join(timeout=5)

    async def call(
        self, func: Callable[[sqlite3.Connection, Any], R], arg: Any = None, *, write: bool
    ) -> R:
        """Run ``func(connection, arg)`` in the next batch; return its result or raise.

        On cancellation: a call that has not started is withdrawn and never runs; a call
        already running may have happened or not, as with any cancelled database call, and
        the other calls of its batch are answered all the same.
        """
        call = _Call(func, arg, write)
        self._pending.append(call)
        try:
            while not call.done:
                if self._pending and not self._draining:
                    await self._drain()  # calls wait to be sent, and nobody sends them
                else:  # sent, or being sent: wait for an answer
                    if self._progress is None:
                        self._progress = anyio.Event()
                    await self._progress.wait()
        except BaseException:
            # Given up: a call not yet run never runs (a race with the thread's start of
            # its batch may still let it run, as with any cancelled database call).
            call.withdrawn = True
            if call in self._pending:
                self._pending.remove(call)
            raise
        if call.error is not None:
            raise call.error
        result: R = call.result
        return result

    async def _drain(self) -> None:
        self._draining = True
        try:
            # One turn of the event loop first: what other tasks send in the same turn (a
            # hundred schedules due together, a worker's claim right after a completion
            # freed its slot) joins this batch.
            await anyio.lowlevel.checkpoint()
            while self._pending:
                batch = _Batch(self._pending)
                self._pending = []
                self._send(batch)
                await batch.done.wait()
        finally:
            self._draining = False
            self._wake()

    def _wake(self) -> None:
        progress, self._progress = self._progress, None
        if progress is not None:
            progress.set()

    def _send(self, batch: _Batch) -> None:
        if self._thread is None or not self._thread.thread.is_alive():
            self._thread = _Thread(self)
        with self._counter:
            self._in_flight += 1
        self._thread.jobs.put(batch)

    # -- the connection's thread -------------------------------------------------------

    def _serve(self, jobs: queue.SimpleQueue[_Batch | None]) -> None:
        connection: sqlite3.Connection | None = None
        while True:
            batch = jobs.get()
            if batch is None:
                if connection is not None:
                    connection.close()
                return
            try:
                if connection is None:
                    connection = self._open()
                self._run(connection, batch.calls)
            except Exception as exc:  # the database itself failed
                for item in batch.calls:
                    if item.error is None:
                        item.error = exc
            with self._counter:
                self._in_flight -= 1
            # RuntimeError: the event loop is gone, and nobody waits for the answer.
            with contextlib.suppress(RuntimeError):
                anyio.from_thread.run_sync(self._answered, batch, token=batch.token)

    def _answered(self, batch: _Batch) -> None:
        for item in batch.calls:
            item.done = True
        batch.done.set()
        self._wake()

    def _run(self, connection: sqlite3.Connection, batch: list[_Call]) -> None:
        batch = [c for c in batch if not c.withdrawn]
        if not batch:
            return
        write = any(c.write for c in batch)
        begun = time.monotonic()
        connection.execute("begin immediate" if write else "begin")
        try:
            if write and self._after_lock is not None:
                self._after_lock(connection, time.monotonic() - begun)
            for call in batch:
                if call.withdrawn:  # given up while this batch waited for the lock
                    continue
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
