"""Caller-chosen task ids on Postgres: a stored id deduplicates, whatever the task's state."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from tasker.queue import NewTask, TaskState
from tasker_pg import PostgresQueueBackend

from ..helpers import check_chosen_task_ids

pytestmark = pytest.mark.anyio


@pytest.fixture
async def backend(pg_dsn: str, schema: str) -> AsyncIterator[PostgresQueueBackend]:
    queue_backend = PostgresQueueBackend(pg_dsn, schema=schema)
    await queue_backend.migrate()
    yield queue_backend
    await queue_backend.aclose()


async def test_a_stored_id_deduplicates_before_and_after_the_task_ran(
    backend: PostgresQueueBackend,
) -> None:
    """Enqueued twice, the task runs once; enqueued again once it succeeded, it stays so."""
    await check_chosen_task_ids(backend)


async def test_stored_ids_in_a_batch_and_a_transaction(
    backend: PostgresQueueBackend, pg_dsn: str
) -> None:
    """``enqueue_within`` deduplicates a stored id as ``enqueue`` does, in a batch with a new
    task; a stored id wins over a unique key, and the stored task is left as it is."""
    now = await backend.time()

    def task(task_id: str, unique_key: str | None = None) -> NewTask:
        return NewTask(
            id=task_id,
            name="t",
            queue="q",
            payload=b"",
            run_at=now,
            created_at=now,
            unique_key=unique_key,
        )

    await backend.enqueue([task("a", "k")], now=now)
    conn = await asyncpg.connect(pg_dsn)
    try:
        async with conn.transaction():
            results = await backend.enqueue_within(conn, [task("a"), task("b")], now=now)
    finally:
        await conn.close()
    assert [(r.id, r.deduplicated) for r in results] == [("a", True), ("b", False)]
    # A stored id whose key another live task holds: deduplicated to the stored id.
    await backend.enqueue([task("c", "other")], now=now)
    (result,) = await backend.enqueue([task("a", "other")], now=now)
    assert (result.id, result.deduplicated) == ("a", True)
    stored = await backend.get("a")
    assert stored is not None
    assert (stored.unique_key, stored.state) == ("k", TaskState.QUEUED)
