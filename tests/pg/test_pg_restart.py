"""A Postgres restart during a run, on a private server the test controls."""

from __future__ import annotations

import itertools
import logging
from datetime import datetime, timedelta

import anyio
import pytest

import tasker
import tasker_pg
from tasker import Backoff, StopReason
from tasker.schedule import Interval

from .embedded import EmbeddedPostgres

pytestmark = pytest.mark.anyio

INTERVAL = 0.2


async def test_server_restart_during_a_run(
    controlled_pg: EmbeddedPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    """A restart mid-run stops that run (LOCK_LOST); the outage is logged once per schedule
    loop without the password; afterwards every slot runs once (no doubles, no gaps beyond
    the one catch-up run that covers the outage)."""
    caplog.set_level(logging.INFO)
    dsn = controlled_pg.dsn.replace("postgres@", "postgres:s3cret@", 1)
    backoff = Backoff(initial=0.1, maximum=0.4, jitter=0)
    replicas = [
        tasker_pg.scheduler(dsn, check_interval=0.2, lock_retry=0.05, backend_backoff=backoff)
        for _ in range(2)
    ]
    await replicas[0].migrate()
    done: list[datetime] = []
    interrupted: list[tuple[datetime, StopReason | None]] = []
    in_long_run = anyio.Event()

    async def job(ctx: tasker.Context) -> None:
        slot = tasker.scheduled_slot()
        assert slot is not None
        if len(done) == 5 and not in_long_run.is_set():
            in_long_run.set()
            await ctx.wait()
            interrupted.append((slot, ctx.reason))
            raise RuntimeError("interrupted before the work was done")
        done.append(slot)

    async def restart_and_stop() -> None:
        with anyio.fail_after(15):
            await in_long_run.wait()
        await anyio.to_thread.run_sync(controlled_pg.stop)
        await anyio.sleep(1.0)
        await anyio.to_thread.run_sync(controlled_pg.start)
        await anyio.sleep(2.0)

    jobs = [r.with_schedule("restarted", Interval(INTERVAL), job) for r in replicas]
    try:
        await tasker.run(tasker.concurrence(*jobs), shutdown_trigger=restart_and_stop, grace=1)
        state = await replicas[0].repository.get("restarted")
    finally:
        for replica in replicas:
            await replica.aclose()

    assert len(interrupted) == 1
    lost_slot, reason = interrupted[0]
    assert reason is StopReason.LOCK_LOST
    assert len(done) == len(set(done)), "a slot ran twice"
    ordered = sorted(done)
    gaps = [b - a for a, b in itertools.pairwise(ordered) if b - a != timedelta(seconds=INTERVAL)]
    assert len(gaps) <= 1, gaps  # the outage's slots are covered by one catch-up run
    assert ordered[-1] > lost_slot  # the interrupted slot was covered after the restart
    assert len([s for s in ordered if s > lost_slot]) >= 5  # and the schedule went on
    assert state is not None
    assert state.run_count == len(done)
    assert state.last_slot == ordered[-1]
    outage = [r for r in caplog.records if "backend unavailable" in r.getMessage()]
    assert 1 <= len(outage) <= len(replicas), [r.getMessage() for r in outage]
    recovered = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(recovered) == len(outage)
    assert "s3cret" not in caplog.text
    assert sum(r.runs_interrupted for r in (x.statistics() for x in replicas)) == 1


async def test_start_while_the_server_is_down(
    controlled_pg: EmbeddedPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica started during an outage waits (one warning, no password) and runs the
    schedule once the server is back, each slot once."""
    caplog.set_level(logging.INFO)
    dsn = controlled_pg.dsn.replace("postgres@", "postgres:s3cret@", 1)
    scheduler = tasker_pg.scheduler(
        dsn, check_interval=0.2, lock_retry=0.05, backend_backoff=Backoff.fixed(0.1)
    )
    await scheduler.migrate()
    await scheduler.aclose()
    await anyio.to_thread.run_sync(controlled_pg.stop)
    done: list[datetime] = []

    async def job(ctx: tasker.Context) -> None:
        slot = tasker.scheduled_slot()
        assert slot is not None
        done.append(slot)

    async def outage_then_run() -> None:
        await anyio.sleep(1.0)
        assert done == []
        await anyio.to_thread.run_sync(controlled_pg.start)
        with anyio.fail_after(10):
            while len(done) < 5:  # noqa: ASYNC110 - the job appends; polling keeps it simple
                await anyio.sleep(0.05)

    try:
        await tasker.run(
            scheduler.with_schedule("late", Interval(INTERVAL), job),
            shutdown_trigger=outage_then_run,
        )
    finally:
        await scheduler.aclose()
    assert len(done) == len(set(done))
    waits = [r for r in caplog.records if "cannot check its lock key yet" in r.getMessage()]
    assert len(waits) == 1
    assert "s3cret" not in caplog.text
