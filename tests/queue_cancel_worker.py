"""A worker process for the cancel tests: ``python tests/queue_cancel_worker.py --out FILE
(--db PATH | --dsn DSN --schema SCHEMA)``.

Its one task, ``long``, appends ``started <task id>`` to ``--out`` and waits until its
context is done (at most a minute), then appends ``stopped <task id> <ctx.reason>`` and
raises, as a handler that stops early should. Each line is one atomic O_APPEND write.
"""

from __future__ import annotations

import argparse
import os

import anyio

import tasker
from tasker.queue import Queue, QueueBackend, SQLiteQueueBackend, current_task


def _append(out: str, line: str) -> None:
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def build(backend: QueueBackend, out: str) -> Queue:
    queue = Queue(backend, retention=None)

    @queue.task("long", max_attempts=3)
    async def long(ctx: tasker.Context) -> None:
        task = current_task()
        assert task is not None
        _append(out, f"started {task.id}")
        with anyio.move_on_after(60):
            await ctx.wait()
        _append(out, f"stopped {task.id} {ctx.reason.value if ctx.reason else None}")
        raise RuntimeError("stopped early")

    return queue


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--db")
    parser.add_argument("--dsn")
    parser.add_argument("--schema", default="tasker")
    parser.add_argument("--lease", type=float, default=1.5)
    args = parser.parse_args()
    backend: QueueBackend
    if args.dsn:
        from tasker_pg import PostgresQueueBackend

        backend = PostgresQueueBackend(args.dsn, schema=args.schema)
    else:
        backend = SQLiteQueueBackend(args.db)
    queue = build(backend, args.out)
    print("ready", flush=True)
    tasker.main(queue.worker(concurrency=2, lease=args.lease, poll=0.2), grace=2)


if __name__ == "__main__":
    main()
