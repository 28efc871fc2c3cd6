"""Five replica processes on one Postgres: SIGKILL, a killed lock connection, a skewed clock."""

from __future__ import annotations

import itertools
import signal
import subprocess
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import anyio
import asyncpg
import pytest

from tasker_pg import PostgresStateRepository, advisory_key

from ..helpers import python_process

pytestmark = pytest.mark.anyio

INTERVAL = 0.2


def _start(dsn: str, schema: str, markers: Path, *extra: str) -> subprocess.Popen[str]:
    proc = python_process(
        [
            "tests/pg/replica_pg.py",
            *("--dsn", dsn, "--schema", schema, "--interval", str(INTERVAL)),
            *("--markers", str(markers), *extra),
        ]
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _communicate(proc: subprocess.Popen[str]) -> tuple[str, str]:
    return proc.communicate(timeout=30)


async def _claimed(path: Path, lines: int = 1) -> list[list[str]]:
    """Wait for a replica to claim a marker and report on it."""

    def read() -> list[str]:
        return path.read_text().splitlines() if path.exists() else []

    with anyio.fail_after(40):
        while len(read()) < lines:  # noqa: ASYNC110 - another process writes the file
            await anyio.sleep(0.01)
    return [line.split() for line in read()]


@pytest.mark.slow
async def test_five_replicas_each_slot_once(pg_dsn: str, schema: str, tmp_path: Path) -> None:
    """>= 50 slots: once each (state and side effects agree) through three kinds of trouble."""
    repository = PostgresStateRepository(pg_dsn, schema=schema)
    await repository.migrate()
    admin = await asyncpg.connect(pg_dsn)
    await admin.execute(
        f'create table "{schema}".runs (slot timestamptz not null, pid int not null,'
        " at timestamptz not null default clock_timestamp())"
    )
    procs = [_start(pg_dsn, schema, tmp_path, "--skew", "300")]
    procs += [_start(pg_dsn, schema, tmp_path) for _ in range(4)]
    by_pid = {proc.pid: proc for proc in procs}
    try:
        # 1. SIGKILL in the middle of a run (whichever replica runs next takes the marker).
        await anyio.sleep(INTERVAL * 3)
        (tmp_path / "victim").touch()
        (line,) = await _claimed(tmp_path / "victim.claimed")
        victim, killed_slot = by_pid[int(line[0])], datetime.fromisoformat(line[1])
        victim.send_signal(signal.SIGKILL)
        # 2. The lock holder's connection terminated during a run.
        await anyio.sleep(INTERVAL * 3)
        (tmp_path / "slow").touch()
        (line,) = await _claimed(tmp_path / "slow.claimed")
        slow_slot = datetime.fromisoformat(line[1])
        holder = await admin.fetchval(
            "select pid from pg_locks where locktype = 'advisory' and granted"
            " and ((classid::bigint << 32) | objid::bigint) = $1",
            advisory_key(schema, "replicated"),
        )
        assert holder is not None
        terminated_at = time.time()
        await admin.execute("select pg_terminate_backend($1)", holder)
        lost = (await _claimed(tmp_path / "slow.claimed", lines=2))[1]
        assert lost[1] == "lock_lost"
        assert float(lost[2]) - terminated_at < 0.2 + 1.0 + 0.5  # check interval + grace
        await anyio.sleep(INTERVAL * 55)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM if proc.poll() is None else 0)
        results = [await anyio.to_thread.run_sync(_communicate, p) for p in procs]
        for proc in procs:
            proc.kill()
    codes = sorted(p.returncode for p in procs)
    assert codes == [-signal.SIGKILL, 0, 0, 0, 0], [r[1][-2000:] for r in results]

    rows = await admin.fetch(f'select slot, pid from "{schema}".runs')
    second_copy = await admin.fetchval(
        f'select extract(epoch from at)::float8 from "{schema}".runs where slot = $1', slow_slot
    )
    state = await repository.get("replicated")
    await admin.close()
    await repository.aclose()
    slots = Counter(r["slot"] for r in rows)
    assert max(slots.values()) == 1, [s for s, n in slots.items() if n > 1]
    ordered = sorted(slots)
    assert len(ordered) >= 50
    steps = {b - a for a, b in itertools.pairwise(ordered)}
    assert steps == {timedelta(seconds=INTERVAL)}, sorted(steps)
    assert killed_slot in slots  # re-run by another replica
    assert slow_slot in slots  # the interrupted run's slot ran again
    # The second copy of the interrupted slot may start once the lock is free; the first copy
    # must have stopped within the grace (1 s) of that moment.
    assert float(lost[2]) - second_copy < 1.0
    assert state is not None
    assert state.run_count == len(rows)
    pids = Counter(r["pid"] for r in rows)
    assert procs[0].pid in pids  # the skewed replica took part, without duplicates
