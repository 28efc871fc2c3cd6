"""taskiq + taskiq-aio-pika (its RabbitMQ broker) side of bench_amqp_queue.py; runs in the
peer virtualenv.

``python taskiq_aiopika_bench.py throughput TASKS CONCURRENCY NAME`` or ``... latency SAMPLES
CONCURRENCY NAME`` prints one line of JSON (see ``amqp_common.py``).

Settings (taskiq 0.13 with taskiq-aio-pika 0.6 on aio-pika), chosen to match what tasker
gets:

- ``taskiq_aio_pika.AioPikaBroker(URL, exchange=Exchange(name=NAME),
  task_queues=[Queue(name=NAME)], dead_letter_queue=Queue(name=f"{NAME}.dead_letter"))``:
  its defaults but for the names: a durable topic exchange, a quorum queue (taskiq-aio-pika
  0.6's default, tasker_amqp's kind too) bound by its own name, persistent messages
  published on an aio-pika channel with publisher confirms (aio-pika's default), the
  consumer's ``qos=10`` (its default prefetch, as tasker_amqp's is the worker's
  concurrency). No result backend: taskiq's default keeps no results.
- One ``taskiq.receiver.Receiver`` in this process, as ``taskiq worker`` builds it:
  ``max_async_tasks=CONCURRENCY``, ``max_prefetch=0`` and the CLI's default ack type (when
  saved: after the task ran, its result not stored), ``broker.is_worker_process = True``.
  The broker is started (its exchange and queues declared) before the tasks are enqueued,
  so the receiver does not start it again.
- Enqueue: taskiq has no bulk enqueue; ``task.kiq()`` (one confirmed publish) for each, 50 at
  a time (``asyncio.gather``), not timed. Probes: ``kiq()`` through the same broker.
- Throughput: from the receiver's start to the last handler's return; then the receiver's
  finish event is set and it is awaited (not timed).

At the end the script deletes its queues and exchange (the harness does too, whatever
happened).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import time
from typing import Any

import aio_pika
from amqp_common import WARM_UP, Stopwatch, emit, made, peer_args, url
from taskiq.receiver import Receiver
from taskiq_aio_pika import AioPikaBroker, Exchange, Queue


def version() -> str:
    taskiq, broker = (importlib.metadata.version(name) for name in ("taskiq", "taskiq-aio-pika"))
    return f"{taskiq}+aio-pika {broker}"


def make_broker(name: str) -> AioPikaBroker:
    return AioPikaBroker(
        url(),
        exchange=Exchange(name=name),
        task_queues=[Queue(name=name)],
        dead_letter_queue=Queue(name=f"{name}.dead_letter"),
    )


async def delete_topology(name: str) -> None:
    queues, exchanges = made("taskiq", name)
    connection = await aio_pika.connect(url())
    try:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)
    finally:
        await connection.close()


async def run_receiver(
    broker: AioPikaBroker, concurrency: int
) -> tuple[asyncio.Task[None], asyncio.Event]:
    finish = asyncio.Event()
    receiver = Receiver(broker, max_async_tasks=concurrency, max_prefetch=0, run_startup=False)
    return asyncio.create_task(receiver.listen(finish)), finish


async def stop_receiver(runner: asyncio.Task[None], finish: asyncio.Event) -> None:
    finish.set()
    try:
        await asyncio.wait_for(asyncio.shield(runner), 10)
    except TimeoutError:  # a consumer waiting for a delivery may never look: stop it
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def throughput(name: str, tasks: int, concurrency: int) -> dict[str, Any]:
    broker = make_broker(name)
    runs: dict[int, int] = {}
    done = asyncio.Event()
    watch = Stopwatch()

    @broker.task(task_name="noop")
    async def noop(index: int) -> None:
        runs[index] = runs.get(index, 0) + 1
        if len(runs) == tasks:
            watch.stop()
            done.set()

    broker.is_worker_process = True
    await broker.startup()
    try:
        for start in range(0, tasks, 50):
            await asyncio.gather(*(noop.kiq(i) for i in range(start, min(tasks, start + 50))))
        watch.start()
        runner, finish = await run_receiver(broker, concurrency)
        await asyncio.wait_for(done.wait(), 600)
        await asyncio.sleep(0.2)  # any double delivery in
        await stop_receiver(runner, finish)
    finally:
        await broker.shutdown()
        await delete_topology(name)
    return watch.result(runs, tasks)


async def latency(name: str, samples: int, concurrency: int) -> dict[str, Any]:
    broker = make_broker(name)
    delays: list[float] = []
    arrived = asyncio.Event()

    @broker.task(task_name="probe")
    async def probe(sent: float) -> None:
        delays.append(time.time() - sent)
        arrived.set()

    broker.is_worker_process = True
    await broker.startup()
    try:
        runner, finish = await run_receiver(broker, concurrency)
        await asyncio.sleep(1.0)
        for sample in range(WARM_UP + samples):
            arrived.clear()
            await probe.kiq(time.time())
            await asyncio.wait_for(arrived.wait(), 30)
            if sample < WARM_UP:
                delays.clear()
            await asyncio.sleep(0.005)
        await stop_receiver(runner, finish)
    finally:
        await broker.shutdown()
        await delete_topology(name)
    return {"latencies": delays}


async def main() -> None:
    args = peer_args()
    if args.mode == "throughput":
        result = await throughput(args.name, args.count, args.concurrency)
    else:
        result = await latency(args.name, args.count, args.concurrency)
    emit({"version": version(), **result})


if __name__ == "__main__":
    asyncio.run(main())
