"""Scheduler latency and idle cost on the embedded default.

Run: ``python benchmarks/bench_scheduler.py [--json PATH]`` (or ``nox -s bench``); ``--json
PATH`` also writes the figures in ``benchmarks/_report.py``'s shape.

1. Latency: 100 schedules (``--schedules``) firing every second on the embedded default
   (lock files + SQLite) for ``--seconds``; for every run, the time from its slot to the
   job's start, the first slot left out (the start-up: every loop's first state read, and
   the lead before each slot adapting to the load). Prints p50, p99 and max (target: p99
   under 10 ms), and as a baseline in the same run the lateness of a plain ``anyio.sleep``
   until the same slots (the event loop's own timer jitter; target: scheduler p50 at most
   1.5x it). ``--backend trio`` runs it on trio.
2. Idle cost: 100 daily schedules whose next slot is hours away, for ``--idle-seconds``;
   counts state reads/writes, lock attempts and clock wake-ups. Target: none beyond the
   initial planning (no polling before the next due time).
3. Schedule arithmetic: a year of hourly slots (8,760 ``next_after`` calls) of
   ``Cron("0 * * * *")`` in Europe/Berlin, across both DST changes, against the same slots of
   ``Interval(3600)`` (plain instant arithmetic) as the baseline. Prints microseconds per call
   and the ratio (target: under 30x, i.e. Cron resolves hours, it never scans minutes).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import _report
import anyio

import tasker
from tasker import FileLockerFactory, ScheduleState, SQLiteStateRepository, SystemClock
from tasker.schedule import Cron, Daily, Interval, Schedule


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class CountingRepository(SQLiteStateRepository):
    """The embedded repository, counting its operations."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reads = 0
        self.writes = 0

    async def get(self, name: str) -> ScheduleState | None:
        self.reads += 1
        return await super().get(name)

    async def save(self, state: ScheduleState) -> None:
        self.writes += 1
        await super().save(state)


class CountingLockers(FileLockerFactory):
    """Lock files, counting lock attempts."""

    attempts = 0

    def locker(self, name: str):  # type: ignore[no-untyped-def]
        CountingLockers.attempts += 1
        return super().locker(name)


class CountingClock(SystemClock):
    """The system clock, counting sleeps (each sleep is at least one wake-up)."""

    sleeps = 0

    async def sleep_until(self, moment: datetime, /) -> None:
        CountingClock.sleeps += 1
        await super().sleep_until(moment)


async def latency(seconds: float, count: int, report: _report.Report) -> None:
    latencies: list[float] = []
    baseline: list[float] = []
    first_slot: list[datetime] = []
    with tempfile.TemporaryDirectory() as directory:
        scheduler = tasker.Scheduler(state_dir=directory)

        async def job(ctx: tasker.Context) -> None:
            slot = tasker.scheduled_slot()
            assert slot is not None
            late = (datetime.now(UTC) - slot).total_seconds()
            if not first_slot:
                first_slot.append(slot)
            if slot != first_slot[0]:  # the first slot is the start-up (see the docstring)
                latencies.append(late)

        jobs = [scheduler.with_schedule(f"s{i}", Interval(1), job) for i in range(count)]

        async def plain_sleeper(ctx: tasker.Context) -> None:
            schedule = Interval(1)
            while not ctx.done:
                due = schedule.next_after(datetime.now(UTC))
                await anyio.sleep((due - datetime.now(UTC)).total_seconds())
                if first_slot and due != first_slot[0]:
                    baseline.append((datetime.now(UTC) - due).total_seconds())

        async def stop() -> None:
            await anyio.sleep(seconds)

        await tasker.run(tasker.concurrence(*jobs, plain_sleeper), shutdown_trigger=stop)
    ms = [v * 1e3 for v in latencies]
    base = [v * 1e3 for v in baseline]
    print(
        f"latency, {count} schedules every 1 s for {seconds:g} s ({len(ms)} runs after the"
        f" first slot): p50 {percentile(ms, 0.5):.1f} ms, p99 {percentile(ms, 0.99):.1f} ms,"
        f" max {max(ms):.1f} ms (target p99 < 10 ms)"
    )
    print(
        f"  baseline, plain anyio.sleep to the same slots: p50 {percentile(base, 0.5):.2f} ms,"
        f" p99 {percentile(base, 0.99):.2f} ms; scheduler p50 / baseline p50 ="
        f" {statistics.median(ms) / max(statistics.median(base), 1e-6):.2f}x (target <= 1.5x)"
    )
    report.ratio(
        f"slot to start p50, {count} schedules every 1 s / plain anyio.sleep to the same slots",
        statistics.median(ms) / max(statistics.median(base), 1e-6),
        "<= 1.5",
    )
    # The embedded default: lock files and a SQLite state file.
    report.latency_ms("sqlite", "tasker scheduler", percentile(ms, 0.5), percentile(ms, 0.99))
    report.latency_ms("sqlite", "raw anyio.sleep", percentile(base, 0.5), percentile(base, 0.99))
    p99 = percentile(ms, 0.99)
    report.note(
        f"latency, {count} schedules every 1 s for {seconds:g} s: slot to start p99"
        f" {p99:.1f} ms, max {max(ms):.1f} ms (target p99 < 10 ms: {_report.verdict(p99, '< 10')})"
    )


