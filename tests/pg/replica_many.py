"""A replica for the connection-budget test: ``python tests/pg/replica_many.py``.

It runs ``--schedules`` schedules (``s0``, ``s1``, ...) every ``--interval`` seconds on
``tasker_pg.scheduler(dsn)`` with its defaults (the connection budget under test), until
SIGTERM. Each run appends ``<name> <slot> <pid>`` to ``--out`` (a file per replica, so the
runs cost no connection of their own). Prints ``ready`` once its jobs are built.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import anyio

import tasker
import tasker_pg
from tasker.schedule import Interval


def write(path: Path, text: str) -> None:
    with path.open("a") as file:
        file.write(text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--schedules", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)

    async def program() -> None:
        scheduler = tasker_pg.scheduler(
            args.dsn, schema=args.schema, namespace=args.schema, check_interval=0.5
        )

        def job_for(name: str) -> tasker.Job:
            async def job(ctx: tasker.Context) -> None:
                slot = tasker.scheduled_slot()
                assert slot is not None
                write(out, f"{name} {slot.isoformat()} {os.getpid()}\n")

            return job

        jobs = [
            scheduler.with_schedule(f"s{i}", Interval(args.interval), job_for(f"s{i}"))
            for i in range(args.schedules)
        ]
        print("ready", flush=True)
        try:
            await tasker.run(tasker.with_signal_notify(tasker.concurrence(*jobs)), grace=2.0)
        finally:
            await scheduler.aclose()

    anyio.run(program)


if __name__ == "__main__":
    main()
