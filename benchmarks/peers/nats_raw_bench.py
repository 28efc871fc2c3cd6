"""The physical limit of one JetStream consumer, for bench_nats_queue.py; runs in tasker's
virtualenv (nats-py is a dependency of ``tasker-jobs[nats]``).

``python nats_raw_bench.py URL throughput TASKS CONCURRENCY IDLE MONITOR BATCH`` or ``...
URL latency SAMPLES CONCURRENCY IDLE MONITOR BATCH`` prints one line of JSON (see
``nats_common.py``).

No task queue at all: a loop of JetStream publish / ``fetch(BATCH)`` / ack on one stream
(``bench_raw``, work-queue retention, file storage) with one durable pull consumer (explicit
acks, ``max_ack_pending=-1``), through nats-py, with BATCH 1 (single), 10 or 100 (batched).

- Enqueue: one JetStream publish of one small payload per task, ``publish_async`` in windows
  of 500 (each window's acks awaited together), not timed.
- Drain: one consumer calls ``fetch(BATCH)`` in a loop, runs a no-op handler per message (an
  event-loop checkpoint) and acks it (``msg.ack()``: one message, no reply awaited).
  CONCURRENCY is not used: a no-op gains nothing from running ten at a time, and this is
  the limit a worker on one consumer could reach, not a worker.
- Loop (reported beside the drain, as ``loop_throughput``): the same TASKS published while
  the consumer drains them (``publish_async`` in windows of BATCH), timed from the first
  publish to the last handler's return: publish, fetch and ack all at once, the figure the
  issue's research measured.
- Latency: the consumer waits in ``fetch(BATCH, timeout=10)``; a producer on its own
  connection publishes the ``time.time()`` of the enqueue (awaiting the stream's ack), which
  the handler subtracts from its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.errors
import nats.js
from nats.js import api
from nats_common import Meter, emit, peer_args

STREAM = "bench_raw"
SUBJECT = "bench.raw"
DURABLE = "raw"

Handler = Callable[[bytes], Awaitable[None]]


async def setup(js: nats.js.JetStreamContext) -> nats.js.JetStreamContext.PullSubscription:
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream(STREAM)
    await js.add_stream(
        api.StreamConfig(
            name=STREAM,
            subjects=[SUBJECT],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
        )
    )
    await js.add_consumer(
        STREAM,
        api.ConsumerConfig(
            durable_name=DURABLE,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=30,
            max_ack_pending=-1,
        ),
    )
    return await js.pull_subscribe_bind(DURABLE, stream=STREAM)


async def publish(js: nats.js.JetStreamContext, tasks: int, window: int) -> None:
    for start in range(0, tasks, window):
        futures = [
            await js.publish_async(SUBJECT, str(index).encode())
            for index in range(start, min(tasks, start + window))
        ]
        await asyncio.gather(*futures)


async def consume(
    sub: nats.js.JetStreamContext.PullSubscription,
    batch: int,
    handler: Handler,
    stop: asyncio.Event,
    timeout: float,
) -> None:
    while not stop.is_set():
        try:
            msgs = await sub.fetch(batch, timeout=timeout)
        except nats.errors.TimeoutError:
            continue
        for msg in msgs:
            await handler(msg.data)
            await msg.ack()


def counter(tasks: int) -> tuple[dict[int, int], asyncio.Event, list[float], Handler]:
    runs: dict[int, int] = {}
    stop = asyncio.Event()
    finished = [0.0]

    async def handler(data: bytes) -> None:
        await asyncio.sleep(0)
        index = int(data)
        runs[index] = runs.get(index, 0) + 1
        if len(runs) == tasks:
            finished[0] = time.perf_counter()
            stop.set()

    return runs, stop, finished, handler


async def throughput(url: str, tasks: int, batch: int, monitor: str | None) -> dict[str, Any]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await setup(js)
    await publish(js, tasks, 500)
    runs, stop, finished, handler = counter(tasks)
    meter = Meter(monitor)
    meter.start()
    started = time.perf_counter()
    await consume(sub, batch, handler, stop, 1.0)
    window = meter.stop()
    result = {
        "throughput": tasks / (finished[0] - started),
        "lost": tasks - len(runs),
        "doubled": sum(1 for n in runs.values() if n > 1),
        "window": None if window is None else window.as_json(),
    }
    # The loop: publish and drain at once, on a fresh stream.
    sub = await setup(js)
    runs, stop, finished, handler = counter(tasks)
    started = time.perf_counter()
    producer = asyncio.create_task(publish(js, tasks, batch))
    await consume(sub, batch, handler, stop, 1.0)
    await producer
    result["loop_throughput"] = tasks / (finished[0] - started)
    await nc.close()
    return result


async def latency(
    url: str, samples: int, batch: int, idle: float, monitor: str | None
) -> dict[str, Any]:
    nc = await nats.connect(url)
    producer_nc = await nats.connect(url)
    sub = await setup(nc.jetstream())
    producer = producer_nc.jetstream()
    delays: list[float] = []
    arrived = asyncio.Event()
    stop = asyncio.Event()

    async def handler(data: bytes) -> None:
        delays.append(time.time() - float(data))
        arrived.set()

    consumer = asyncio.create_task(consume(sub, batch, handler, stop, 10.0))
    await asyncio.sleep(1.0)
    meter = Meter(monitor)
    meter.start()
    await asyncio.sleep(idle)
    window = meter.stop()
    for _ in range(samples):
        arrived.clear()
        await producer.publish(SUBJECT, repr(time.time()).encode())
        await asyncio.wait_for(arrived.wait(), 30)
        await asyncio.sleep(0.005)
    stop.set()
    await producer.publish(SUBJECT, repr(time.time()).encode())  # ends the waiting fetch
    await asyncio.wait_for(consumer, 30)
    await nc.close()
    await producer_nc.close()
    return {"latencies": delays[:samples], "idle": None if window is None else window.as_json()}


async def main() -> None:
    args = peer_args()
    batch = int(args.variant or "1")
    if args.mode == "throughput":
        result = await throughput(args.url, args.count, batch, args.monitor)
    else:
        result = await latency(args.url, args.count, batch, args.idle, args.monitor)
    emit({"version": f"nats-py {importlib.metadata.version('nats-py')}", **result})


if __name__ == "__main__":
    asyncio.run(main())
