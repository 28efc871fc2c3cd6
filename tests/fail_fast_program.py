"""A service whose backend is set up wrong, run by the tests as a real process.

``python tests/fail_fast_program.py MODE TARGET``:

- ``embedded STATE_DIR``: the Scheduler on the embedded default, in ``STATE_DIR``;
- ``pg-scheduler DSN``: the Scheduler on tasker_pg (schema ``never_migrated``);
- ``pg-queue DSN``: a queue worker on tasker_pg (same schema);
- ``sqlite-queue STATE_DIR``: a queue worker on the SQLite default, in ``STATE_DIR``.

Each runs next to a job that would run forever, as a real service would: only a failure
that stops the program ends it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import tasker
from tasker.queue import Queue
from tasker.schedule import Interval


async def forever(ctx: tasker.Context) -> None:
    """The rest of the service: runs until the program stops."""
    await ctx.wait()


async def tick(ctx: tasker.Context) -> None:
    """A scheduled job."""


def service(mode: str, target: str) -> tasker.Job:
    if mode == "embedded":
        return tasker.Scheduler(state_dir=Path(target)).with_schedule("tick", Interval(1), tick)
    if mode == "sqlite-queue":
        from tasker.queue import SQLiteQueueBackend

        return Queue(SQLiteQueueBackend(Path(target) / "queue.db")).worker()
    import tasker_pg

    if mode == "pg-scheduler":
        scheduler = tasker_pg.scheduler(target, schema="never_migrated")
        return scheduler.with_schedule("tick", Interval(1), tick)
    queue = Queue(tasker_pg.PostgresQueueBackend(target, schema="never_migrated"))
    return queue.worker()


if __name__ == "__main__":
    tasker.main(service(sys.argv[1], sys.argv[2]), forever)
