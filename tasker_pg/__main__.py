"""``python -m tasker_pg migrate|status --dsn ...``: create the tables, show the status.

``migrate`` runs :func:`tasker_pg.migrate`; ``status`` prints the schedules (with their
lock holders) and the queue.

The DSN comes from ``--dsn`` or the ``TASKER_PG_DSN`` environment variable (prefer the
variable: command lines are visible to other users of the machine). It is never printed
unredacted, and neither is an error that quotes it.
"""

from __future__ import annotations

import argparse
import os
import sys

import anyio

from tasker import redact_dsn

from ._connection import PoolSource
from ._queue_backend import PostgresQueueBackend
from ._schema import migrate
from ._state import PostgresStateRepository
from ._status import format_status, status


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m tasker_pg",
        description=(
            "Create tasker_pg's tables (migrate) or show the schedules, their lock holders"
            " and the queue (status). The DSN comes from --dsn or TASKER_PG_DSN (prefer the"
            " variable: command lines are visible to other users). The `tasker` command does"
            " the same and more: `tasker migrate --dsn ...`, `tasker status --dsn ...`."
        ),
    )
    parser.add_argument("command", choices=["migrate", "status"])
    parser.add_argument("--dsn", default=os.environ.get("TASKER_PG_DSN"))
    parser.add_argument("--schema", default="tasker")
    parser.add_argument("--table", default="schedule_state")
    parser.add_argument("--namespace", default="tasker")
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("no DSN: give --dsn or set TASKER_PG_DSN")

    async def run() -> str:
        if args.command == "migrate":
            await migrate(args.dsn, schema=args.schema, table=args.table)
            return (
                f"migrated {args.schema}.{args.table} and the queue tables on"
                f" {redact_dsn(args.dsn)}"
            )
        source = PoolSource(args.dsn)
        repository = PostgresStateRepository(source, schema=args.schema, table=args.table)
        try:
            queue = PostgresQueueBackend(source, schema=args.schema)
            schedules = format_status(await status(repository, namespace=args.namespace))
            return f"{schedules}\n\n{(await queue.status()).format()}"
        finally:
            await source.close()

    try:
        print(anyio.run(run))  # noqa: T201 - a command-line tool prints its answer
    except Exception as exc:
        message = redact_dsn(f"error: {type(exc).__name__}: {exc}")
        print(message, file=sys.stderr)  # noqa: T201
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
