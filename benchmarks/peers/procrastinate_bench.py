"""procrastinate side of bench_pg_queue.py; runs in the peer virtualenv.

``python procrastinate_bench.py DSN TASKS CONCURRENCY SAMPLES`` prints JSON with throughput
(no-op jobs, enqueued up front), statements per job while draining, and enqueue-to-start
latencies with an idle worker.

Settings (procrastinate 3.x), chosen to match what tasker_pg and pgqueuer get:

- ``App(connector=PsycopgConnector(conninfo=DSN, min_size=CONCURRENCY + 1,
  max_size=CONCURRENCY + 1))``: enough pooled connections for the fetch loop plus one
  ``finish_job`` per running job, so the pool never queues; connections opened up front.
  The connector's default pool liveness check (an empty query on each checkout) is kept.
- Schema: ``app.schema_manager.apply_schema_async()`` into the fresh database.
- One worker, ``app.run_worker_async(concurrency=CONCURRENCY, listen_notify=True,
  fetch_job_polling_interval=1.0, wait=True, install_signal_handlers=False)``; the other
  options are procrastinate's defaults (``delete_jobs="never"``: a finished job's row is
  updated and kept, as tasker_pg keeps its finished tasks; abort polling every 5 s,
  heartbeat every 10 s). The polling interval is the same 1 s tasker_pg's throughput
  worker uses; it is kept at 1 s for the latency phase too (tasker_pg uses 30 s there), so
  a probe can only arrive sooner for it, never later.
- Enqueue: ``task.batch_defer_async`` in batches of 500 (tasker_pg also enqueues in bulk
  batches of 500), not timed. Probes: ``task.defer_async`` through the app's pool, which
  fires procrastinate's insert trigger and its ``NOTIFY``.
- The worker is stopped by cancelling ``run_worker_async`` (procrastinate's documented way
  to stop an embedded worker: it stops fetching and waits for running jobs to finish);
  throughput time includes this shutdown, as it does for the other two.

Statements: every ``psycopg.AsyncCursor.execute``/``executemany`` while draining, except
the pool's empty liveness-check queries, which are counted separately (``checks``).
psycopg's implicit ``BEGIN``/``COMMIT`` are not counted; tasker_pg's count (in asyncpg)
leaves out its ``BEGIN``/``COMMIT`` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from typing import Any

import procrastinate
import psycopg

SENT: Counter[str] = Counter()


def count_statements() -> None:
    """Count every statement psycopg's async cursors send from this process."""
    for method in ("execute", "executemany"):
        original = getattr(psycopg.AsyncCursor, method)

        async def counting(self: Any, query: Any, *a: Any, _orig: Any = original, **k: Any) -> Any:
            SENT["checks" if query == "" else "statements"] += 1
            return await _orig(self, query, *a, **k)

        setattr(psycopg.AsyncCursor, method, counting)


def make_app(dsn: str, concurrency: int) -> procrastinate.App:
    connector = procrastinate.PsycopgConnector(
        conninfo=dsn, min_size=concurrency + 1, max_size=concurrency + 1
    )
    return procrastinate.App(connector=connector)


WORKER_OPTIONS: dict[str, Any] = {
    "listen_notify": True,
    "fetch_job_polling_interval": 1.0,
    "wait": True,
    "install_signal_handlers": False,
}


async def stop(worker: asyncio.Task[None]) -> None:
    worker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await worker


async def throughput(dsn: str, tasks: int, concurrency: int) -> tuple[float, float, float]:
    app = make_app(dsn, concurrency)
    done = 0
    finished = asyncio.Event()

    @app.task(name="noop")
    async def noop() -> None:
        nonlocal done
        done += 1
        if done == tasks:
            finished.set()

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        for start in range(0, tasks, 500):
            await noop.batch_defer_async(*[{} for _ in range(min(500, tasks - start))])
        SENT.clear()
        started = time.perf_counter()
        worker = asyncio.create_task(
            app.run_worker_async(concurrency=concurrency, **WORKER_OPTIONS)
        )
        await finished.wait()
        await stop(worker)
        elapsed = time.perf_counter() - started
    return tasks / elapsed, SENT["statements"] / tasks, SENT["checks"] / tasks


async def latency(dsn: str, samples: int, concurrency: int) -> list[float]:
    app = make_app(dsn, concurrency)
    delays: list[float] = []
    arrived = asyncio.Event()

    @app.task(name="probe")
    async def probe(sent: float) -> None:
        delays.append(time.time() - sent)
        arrived.set()

    async with app.open_async():
        worker = asyncio.create_task(
            app.run_worker_async(concurrency=concurrency, **WORKER_OPTIONS)
        )
        await asyncio.sleep(0.5)
        for _ in range(samples):
            arrived.clear()
            await probe.defer_async(sent=time.time())
            await asyncio.wait_for(arrived.wait(), 30)
            await asyncio.sleep(0.005)
        await stop(worker)
    return delays


async def main() -> None:
    dsn, tasks, concurrency, samples = (
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        int(sys.argv[4]),
    )
    count_statements()
    rate, per_task, checks = await throughput(dsn, tasks, concurrency)
    delays = await latency(dsn, samples, concurrency)
    print(
        json.dumps(
            {
                "throughput": rate,
                "latencies": delays,
                "statements_per_task": per_task,
                "checks_per_task": checks,
                "version": procrastinate.__version__,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
