"""Wake-ups across processes sharing one SQLite queue (``tasker.queue._sqlite_wake``)."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import anyio
import pytest

from tasker import Context
from tasker.queue import Queue, SQLiteQueueBackend
from tasker.queue._sqlite_wake import WakeChannel

from .helpers import python_process

pytestmark = pytest.mark.anyio


def _readable(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(64, socket.MSG_PEEK))
    except BlockingIOError:
        return False


def test_a_poke_reaches_every_waiting_channel_but_not_the_dead(tmp_path: Path) -> None:
    """Two listeners get a poke; a socket file left by a dead process is removed by the
    first poke that finds it refusing."""
    database = tmp_path / "queue.sqlite3"
    first, second, writer = WakeChannel(database), WakeChannel(database), WakeChannel(database)
    a, fresh = first.listen()
    b, _ = second.listen()
    assert a is not None
    assert b is not None
    assert fresh
    assert first.listen() == (a, False)  # bound once
    dead = tmp_path / "queue.sqlite3.wake" / "1-deadbeef.sock"
    dead.touch()  # a file whose process is gone (SIGKILLed): nobody listens at its name
    writer.poke()
    assert _readable(a)
    assert _readable(b)
    assert not dead.exists()
    first.drain()
    assert not _readable(a)
    first.close()
    remaining = sorted(p.name for p in (tmp_path / "queue.sqlite3.wake").iterdir())
    assert len(remaining) == 1  # the second's; the first removed its own file
    second.close()
    writer.close()


def test_a_directory_it_cannot_use_falls_back_to_polling(tmp_path: Path) -> None:
    """No directory for the sockets (a file is in the way): no wake-ups, and no error."""
    (tmp_path / "queue.sqlite3.wake").write_text("not a directory")
    channel = WakeChannel(tmp_path / "queue.sqlite3")
    assert channel.listen() == (None, False)
    channel.poke()  # costs nothing, raises nothing
    channel.close()


def test_a_long_state_dir_still_gets_wake_ups(tmp_path: Path) -> None:
    """A directory path longer than a socket address (Linux: the abstract namespace)."""
    deep = tmp_path / ("d" * 150)
    deep.mkdir()
    listener, writer = WakeChannel(deep / "queue.sqlite3"), WakeChannel(deep / "queue.sqlite3")
    sock, _ = listener.listen()
    if not sys.platform.startswith("linux"):
        assert sock is None  # a path-bound socket cannot have that name: polling
        return
    assert sock is not None
    writer.poke()
    assert _readable(sock)
    listener.close()
    writer.close()


_WORKER = """
import sys, anyio, tasker
import tasker.queue._sqlite as sqlite_backend
from tasker.queue import Queue, SQLiteQueueBackend

sqlite_backend._FALLBACK_POLL = 3600.0  # only a poke can wake it
queue = Queue(SQLiteQueueBackend(sys.argv[1]))
done = anyio.Event()

@queue.task("ping", max_attempts=1)
async def ping(ctx, n: int) -> None:
    print("ran", n, flush=True)
    if n == 2:
        done.set()

print("ready", flush=True)
anyio.run(lambda: tasker.run(queue.worker(poll=3600), shutdown_trigger=done.wait))
"""


async def test_a_worker_in_another_process_wakes_on_the_commit(tmp_path: Path) -> None:
    """The worker process polls neither its backend (poll=3600) nor the file (the fallback
    set to an hour): the tasks this process enqueues still run, so the poke woke it."""
    path = tmp_path / "queue.sqlite3"
    queue = Queue(SQLiteQueueBackend(path))

    @queue.task("ping", max_attempts=1)
    async def ping(ctx: Context, n: int) -> None: ...

    await queue.enqueue("ping", 0)  # the file exists before the worker opens it
    proc = python_process(["-c", _WORKER, str(path)])
    assert proc.stdout is not None
    try:
        line = await anyio.to_thread.run_sync(proc.stdout.readline)
        assert line.strip() == "ready"
        assert (await anyio.to_thread.run_sync(proc.stdout.readline)).strip() == "ran 0"
        wake = tmp_path / "queue.sqlite3.wake"
        with anyio.fail_after(10):  # its socket is bound once it waits
            while not any(wake.glob("*.sock")):  # noqa: ASYNC110 - another process's file
                await anyio.sleep(0.01)
        await anyio.sleep(0.2)  # it waits now, on its socket alone
        for n in (1, 2):
            sent = time.monotonic()
            await queue.enqueue("ping", n)
            line = await anyio.to_thread.run_sync(proc.stdout.readline)
            assert line.strip() == f"ran {n}"
            assert time.monotonic() - sent < 30  # not the hour a poll would take
        assert await anyio.to_thread.run_sync(proc.wait, 30) == 0
        # Its process is gone, its socket file left: the next commit's poke removes it.
        assert any(wake.glob("*.sock"))
        await queue.enqueue("ping", 3)
        assert not any(wake.glob("*.sock"))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()  # closes its pipes
        await queue.aclose()
