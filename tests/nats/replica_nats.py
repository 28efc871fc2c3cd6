"""A replica for the multi-process NATS test: ``python tests/nats/replica_nats.py``.

Runs the interval schedule ``replicated`` on ``tasker_nats.scheduler(--url)`` (asyncio:
nats-py has no trio). Each run that finishes appends ``done <slot> <pid> <fencing number>``
to ``--out`` in one ``O_APPEND`` write. The test asks for trouble through marker files in
``--markers``: a run that finds ``victim`` claims it (an atomic rename), writes ``<pid>
<slot>`` to ``victim.claimed`` and hangs, its lock renewed (the test SIGKILLs it); a run
that finds ``slow`` writes ``<pid> <slot>`` to ``slow.claimed``, waits for its context,
appends ``lost <reason> <time>`` and raises (the test deletes its lock's key). ``--skew S``:
this replica's clock runs S seconds ahead (the server's clock must still decide).
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import anyio

import tasker
import tasker_nats
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


def append(path: Path, text: str) -> None:
    """One ``O_APPEND`` write: atomic between processes."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--interval", type=float, default=2.5)
    parser.add_argument("--ttl", type=float, default=1.0)
    parser.add_argument("--renew-every", type=float, default=0.2)
    parser.add_argument("--markers", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--skew", type=float, default=0.0)
    args = parser.parse_args()
    markers = Path(args.markers)
    scheduler = tasker_nats.scheduler(
        args.url,
        namespace=args.namespace,
        lock_ttl=args.ttl,
        renew_every=args.renew_every,
        lock_retry=0.05,
        backend_backoff=0.1,
    )

    async def job(ctx: tasker.Context) -> None:
        slot = tasker.scheduled_slot()
        assert slot is not None
        if claim(markers / "victim"):
            append(markers / "victim.claimed", f"{os.getpid()} {slot.isoformat()}\n")
            await anyio.sleep_forever()
        if claim(markers / "slow"):
            claimed = markers / "slow.claimed"
            append(claimed, f"{os.getpid()} {slot.isoformat()}\n")
            await ctx.wait()
            reason = ctx.reason.value if ctx.reason else "?"
            append(claimed, f"lost {reason.replace(' ', '_')} {time.time()}\n")
            raise RuntimeError("stopped before the work was done")
        await anyio.sleep(0.02)  # some work
        fence = tasker_nats.fencing_token()
        append(Path(args.out), f"done {slot.isoformat()} {os.getpid()} {fence}\n")

    async def program() -> None:
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
            await scheduler.aclose()

    anyio.run(program, backend="asyncio")


if __name__ == "__main__":
    main()
