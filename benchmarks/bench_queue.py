"""Task-queue throughput and enqueue-to-start latency, memory and SQLite backends.

Run: ``python benchmarks/bench_queue.py`` (or ``nox -s bench``).

Metrics: the same throughput at concurrency 10 with ``tasker.metrics`` on and off,
alternating, ``--rounds`` times each (target: under 10% overhead, best against best).

Throughput: ``--tasks`` no-op tasks enqueued up front, then one worker at concurrency 1 and
10 runs them all; tasks per second. Baseline in the same run: a raw anyio memory object
stream feeding a task group with the same concurrency (target: the memory backend within 3x
of it; SQLite at least 2,000 tasks/s). Latency: with idle workers waiting, one task at a time
is enqueued and the time to its handler's start is recorded; p50 and p99.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import anyio

import tasker
from tasker.queue import MemoryQueueBackend, Queue, QueueBackend, SQLiteQueueBackend


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def raw_baseline(count: int, concurrency: int) -> float:
    send, receive = anyio.create_memory_object_stream[int](count)
    done = 0
    finished = anyio.Event()

    async def consumer() -> None:
        nonlocal done
        async for _ in receive:
            await anyio.lowlevel.checkpoint()  # a no-op task
            done += 1
            if done == count:
                finished.set()

    start = time.perf_counter()
    for i in range(count):
        send.send_nowait(i)
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(consumer)
        await finished.wait()
        tg.cancel_scope.cancel()
    return count / (time.perf_counter() - start)


async def throughput(
    backend: QueueBackend, count: int, concurrency: int, metrics: bool = False
) -> float:
    queue = Queue(backend)
    if metrics:
        import prometheus_client

        from tasker.metrics import instrument

        instrument(queue=queue, registry=prometheus_client.CollectorRegistry())
    done = 0
    finished = anyio.Event()

    @queue.task("noop", max_attempts=1)
    async def noop(ctx: tasker.Context, payload: None) -> None:
        nonlocal done
        done += 1
        if done == count:
            finished.set()

    for _ in range(count):
        await queue.enqueue("noop")
    start = time.perf_counter()
    await tasker.run(
        queue.worker(concurrency=concurrency, poll=0.5), shutdown_trigger=finished.wait
    )
    return count / (time.perf_counter() - start)


async def latency(backend: QueueBackend, samples: int) -> tuple[float, float]:
    queue = Queue(backend)
    started: dict[int, float] = {}
    arrived = anyio.Event()

    @queue.task("noop", max_attempts=1)
    async def noop(ctx: tasker.Context, payload: int) -> None:
        nonlocal arrived
        started[payload] = time.perf_counter()
        arrived.set()

    delays = []
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: tasker.run(queue.worker(concurrency=10, poll=1.0), shutdown_trigger=stop.wait)
        )
        await anyio.sleep(0.2)
        for i in range(samples):
            arrived = anyio.Event()
            sent = time.perf_counter()
            await queue.enqueue("noop", i)
            await arrived.wait()
            delays.append(started[i] - sent)
            await anyio.sleep(0.005)
        stop.set()
    ms = [d * 1e3 for d in delays]
    return percentile(ms, 0.5), percentile(ms, 0.99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of metrics on/off")
    args = parser.parse_args()
    for concurrency in (1, 10):
        raw = anyio.run(raw_baseline, args.tasks, concurrency)
        memory = anyio.run(throughput, MemoryQueueBackend(), args.tasks, concurrency)
        with tempfile.TemporaryDirectory() as directory:
            sqlite = anyio.run(
                throughput,
                SQLiteQueueBackend(Path(directory) / "q.sqlite3"),
                args.tasks,
                concurrency,
            )
        print(
            f"concurrency {concurrency:2}: raw stream {raw:9.0f}/s, memory {memory:8.0f}/s"
            f" (raw/memory {raw / memory:4.1f}x; target <= 3x), sqlite {sqlite:7.0f}/s"
            " (target >= 2000/s)"
        )
    # Metrics on against off, in the same run, alternating (target: under 10% overhead).
    for name in ("memory", "sqlite"):
        rates: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for on in (False, True):
                with tempfile.TemporaryDirectory() as directory:
                    backend: QueueBackend = (
                        MemoryQueueBackend()
                        if name == "memory"
                        else SQLiteQueueBackend(Path(directory) / "q.sqlite3")
                    )
                    rates[on].append(anyio.run(throughput, backend, args.tasks, 10, on))
        off, on_ = max(rates[False]), max(rates[True])
        print(
            f"metrics {name}: off {off:8.0f}/s, on {on_:8.0f}/s, overhead"
            f" {(1 - on_ / off) * 100:5.1f}% (best of {args.rounds}; target < 10%)"
        )
    p50, p99 = anyio.run(latency, MemoryQueueBackend(), args.samples)
    print(f"latency memory: enqueue to start p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    with tempfile.TemporaryDirectory() as directory:
        p50, p99 = anyio.run(
            latency, SQLiteQueueBackend(Path(directory) / "q.sqlite3"), args.samples
        )
    print(f"latency sqlite: enqueue to start p50 {p50:.2f} ms, p99 {p99:.2f} ms")


if __name__ == "__main__":
    main()
