"""APScheduler 4 side of bench_pg_scheduler.py; runs in the peer virtualenv, not tasker's.

``python apscheduler_replicas.py DSN SECONDS REPLICAS INTERVAL [idle]`` runs REPLICAS
AsyncScheduler instances sharing one SQLAlchemy (asyncpg) data store and an asyncpg event
broker, with one interval schedule (``idle``: its first fire time is six hours away). It
prints ``started`` once every replica runs, then, at the end, a JSON list of
[scheduled_fire_time, started_at] per run.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta

from apscheduler import AsyncScheduler, ConflictPolicy, current_job
from apscheduler.datastores.sqlalchemy import SQLAlchemyDataStore
from apscheduler.eventbrokers.asyncpg import AsyncpgEventBroker
from apscheduler.triggers.interval import IntervalTrigger

RUNS: list[list[str]] = []


async def job() -> None:
    info = current_job.get()
    RUNS.append([info.scheduled_fire_time.isoformat(), datetime.now(UTC).isoformat()])


async def replica(
    dsn: str, deadline: float, interval: float, index: int, idle: bool, started: asyncio.Queue[int]
) -> None:
    # Staggered: APScheduler's concurrent first start races on CREATE TYPE.
    await asyncio.sleep(index * 0.5)
    url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    store = SQLAlchemyDataStore(url)
    broker = AsyncpgEventBroker(dsn)
    start_time = datetime.now(UTC) + timedelta(hours=6 if idle else 0)
    async with AsyncScheduler(store, broker) as scheduler:
        await scheduler.add_schedule(
            job,
            IntervalTrigger(seconds=interval, start_time=start_time),
            id="bench",
            conflict_policy=ConflictPolicy.do_nothing,
        )
        await scheduler.start_in_background()
        started.put_nowait(index)
        await asyncio.sleep(deadline - asyncio.get_running_loop().time())


async def main() -> None:
    dsn, seconds, replicas, interval = (
        sys.argv[1],
        float(sys.argv[2]),
        int(sys.argv[3]),
        float(sys.argv[4]),
    )
    idle = sys.argv[5:] == ["idle"]
    # Every replica runs for ``seconds`` after the last one started.
    deadline = asyncio.get_running_loop().time() + seconds + replicas * 0.5 + 1
    started: asyncio.Queue[int] = asyncio.Queue()

    async def announce() -> None:
        for _ in range(replicas):
            await started.get()
        print("started", flush=True)

    await asyncio.gather(
        announce(), *(replica(dsn, deadline, interval, i, idle, started) for i in range(replicas))
    )
    print(json.dumps(RUNS), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
