"""The dashboard on a real Postgres queue and Scheduler whose DSN holds a password: every
page renders, and none shows the password (asyncio only: asyncpg)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

import tasker
import tasker.dashboard
import tasker_pg
from tasker.queue import Queue

# The Postgres tests' fixtures: how a server is found (``pg_dsn``), a fresh schema.
from .pg.conftest import pg_dsn, schema  # noqa: F401

pytestmark = pytest.mark.anyio

PASSWORD = "s3cret-dashboard-pw"  # noqa: S105 - must never reach a page


@pytest.fixture
def anyio_backend() -> str:
    """asyncpg is asyncio-only."""
    return "asyncio"


def with_password(dsn: str, password: str) -> str:
    """``dsn`` with ``password`` in its user info (the tests' server trusts local users,
    so any password is accepted, and the DSN carries one as a production DSN would)."""
    parts = urlsplit(dsn)
    user = (parts.username or "postgres").split(":")[0]
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


@pytest.fixture
async def pg_queue(pg_dsn: str, schema: str) -> AsyncIterator[tuple[Queue, tasker.Scheduler]]:  # noqa: F811
    dsn = with_password(pg_dsn, PASSWORD)
    backend = tasker_pg.PostgresQueueBackend(dsn, schema=schema)
    await backend.migrate()
    queue = Queue(backend)

    @queue.task("report", max_attempts=1)
    async def report(ctx: tasker.Context, payload: dict[str, str]) -> str:
        raise ValueError(f"cannot reach {dsn}")  # an error naming the DSN, password too

    scheduler = tasker_pg.scheduler(dsn, schema=schema, namespace=schema)

    async def nothing(ctx: tasker.Context) -> None:
        return None

    scheduler.with_schedule("nightly", tasker.schedule.Daily(3), nothing)
    await queue.enqueue("report", {"dsn": "see the error"})
    await queue.enqueue("report", {"held": "yes"}, held=True)
    try:
        yield queue, scheduler
    finally:
        await scheduler.aclose()
        await queue.aclose()


async def test_no_page_shows_the_dsn_password(pg_queue: tuple[Queue, tasker.Scheduler]) -> None:
    """Each page of a Postgres-backed dashboard (a task whose error names the DSN included)
    answers 200 and never contains the password; the backend is named by its class."""
    queue, scheduler = pg_queue
    from .test_dashboard import run_until_settled

    await run_until_settled(queue)
    (dead,) = await queue.dead()
    assert dead.error is not None  # the worker redacts what it stores already
    app = tasker.dashboard.app(queue=queue, scheduler=scheduler, authorize=lambda r: True)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dash.test") as http:
        pages = ["/", "/schedules", "/workers", "/tasks", f"/task?id={dead.id}"]
        for path in pages:
            response = await http.get(path)
            assert response.status_code == 200, (path, response.text)
            assert PASSWORD not in response.text, path
            assert "PostgresQueueBackend" in response.text
        schedules = (await http.get("/schedules")).text
        assert re.search(r'class="lock free"', schedules)
        assert "daily at 03:00 UTC" in schedules
