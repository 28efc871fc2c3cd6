"""``tasker_pg.migrate``: one call creates every table, idempotently and concurrently."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime

import anyio
import asyncpg
import pytest

import tasker
import tasker_pg
from tasker import ScheduleState
from tasker.queue import Queue
from tasker_pg import PostgresLockerFactory, PostgresQueueBackend, PostgresStateRepository

pytestmark = pytest.mark.anyio

ALL_TABLES = [
    "lock_keys",
    "queue_groups",
    "queue_history",
    "queue_rate_log",
    "queue_tasks",
    "queue_workers",
    "schedule_state",
]


async def _tables(dsn: str, schema: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "select table_name from information_schema.tables where table_schema = $1 order by 1",
            schema,
        )
    finally:
        await conn.close()
    return [row[0] for row in rows]


async def test_one_call_creates_the_scheduler_and_queue_tables(pg_dsn: str, schema: str) -> None:
    """After ``migrate(dsn)`` alone, the state table, the lock registry and the queue work."""
    await tasker_pg.migrate(pg_dsn, schema=schema)
    assert await _tables(pg_dsn, schema) == ALL_TABLES
    repository = PostgresStateRepository(pg_dsn, schema=schema)
    lockers = PostgresLockerFactory(pg_dsn, schema=schema, namespace=schema)
    backend = PostgresQueueBackend(pg_dsn, schema=schema)
    try:
        state = ScheduleState(name="nightly", last_slot=datetime(2026, 1, 1, tzinfo=UTC))
        await repository.save(state)
        assert await repository.get("nightly") == state
        locker = lockers.locker("nightly")
        assert await locker.try_lock()  # registers its key in lock_keys first
        await locker.unlock()
        queue = Queue(backend)

        @queue.task("t")
        async def t(ctx: tasker.Context, n: int) -> None: ...

        enqueued = await queue.enqueue("t", 1)
        assert (await backend.get(enqueued.id)) is not None
    finally:
        await backend.aclose()
        await lockers.aclose()
        await repository.aclose()


async def test_concurrent_migrations_through_every_entry_point(pg_dsn: str, schema: str) -> None:
    """``migrate`` from a DSN and from a pool, and each backend's wrapper, all at once on an
    empty schema: no error, one set of tables; running them again changes nothing."""
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    repository = PostgresStateRepository(pool, schema=schema)
    backend = PostgresQueueBackend(pool, schema=schema)
    scheduler = tasker_pg.scheduler(pool, schema=schema, namespace=schema)
    try:
        for _ in range(2):
            await asyncio.gather(
                *(tasker_pg.migrate(pg_dsn, schema=schema) for _ in range(3)),
                tasker_pg.migrate(pool, schema=schema),
                repository.migrate(),
                backend.migrate(),
                scheduler.migrate(),
            )
            assert await _tables(pg_dsn, schema) == ALL_TABLES
        assert await pool.fetchval("select 1") == 1  # a given pool is left open
    finally:
        await scheduler.aclose()
        await backend.aclose()
        await repository.aclose()
        await pool.close()


@pytest.mark.parametrize("entry", ["repository", "queue", "scheduler", "cli"])
async def test_every_entry_point_creates_every_table(pg_dsn: str, schema: str, entry: str) -> None:
    """Each older entry point is the one migration: the same tables whichever ran."""
    if entry == "cli":
        proc = await anyio.run_process(
            [sys.executable, "-m", "tasker_pg", "migrate", "--schema", schema, "--dsn", pg_dsn],
            check=False,
        )
        assert proc.returncode == 0, proc.stderr.decode()
    elif entry == "repository":
        repository = PostgresStateRepository(pg_dsn, schema=schema)
        await repository.migrate()
        await repository.aclose()
    elif entry == "queue":
        backend = PostgresQueueBackend(pg_dsn, schema=schema)
        await backend.migrate()
        await backend.aclose()
    else:
        scheduler = tasker_pg.scheduler(pg_dsn, schema=schema)
        await scheduler.migrate()
        await scheduler.aclose()
    assert await _tables(pg_dsn, schema) == ALL_TABLES


async def test_migrate_takes_a_state_table_name(pg_dsn: str, schema: str) -> None:
    """``table=`` names the state table; the queue's tables keep their names."""
    await tasker_pg.migrate(pg_dsn, schema=schema, table="replica_state")
    assert await _tables(pg_dsn, schema) == sorted(
        ["replica_state", *(name for name in ALL_TABLES if name != "schedule_state")]
    )


async def test_bad_names_fail_before_connecting() -> None:
    """A bad schema or table is refused before any connection (this DSN has no server)."""
    dead = "postgresql://u:hunter2@127.0.0.1:1/db"
    with pytest.raises(ValueError, match="schema must be a lower-case SQL identifier"):
        await tasker_pg.migrate(dead, schema="Bad")
    with pytest.raises(ValueError, match="table must be a lower-case SQL identifier"):
        await tasker_pg.migrate(dead, table='x"; drop schema public; --')
    with pytest.raises(TypeError, match="DSN string or an asyncpg pool"):
        await tasker_pg.migrate(42)  # type: ignore[arg-type]
