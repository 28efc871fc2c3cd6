"""saq side of bench_redis_queue.py; runs in the peer virtualenv.

``python saq_bench.py URL throughput TASKS CONCURRENCY`` or ``... URL latency SAMPLES
CONCURRENCY IDLE`` prints one line of JSON (see ``redis_common.py``).

Settings (saq 0.26, its Redis queue), chosen to match what tasker gets:

- One ``saq.Worker`` in this process: ``concurrency=CONCURRENCY`` and saq's defaults
  otherwise. On Redis saq does not poll for work: each of its CONCURRENCY process loops
  waits in ``BLMOVE queued active`` (``dequeue_timeout=0``: block until a job comes), so there
  is no poll interval to tune (``poll_interval`` is its Postgres queue's). Its upkeep timers
  stay at their defaults (abort check and schedule every 1 s, worker info every 10 s, sweep
  every 60 s); they are what its idle commands are.
- Enqueue: saq has no bulk enqueue on Redis; ``Queue.enqueue`` (one Lua script call each),
  50 at a time (``asyncio.gather``), not timed. Probes: ``Queue.enqueue`` on the same queue.
- Jobs keep saq's default result TTL (600 s), as tasker keeps each task's outcome.
- Throughput: from ``Worker.start()`` to the last handler's return; the worker is stopped
  with ``Worker.stop()`` once saq's ``after_process`` hook has seen every job (so their
  ``finish`` is recorded; not timed, its commands are counted).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
from typing import Any

from redis_common import Meter, emit, peer_args
from saq import Queue, Worker


async def enqueue_all(queue: Queue, tasks: int) -> None:
    for start in range(0, tasks, 50):
        await asyncio.gather(
            *(queue.enqueue("noop", index=i) for i in range(start, min(tasks, start + 50)))
        )


async def throughput(url: str, tasks: int, concurrency: int) -> dict[str, Any]:
    queue = Queue.from_url(url)
    await queue.connect()
    await enqueue_all(queue, tasks)
    runs: dict[int, int] = {}
    recorded = 0
    all_recorded = asyncio.Event()
    finished = 0.0

    async def noop(ctx: dict[str, Any], *, index: int) -> None:
        nonlocal finished
        runs[index] = runs.get(index, 0) + 1
        if len(runs) == tasks:
            finished = time.perf_counter()

    async def after_process(ctx: dict[str, Any]) -> None:
        nonlocal recorded
        recorded += 1
        if recorded == tasks:
            all_recorded.set()

    meter = Meter(url)
    meter.start()
    started = time.perf_counter()
    worker = Worker(
        queue, functions=[("noop", noop)], concurrency=concurrency, after_process=after_process
    )
    runner = asyncio.create_task(worker.start())
    await asyncio.wait_for(all_recorded.wait(), 600)
    await worker.stop()
    await runner
    window = meter.stop()
    await queue.disconnect()
    return {
        "throughput": tasks / (finished - started),
        "lost": tasks - len(runs),
        "doubled": sum(1 for n in runs.values() if n > 1),
        **window.as_json(),
    }


async def latency(url: str, samples: int, concurrency: int, idle: float) -> dict[str, Any]:
    queue = Queue.from_url(url)
    await queue.connect()
    delays: list[float] = []
    arrived = asyncio.Event()

    async def probe(ctx: dict[str, Any], *, sent: float) -> None:
        delays.append(time.time() - sent)
        arrived.set()

    worker = Worker(queue, functions=[("probe", probe)], concurrency=concurrency)
    runner = asyncio.create_task(worker.start())
    await asyncio.sleep(1.0)
    meter = Meter(url)
    meter.start()
    await asyncio.sleep(idle)
    window = meter.stop()
    for _ in range(samples):
        arrived.clear()
        await queue.enqueue("probe", sent=time.time())
        await asyncio.wait_for(arrived.wait(), 30)
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)  # the last probe's finish
    await worker.stop()
    await runner
    await queue.disconnect()
    return {"latencies": delays, "idle": window.as_json()}


async def main() -> None:
    args = peer_args()
    if args.mode == "throughput":
        result = await throughput(args.url, args.count, args.concurrency)
    else:
        result = await latency(args.url, args.count, args.concurrency, args.idle)
    emit({"version": importlib.metadata.version("saq"), **result})


if __name__ == "__main__":
    asyncio.run(main())
