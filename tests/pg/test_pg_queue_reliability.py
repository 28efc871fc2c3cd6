"""Queue reliability on Postgres (issue 10): poison texts, the server's clock, priorities."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest

from tasker import Context
from tasker.queue import Queue, TaskState
from tasker_pg import PostgresQueueBackend

from ..test_queue import Running, finished, until
from ..test_queue_reliability import Unprintable

pytestmark = pytest.mark.anyio


@pytest.fixture
async def backend(pg_dsn: str, schema: str) -> AsyncIterator[PostgresQueueBackend]:
    queue_backend = PostgresQueueBackend(pg_dsn, schema=schema)
    await queue_backend.migrate()
    yield queue_backend
    await queue_backend.aclose()


async def test_poison_error_texts_are_stored_on_postgres(backend: PostgresQueueBackend) -> None:
    """NUL (refused by ``text``), lone surrogates, 10 MB and a failing __str__ are stored,
    escaped and readable, and the good tasks of the same batches succeed."""
    queue = Queue(backend)
    failures: dict[str, Exception] = {
        "surrogate": ValueError("bad \ud800 text"),
        "nul": ValueError("nul \x00 byte"),
        "huge": ValueError("x" * 10_000_000),
        "unprintable": Unprintable(),
    }

    @queue.task("fail", max_attempts=1)
    async def fail(ctx: Context, which: str) -> None:
        raise failures[which]

    @queue.task("good")
    async def good(ctx: Context, n: int) -> int:
        return n

    bad = {which: (await queue.enqueue("fail", which)).id for which in failures}
    goods = [(await queue.enqueue("good", n)).id for n in range(10)]
    async with Running(queue, concurrency=8):
        for task_id in [*bad.values(), *goods]:
            await until(lambda task_id=task_id: finished(queue, task_id))
    for task_id in goods:
        info = await queue.get(task_id)
        assert info is not None
        assert info.state is TaskState.SUCCEEDED
    nul = await queue.get(bad["nul"])
    assert nul is not None
    assert nul.error == "ValueError: nul \\x00 byte"
    surrogate = await queue.get(bad["surrogate"])
    assert surrogate is not None
    assert surrogate.error == "ValueError: bad \\ud800 text"
    history = await queue.history(limit=1000)
    assert sorted(h.outcome for h in history) == ["dead"] * 4 + ["succeeded"] * 10


async def test_the_queue_keeps_time_on_the_servers_clock(
    backend: PostgresQueueBackend, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With this process's wall clock 120 s ahead, the backend's time is still the server's:
    a delay=30 task is not due, and a lease another worker holds is not taken."""
    queue = Queue(backend)

    @queue.task("t")
    async def t(ctx: Context, n: int) -> None: ...

    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 120)
    conn = await asyncpg.connect(pg_dsn)
    try:
        server: Any = await conn.fetchval("select extract(epoch from clock_timestamp())")
    finally:
        await conn.close()
    assert abs(await backend.time() - float(server)) < 1.0
    delayed = await queue.enqueue("t", 1, delay=30)
    assert (
        await backend.claim(["default"], 10, worker="a", lease=30, now=await backend.time()) == []
    )
    await queue.enqueue("t", 2)
    (held,) = await backend.claim(["default"], 10, worker="a", lease=30, now=await backend.time())
    assert held.id != delayed.id
    assert (
        await backend.claim(["default"], 10, worker="b", lease=30, now=await backend.time()) == []
    )


async def test_priorities_at_the_bounds_are_stored_on_postgres(
    backend: PostgresQueueBackend,
) -> None:
    """The documented range fits the ``integer`` column; beyond it is a ValueError at enqueue."""
    queue = Queue(backend)
    order: list[int] = []

    @queue.task("p")
    async def p(ctx: Context, n: int) -> None:
        order.append(n)

    with pytest.raises(ValueError, match="priority must be an integer from"):
        await queue.enqueue("p", 0, priority=2**31)
    await queue.enqueue("p", -1, priority=-(2**31))
    await queue.enqueue("p", 1, priority=2**31 - 1)
    async with Running(queue, concurrency=1):
        with anyio.fail_after(10):
            while len(order) < 2:  # noqa: ASYNC110
                await anyio.sleep(0.02)
    assert order == [1, -1]


async def test_the_server_clock_is_extrapolated_when_it_cannot_be_read(
    pg_dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After one reading, a failed resync extrapolates the last reading by the monotonic
    clock (callers keep working through an outage); with no reading yet, it raises."""
    backend = PostgresQueueBackend(pg_dsn, schema=schema, clock_resync=0)
    try:
        first = await backend.time()

        async def down(*args: object) -> object:
            raise OSError("connection refused")

        monkeypatch.setattr(backend._source, "pool", down)
        later = await backend.time()
        assert 0 <= later - first < 1.0
        fresh = PostgresQueueBackend(pg_dsn, schema=schema)
        monkeypatch.setattr(fresh._source, "pool", down)
        with pytest.raises(OSError, match="refused"):
            await fresh.time()
    finally:
        await backend.aclose()


async def test_purge_on_postgres(backend: PostgresQueueBackend) -> None:
    """check_purge on Postgres."""
    from ..test_queue_reliability import check_purge

    await check_purge(backend)


async def test_dispatch_order_on_postgres(backend: PostgresQueueBackend) -> None:
    """check_dispatch_order on Postgres."""
    from ..test_queue import check_dispatch_order

    await check_dispatch_order(backend)
