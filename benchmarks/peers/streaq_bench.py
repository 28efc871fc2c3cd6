"""streaq side of bench_redis_queue.py; runs in the peer virtualenv.

``python streaq_bench.py URL throughput TASKS CONCURRENCY`` or ``... URL latency SAMPLES
CONCURRENCY IDLE`` prints one line of JSON (see ``redis_common.py``).

Settings (streaq 7.2, on coredis, run on anyio's asyncio backend), chosen to match what
tasker gets:

- One ``streaq.Worker(redis_url=URL, concurrency=CONCURRENCY, handle_signals=False)`` run in
  this process with ``run_async()``; streaq's defaults otherwise (``prefetch`` =
  concurrency, ``idle_timeout=60`` s, pickle, results kept 5 minutes, ``max_tries=3``). It
  waits in a blocking ``XREADGROUP`` (streaq reads with a Lua script first, then blocks), so
  there is no poll interval to tune. On a server older than 8.4 streaq uses its legacy read
  path (a Lua script around ``XREADGROUP``/``XAUTOCLAIM``), as it does here on Redis 7.
- Enqueue: ``Worker.enqueue_many`` (streaq's bulk enqueue: one pipeline), in batches of 500,
  from a second ``Worker`` object used only as a producer (``enqueue_unsafe``, streaq's way to
  enqueue from code that does not run the tasks), not timed. Probes: ``enqueue_unsafe`` on
  that producer, awaited.
- Throughput: from ``run_async()`` to the last handler's return. The worker runs in burst
  mode (``worker.burst = True``, as ``streaq run --burst`` sets it; on this server it does
  not change how streaq reads), so it stops by itself once the stream is empty and its tasks
  are finished (not timed; its commands are counted). Cancelling it from outside instead
  can cut its last result pipelines short (coredis then raises "Connection lost").
"""

from __future__ import annotations

import importlib.metadata
import time
from typing import Any

import anyio
from redis_common import Meter, emit, peer_args
from streaq import Worker


async def throughput(url: str, tasks: int, concurrency: int) -> dict[str, Any]:
    producer = Worker(redis_url=url, handle_signals=False)
    worker = Worker(redis_url=url, concurrency=concurrency, handle_signals=False)
    runs: dict[int, int] = {}
    finished = 0.0

    @worker.task(name="noop")
    async def noop(index: int) -> None:
        nonlocal finished
        runs[index] = runs.get(index, 0) + 1
        if len(runs) == tasks:
            finished = time.perf_counter()

    async with producer:
        for start in range(0, tasks, 500):
            await producer.enqueue_many(
                [producer.enqueue_unsafe("noop", i) for i in range(start, min(tasks, start + 500))]
            )
    meter = Meter(url)
    meter.start()
    started = time.perf_counter()
    worker.burst = True  # what ``streaq run --burst`` sets: it stops once the stream is empty
    with anyio.fail_after(600):
        await worker.run_async()
    window = meter.stop()
    return {
        "throughput": tasks / (finished - started),
        "lost": tasks - len(runs),
        "doubled": sum(1 for n in runs.values() if n > 1),
        **window.as_json(),
    }


async def latency(url: str, samples: int, concurrency: int, idle: float) -> dict[str, Any]:
    producer = Worker(redis_url=url, handle_signals=False)
    worker = Worker(redis_url=url, concurrency=concurrency, handle_signals=False)
    delays: list[float] = []
    arrived = anyio.Event()

    @worker.task(name="probe")
    async def probe(sent: float) -> None:
        delays.append(time.time() - sent)
        arrived.set()

    async with producer, anyio.create_task_group() as tg:
        tg.start_soon(worker.run_async)
        await anyio.sleep(1.0)
        meter = Meter(url)
        meter.start()
        await anyio.sleep(idle)
        window = meter.stop()
        for _ in range(samples):
            arrived = anyio.Event()
            await producer.enqueue_unsafe("probe", time.time())
            with anyio.fail_after(30):
                await arrived.wait()
            await anyio.sleep(0.005)
        await anyio.sleep(0.2)  # the last probe's result pipeline
        tg.cancel_scope.cancel()
    return {"latencies": delays, "idle": window.as_json()}


async def main() -> None:
    args = peer_args()
    if args.mode == "throughput":
        result = await throughput(args.url, args.count, args.concurrency)
    else:
        result = await latency(args.url, args.count, args.concurrency, args.idle)
    emit({"version": importlib.metadata.version("streaq"), **result})


if __name__ == "__main__":
    anyio.run(main)
