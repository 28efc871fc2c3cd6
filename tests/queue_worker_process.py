"""A queue worker process for the multi-process tests: ``python tests/queue_worker_process.py``.

Each task appends ``<task id> <pid>`` to ``--out`` when it finishes its work (one atomic
O_APPEND write), then returns; ``--work`` is how long a task takes.
"""

from __future__ import annotations

import argparse
import os

import anyio

import tasker
from tasker.queue import Queue, SQLiteQueueBackend


def build(db: str, out: str, work: float) -> Queue:
    queue = Queue(SQLiteQueueBackend(db))

    @queue.task("touch", max_attempts=5)
    async def touch(ctx: tasker.Context, payload: dict[str, str]) -> None:
        await anyio.sleep(work)
        fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{payload['id']} {os.getpid()}\n".encode())
        finally:
            os.close(fd)

    return queue


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", type=float, default=0.005)
    parser.add_argument("--concurrency", type=int, default=5)
    parser.add_argument("--lease", type=float, default=1.0)
    args = parser.parse_args()
    queue = build(args.db, args.out, args.work)
    print("ready", flush=True)
    tasker.main(queue.worker(concurrency=args.concurrency, lease=args.lease, poll=0.5), grace=10)


if __name__ == "__main__":
    main()
