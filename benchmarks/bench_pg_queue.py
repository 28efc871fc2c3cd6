"""tasker_pg's queue against pgqueuer and procrastinate on the same Postgres, same run.

Run: ``python benchmarks/bench_pg_queue.py [--dsn DSN] [--tasks 5000] [--json PATH]``
(``--json PATH`` also writes the figures in ``benchmarks/_report.py``'s shape). The peers run from a
separate virtualenv (``--peer-python``, default ``/tmp/peer-queue-venv/bin/python``; create it
with ``python -m venv /tmp/peer-queue-venv && /tmp/peer-queue-venv/bin/pip install pgqueuer
procrastinate asyncpg "psycopg[binary,pool]"``), through ``benchmarks/peers/pgqueuer_bench.py``
and ``benchmarks/peers/procrastinate_bench.py``; without it only tasker is measured, and a
peer whose package is missing there is reported as failed.

Workload: no-op tasks, 10 workers' worth of concurrency (one worker with concurrency 10),
each tool in a fresh database, one tool after the other. Throughput: tasks enqueued up
front, then processed; tasks/s. Latency: idle workers listening, one task enqueued at a
time; enqueue to handler start, p50 and p99. Statements per task while draining: counted
in asyncpg for tasker and pgqueuer (``_execute``/``_executemany``), in psycopg's async cursor
for procrastinate; none of the counts include ``BEGIN``/``COMMIT``. Each peer script's
docstring says how the peer is configured. The table's ratios are tasker_pg's advantage:
tasker_pg's throughput over the peer's, the peer's latency over tasker_pg's (above 1:
tasker_pg is better).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _report
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
    runs: Counter[int] = Counter()
    finished = anyio.Event()

    @queue.task("noop", max_attempts=1)
    async def noop(ctx: tasker.Context, payload: int) -> None:
        runs[payload] += 1
        if len(runs) == tasks:
            finished.set()

    now = time.time()
    batch = [
        NewTask(
            id=uuid.uuid4().hex,
            name="noop",
            queue="default",
            payload=str(index).encode(),
            run_at=now,
            created_at=now,
        )
        for index in range(tasks)
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
    counts = await queue.counts()
    doubled = sum(1 for n in runs.values() if n > 1)
    print(
        f"tasker_pg: {tasks - len(runs)} lost, {doubled} doubled"
        f" ({counts['default'].get('succeeded', 0)} of {tasks} tasks succeeded)"
    )

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


@dataclass
class Result:
    tool: str
    version: str
    rate: float
    delays_ms: list[float]
    per_task: float | None

    @property
    def p50(self) -> float:
        return percentile(self.delays_ms, 0.5)

    @property
    def p99(self) -> float:
        return percentile(self.delays_ms, 0.99)


PEERS = ("pgqueuer", "procrastinate")


def show(result: Result, extra: str = "") -> None:
    print(
        f"{result.tool:13} {result.rate:8.0f} tasks/s; enqueue to start p50"
        f" {result.p50:5.2f} ms, p99 {result.p99:6.2f} ms{extra}"
    )


async def peer_side(
    peer_python: str, peer: str, admin_dsn: str, tasks: int, concurrency: int, samples: int
) -> dict[str, Any] | str:
    """Run one peer's script in a fresh database: its JSON, or why it failed."""
    name, dsn = await fresh_database(admin_dsn)
    try:
        proc = await anyio.run_process(
            [
                peer_python,
                str(HERE / "peers" / f"{peer}_bench.py"),
                dsn,
                str(tasks),
                str(concurrency),
                str(samples),
            ],
            check=False,
        )
    finally:
        await drop_database(admin_dsn, name)
    if proc.returncode != 0:
        return proc.stderr.decode()[-1500:]
    peer_json: dict[str, Any] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    return peer_json


def table(results: list[Result]) -> None:
    base = results[0]
    print()
    print(
        f"{'':13} {'':10} {'':>8} {'':>7} {'':>7} {'statements':>10}"
        f"  {'tasker_pg advantage (x)':>23}"
    )
    print(
        f"{'tool':13} {'version':10} {'tasks/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'per task':>10}"
        f"  {'tasks/s':>7} {'p50':>7} {'p99':>7}"
    )
    for r in results:
        per_task = f"{r.per_task:10.2f}" if r.per_task is not None else f"{'-':>10}"
        print(
            f"{r.tool:13} {r.version:10} {r.rate:8.0f} {r.p50:7.2f} {r.p99:7.2f} {per_task}"
            f"  {base.rate / r.rate:7.2f} {r.p50 / base.p50:7.2f} {r.p99 / base.p99:7.2f}"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--peer-python", default="/tmp/peer-queue-venv/bin/python")  # noqa: S108
    _report.add_json_option(parser)
    args = parser.parse_args()
    report = _report.Report.of(__file__)
    count_statements()
    name, dsn = await fresh_database(args.dsn)
    try:
        rate, delays, per_task = await tasker_side(dsn, args.tasks, args.concurrency, args.samples)
    finally:
        await drop_database(args.dsn, name)
    results = [
        Result(
            "tasker_pg",
            importlib.metadata.version("tasker-jobs"),
            rate,
            [d * 1e3 for d in delays],
            per_task,
        )
    ]
    show(results[0], f"; {per_task:.2f} statements per task")
    report.rate("postgres", "tasker", rate)
    report.latency_ms("postgres", "tasker", results[0].p50, results[0].p99)
    report.note(f"tasker_pg: {per_task:.2f} statements per task")
    if not Path(args.peer_python).exists():  # noqa: ASYNC240 - once, before measuring
        print(f"peers: skipped, no peer interpreter at {args.peer_python}")
        report.note(f"peers: skipped, no peer interpreter at {args.peer_python}")
        report.write(args.json_path)
        return
    notes: list[str] = []
    for peer in PEERS:
        outcome = await peer_side(
            args.peer_python, peer, args.dsn, args.tasks, args.concurrency, args.samples
        )
        if isinstance(outcome, str):
            print(f"{peer}: failed: {outcome}")
            why = outcome.strip().splitlines()[-1:] or ["no output"]
            report.note(f"{peer}: failed: {why[0]}")
            continue
        result = Result(
            peer,
            outcome.get("version", "?"),
            outcome["throughput"],
            [d * 1e3 for d in outcome["latencies"]],
            outcome.get("statements_per_task"),
        )
        results.append(result)
        extra = f"; {result.per_task:.2f} statements per task" if result.per_task else ""
        if checks := outcome.get("checks_per_task"):
            extra += f" (+ {checks:.2f} pool liveness checks)"
            notes.append(
                f"{peer}: + {checks:.2f} empty pool liveness-check queries per task"
                " (its connector's pool checks each connection it hands out)"
            )
        show(result, extra)
        print(f"{'':13} tasker_pg / {peer} throughput: {rate / result.rate:.2f}x (target >= 3x)")
        report.rate("postgres", peer, result.rate)
        report.latency_ms("postgres", peer, result.p50, result.p99)
        report.ratio(f"tasker_pg / {peer} {result.version}: throughput", rate / result.rate, ">= 3")
        base = results[0]
        report.ratio(f"{peer} / tasker_pg: enqueue to start p50", result.p50 / base.p50)
        report.ratio(f"{peer} / tasker_pg: enqueue to start p99", result.p99 / base.p99)
        if result.per_task:
            report.note(f"{peer}: {result.per_task:.2f} statements per task")
    table(results)
    if notes:
        print()
    for note in notes:
        print(note)
        report.note(note)
    report.write(args.json_path)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