async def idle(seconds: float, count: int, report: _report.Report) -> None:
    with tempfile.TemporaryDirectory() as directory:
        repository = CountingRepository(Path(directory) / "state.sqlite3")
        lockers = CountingLockers(directory)
        scheduler = tasker.Scheduler(locker_factory=lockers, repository=repository)

        async def job(ctx: tasker.Context) -> None:
            raise AssertionError("nothing is due")

        hour = (datetime.now(UTC) + timedelta(hours=6)).hour
        jobs = [scheduler.with_schedule(f"d{i}", Daily(hour), job) for i in range(count)]

        async def stop() -> None:
            await anyio.sleep(1.0)  # let the initial planning happen
            planning = (repository.reads, repository.writes, lockers.attempts, CountingClock.sleeps)
            await anyio.sleep(seconds)
            after = (repository.reads, repository.writes, lockers.attempts, CountingClock.sleeps)
            reads, writes, locks, sleeps = (b - a for a, b in zip(planning, after, strict=True))
            per_minute = 60 / seconds
            print(
                f"idle, {count} daily schedules for {seconds:g} s after planning"
                f" ({planning[0]} reads, {planning[3]} sleeps to plan):"
                f" {reads * per_minute:.0f} state reads/min, {writes * per_minute:.0f} writes/min,"
                f" {locks * per_minute:.0f} lock attempts/min, {sleeps * per_minute:.0f} new"
                " sleeps/min (target: 0; the system clock re-checks the wall clock at most once"
                " a minute per sleeper)"
            )
            polled = reads + writes + locks > 0
            report.note(
                f"idle, {count} daily schedules: {reads * per_minute:.0f} state reads/min,"
                f" {writes * per_minute:.0f} writes/min, {locks * per_minute:.0f} lock"
                f" attempts/min (target 0: {'missed' if polled else 'met'})"
            )

        await tasker.run(tasker.concurrence(*jobs), shutdown_trigger=stop, clock=CountingClock())


def schedule_cost(report: _report.Report, repeat: int = 5) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    count = 24 * 365

    def best(schedule: Schedule) -> float:
        times = []
        for _ in range(repeat):
            moment = start
            began = time.perf_counter()
            for _ in range(count):
                moment = schedule.next_after(moment)
            times.append(time.perf_counter() - began)
        return min(times) / count

    cron = best(Cron("0 * * * *", tz="Europe/Berlin"))
    baseline = best(Interval(3600))
    print(
        f"schedule arithmetic, a year of hourly slots: Cron in Europe/Berlin {cron * 1e6:.1f} us"
        f" per next_after, Interval(3600) {baseline * 1e6:.2f} us; ratio"
        f" {cron / baseline:.1f}x (target < 30x)"
    )
    report.ratio(
        "next_after, a year of hourly slots: Cron in Europe/Berlin / Interval(3600)",
        cron / baseline,
        "< 30",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--idle-seconds", type=float, default=10)
    parser.add_argument("--schedules", type=int, default=100)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    _report.add_json_option(parser)
    args = parser.parse_args()
    report = _report.Report.of(__file__)
    anyio.run(latency, args.seconds, args.schedules, report, backend=args.backend)
    anyio.run(idle, args.idle_seconds, args.schedules, report, backend=args.backend)
    schedule_cost(report)
    report.write(args.json_path)


if __name__ == "__main__":
    main()
