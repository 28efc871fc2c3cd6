"""pgqueuer side of bench_pg_queue.py; runs in the peer virtualenv.

``python pgqueuer_bench.py DSN TASKS CONCURRENCY SAMPLES`` prints JSON with throughput
(no-op jobs, enqueued up front), statements per job while draining (counted in asyncpg the
same way bench_pg_queue.py counts tasker_pg's) and enqueue-to-start latencies with idle
workers.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import sys
import time
from collections import Counter
from typing import Any

import asyncpg
import asyncpg.connection
from pgqueuer import AsyncpgDriver, PgQueuer, Queries

SENT: Counter[str] = Counter()


def count_statements() -> None:
    """Count every statement asyncpg sends from this process (as bench_pg_queue.py does)."""
    connection = asyncpg.connection.Connection
    for method in ("_execute", "_executemany"):
        original = getattr(connection, method)

        def counting(self: Any, query: str, *a: Any, _orig: Any = original, **k: Any) -> Any:
            SENT["statements"] += 1
            return _orig(self, query, *a, **k)

        setattr(connection, method, counting)


async def throughput(dsn: str, tasks: int, concurrency: int) -> tuple[float, float]:
    conn = await asyncpg.connect(dsn)
    driver = AsyncpgDriver(conn)
    queries = Queries(driver)
    await queries.install()
    await queries.enqueue(["noop"] * tasks, [None] * tasks, [0] * tasks)
    pgq = PgQueuer(driver)
    done = 0

    @pgq.entrypoint("noop")
    async def noop(job: object) -> None:
        nonlocal done
        done += 1
        if done == tasks:
            pgq.shutdown.set()

    SENT.clear()
    start = time.perf_counter()
    await pgq.run(batch_size=max(1, concurrency // 2), max_concurrent_tasks=concurrency)
    elapsed = time.perf_counter() - start
    await conn.close()
    return tasks / elapsed, SENT["statements"] / tasks


async def latency(dsn: str, samples: int, concurrency: int) -> list[float]:
    conn = await asyncpg.connect(dsn)
    enqueue_conn = await asyncpg.connect(dsn)
    pgq = PgQueuer(AsyncpgDriver(conn))
    queries = Queries(AsyncpgDriver(enqueue_conn))
    delays: list[float] = []
    arrived = asyncio.Event()

    @pgq.entrypoint("probe")
    async def probe(job: object) -> None:
        sent = float(job.payload.decode())  # type: ignore[attr-defined]
        delays.append(time.time() - sent)
        arrived.set()

    runner = asyncio.create_task(
        pgq.run(batch_size=max(1, concurrency // 2), max_concurrent_tasks=concurrency)
    )
    await asyncio.sleep(0.5)
    for _ in range(samples):
        arrived.clear()
        await queries.enqueue("probe", str(time.time()).encode())
        await asyncio.wait_for(arrived.wait(), 30)
        await asyncio.sleep(0.005)
    pgq.shutdown.set()
    await runner
    await conn.close()
    await enqueue_conn.close()
    return delays


async def main() -> None:
    dsn, tasks, concurrency, samples = (
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        int(sys.argv[4]),
    )
    count_statements()
    rate, per_task = await throughput(dsn, tasks, concurrency)
    delays = await latency(dsn, samples, concurrency)
    print(
        json.dumps(
            {
                "throughput": rate,
                "latencies": delays,
                "statements_per_task": per_task,
                "version": importlib.metadata.version("pgqueuer"),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
