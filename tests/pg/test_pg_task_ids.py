"""Caller-chosen task ids on Postgres: a stored id deduplicates, whatever the task's state."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import asyncpg
import pytest

import tasker
from tasker.queue import NewTask, Queue, TaskState
from tasker_pg import PostgresQueueBackend

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
    queue = Queue(backend)
    ran: list[int] = []

    @queue.task("t")
    async def t(ctx: tasker.Context, payload: int) -> int:
        ran.append(payload)
        return payload

    first = await queue.enqueue("t", 1, task_id="order-42")
    assert (first.id, first.deduplicated) == ("order-42", False)
    again = await queue.enqueue("t", 2, task_id="order-42")
    assert (again.id, again.deduplicated) == ("order-42", True)

    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: tasker.run(queue.worker(poll=0.1), shutdown_trigger=stop.wait))
        with anyio.fail_after(10):
            # The worker records the outcome after the handler returned.
            info = await queue.get("order-42")
            while info is None or info.state != TaskState.SUCCEEDED:
                await anyio.sleep(0.02)
                info = await queue.get("order-42")
        stop.set()

    after = await queue.enqueue("t", 3, task_id="order-42")
    assert (after.id, after.deduplicated) == ("order-42", True)
    info = await queue.get("order-42")
    assert info is not None
    assert (info.state, info.result, info.attempts) == (TaskState.SUCCEEDED, 1, 1)
    assert ran == [1]
    assert await queue.counts() == {"default": {"succeeded": 1}}


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
