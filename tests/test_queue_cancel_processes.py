"""A cancel reaches a worker in another OS process (SQLite): the task ends CANCELLED within
a heartbeat, and its handler saw ``StopReason.CANCELLED``."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import anyio
import pytest

from tasker.queue import CancelStatus, Queue, QueueBackend, SQLiteQueueBackend, TaskState

from .helpers import python_process
from .queue_cancel_worker import build

pytestmark = pytest.mark.slow

#: The worker's lease: a heartbeat, and so a cancel's way to it, every LEASE / 3 = 0.5 s.
LEASE = 1.5
#: What a cancel may take beyond a heartbeat period: the round trips, the handler's stop
#: and the recording (a slow CI machine included).
MARGIN = 2.0


def start_worker(out: Path, *backend: str) -> subprocess.Popen[str]:
    proc = python_process(
        ["tests/queue_cancel_worker.py", "--out", str(out), "--lease", str(LEASE), *backend]
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def lines(out: Path) -> list[list[str]]:
    return [line.split() for line in out.read_text().splitlines()] if out.exists() else []


async def cancel_in_another_process(backend: QueueBackend, out: Path) -> float:
    """Enqueue a long task, wait until the worker process runs it, cancel it from here, and
    wait until it is CANCELLED; return how long that took after the cancel."""
    queue: Queue = build(backend, str(out))
    try:
        enqueued = await queue.enqueue("long")
        with anyio.fail_after(30):
            while ["started", enqueued.id] not in lines(out):  # noqa: ASYNC110 - another process's file
                await anyio.sleep(0.02)
        asked = time.monotonic()
        result = await queue.cancel(enqueued)
        assert (result.status, result.state) == (CancelStatus.REQUESTED, TaskState.RUNNING)
        with anyio.fail_after(30):
            while True:
                info = await queue.get(enqueued.id)
                assert info is not None
                if info.state is not TaskState.RUNNING:
                    break
                await anyio.sleep(0.02)
        took = time.monotonic() - asked
        assert (info.state, info.attempts, info.error) == (
            TaskState.CANCELLED,
            1,
            "RuntimeError: stopped early",
        )
        assert ["stopped", enqueued.id, "cancelled"] in lines(out)
        assert [h.outcome for h in await queue.history(task_id=enqueued.id)] == ["cancelled"]
        return took
    finally:
        await queue.aclose()


def stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    return err


def test_a_cancel_reaches_a_worker_in_another_process(tmp_path: Path) -> None:
    """The worker process holds the task; this process cancels it through the shared file."""
    db, out = tmp_path / "queue.sqlite3", tmp_path / "runs.txt"
    SQLiteQueueBackend(db).close()  # the file exists before the worker opens it
    proc = start_worker(out, "--db", str(db))
    try:
        took = anyio.run(cancel_in_another_process, SQLiteQueueBackend(db), out)
    finally:
        stop(proc)
    assert took < LEASE / 3 + MARGIN, took
