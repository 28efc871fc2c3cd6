"""taskiq + taskiq-redis (its stream broker) side of bench_redis_queue.py; peer virtualenv.

``python taskiq_redis_bench.py URL throughput TASKS CONCURRENCY`` or ``... URL latency
SAMPLES CONCURRENCY IDLE`` prints one line of JSON (see ``redis_common.py``).

Settings (taskiq 0.12 with taskiq-redis 1.0; see the note below), chosen to match what
tasker gets:

- ``taskiq_redis.RedisStreamBroker(URL)``: one stream with a consumer group, acknowledged
  messages (``XACK`` after each task), its defaults otherwise (``xread_count=100``,
  ``xread_block=2000`` ms: a blocking read, so no poll interval to tune; after each read it
  takes a lock and runs ``XAUTOCLAIM`` for stale messages). No result backend: taskiq's
  default keeps no results.
- One ``taskiq.receiver.Receiver`` in this process, as ``taskiq worker`` builds it:
  ``max_async_tasks=CONCURRENCY``, ``max_prefetch=0`` and ``ack_type=WHEN_SAVED`` (the CLI's
  defaults), ``broker.is_worker_process = True``. The broker is started (its consumer group
  created at ``$``) before the tasks are enqueued, so the receiver does not start it again.
- Enqueue: taskiq has no bulk enqueue; ``task.kiq()`` (one ``XADD``) for each, 50 at a time
  (``asyncio.gather``), not timed. Probes: ``kiq()`` through the same broker.
- Throughput: from the receiver's start to the last handler's return; then the receiver's
  finish event is set and it is awaited (it acks what it ran; not timed, counted).

taskiq-redis 1.2 requires redis-py 8 while arq requires redis-py below 6, so one virtualenv
holds taskiq-redis 1.0.9, the newest that works beside arq, with taskiq 0.12.6 (taskiq 0.13
removed what taskiq-redis 1.0.9 imports).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
from typing import Any

from redis_common import Meter, emit, peer_args
from taskiq.receiver import Receiver
from taskiq_redis import RedisStreamBroker


def version() -> str:
    return (
        f"{importlib.metadata.version('taskiq')}+redis {importlib.metadata.version('taskiq-redis')}"
    )


async def run_receiver(broker: RedisStreamBroker, concurrency: int) -> tuple[Any, asyncio.Event]:
    finish = asyncio.Event()
    receiver = Receiver(broker, max_async_tasks=concurrency, max_prefetch=0, run_startup=False)
    return asyncio.create_task(receiver.listen(finish)), finish


async def throughput(url: str, tasks: int, concurrency: int) -> dict[str, Any]:
    broker = RedisStreamBroker(url)
    runs: dict[int, int] = {}
    done = asyncio.Event()
    finished = 0.0

    @broker.task(task_name="noop")
    async def noop(index: int) -> None:
        nonlocal finished
        runs[index] = runs.get(index, 0) + 1
        if len(runs) == tasks:
            finished = time.perf_counter()
            done.set()

    broker.is_worker_process = True
    await broker.startup()
    for start in range(0, tasks, 50):
        await asyncio.gather(*(noop.kiq(i) for i in range(start, min(tasks, start + 50))))
    meter = Meter(url)
    meter.start()
    started = time.perf_counter()
    runner, finish = await run_receiver(broker, concurrency)
    await asyncio.wait_for(done.wait(), 600)
    finish.set()
    await asyncio.wait_for(runner, 30)
    window = meter.stop()
    await broker.shutdown()
    return {
        "throughput": tasks / (finished - started),
        "lost": tasks - len(runs),
        "doubled": sum(1 for n in runs.values() if n > 1),
        **window.as_json(),
    }


async def latency(url: str, samples: int, concurrency: int, idle: float) -> dict[str, Any]:
    broker = RedisStreamBroker(url)
    delays: list[float] = []
    arrived = asyncio.Event()

    @broker.task(task_name="probe")
    async def probe(sent: float) -> None:
        delays.append(time.time() - sent)
        arrived.set()

    broker.is_worker_process = True
    await broker.startup()
    runner, finish = await run_receiver(broker, concurrency)
    await asyncio.sleep(1.0)
    meter = Meter(url)
    meter.start()
    await asyncio.sleep(idle)
    window = meter.stop()
    for _ in range(samples):
        arrived.clear()
        await probe.kiq(time.time())
        await asyncio.wait_for(arrived.wait(), 30)
        await asyncio.sleep(0.005)
    finish.set()
    await asyncio.wait_for(runner, 30)
    await broker.shutdown()
    return {"latencies": delays, "idle": window.as_json()}


async def main() -> None:
    args = peer_args()
    if args.mode == "throughput":
        result = await throughput(args.url, args.count, args.concurrency)
    else:
        result = await latency(args.url, args.count, args.concurrency, args.idle)
    emit({"version": version(), **result})


if __name__ == "__main__":
    asyncio.run(main())
