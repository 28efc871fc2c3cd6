"""The Scheduler on Postgres: replicas on different machines run each slot once.

Shows: ``tasker_pg.scheduler(dsn)`` (advisory locks on dedicated connections, state in a
table, due decisions on the database clock), the idempotent migration, and the status API
that ``python -m tasker_pg status`` prints. Start it on several machines (or terminals) with
the same DSN: each slot runs in exactly one of them.

Needs: the ``pg`` extra (asyncpg) and a Postgres; the DSN comes from ``--dsn`` or
``TASKER_PG_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/test``).

Run: ``python examples/pg_scheduler.py --for 3``

Prints: ``ran <name> for <slot> in pid <pid>`` per run, then the status table.
"""

from __future__ import annotations

import argparse
import os
import signal

import anyio

import tasker
import tasker_pg
from tasker.schedule import Cron, Interval


def main() -> None:
    """Migrate, run two schedules until a signal (or ``--for`` seconds), print the status."""
    parser = argparse.ArgumentParser(description="tasker_pg demonstration")
    parser.add_argument(
        "--dsn",
        default=os.environ.get("TASKER_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--schema", default="tasker_example")
    parser.add_argument("--for", dest="seconds", type=float, default=0)
    args = parser.parse_args()
    scheduler = tasker_pg.scheduler(args.dsn, schema=args.schema)

    def job(name: str) -> tasker.Job:
        async def scheduled(ctx: tasker.Context) -> None:
            print(
                f"ran {name} for {tasker.scheduled_slot():%H:%M:%S} in pid {os.getpid()}",
                flush=True,
            )

        return scheduled

    async def stop_later(ctx: tasker.Context) -> None:
        if args.seconds and await ctx.sleep(args.seconds):
            os.kill(os.getpid(), signal.SIGTERM)

    schedules = tasker.concurrence(
        scheduler.with_schedule("heartbeat", Interval(1), job("heartbeat")),
        scheduler.with_schedule("minutely", Cron("* * * * *"), job("minutely")),
        stop_later,
    )

    async def program(ctx: tasker.Context) -> None:
        try:
            await scheduler.migrate()
            await schedules(ctx)
        finally:  # the pool and lock connections belong to this event loop
            with anyio.CancelScope(shield=True):
                await scheduler.aclose()

    tasker.main(program)

    async def show() -> str:
        fresh = tasker_pg.PostgresStateRepository(args.dsn, schema=args.schema)
        try:
            return tasker_pg.format_status(await tasker_pg.status(fresh))
        finally:
            await fresh.aclose()

    print(anyio.run(show), flush=True)


if __name__ == "__main__":
    main()
