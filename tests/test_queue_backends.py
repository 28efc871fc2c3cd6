"""The stateful queue contract on the memory and SQLite backends, and the regressions it found."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest

from tasker.queue import (
    GroupSpec,
    MemoryQueueBackend,
    NewTask,
    Outcome,
    OutcomeKind,
    SQLiteQueueBackend,
    TaskState,
)
from tasker.testing import FakeClock, queue_backend_machine


def _memory() -> MemoryQueueBackend:
    # On a FakeClock the machine moves the backend's time itself, and checks wait_for_work
    # against it (it must wake at the next due time of its queues, and not before).
    return MemoryQueueBackend(clock=FakeClock())


def _sqlite() -> SQLiteQueueBackend:
    return SQLiteQueueBackend(Path(tempfile.mkdtemp(prefix="tasker-contract-")) / "q.sqlite3")


TestMemoryQueueBackend = queue_backend_machine(_memory).TestCase
TestMemoryQueueBackendOnTrio = queue_backend_machine(_memory, anyio_backend="trio").TestCase
TestSQLiteQueueBackend = queue_backend_machine(_sqlite).TestCase
TestSQLiteQueueBackendOnTrio = queue_backend_machine(_sqlite, anyio_backend="trio").TestCase


# -- regressions the machine found -----------------------------------------------------------


def _task(task_id: str, now: float, queue: str = "q", **options: Any) -> NewTask:
    return NewTask(
        id=task_id, name="t", queue=queue, payload=b"1", run_at=now, created_at=now, **options
    )


def _success(task_id: str, now: float) -> Outcome:
    return Outcome(
        id=task_id,
        worker="w",
        kind=OutcomeKind.SUCCEEDED,
        started_at=now,
        finished_at=now,
        result=b"2",
        result_expires=now + 60,
    )


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The embedded backends (the machine runs the same check on Postgres)."""
    if request.param == "memory":
        return MemoryQueueBackend()
    return SQLiteQueueBackend(tmp_path / "q.sqlite3")


@pytest.mark.anyio
async def test_a_group_callback_is_due_from_when_the_group_completes(backend: Any) -> None:
    """The callback queues behind a task that fell due before the group completed, not
    ahead of it (the memory backend dated it from the group's enqueue)."""
    callback = _task("cb", 100.0)
    group = GroupSpec(id="g", size=1, callback=callback)
    await backend.enqueue([_task("m", 100.0, group_id="g", group_index=0)], group=group, now=100.0)
    await backend.enqueue([_task("x", 101.0)], now=101.0)
    (member,) = await backend.claim(["q"], 1, worker="w", lease=30, now=102.0)
    assert member.id == "m"
    await backend.finish([_success("m", 103.0)], now=103.0)
    stored = await backend.get("cb")
    assert (stored.state, stored.run_at, stored.payload) == (TaskState.QUEUED, 103.0, b"[2]")
    taken = await backend.claim(["q"], 1, worker="w", lease=30, now=104.0)
    assert [t.id for t in taken] == ["x"]
    await backend.aclose()


@pytest.mark.anyio
async def test_wait_for_work_follows_a_fake_clock_to_the_next_due_time() -> None:
    """On a FakeClock, a wait ends when the clock reaches the next due time of its queues,
    not after that many real seconds, and a lease of another queue does not end it."""
    clock = FakeClock()
    backend = MemoryQueueBackend(clock=clock)
    now = clock.now().timestamp()
    await backend.enqueue([_task("later", now + 30)], now=now)
    await backend.enqueue([_task("other", now, queue="other")], now=now)
    await backend.claim(["other"], 1, worker="w", lease=5, now=now)  # expires at +5
    woke = anyio.Event()

    async def wait() -> None:
        await backend.wait_for_work(["q"], 60)
        woke.set()

    with anyio.fail_after(5):  # real seconds: far less than the 30 the clock moves
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await clock.settle()
            clock.advance(10)  # the other queue's lease expired: nothing due in "q"
            await clock.settle()
            assert not woke.is_set()
            clock.advance(20)
            await woke.wait()
