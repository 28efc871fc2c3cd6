"""``with_no_overlap`` on tasker_pg's advisory locks: a second holder skips; a killed lock
connection stops the job with LOCK_LOST."""

from __future__ import annotations

import anyio
import asyncpg
import pytest

import tasker
from tasker import StopReason
from tasker_pg import PostgresLockerFactory, PostgresStateRepository, advisory_key

pytestmark = pytest.mark.anyio


async def test_a_killed_lock_connection_stops_the_job_with_lock_lost(
    pg_backend: tuple[PostgresLockerFactory, PostgresStateRepository], pg_dsn: str, schema: str
) -> None:
    """pg_terminate_backend on the guard's lock connection: the job sees LOCK_LOST, the call
    returns, and the lock is free for the next holder."""
    lockers, _ = pg_backend
    running = anyio.Event()
    reasons: list[StopReason | None] = []

    async def job(ctx: tasker.Context) -> None:
        running.set()
        await ctx.wait()
        reasons.append(ctx.reason)

    guarded = tasker.with_no_overlap(lockers, "pg-guarded", job)
    admin = await asyncpg.connect(pg_dsn)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: tasker.run(guarded, grace=1))
            with anyio.fail_after(10):
                await running.wait()
            # A second holder (another replica) skips while the first holds the lock.
            skipped: list[str] = []

            async def never(ctx: tasker.Context) -> None:
                skipped.append("ran")

            await tasker.run(tasker.with_no_overlap(lockers, "pg-guarded", never))
            assert skipped == []
            pid = await admin.fetchval(
                "select pid from pg_locks where locktype = 'advisory' and granted"
                " and ((classid::bigint << 32) | objid::bigint) = $1",
                advisory_key(schema, "pg-guarded"),
            )
            assert pid is not None
            await admin.execute("select pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    assert reasons == [StopReason.LOCK_LOST]
    again = lockers.locker("pg-guarded")
    assert await again.try_lock()
    await again.unlock()
