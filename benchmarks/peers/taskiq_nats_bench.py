"""taskiq + taskiq-nats (its pull-based JetStream broker) side of bench_nats_queue.py; runs in
the peer virtualenv (``/tmp/peer-nats-venv``).

``python taskiq_nats_bench.py URL throughput TASKS CONCURRENCY IDLE MONITOR`` or ``... URL
latency SAMPLES CONCURRENCY IDLE MONITOR`` prints one line of JSON (see ``nats_common.py``).

Settings (taskiq 0.13 with taskiq-nats 0.7), chosen to match what tasker gets:

- ``taskiq_nats.PullBasedJetStreamBroker(URL, subject="bench.taskiq",
  stream_name="bench_taskiq", durable="bench_taskiq")``: the broker taskiq-nats documents
  for a durable queue: one stream (limits retention, file storage: the server's defaults),
  one durable pull consumer (explicit acks, the server's defaults otherwise), its defaults
  for the rest: ``fetch(batch=1)`` per message, no fetch timeout (a long poll, so no poll
  interval to tune), ``msg.ack()`` (fire and forget) after each task. No result backend:
  taskiq's default keeps no results.
- One ``taskiq.receiver.Receiver`` in this process, as ``taskiq worker`` builds it:
  ``max_async_tasks=CONCURRENCY``, ``max_prefetch=0`` and the CLI's default ack type,
  ``broker.is_worker_process = True``. The broker is started (its stream and consumer
  made) before the tasks are enqueued, so the receiver does not start it again.
- Enqueue: taskiq has no bulk enqueue; ``task.kiq()`` (one JetStream publish, awaiting its
  ack) for each, 50 at a time (``asyncio.gather``), not timed. Probes: ``kiq()`` through the
  same broker.
- Throughput: from the receiver's start to the last handler's return; then the receiver's
  finish event is set and it is awaited (not timed; counted).

taskiq 0.13.0 with taskiq-nats 0.7.0 (the newest of each when written) work together: no
pin is needed, unlike taskiq-redis (``"taskiq<0.13" "taskiq-redis<1.1"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import time
from typing import Any

from nats_common import Meter, emit, peer_args
from taskiq.receiver import Receiver
from taskiq_nats import PullBasedJetStreamBroker


def version() -> str:
    taskiq, nats = (importlib.metadata.version(name) for name in ("taskiq", "taskiq-nats"))
    return f"{taskiq}+nats {nats}"


def make_broker(url: str) -> PullBasedJetStreamBroker:
    return PullBasedJetStreamBroker(
        url, subject="bench.taskiq", stream_name="bench_taskiq", durable="bench_taskiq"
    )


async def run_receiver(
    broker: PullBasedJetStreamBroker, concurrency: int
) -> tuple[asyncio.Task[None], asyncio.Event]:
    finish = asyncio.Event()
    receiver = Receiver(broker, max_async_tasks=concurrency, max_prefetch=0, run_startup=False)
    return asyncio.create_task(receiver.listen(finish)), finish


async def stop_receiver(runner: asyncio.Task[None], finish: asyncio.Event) -> None:
    finish.set()
    try:
        await asyncio.wait_for(asyncio.shield(runner), 10)
    except TimeoutError:  # a fetch without a timeout may never return: stop it
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def throughput(url: str, tasks: int, concurrency: int, monitor: str | None) -> dict[str, Any]:
    broker = make_broker(url)
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
    meter = Meter(monitor)
    meter.start()
    started = time.perf_counter()
    runner, finish = await run_receiver(broker, concurrency)
    await asyncio.wait_for(done.wait(), 600)
    window = meter.stop()
    await stop_receiver(runner, finish)
    await broker.shutdown()
    return {
        "throughput": tasks / (finished - started),
        "lost": tasks - len(runs),
        "doubled": sum(1 for n in runs.values() if n > 1),
        "window": None if window is None else window.as_json(),
    }


async def latency(
    url: str, samples: int, concurrency: int, idle: float, monitor: str | None
) -> dict[str, Any]:
    broker = make_broker(url)
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
    meter = Meter(monitor)
    meter.start()
    await asyncio.sleep(idle)
    window = meter.stop()
    for _ in range(samples):
        arrived.clear()
        await probe.kiq(time.time())
        await asyncio.wait_for(arrived.wait(), 30)
        await asyncio.sleep(0.005)
    await stop_receiver(runner, finish)
    await broker.shutdown()
    return {"latencies": delays, "idle": None if window is None else window.as_json()}


async def main() -> None:
    args = peer_args()
    if args.mode == "throughput":
        result = await throughput(args.url, args.count, args.concurrency, args.monitor)
    else:
        result = await latency(args.url, args.count, args.concurrency, args.idle, args.monitor)
    emit({"version": version(), **result})


if __name__ == "__main__":
    asyncio.run(main())
