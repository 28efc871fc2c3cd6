"""``first_run="immediately"`` and ``forget`` on tasker_pg: replicas on one database."""

from __future__ import annotations

from datetime import datetime

import anyio
import pytest

import tasker
import tasker_pg
from tasker.schedule import Interval

pytestmark = pytest.mark.anyio


async def test_three_replicas_make_one_first_run_and_forget_clears_it(
    pg_dsn: str, schema: str
) -> None:
    """Three PostgresSchedulers start one stateless name together: one first run, stored
    with its moment as ``last_slot``; ``forget`` deletes the row (no regular slot falls in
    the test: the interval is 10^7 seconds)."""
    replicas = [
        tasker_pg.scheduler(pg_dsn, schema=schema, namespace=schema, lock_retry=0.05)
        for _ in range(3)
    ]
    await replicas[0].migrate()
    slots: list[datetime | None] = []

    async def job(ctx: tasker.Context) -> None:
        slots.append(tasker.scheduled_slot())

    jobs = [
        replica.with_schedule("once", Interval(1e7), job, first_run="immediately")
        for replica in replicas
    ]
    try:
        await tasker.run(tasker.concurrence(*jobs), shutdown_trigger=lambda: anyio.sleep(1.5))
        assert len(slots) == 1
        state = await replicas[1].repository.get("once")
        assert state is not None
        assert (state.last_slot, state.run_count) == (slots[0], 1)
        assert sum(replica.statistics().first_runs for replica in replicas) == 1
        await replicas[2].forget("once")
        assert await replicas[0].repository.get("once") is None
    finally:
        for replica in replicas:
            await replica.aclose()
