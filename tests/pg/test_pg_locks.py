"""tasker_pg locks against a real Postgres: keys, collisions, lost connections, trio."""

from __future__ import annotations

import asyncio

import anyio
import asyncpg
import pytest

import tasker
import tasker_pg
from tasker import StopReason
from tasker.schedule import Interval
from tasker_pg import (
    AsyncioRequiredError,
    LockKeyCollisionError,
    PostgresLockerFactory,
    PostgresStateRepository,
    advisory_key,
)

from .embedded import EmbeddedPostgres

pytestmark = pytest.mark.anyio


def test_key_is_stable_and_documented() -> None:
    """The advisory key is blake2b-64 of namespace NUL name, signed big-endian."""
    assert advisory_key("tasker", "nightly") == advisory_key("tasker", "nightly")
    assert advisory_key("tasker", "nightly") != advisory_key("other", "nightly")
    assert -(2**63) <= advisory_key("tasker", "x") < 2**63
    import hashlib

    digest = hashlib.blake2b(b"tasker\x00nightly", digest_size=8).digest()
    assert advisory_key("tasker", "nightly") == int.from_bytes(digest, "big", signed=True)


async def test_key_collision_is_noticed(
    pg_backend: tuple[PostgresLockerFactory, PostgresStateRepository], pg_dsn: str, schema: str
) -> None:
    """A name whose key is registered to another name raises instead of sharing the lock."""
    lockers, _ = pg_backend
    key = advisory_key(schema, "real-name")
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(
            f'insert into "{schema}".lock_keys (key, name) values ($1, $2)', key, "impostor"
        )
    finally:
        await conn.close()
    with pytest.raises(LockKeyCollisionError, match="impostor"):
        await lockers.locker("real-name").try_lock()


async def test_terminated_connection_is_reported_lost(
    pg_backend: tuple[PostgresLockerFactory, PostgresStateRepository], pg_dsn: str
) -> None:
    """pg_terminate_backend on the lock's connection makes wait_lost return promptly."""
    lockers, _ = pg_backend
    locker = lockers.locker("victim")
    assert await locker.try_lock()
    pid = locker.connection_pid
    admin = await asyncpg.connect(pg_dsn)
    try:
        started = anyio.current_time()
        await admin.execute("select pg_terminate_backend($1)", pid)
        with anyio.fail_after(5):
            await locker.wait_lost()
        assert anyio.current_time() - started < 3
        # The lock is free for another replica now.
        other = lockers.locker("victim")
        assert await other.try_lock()
        await other.unlock()
    finally:
        await admin.close()
        await locker.unlock()


async def test_scheduler_job_sees_lock_lost(pg_dsn: str, schema: str) -> None:
    """A scheduled run whose lock connection is killed sees LOCK_LOST and is not recorded."""
    scheduler = tasker_pg.scheduler(pg_dsn, schema=schema, namespace=schema, check_interval=0.2)
    await scheduler.repository.migrate()  # type: ignore[attr-defined]
    reasons: list[StopReason | None] = []
    running = anyio.Event()

    async def job(ctx: tasker.Context) -> None:
        running.set()
        await ctx.wait()
        reasons.append(ctx.reason)
        raise RuntimeError("stopped")

    admin = await asyncpg.connect(pg_dsn)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: tasker.run(
                    scheduler.with_schedule("lossy", Interval(0.2), job),
                    shutdown_trigger=lambda: anyio.sleep(4),
                    grace=1,
                )
            )
            with anyio.fail_after(10):
                await running.wait()
            pid = await admin.fetchval(
                "select pid from pg_locks where locktype = 'advisory' and granted"
                " and ((classid::bigint << 32) | objid::bigint) = $1",
                advisory_key(schema, "lossy"),
            )
            assert pid is not None
            await admin.execute("select pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
        await scheduler.locker_factory.aclose()
        await scheduler.repository.aclose()
    assert reasons[0] is StopReason.LOCK_LOST
    assert scheduler.statistics().runs_interrupted >= 1


def test_trio_is_refused_clearly() -> None:
    """Under trio, constructing a tasker_pg backend raises AsyncioRequiredError."""
    import trio

    async def construct() -> None:
        tasker_pg.scheduler("postgresql://postgres@127.0.0.1/test")

    with pytest.raises(AsyncioRequiredError, match="asyncio-only"):
        trio.run(construct)


def test_trio_is_refused_when_the_job_starts(pg_dsn: str) -> None:
    """A scheduler built outside any loop and run under trio raises AsyncioRequiredError
    from its job at once, instead of retrying the driver error as an outage forever."""
    scheduler = tasker_pg.scheduler(pg_dsn)
    calls: list[str] = []

    async def job(ctx: tasker.Context) -> None:
        calls.append("ran")

    scheduled = scheduler.with_schedule("trio-user", Interval(0.1), job)
    with pytest.raises(AsyncioRequiredError, match="runs on trio"):
        anyio.run(tasker.run, scheduled, backend="trio")
    assert calls == []
    assert scheduler.statistics().backend_errors == 0


async def test_key_collision_ends_the_scheduled_job(
    pg_backend: tuple[PostgresLockerFactory, PostgresStateRepository], pg_dsn: str, schema: str
) -> None:
    """A scheduled job whose name's key belongs to another name raises instead of running."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(
            f'insert into "{schema}".lock_keys (key, name) values ($1, $2)',
            advisory_key(schema, "mine"),
            "someone else",
        )
    finally:
        await conn.close()
    scheduler = tasker_pg.scheduler(pg_dsn, schema=schema, namespace=schema)
    ran: list[str] = []

    async def job(ctx: tasker.Context) -> None:
        ran.append("ran")

    try:
        with anyio.fail_after(10), pytest.raises(LockKeyCollisionError, match="someone else"):
            await tasker.run(scheduler.with_schedule("mine", Interval(0.1), job))
    finally:
        await scheduler.aclose()
    assert ran == []


class _Proxy:
    """A TCP proxy to Postgres that can go silent, like a network drop (no FIN, no RST)."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.speaking = asyncio.Event()
        self.speaking.set()
        self.server: asyncio.Server | None = None

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.speaking.wait()  # while silent, hold the bytes: nobody hears
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port


async def test_silent_network_drop_is_reported_lost(
    controlled_pg: EmbeddedPostgres, schema: str
) -> None:
    """A connection that stops answering (no FIN, no RST) counts as lost within
    check_interval + check_timeout (on a private TCP server, behind a proxy)."""
    pg_dsn = controlled_pg.dsn
    proxy = _Proxy("127.0.0.1", controlled_pg.port)
    port = await proxy.start()
    dsn = pg_dsn.replace(f":{controlled_pg.port}", f":{port}", 1)
    repository = PostgresStateRepository(pg_dsn, schema=schema)
    await repository.migrate()
    lockers = PostgresLockerFactory(
        dsn, schema=schema, namespace=schema, check_interval=0.2, check_timeout=0.5
    )
    locker = lockers.locker("dropped")
    try:
        assert await locker.try_lock()
        with anyio.move_on_after(0.6) as healthy:
            await locker.wait_lost()
        assert healthy.cancelled_caught  # a healthy connection is not reported lost
        proxy.speaking.clear()
        started = anyio.current_time()
        with anyio.fail_after(5):
            await locker.wait_lost()
        assert anyio.current_time() - started < 0.2 + 0.5 + 0.5
    finally:
        proxy.speaking.set()
        await locker.unlock()
        await lockers.aclose()
        await repository.aclose()
        assert proxy.server is not None
        proxy.server.close()
