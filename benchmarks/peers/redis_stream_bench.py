"""The physical limit of one Redis stream, for bench_redis_queue.py; runs in the peer virtualenv.

``python redis_stream_bench.py URL throughput TASKS CONCURRENCY`` or ``... URL latency
SAMPLES CONCURRENCY IDLE`` prints one line of JSON (see ``redis_common.py``).

No task queue at all: a raw loop of batched ``XADD`` / ``XREADGROUP`` / ``XACK`` on one
stream with one consumer group, through redis-py's asyncio client (hiredis parser).

- Enqueue: ``XADD`` of one small field per task, in pipelines of 500 (one round trip each),
  to a stream whose group was created at id ``0`` first.
- Drain: one consumer reads up to ``BATCH`` (100) entries per ``XREADGROUP`` (``BLOCK``),
  runs a no-op handler per entry (an event-loop checkpoint) and acks the whole batch with one
  ``XACK`` sent in the same pipeline (round trip) as its next ``XREADGROUP``: about two
  commands per hundred tasks. CONCURRENCY is not used: a no-op gains nothing from running
  ten at a time, and this is the limit a worker on one stream could reach, not a worker.
- Latency: the consumer waits in ``XREADGROUP ... BLOCK 10000``; a producer on its own
  connection ``XADD``\\ s the ``time.time()`` of the enqueue, which the handler subtracts from
  its own.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
from typing import Any

import redis.asyncio as redis
from redis_common import Meter, emit, peer_args

STREAM = "raw:stream"
GROUP = "raw"
BATCH = 100


async def consume(client: redis.Redis, handler: Any, block_ms: int, stop: asyncio.Event) -> None:
    pending: list[bytes] = []
    while not stop.is_set():
        async with client.pipeline(transaction=False) as pipe:
            if pending:
                pipe.xack(STREAM, GROUP, *pending)
            pipe.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=BATCH, block=block_ms)
            replies = await pipe.execute()
        pending = []
        for _, entries in replies[-1] or []:
            for entry_id, fields in entries:
                await handler(fields)
                pending.append(entry_id)
    if pending:
        await client.xack(STREAM, GROUP, *pending)


async def throughput(url: str, tasks: int) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    await client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    for start in range(0, tasks, 500):
        async with client.pipeline(transaction=False) as pipe:
            for index in range(start, min(tasks, start + 500)):
                pipe.xadd(STREAM, {"t": index})
            await pipe.execute()
    runs: dict[int, int] = {}
    stop = asyncio.Event()
    finished = 0.0

    async def handler(fields: dict[bytes, bytes]) -> None:
        nonlocal finished
        await asyncio.sleep(0)
        index = int(fields[b"t"])
        runs[index] = runs.get(index, 0) + 1
        if len(runs) == tasks:
            finished = time.perf_counter()
            stop.set()

    meter = Meter(url)
    meter.start()
    started = time.perf_counter()
    await consume(client, handler, 1000, stop)
    window = meter.stop()
    await client.aclose()
    return {
        "throughput": tasks / (finished - started),
        "lost": tasks - len(runs),
        "doubled": sum(1 for n in runs.values() if n > 1),
        **window.as_json(),
    }


async def latency(url: str, samples: int, idle: float) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    producer = redis.Redis.from_url(url)
    await client.xgroup_create(STREAM, GROUP, id="$", mkstream=True)
    delays: list[float] = []
    arrived = asyncio.Event()
    stop = asyncio.Event()

    async def handler(fields: dict[bytes, bytes]) -> None:
        delays.append(time.time() - float(fields[b"t"]))
        arrived.set()

    consumer = asyncio.create_task(consume(client, handler, 10000, stop))
    await producer.ping()
    await asyncio.sleep(1.0)
    meter = Meter(url)
    meter.start()
    await asyncio.sleep(idle)
    window = meter.stop()
    for _ in range(samples):
        arrived.clear()
        await producer.xadd(STREAM, {"t": repr(time.time())})
        await asyncio.wait_for(arrived.wait(), 30)
        await asyncio.sleep(0.005)
    stop.set()
    await producer.xadd(STREAM, {"t": repr(time.time())})  # wakes the blocked read
    await asyncio.wait_for(consumer, 30)
    await client.aclose()
    await producer.aclose()
    return {"latencies": delays[:samples], "idle": window.as_json()}


async def main() -> None:
    args = peer_args()
    if args.mode == "throughput":
        result = await throughput(args.url, args.count)
    else:
        result = await latency(args.url, args.count, args.idle)
    emit({"version": f"redis-py {importlib.metadata.version('redis')}", **result})


if __name__ == "__main__":
    asyncio.run(main())
