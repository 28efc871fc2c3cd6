"""A replica for the multi-process Postgres test: ``python tests/pg/replica_pg.py``.

Each run inserts ``(slot, pid)`` into ``<schema>.runs``. The test asks for trouble through
marker files in ``--markers``: a run that finds ``victim`` claims it (an atomic rename),
writes ``<pid> <slot>`` to ``victim.claimed`` and hangs (the test SIGKILLs it); a run that
finds ``slow`` writes ``<pid> <slot>`` to ``slow.claimed``, waits for its context, appends
``lost <reason> <time>`` and raises (the test kills its lock connection). ``--skew S``: this
replica's clock runs S seconds ahead (the database clock must still decide).
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import anyio
import asyncpg

import tasker
import tasker_pg
from tasker.schedule import Interval


class SkewedClock(tasker.SystemClock):
    """The system clock, ``offset`` ahead."""

    def __init__(self, offset: float) -> None:
        self.offset = timedelta(seconds=offset)

    def now(self) -> datetime:
        return super().now() + self.offset

    async def sleep_until(self, moment: datetime, /) -> None:
        await super().sleep_until(moment - self.offset)


def claim(marker: Path) -> bool:
    """Take the marker if it is there (one replica wins the rename)."""
    try:
        marker.rename(marker.with_suffix(f".{os.getpid()}"))
    except FileNotFoundError:
        return False
    return True


def write(path: Path, text: str) -> None:
    with path.open("a") as file:
        file.write(text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--markers", required=True)
    parser.add_argument("--skew", type=float, default=0.0)
    args = parser.parse_args()
    runs = 0

    async def program() -> None:
        nonlocal runs
        pool = await asyncpg.create_pool(args.dsn, min_size=1, max_size=2)
        scheduler = tasker_pg.scheduler(
            pool, schema=args.schema, namespace=args.schema, check_interval=0.2, lock_retry=0.02
        )

        async def job(ctx: tasker.Context) -> None:
            nonlocal runs
            runs += 1
            slot = tasker.scheduled_slot()
            assert slot is not None
            if claim(Path(args.markers) / "victim"):
                write(Path(args.markers) / "victim.claimed", f"{os.getpid()} {slot.isoformat()}\n")
                await anyio.sleep_forever()
            if claim(Path(args.markers) / "slow"):
                claimed = Path(args.markers) / "slow.claimed"
                write(claimed, f"{os.getpid()} {slot.isoformat()}\n")
                await ctx.wait()
                reason = ctx.reason.value if ctx.reason else "?"
                write(claimed, f"lost {reason.replace(' ', '_')} {time.time()}\n")
                raise RuntimeError("stopped before the work was done")
            await pool.execute(
                f'insert into "{args.schema}".runs (slot, pid) values ($1, $2)', slot, os.getpid()
            )

        print("ready", flush=True)
        try:
            await tasker.run(
                tasker.with_signal_notify(
                    scheduler.with_schedule("replicated", Interval(args.interval), job)
                ),
                clock=SkewedClock(args.skew) if args.skew else None,
                grace=1.0,
            )
        finally:
            await scheduler.locker_factory.aclose()
            await pool.close()

    anyio.run(program)


if __name__ == "__main__":
    main()
