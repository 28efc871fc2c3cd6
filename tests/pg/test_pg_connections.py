"""The connection budget of a Postgres Scheduler: at most three connections per replica,
whatever the number of schedules it runs (one lock session, a state pool of two)."""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import asyncpg
import pytest

import tasker
import tasker_pg
from tasker import StopReason
from tasker.schedule import Interval
from tasker_pg import advisory_key

from ..helpers import python_process
from .embedded import EmbeddedPostgres

pytestmark = pytest.mark.anyio

#: The budget the Postgres guide documents per replica.
BUDGET = 3


def _with_name(dsn: str, name: str) -> str:
    """``dsn`` with an ``application_name``, so every connection it opens can be counted."""
    return f"{dsn}{'&' if '?' in dsn else '?'}application_name={name}"


async def _connections(admin: asyncpg.Connection, name: str) -> int:
    count: int = await admin.fetchval(
        "select count(*) from pg_stat_activity where application_name = $1", name
    )
    return count


async def test_twenty_schedules_running_at_once_hold_at_most_three_connections(
    pg_dsn: str, schema: str
) -> None:
    """20 schedules running at the same time: their 20 locks on one session, at most three
    connections in all; killing that session stops every run with LOCK_LOST, and the
    schedules run again on a new session."""
    name = f"budget-{uuid.uuid4().hex[:8]}"
    scheduler = tasker_pg.scheduler(
        _with_name(pg_dsn, name), schema=schema, namespace=schema, check_interval=0.2
    )
    await scheduler.migrate()
    count = 20
    running: set[str] = set()
    all_running = anyio.Event()
    reasons: list[StopReason | None] = []
    again: set[str] = set()
    killed = False

    def job_for(schedule: str) -> tasker.Job:
        async def job(ctx: tasker.Context) -> None:
            if killed:
                again.add(schedule)
                return
            running.add(schedule)
            if len(running) == count:
                all_running.set()
            await ctx.wait()
            reasons.append(ctx.reason)
            raise RuntimeError("stopped before the work was done")

        return job

    jobs = [
        scheduler.with_schedule(f"s{i}", Interval(0.5), job_for(f"s{i}"), retry_delay=0.2)
        for i in range(count)
    ]
    admin = await asyncpg.connect(pg_dsn)
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: tasker.run(tasker.concurrence(*jobs), shutdown_trigger=stop.wait, grace=1)
            )
            with anyio.fail_after(15):
                await all_running.wait()
            assert await _connections(admin, name) <= BUDGET
            keys = [advisory_key(schema, f"s{i}") for i in range(count)]
            holders = await admin.fetch(
                "select pid, count(*) as locks from pg_locks where locktype = 'advisory'"
                " and granted and ((classid::bigint << 32) | objid::bigint) = any($1::bigint[])"
                " group by pid",
                keys,
            )
            assert [row["locks"] for row in holders] == [count]  # one session holds all 20
            killed = True
            await admin.execute("select pg_terminate_backend($1)", holders[0]["pid"])
            with anyio.fail_after(15):
                while len(reasons) < count or len(again) < count:  # noqa: ASYNC110 - other tasks
                    await anyio.sleep(0.05)
            assert await _connections(admin, name) <= BUDGET
            stop.set()
    finally:
        await admin.close()
        await scheduler.aclose()
    assert reasons == [StopReason.LOCK_LOST] * count
    assert scheduler.statistics().runs_interrupted == count


class _RoomyPostgres(EmbeddedPostgres):
    """A private server with room for 50 replicas (the shared one allows 100 connections)."""

    def start(self) -> None:
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.directory} -c fsync=off -c max_connections=220"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.directory / "log"), "-o", options,
            "-w", "start",
        )  # fmt: skip


def _communicate(proc: subprocess.Popen[str]) -> tuple[str, str]:
    return proc.communicate(timeout=60)


def _runs(directory: Path) -> list[list[str]]:
    """Every ``name slot pid`` line the replicas wrote."""
    return [
        line.split()
        for path in directory.glob("runs-*.txt")
        for line in path.read_text().splitlines()
    ]


REPLICAS = 50
SCHEDULES = 3
INTERVAL = 0.5


@pytest.mark.slow
async def test_fifty_replicas_run_every_slot_once_within_150_connections(
    tmp_path: Path,
) -> None:
    """50 replica processes with 3 schedules each on one server: no slot of any schedule runs
    twice, none is missed once they all run, no replica ever holds more than three
    connections, and all of them together never more than 150 (sampled every 50 ms)."""
    server = _RoomyPostgres()
    server.start()
    procs: list[subprocess.Popen[str]] = []
    try:
        schema = "budget"
        await tasker_pg.migrate(server.dsn, schema=schema)
        admin = await asyncpg.connect(server.dsn)
        own_pid = admin.get_server_pid()
        procs = [
            python_process(
                [
                    "tests/pg/replica_many.py",
                    *("--dsn", _with_name(server.dsn, f"replica-{i}"), "--schema", schema),
                    *("--schedules", str(SCHEDULES), "--interval", str(INTERVAL)),
                    *("--out", str(tmp_path / f"runs-{i}.txt")),
                ]
            )
            for i in range(REPLICAS)
        ]
        for proc in procs:
            assert proc.stdout is not None
            line = await anyio.to_thread.run_sync(proc.stdout.readline)
            assert line.strip() == "ready"
        # Starting 50 interpreters takes the machine's CPUs for seconds: a slot due then may
        # be caught up by the next run (catch_up="once"), which is not a miss. From here on
        # every slot must run.
        settled = datetime.now(UTC) + timedelta(seconds=1)
        peak_total, peak_replica = 0, 0
        with anyio.move_on_after(8):
            while True:
                rows = await admin.fetch(
                    "select application_name, count(*) as n from pg_stat_activity"
                    " where backend_type = 'client backend' and pid <> $1 group by 1",
                    own_pid,
                )
                peak_total = max(peak_total, sum(row["n"] for row in rows))
                peak_replica = max([peak_replica, *(row["n"] for row in rows)])
                await anyio.sleep(0.05)
        await admin.close()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            _, stderr = await anyio.to_thread.run_sync(_communicate, proc)
            assert proc.returncode == 0, stderr[-2000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        server.cleanup()
    assert peak_replica <= BUDGET
    assert peak_total <= REPLICAS * BUDGET
    runs = _runs(tmp_path)
    per_slot = Counter((name, slot) for name, slot, _ in runs)
    assert max(per_slot.values()) == 1, [key for key, n in per_slot.items() if n > 1]
    for i in range(SCHEDULES):
        slots = sorted(
            moment
            for name, slot in per_slot
            if name == f"s{i}" and (moment := datetime.fromisoformat(slot)) >= settled
        )
        assert len(slots) >= 8
        # No slot skipped between the first and the last run of each schedule.
        assert slots[-1] - slots[0] == timedelta(seconds=INTERVAL) * (len(slots) - 1)
