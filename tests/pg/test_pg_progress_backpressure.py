"""Progress and backpressure on a real Postgres server: what the contract machine cannot show
(one connection at a time there): producers on separate connections racing for a queue's last
places, a handler's progress through a worker, and a migration of a table made before them."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import anyio
import asyncpg
import pytest

import tasker
from tasker import Context
from tasker.queue import NewTask, Queue, QueueFullError, TaskState, current_task
from tasker_pg import PostgresQueueBackend

pytestmark = pytest.mark.anyio


async def test_producers_on_many_connections_fill_a_queue_exactly_to_its_bound(
    pg_dsn: str, schema: str
) -> None:
    """Eight backends (eight pools) enqueue 20 tasks each at once against a bound of 25: 25
    are stored, 135 refused, none lost; a batch that does not fit stores nothing."""
    backends = [PostgresQueueBackend(pg_dsn, schema=schema) for _ in range(8)]
    await backends[0].migrate()
    stored = refused = 0
    refusals: set[tuple[str, int, int]] = set()

    async def produce(backend: PostgresQueueBackend, index: int) -> None:
        nonlocal stored, refused
        for n in range(20):
            now = await backend.time()
            task = NewTask(
                id=f"p{index}-{n}", name="t", queue="q", payload=b"{}", run_at=now, created_at=now
            )
            try:
                await backend.enqueue_bounded([task], max_depth={"q": 25}, now=now)
                stored += 1
            except QueueFullError as exc:
                refusals.add((exc.queue, exc.depth, exc.max_depth))
                refused += 1

    try:
        await asyncio.gather(*(produce(b, i) for i, b in enumerate(backends)))
        assert (stored, refused) == (25, 135)
        assert refusals == {("q", 25, 25)}
        counts = await backends[0].counts()
        assert counts == {"q": {TaskState.QUEUED: 25}}
        now = await backends[0].time()
        batch = [
            NewTask(id=f"b{n}", name="t", queue="r", payload=b"{}", run_at=now, created_at=now)
            for n in range(3)
        ]
        with pytest.raises(QueueFullError):
            await backends[0].enqueue_bounded(batch, max_depth={"r": 2, "q": 25}, now=now)
        assert await backends[0].get("b0") is None
    finally:
        for backend in backends:
            await backend.aclose()


async def test_a_handler_reports_progress_through_postgres(pg_dsn: str, schema: str) -> None:
    """A report is stored for the running task and kept once it succeeded."""
    backend = PostgresQueueBackend(pg_dsn, schema=schema)
    await backend.migrate()
    queue = Queue(backend, max_depth=10)
    reported = anyio.Event()
    finish = anyio.Event()

    @queue.task
    async def resize(ctx: Context) -> None:
        task = current_task()
        assert task is not None
        await task.report_progress(0.5, "half")
        reported.set()
        await finish.wait()

    enqueued = await resize.enqueue()
    stop = anyio.Event()
    worker = queue.worker(concurrency=1, lease=0.6, poll=0.05)
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(tasker.run, worker, shutdown_trigger=stop.wait, grace=1.0))
        await reported.wait()
        info = await queue.get(enqueued.id)
        assert info is not None
        assert info.progress is not None
        assert (info.progress.value, info.progress.text) == (0.5, "half")
        finish.set()
        with anyio.fail_after(10):
            while (info := await queue.get(enqueued.id)) is None or (  # noqa: ASYNC110 - polled
                info.state is not TaskState.SUCCEEDED
            ):
                await anyio.sleep(0.02)
        stop.set()
    assert info is not None
    assert info.progress is not None
    assert info.progress.value == 0.5
    await queue.aclose()


async def test_a_table_made_before_progress_gets_its_columns(pg_dsn: str, schema: str) -> None:
    """``migrate()`` adds the progress columns to an older table and keeps its rows."""
    backend = PostgresQueueBackend(pg_dsn, schema=schema)
    await backend.migrate()
    now = await backend.time()
    task = NewTask(id="old", name="t", queue="q", payload=b"{}", run_at=now, created_at=now)
    await backend.enqueue([task], now=now)
    conn: Any = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(
            f'alter table "{schema}".queue_tasks drop column progress,'
            " drop column progress_text, drop column progress_at"
        )
        await conn.execute(f'drop index "{schema}".queue_tasks_held')
    finally:
        await conn.close()
    await backend.migrate()
    await backend.migrate()  # idempotent
    (claimed,) = await backend.claim(["q"], 1, worker="w", lease=30.0, now=now)
    assert claimed.id == "old"
    assert claimed.progress is None
    assert await backend.report_progress("w", "old", 1.0, "done", now=now)
    await backend.aclose()
