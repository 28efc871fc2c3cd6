"""Cancels on a real Postgres server: what the contract machine cannot show (one backend at
a time there): a worker process told through the database, a migration of a table made
before cancels, and cancels racing claims and finishes of other connections."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import anyio
import asyncpg
import pytest

from tasker.queue import (
    CancelStatus,
    NewTask,
    Outcome,
    OutcomeKind,
    TaskState,
)
from tasker_pg import PostgresQueueBackend, migrate

from ..test_queue_cancel_processes import (
    LEASE,
    MARGIN,
    cancel_in_another_process,
    start_worker,
    stop,
)

pytestmark = pytest.mark.anyio


def _new(task_id: str, now: float, **options: object) -> NewTask:
    return NewTask(
        id=task_id,
        name="t",
        queue="q",
        payload=b"1",
        run_at=now,
        created_at=now,
        **options,  # type: ignore[arg-type]
    )


@pytest.mark.slow
async def test_a_cancel_reaches_a_worker_process_through_postgres(
    pg_dsn: str, schema: str, tmp_path: Path
) -> None:
    """The worker process holds the task; this process cancels it: CANCELLED within a
    heartbeat, its handler saw StopReason.CANCELLED."""
    await migrate(pg_dsn, schema=schema)
    out = tmp_path / "runs.txt"
    proc = start_worker(out, "--dsn", pg_dsn, "--schema", schema)
    try:
        took = await cancel_in_another_process(PostgresQueueBackend(pg_dsn, schema=schema), out)
    finally:
        await anyio.to_thread.run_sync(stop, proc)
    assert took < LEASE / 3 + MARGIN, took


async def test_migrate_adds_the_column_to_a_table_made_before_cancels(
    pg_dsn: str, schema: str
) -> None:
    """A queue table without ``cancel_requested`` (an earlier version's) gets it from
    ``migrate``, which stays idempotent; the rows it held read as not cancel-requested."""
    backend = PostgresQueueBackend(pg_dsn, schema=schema)
    await backend.migrate()
    await backend.enqueue([_new("old", 100.0)], now=100.0)
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f'alter table "{schema}".queue_tasks drop column cancel_requested')
        await backend.aclose()
        backend = PostgresQueueBackend(pg_dsn, schema=schema)
        await backend.migrate()
        await backend.migrate()
        columns = await conn.fetch(
            "select column_name, data_type, is_nullable, column_default"
            " from information_schema.columns where table_schema = $1"
            " and table_name = 'queue_tasks' and column_name = 'cancel_requested'",
            schema,
        )
        assert [tuple(c) for c in columns] == [("cancel_requested", "boolean", "NO", "false")]
        stored = await backend.get("old")
        assert stored is not None
        assert stored.cancel_requested is False
        assert (await backend.cancel("old", now=101.0)).status is CancelStatus.CANCELLED
    finally:
        await conn.close()
        await backend.aclose()


async def test_cancels_racing_claims_leave_each_task_in_one_place(pg_dsn: str, schema: str) -> None:
    """Cancels of queued tasks race claims by other connections: each task is either
    claimed (its cancel then only requested) or cancelled (and never claimed)."""
    backends = [PostgresQueueBackend(pg_dsn, schema=schema) for _ in range(3)]
    await backends[0].migrate()
    now = time.time()
    ids = [f"t{i}" for i in range(60)]
    await backends[0].enqueue([_new(i, now) for i in ids], now=now)

    async def claims(backend: PostgresQueueBackend, worker: str) -> list[str]:
        taken: list[str] = []
        for _ in range(30):
            taken += [r.id for r in await backend.claim(["q"], 2, worker=worker, lease=60, now=now)]
        return taken

    async def cancels() -> dict[str, CancelStatus]:
        return {i: (await backends[2].cancel(i, now=now)).status for i in ids}

    taken_a, taken_b, statuses = await asyncio.gather(
        claims(backends[0], "a"), claims(backends[1], "b"), cancels()
    )
    taken = set(taken_a) | set(taken_b)
    assert len(taken) == len(taken_a) + len(taken_b)  # nothing claimed twice
    for task_id, status in statuses.items():
        stored = await backends[2].get(task_id)
        assert stored is not None
        if task_id in taken:
            assert status is CancelStatus.REQUESTED, task_id
            assert (stored.state, stored.cancel_requested) == (TaskState.RUNNING, True)
        else:
            assert status is CancelStatus.CANCELLED, task_id
            assert stored.state is TaskState.CANCELLED
    # The workers report them as failures (they had not heard yet): all end cancelled.
    for worker, mine in (("a", taken_a), ("b", taken_b)):
        await backends[0].finish(
            [
                Outcome(
                    id=i,
                    worker=worker,
                    kind=OutcomeKind.RETRY,
                    started_at=now,
                    finished_at=now,
                    error="Boom: x",
                    retry_at=now,
                )
                for i in mine
            ],
            now=now,
        )
    counts = await backends[0].counts()
    assert counts == {"q": {TaskState.CANCELLED: 60}}
    for backend in backends:
        await backend.aclose()
