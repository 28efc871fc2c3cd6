"""A worker process for the rate-limit and concurrency-key tests: ``python
tests/queue_limits_worker.py --out FILE --db PATH`` (SQLite), or ``--dsn DSN --schema NAME``
(Postgres, ``tests/pg``).

Two tasks: ``tick`` (``rate_limit="50/s"``) appends ``tick <time>`` to ``--out`` when it
starts; ``keyed`` (``concurrency_key`` from its payload, limit 1) appends ``start <key>
<time>``, sleeps 50 ms, and appends ``end <key> <time>``. Each line is one atomic O_APPEND
write, so three processes can share the file.
"""

from __future__ import annotations

import argparse
import os
import time

import anyio

import tasker
from tasker.queue import Queue, QueueBackend, SQLiteQueueBackend

#: The rate limit of ``tick``.
RATE = "50/s"


def _append(out: str, line: str) -> None:
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def build(backend: QueueBackend, out: str) -> Queue:
    queue = Queue(backend, retention=None)

    @queue.task("tick", rate_limit=RATE)
    async def tick(ctx: tasker.Context) -> None:
        _append(out, f"tick {time.time():.6f}")

    @queue.task("keyed", concurrency_key=lambda payload: str(payload["key"]))
    async def keyed(ctx: tasker.Context, payload: dict[str, str]) -> None:
        _append(out, f"start {payload['key']} {time.time():.6f}")
        await anyio.sleep(0.05)
        _append(out, f"end {payload['key']} {time.time():.6f}")

    return queue


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--db")
    parser.add_argument("--dsn")
    parser.add_argument("--schema", default="tasker")
    args = parser.parse_args()
    backend: QueueBackend
    if args.dsn is not None:
        from tasker_pg import PostgresQueueBackend

        backend = PostgresQueueBackend(args.dsn, schema=args.schema)
    else:
        backend = SQLiteQueueBackend(args.db)
    queue = build(backend, args.out)
    print("ready", flush=True)
    tasker.main(queue.worker(concurrency=8, poll=0.2), grace=2)


if __name__ == "__main__":
    main()
