"""One replica for the multi-process Scheduler test: ``python tests/replica_scheduler.py``.

Runs an interval schedule on the embedded default in ``--state-dir``; each run appends
``done <slot> <pid>`` to ``--out`` when it finishes. With ``--victim N`` the N-th run of this
replica prints ``victim <slot>`` and then hangs, so the test can SIGKILL it mid-run. A run
that starts late enough to cover missed slots (``catch_up="once"``: a loaded machine can stall
every replica past a slot) appends ``catchup <first> <slot> <pid>``, so the test can tell a
covered gap from a lost slot. With ``--first-run immediately`` the schedule runs at once
when it has no state; with ``--go-file PATH`` the replica waits, once ready, until ``PATH``
exists, so that several replicas start their schedulers in the same millisecond.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from datetime import datetime

import anyio

import tasker
from tasker.schedule import Interval


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one O_APPEND write: atomic between processes
    finally:
        os.close(fd)


class _CatchUps(logging.Handler):
    """Record the Scheduler's "one run catches up the slots from A to B" lines."""

    def __init__(self, out: str) -> None:
        super().__init__(logging.INFO)
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        if "catches up" in str(record.msg) and isinstance(record.args, tuple):
            _, first, slot = record.args
            assert isinstance(first, datetime)
            assert isinstance(slot, datetime)
            _append(self.out, f"catchup {first.isoformat()} {slot.isoformat()} {os.getpid()}\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--interval", type=float, default=0.3)
    parser.add_argument("--victim", type=int, default=0)
    parser.add_argument("--first-run", default="next_slot", choices=["next_slot", "immediately"])
    parser.add_argument("--go-file", default=None)
    parser.add_argument("--work", type=float, default=0.02)
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
        await anyio.sleep(args.work)  # some work
        _append(args.out, f"done {slot.isoformat()} {os.getpid()}\n")

    scheduler_logger = logging.getLogger("tasker.scheduler")
    scheduler_logger.addHandler(_CatchUps(args.out))
    scheduler_logger.setLevel(logging.INFO)
    scheduler = tasker.Scheduler(state_dir=args.state_dir, lock_retry=0.02)
    scheduled = scheduler.with_schedule(
        "replicated", Interval(args.interval), job, first_run=args.first_run
    )
    print("ready", flush=True)
    while args.go_file and not os.path.exists(args.go_file):
        time.sleep(0.001)
    tasker.main(scheduled, grace=2)


if __name__ == "__main__":
    main()
