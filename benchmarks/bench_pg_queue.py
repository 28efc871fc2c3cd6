"""tasker_pg's queue against pgqueuer on the same Postgres, same workload, same run.

Run: ``python benchmarks/bench_pg_queue.py [--dsn DSN] [--tasks 5000]``. pgqueuer runs from a
separate virtualenv (``--peer-python``, default ``/tmp/peer-queue-venv/bin/python``; create it
with ``python -m venv /tmp/peer-queue-venv && /tmp/peer-queue-venv/bin/pip install pgqueuer
asyncpg``); without it only tasker is measured.

Workload: no-op tasks, 10 workers' worth of concurrency (one worker with concurrency 10),
each tool in a fresh database. Throughput: tasks enqueued up front, then processed; tasks/s.
Latency: idle workers listening, one task enqueued at a time; enqueue to handler start, p50
and p99. For tasker, statements sent per task are counted in asyncpg.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import asyncpg.connection

import tasker
from tasker.queue import NewTask, Queue
from tasker_pg import PostgresQueueBackend

HERE = Path(__file__).resolve().parent
SENT: Counter[str] = Counter()


def count_statements() -> None:
    """Count every statement asyncpg sends from this process."""
    connection = asyncpg.connection.Connection
    for method in ("_execute", "_executemany"):
        original = getattr(connection, method)

        def counting(self: Any, query: str, *a: Any, _orig: Any = original, **k: Any) -> Any:
            SENT["statements"] += 1
            return _orig(self, query, *a, **k)

        setattr(connection, method, counting)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def fresh_database(admin_dsn: str) -> tuple[str, str]:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'create database "{name}"')
    finally:
        await conn.close()
    return name, f"{admin_dsn.rpartition('/')[0]}/{name}"


async def drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await conn.close()


async def tasker_side(
    dsn: str, tasks: int, concurrency: int, samples: int
) -> tuple[float, list[float], float]:
    backend = PostgresQueueBackend(dsn)
    await backend.migrate()
    queue = Queue(backend)
    done = 0
    finished = anyio.Event()

    @queue.task("noop", max_attempts=1)
    async def noop(ctx: tasker.Context, payload: None) -> None:
        nonlocal done
        done += 1
        if done == tasks:
            finished.set()

    now = time.time()
    batch = [
        NewTask(
            id=uuid.uuid4().hex,
            name="noop",
            queue="default",
            payload=b"null",
            run_at=now,
            created_at=now,
        )
        for _ in range(tasks)
    ]
    for start in range(0, tasks, 500):  # bulk, like pgqueuer's list enqueue
        await backend.enqueue(batch[start : start + 500], now=now)
    SENT.clear()
    started = time.perf_counter()
    await tasker.run(
        queue.worker(concurrency=concurrency, poll=1.0), shutdown_trigger=finished.wait
    )
    rate = tasks / (time.perf_counter() - started)
    per_task = SENT["statements"] / tasks

    delays: list[float] = []
    arrived = anyio.Event()

    @queue.task("probe", max_attempts=1)
    async def probe(ctx: tasker.Context, payload: float) -> None:
        delays.append(time.time() - payload)
        arrived.set()

    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: tasker.run(
                queue.worker(concurrency=concurrency, poll=30), shutdown_trigger=stop.wait
            )
        )
        await anyio.sleep(0.5)
        for _ in range(samples):
            arrived = anyio.Event()
            await queue.enqueue("probe", time.time())
            with anyio.fail_after(30):
                await arrived.wait()
            await anyio.sleep(0.005)
        stop.set()
    await backend.aclose()
    return rate, delays, per_task


def show(tool: str, rate: float, delays: list[float], extra: str = "") -> None:
    ms = [d * 1e3 for d in delays]
    print(
        f"{tool:10} {rate:8.0f} tasks/s; enqueue to start p50 {percentile(ms, 0.5):5.2f} ms,"
        f" p99 {percentile(ms, 0.99):6.2f} ms{extra}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--peer-python", default="/tmp/peer-queue-venv/bin/python")  # noqa: S108
    args = parser.parse_args()
    count_statements()
    name, dsn = await fresh_database(args.dsn)
    try:
        rate, delays, per_task = await tasker_side(dsn, args.tasks, args.concurrency, args.samples)
    finally:
        await drop_database(args.dsn, name)
    show("tasker_pg", rate, delays, f"; {per_task:.2f} statements per task")
    if not Path(args.peer_python).exists():  # noqa: ASYNC240 - once, before measuring
        print(f"pgqueuer: skipped, no peer interpreter at {args.peer_python}")
        return
    name, dsn = await fresh_database(args.dsn)
    try:
        proc = await anyio.run_process(
            [
                args.peer_python,
                str(HERE / "peers" / "pgqueuer_bench.py"),
                dsn,
                str(args.tasks),
                str(args.concurrency),
                str(args.samples),
            ],
            check=False,
        )
    finally:
        await drop_database(args.dsn, name)
    if proc.returncode != 0:
        print(f"pgqueuer: failed: {proc.stderr.decode()[-1500:]}")
        return
    peer = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    show("pgqueuer", peer["throughput"], peer["latencies"])
    print(
        f"{'':10} tasker_pg / pgqueuer throughput: {rate / peer['throughput']:.2f}x (target >= 3x)"
    )


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
