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


class Counting:
    """An asyncpg connection that counts the statements sent through it."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.statements: list[str] = []

    def is_in_transaction(self) -> bool:
        return self._conn.is_in_transaction()

    def __getattr__(self, name: str) -> object:
        method = getattr(self._conn, name)
        if name not in ("execute", "fetch", "fetchrow", "fetchval"):
            return method

        async def counted(query: str, *args: object) -> object:
            self.statements.append(query.split()[0])
            return await method(query, *args)

        return counted


async def test_a_batch_is_one_insert_and_keeps_its_order(
    backend: PostgresQueueBackend, pg_dsn: str
) -> None:
    """5,000 tasks without unique keys are one insert (and one notify), not 5,000; a batch
    that mixes stored ids, an id twice and unique keys answers, and stores, as the same
    tasks enqueued one at a time would."""
    now = await backend.time()

    def task(task_id: str, payload: bytes = b"", unique_key: str | None = None) -> NewTask:
        return NewTask(
            id=task_id,
            name="t",
            queue="q",
            payload=payload,
            run_at=now,
            created_at=now,
            unique_key=unique_key,
            trace='{"traceparent":"00-' + "1" * 32 + "-" + "2" * 16 + '-01"}',
        )

    conn = await asyncpg.connect(pg_dsn)
    try:
        counting = Counting(conn)
        async with conn.transaction():
            results = await backend.enqueue_within(
                counting, [task(f"bulk-{i}") for i in range(5000)], now=now
            )
        assert len(results) == 5000
        assert not any(r.deduplicated for r in results)
        assert counting.statements == ["insert", "select"]  # the insert, then the notify
        await backend.enqueue([task("stored", b"first")], now=now)
        batch = [
            task("x1", b"1"),
            task("stored", b"second"),  # stored: deduplicated, left as it is
            task("x2", b"2"),
            task("x2", b"again"),  # twice in the batch: the first is stored
            task("k1", b"k", unique_key="key"),
            task("k2", b"k", unique_key="key"),  # the key is live: deduplicated to k1
            task("x3", b"3"),
        ]
        counting.statements.clear()
        async with conn.transaction():
            results = await backend.enqueue_within(counting, batch, now=now)
    finally:
        await conn.close()
    assert [(r.id, r.deduplicated) for r in results] == [
        ("x1", False),
        ("stored", True),
        ("x2", False),
        ("x2", True),
        ("k1", False),
        ("k1", True),
        ("x3", False),
    ]
    for task_id, payload in [("x1", b"1"), ("stored", b"first"), ("x2", b"2"), ("x3", b"3")]:
        stored = await backend.get(task_id)
        assert stored is not None
        assert stored.payload == payload
        assert stored.trace is not None
    assert await backend.get("k2") is None
    assert (await backend.counts())["q"][TaskState.QUEUED] == 5000 + 1 + 3 + 1
