"""The embedded queue's statements (``tasker.queue._sqlite_ops``): a reading made with a
stale clock anchor is moved onto the database's clock, once for a combined call."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tasker import Context
from tasker.queue import Outcome, OutcomeKind, Queue, SQLiteQueueBackend, TaskState

pytestmark = pytest.mark.anyio


async def open_an_earlier_file(path: Path, old_index: str) -> tuple[set[str], float]:
    """A file of an earlier version with ``old_index``, opened by this version (a claim):
    the indexes it has then, and the backend's time."""
    from tasker.queue import _sqlite_ops as ops

    with sqlite3.connect(path) as db:
        db.execute(ops.SCHEMA[0])
        db.execute(old_index)
    backend = SQLiteQueueBackend(path)
    now = await backend.time()
    assert await backend.claim(["default"], 10, worker="w", lease=30, now=now) == []
    await backend.aclose()
    with sqlite3.connect(path) as db:
        rows = db.execute("select name from sqlite_master where type = 'index'")
        return {row[0] for row in rows}, now


async def test_a_combined_call_records_and_claims_on_the_current_clock(tmp_path: Path) -> None:
    """A process still holding the old anchor records an outcome and claims in one call: the
    outcome's times and the new lease both move by the other process's re-anchoring, and a
    task that is due only on the current clock is claimed."""
    path = tmp_path / "queue.sqlite3"
    stale = SQLiteQueueBackend(path)
    queue = Queue(stale)

    @queue.task("t")
    async def t(ctx: Context, n: int) -> None: ...

    first = (await queue.enqueue("t", 1)).id
    later = (await queue.enqueue("t", 2, delay=50)).id
    now = await stale.time()
    [claimed] = await stale.claim(["default"], 1, worker="a", lease=30, now=now)
    assert claimed.id == first
    with sqlite3.connect(path) as db:  # another process re-anchored the clock by +100 s
        db.execute("update queue_clock set anchor = anchor + 100")
    outcome = Outcome(
        id=first, worker="a", kind=OutcomeKind.SUCCEEDED, started_at=now, finished_at=now
    )
    [following] = await stale.finish_and_claim(
        [outcome], now=now, queues=["default"], limit=1, worker="a", lease=30
    )
    assert (following.id, following.state) == (later, TaskState.RUNNING)
    assert following.lease_until is not None
    assert following.lease_until > now + 100
    [entry] = await queue.history()
    assert entry.task_id == first
    assert entry.finished_at >= now + 100
    stale.close()


@pytest.mark.anyio
async def test_a_claim_reads_due_tasks_in_index_order_without_sorting(tmp_path: Path) -> None:
    """The claim's query walks the claim index in its order (priority, run_at, then the
    created_at tie-breaker) and stops at its limit: no sort of the tasks sharing a run_at,
    so a backlog of tied tasks (a bulk enqueue, a dispatch) drains as fast as any other.
    An index of an earlier version without the tie-breaker is dropped when the file opens."""
    path = tmp_path / "queue.sqlite3"
    indexes, _ = await open_an_earlier_file(
        path, "create index tasks_due on tasks (state, queue, priority desc, run_at)"
    )
    with sqlite3.connect(path) as db:
        plan = " ".join(
            str(row[3])
            for row in db.execute(
                "explain query plan select id from tasks where state = 'queued' and queue in (?)"
                " and run_at <= ? order by priority desc, run_at, created_at limit ?",
                ("default", 0.0, 10),
            )
        )
    assert "tasks_claim" in indexes
    assert "tasks_due" not in indexes
    assert "tasks_claim" in plan
    assert "TEMP B-TREE" not in plan


async def test_lease_queries_read_the_running_tasks_along_the_claim_index(
    tmp_path: Path,
) -> None:
    """Leases are found among the running tasks, which lead the claim index: never a scan
    of every task. The earlier ``tasks_lease`` index (every task's) is dropped on open."""
    path = tmp_path / "queue.sqlite3"
    indexes, now = await open_an_earlier_file(
        path, "create index tasks_lease on tasks (state, lease_until)"
    )
    with sqlite3.connect(path) as db:
        plans = [
            " ".join(str(row[3]) for row in db.execute(f"explain query plan {query}", args))
            for query, args in [
                (
                    "select id from tasks where state = 'running' and lease_until <= ?"
                    " and queue in (?) order by lease_until limit ?",
                    (now, "default", 10),
                ),
                ("select min(lease_until) from tasks where state = 'running'", ()),
                (
                    "select id from tasks where state = 'running' and lease_until <= ?"
                    " order by lease_until limit ?",
                    (now, 10),
                ),
            ]
        ]
    assert "tasks_lease" not in indexes
    for plan in plans:
        assert "tasks_claim (state=?" in plan, plan
        assert "SCAN" not in plan, plan


async def test_finishing_no_outcomes_writes_nothing(tmp_path: Path) -> None:
    """An empty batch is a no-op, alone or combined with a claim (which still claims)."""
    backend = SQLiteQueueBackend(tmp_path / "queue.sqlite3")
    queue = Queue(backend)

    @queue.task("t")
    async def t(ctx: Context) -> None: ...

    handle = await queue.enqueue("t")
    now = await backend.time()
    await backend.finish([], now=now)
    [claimed] = await backend.finish_and_claim(
        [], now=now, queues=["default"], limit=1, worker="w", lease=30
    )
    assert claimed.id == handle.id
    assert await backend.history() == []
    await backend.aclose()
