"""Does a claim cost the same with a small or a huge backlog? Drain rate against backlog size.

Run: ``python benchmarks/bench_backlog.py [--sizes 5000,100000] [--backends memory,sqlite]
[--json PATH]`` (or ``nox -s bench``; ``--sizes 5000,100000,1000000`` for the issue's full
table, which takes minutes on SQLite; ``--json PATH`` also writes the figures in
``benchmarks/_report.py``'s shape). Every size is at least the 5,000 tasks drained.

For each backend, backlog size and kind of ``run_at``, the backlog is enqueued in bulk
(batches of 5,000 through ``QueueBackend.enqueue``), then one worker with concurrency 10
drains the first 5,000 no-op tasks: tasks/s over those. **Tied**: every task shares one
``run_at`` (a bulk enqueue, a ``dispatch``, a newsletter at 09:00); **distinct**: each its
own. The ratio of the largest backlog's rate to the smallest's, per backend and kind, is
what the issue asks to stay near 1 ("claims must cost the same with 1,000 or 1,000,000
tasks waiting"); it is reported, never asserted.

``--backends memory,sqlite,postgres``: Postgres in a schema of its own on ``--dsn``
(``$TASKER_PG_DSN``, else ``postgresql://postgres@127.0.0.1:5432/test``), dropped after each
size. ``--history N``: N finished attempts in the history table before the drain (written
straight into the table on SQLite and Postgres, into the list of the memory backend), so a
completion's history row goes into a large table: its cost must not grow either.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import _report
import anyio

import tasker
from tasker.queue import (
    HistoryEntry,
    MemoryQueueBackend,
    NewTask,
    Queue,
    QueueBackend,
    SQLiteQueueBackend,
)

DRAINED = 5000
BATCH = 5000


async def drain(
    backend: QueueBackend, backlog: int, tied: bool, history: int = 0, setup: Any = None
) -> float:
    if setup is not None:
        await setup(backend)
    queue = Queue(backend, retention=None) if _has_admin(backend) else Queue(backend)
    done = 0
    finished = anyio.Event()

    @queue.task("noop", max_attempts=1)
    async def noop(ctx: tasker.Context, payload: None) -> None:
        nonlocal done
        done += 1
        if done == DRAINED:
            finished.set()

    now = await backend.time()
    for start in range(0, backlog, BATCH):
        await backend.enqueue(
            [
                NewTask(
                    id=uuid.uuid4().hex,
                    name="noop",
                    queue="default",
                    payload=b"null",
                    run_at=now if tied else now - (backlog - start - i) * 1e-3,
                    created_at=now + (start + i) * 1e-6,
                )
                for i in range(min(BATCH, backlog - start))
            ],
            now=now,
        )
    if history:
        await _fill_history(backend, history, now)
    began = time.perf_counter()
    await tasker.run(queue.worker(concurrency=10, poll=0.5), shutdown_trigger=finished.wait)
    rate = DRAINED / (time.perf_counter() - began)
    await queue.aclose()
    return rate


async def _fill_history(backend: QueueBackend, count: int, now: float) -> None:
    """``count`` finished attempts of other tasks in the backend's history table."""
    rows = [
        (uuid.uuid4().hex, "old", "default", "w", 1, now - 2.0, now - 1.0, "succeeded", None)
        for _ in range(count)
    ]
    if isinstance(backend, MemoryQueueBackend):
        backend._history.extend(
            HistoryEntry(
                task_id=r[0],
                name="old",
                queue="default",
                worker="w",
                attempt=1,
                started_at=r[5],
                finished_at=r[6],
                outcome="succeeded",
            )
            for r in rows
        )
        return
    if isinstance(backend, SQLiteQueueBackend):
        with sqlite3.connect(backend.path) as db:
            db.executemany("insert into task_history values (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        with sqlite3.connect(backend.path) as db:  # not left in the WAL for the drain to copy
            db.execute("pragma wal_checkpoint(truncate)")
        return
    import asyncpg

    conn = await asyncpg.connect(os.environ.get("TASKER_PG_DSN", PG_DSN))
    try:
        await conn.copy_records_to_table(
            "queue_history",
            schema_name=backend.schema,  # type: ignore[attr-defined]
            records=rows,
            columns=[
                "task_id",
                "name",
                "queue",
                "worker",
                "attempt",
                "started_at",
                "finished_at",
                "outcome",
                "error",
            ],
        )
    finally:
        await conn.close()


def _has_admin(backend: QueueBackend) -> bool:
    from tasker.abc import QueueCapability

    return QueueCapability.ADMINISTRATION in backend.capabilities


PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def _backend(name: str, directory: str, schema: str) -> tuple[QueueBackend, Any]:
    """A fresh backend, and what to run before its enqueue (None, or the migration)."""
    if name == "memory":
        return MemoryQueueBackend(), None
    if name == "sqlite":
        return SQLiteQueueBackend(Path(directory) / "q.sqlite3"), None
    if name == "postgres":
        from tasker_pg import PostgresQueueBackend

        backend = PostgresQueueBackend(os.environ.get("TASKER_PG_DSN", PG_DSN), schema=schema)
        return backend, PostgresQueueBackend.migrate
    raise SystemExit(f"unknown backend {name!r}: memory, sqlite or postgres")


async def _drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(os.environ.get("TASKER_PG_DSN", PG_DSN))
    try:
        await conn.execute(f'drop schema if exists "{schema}" cascade')
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="5000,100000", help="backlog sizes, comma-separated")
    parser.add_argument("--backends", default="memory,sqlite", help="memory, sqlite, postgres")
    parser.add_argument("--history", type=int, default=0, help="history rows before the drain")
    _report.add_json_option(parser)
    args = parser.parse_args()
    report = _report.Report.of(__file__)
    sizes = [int(size) for size in args.sizes.split(",")]
    history = f", {args.history:,} history rows" if args.history else ""
    for name in args.backends.split(","):
        for tied in (True, False):
            rates = []
            for size in sizes:
                schema = f"bench_backlog_{uuid.uuid4().hex[:8]}"
                with tempfile.TemporaryDirectory() as directory:
                    backend, setup = _backend(name, directory, schema)
                    try:
                        rates.append(anyio.run(drain, backend, size, tied, args.history, setup))
                    finally:
                        if name == "postgres":
                            anyio.run(_drop_schema, schema)
            kind = "tied" if tied else "distinct"
            figures = ", ".join(
                f"{size}: {rate:7.0f}/s" for size, rate in zip(sizes, rates, strict=True)
            )
            print(
                f"{name:8} {kind:8} {figures}; largest/smallest {rates[-1] / rates[0]:5.2f}"
                f" (target: about 1){history}"
            )
            report.ratio(
                f"{name}, {kind} run_at{history}: drain rate with {sizes[-1]:,} / {sizes[0]:,}"
                " waiting",
                rates[-1] / rates[0],
                "≈ 1",
            )
            by_size = ", ".join(
                f"{size:,}: {rate:.0f}" for size, rate in zip(sizes, rates, strict=True)
            )
            report.note(f"{name}, {kind} run_at{history}, tasks/s by backlog: {by_size}")
    report.write(args.json_path)


if __name__ == "__main__":
    main()
