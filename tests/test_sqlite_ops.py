"""The embedded queue's statements (``tasker.queue._sqlite_ops``): a reading made with a
stale clock anchor is moved onto the database's clock, once for a combined call."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tasker import Context
from tasker.queue import Outcome, OutcomeKind, Queue, SQLiteQueueBackend, TaskState

pytestmark = pytest.mark.anyio


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
