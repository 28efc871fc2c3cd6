"""arq side of bench_redis_queue.py; runs in the peer virtualenv.

``python arq_bench.py URL throughput TASKS CONCURRENCY`` or ``... URL latency SAMPLES
CONCURRENCY IDLE`` prints one line of JSON (see ``redis_common.py``).

Settings (arq 0.28), chosen to match what tasker gets:

- One ``arq.worker.Worker`` in this process: ``max_jobs=CONCURRENCY``, ``poll_delay=0.01``
  (10 ms; arq's default is 0.5 s: arq has no blocking read or notification, its worker polls
  the queue's sorted set, so this is what its latency and throughput hang on),
  ``handle_signals=False`` (embedded), ``burst=False``; the rest arq's defaults
  (``keep_result=3600`` s: each job's result is stored, as tasker stores each task's outcome;
  ``max_tries=5``, a health-check key, ``queue_read_limit=max(5 * max_jobs, 100)``).
- Enqueue: arq has no bulk enqueue; ``ArqRedis.enqueue_job`` for each task, 50 at a time
  (``asyncio.gather``), not timed. Probes: ``enqueue_job`` through the same pool.
- Throughput: from the worker's start to the last handler's return; the worker is then
  stopped by cancelling its main task and ``Worker.close()`` (not timed; its commands are
  counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import time
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import Worker, func
from redis_common import Meter, emit, peer_args


def settings(url: str) -> RedisSettings:
    return RedisSettings.from_dsn(url)


def make_worker(url: str, concurrency: int, handlers: list[Any]) -> Worker:
    return Worker(
        functions=[func(h, name=h.__name__) for h in handlers],
        redis_settings=settings(url),
        max_jobs=concurrency,
        poll_delay=0.01,
        handle_signals=False,
        burst=False,
    )


async def stop(worker: Worker, runner: asyncio.Task[None]) -> None:
    # Let the running jobs record their results first: close() would cancel them.
    await asyncio.gather(*list(worker.tasks.values()), return_exceptions=True)
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    await worker.close()


async def enqueue_all(pool: ArqRedis, tasks: int) -> None:
    for start in range(0, tasks, 50):
        await asyncio.gather(
            *(pool.enqueue_job("noop", i) for i in range(start, min(tasks, start + 50)))
        )


async def throughput(url: str, tasks: int, concurrency: int) -> dict[str, Any]:
    pool = await create_pool(settings(url))
    await enqueue_all(pool, tasks)
    runs: dict[int, int] = {}
    done = asyncio.Event()
    finished = 0.0

    async def noop(ctx: dict[str, Any], index: int) -> None:
        nonlocal finished
        runs[index] = runs.get(index, 0) + 1
        if len(runs) == tasks:
            finished = time.perf_counter()
            done.set()

    meter = Meter(url)
    meter.start()
    started = time.perf_counter()
    worker = make_worker(url, concurrency, [noop])
    runner = asyncio.create_task(worker.async_run())
    await asyncio.wait_for(done.wait(), 600)
    await stop(worker, runner)
    window = meter.stop()
    await pool.aclose()
    return {
        "throughput": tasks / (finished - started),
        "lost": tasks - len(runs),
        "doubled": sum(1 for n in runs.values() if n > 1),
        **window.as_json(),
    }


async def latency(url: str, samples: int, concurrency: int, idle: float) -> dict[str, Any]:
    pool = await create_pool(settings(url))
    delays: list[float] = []
    arrived = asyncio.Event()

    async def probe(ctx: dict[str, Any], sent: float) -> None:
        delays.append(time.time() - sent)
        arrived.set()

    worker = make_worker(url, concurrency, [probe])
    runner = asyncio.create_task(worker.async_run())
    await asyncio.sleep(1.0)
    meter = Meter(url)
    meter.start()
    await asyncio.sleep(idle)
    window = meter.stop()
    for _ in range(samples):
        arrived.clear()
        await pool.enqueue_job("probe", time.time())
        await asyncio.wait_for(arrived.wait(), 30)
        await asyncio.sleep(0.005)
    await stop(worker, runner)
    await pool.aclose()
    return {"latencies": delays, "idle": window.as_json()}


async def main() -> None:
    args = peer_args()
    if args.mode == "throughput":
        result = await throughput(args.url, args.count, args.concurrency)
    else:
        result = await latency(args.url, args.count, args.concurrency, args.idle)
    emit({"version": importlib.metadata.version("arq"), **result})


if __name__ == "__main__":
    asyncio.run(main())
