"""One replica for the multi-process Scheduler test: ``python tests/replica_scheduler.py``.

Runs an interval schedule on the embedded default in ``--state-dir``; each run appends
``done <slot> <pid>`` to ``--out`` when it finishes. With ``--victim N`` the N-th run of this
replica prints ``victim <slot>`` and then hangs, so the test can SIGKILL it mid-run.
"""

from __future__ import annotations

import argparse
import os

import anyio

import tasker
from tasker.schedule import Interval


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--interval", type=float, default=0.3)
    parser.add_argument("--victim", type=int, default=0)
    args = parser.parse_args()
    runs = 0

    async def job(ctx: tasker.Context) -> None:
        nonlocal runs
        runs += 1
        slot = tasker.scheduled_slot()
        assert slot is not None
        if runs == args.victim:
            print(f"victim {slot.isoformat()}", flush=True)
            await anyio.sleep_forever()
        await anyio.sleep(0.02)  # some work
        line = f"done {slot.isoformat()} {os.getpid()}\n".encode()
        fd = os.open(args.out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one O_APPEND write: atomic between processes
        finally:
            os.close(fd)

    scheduler = tasker.Scheduler(state_dir=args.state_dir, lock_retry=0.02)
    print("ready", flush=True)
    tasker.main(scheduler.with_schedule("replicated", Interval(args.interval), job), grace=2)


if __name__ == "__main__":
    main()
