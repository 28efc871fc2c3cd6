"""A Postgres queue worker process: ``python tests/pg/queue_worker_pg.py DSN SCHEMA``.

Each task inserts ``(task id, pid)`` into ``<schema>.done`` when its work is done.
"""

from __future__ import annotations

import os
import sys

import anyio

import tasker
from tasker.queue import Queue
from tasker_pg import PostgresQueueBackend

#: Tasks one worker runs at a time.
CONCURRENCY = 10


def build(dsn: str, schema: str) -> Queue:
    queue = Queue(PostgresQueueBackend(dsn, schema=schema))

    @queue.task("touch", max_attempts=5)
    async def touch(ctx: tasker.Context, payload: str) -> None:
        await anyio.sleep(0.002)
        pool = await queue.backend._source.pool()  # type: ignore[attr-defined]
        await pool.execute(
            f'insert into "{schema}".done (task, pid) values ($1, $2)', payload, os.getpid()
        )

    return queue


def main() -> None:
    dsn, schema = sys.argv[1], sys.argv[2]
    queue = build(dsn, schema)
    print("ready", flush=True)
    tasker.main(queue.worker(concurrency=CONCURRENCY, lease=2.0, poll=1.0), grace=10)


if __name__ == "__main__":
    main()
