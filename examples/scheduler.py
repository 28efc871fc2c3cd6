"""Scheduled jobs that run once per slot, however many replicas are running.

Shows: ``tasker.Scheduler`` on its embedded default (lock files and a SQLite state file in
``--state-dir``) with an every-second job and a cron job, composed by ``tasker.main``. Start
it twice in two terminals with the same ``--state-dir``: each slot still runs once, in
whichever process takes the lock first. Stop one with Ctrl-C; the other carries on. Also a
nightly job with ``first_run="immediately"`` (it runs once when a fresh state directory
first sees it, in one process only, then at 03:00), and a slow ``compact`` job repeated
every two seconds in every process under ``tasker.with_no_overlap`` on the Scheduler's
locks: the process that finds the lock held skips its turn.

Needs: nothing beyond tasker.

Run: ``python examples/scheduler.py --state-dir /tmp/tasker-demo`` (add ``--for 5`` to stop
after five seconds: the program sends itself SIGTERM, the same path a deployment takes).

Prints: one ``ran <name> for slot <time> in pid <pid>`` line per run, one ``compact at
<time> in pid <pid>`` line per compaction, then ``stopped: ran N slots`` after the shutdown.
"""

from __future__ import annotations

import argparse
import os
import signal

import tasker
from tasker.schedule import Cron, Daily, Interval


def main() -> None:
    """Run two schedules until a signal arrives (or for ``--for`` seconds)."""
    parser = argparse.ArgumentParser(description="tasker Scheduler demonstration")
    parser.add_argument("--state-dir", default=None, help="default: $TASKER_STATE_DIR or ./.tasker")
    parser.add_argument("--for", dest="seconds", type=float, default=0, help="stop after N s")
    args = parser.parse_args()
    ran = 0

    def job(name: str) -> tasker.Job:
        async def scheduled(ctx: tasker.Context) -> None:
            nonlocal ran
            ran += 1
            slot = tasker.scheduled_slot()
            print(f"ran {name} for slot {slot:%H:%M:%S} in pid {os.getpid()}", flush=True)

        return scheduled

    async def stop_later(ctx: tasker.Context) -> None:
        if args.seconds and await ctx.sleep(args.seconds):
            os.kill(os.getpid(), signal.SIGTERM)

    async def compact(ctx: tasker.Context) -> None:
        print(f"compact at {ctx.clock.now():%H:%M:%S} in pid {os.getpid()}", flush=True)
        await ctx.sleep(1)  # slow: the other process's turn comes meanwhile, and is skipped

    scheduler = tasker.Scheduler(state_dir=args.state_dir)
    tasker.main(
        scheduler.with_schedule("every-second", Interval(1), job("every-second")),
        scheduler.with_schedule("every-minute", Cron("* * * * *"), job("every-minute")),
        scheduler.with_schedule("nightly", Daily(3), job("nightly"), first_run="immediately"),
        tasker.with_repeat(
            Interval(2), tasker.with_no_overlap(scheduler.locker_factory, "compact", compact)
        ),
        stop_later,
    )
    print(f"stopped: ran {ran} slots", flush=True)


if __name__ == "__main__":
    main()
