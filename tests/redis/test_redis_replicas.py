"""Four replica processes on one Redis: each slot once through a SIGKILL and a lost lock."""

from __future__ import annotations

import itertools
import signal
import subprocess
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import anyio
import coredis
import pytest

from tasker_redis import RedisStateRepository

from ..helpers import python_process

pytestmark = pytest.mark.anyio

#: Longer than the lock's ttl (0.25 s) plus the test's reaction time: a SIGKILLed holder's
#: lock expires within its slot, so the slot is run again, not caught up by a later one.
INTERVAL = 0.5
SLOTS = 30


@pytest.fixture
def anyio_backend() -> str:
    """The replicas run on both loops (two each); the test itself only watches."""
    return "asyncio"


def _start(
    url: str, namespace: str, markers: Path, *extra: str, backend: str = "asyncio"
) -> subprocess.Popen[str]:
    proc = python_process(
        [
            "tests/redis/replica_redis.py",
            *("--url", url, "--namespace", namespace, "--interval", str(INTERVAL)),
            *("--markers", str(markers), "--out", str(markers / "runs.txt")),
            *("--backend", backend, *extra),
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
            await anyio.sleep(0.005)
    return [line.split() for line in read()]


@pytest.mark.slow
async def test_four_replicas_run_each_slot_once(
    redis_url: str, namespace: str, redis_client: coredis.Redis[bytes], tmp_path: Path
) -> None:
    """>= 30 slots over 4 processes (two on trio, one with its clock 300 s ahead): each slot
    exactly once and none skipped, through a SIGKILLed holder (its lock expires, its slot
    runs again elsewhere) and a lock whose key vanished mid-run (the run stops with
    LOCK_LOST and its slot runs again); the state agrees with the side effects."""
    procs = [_start(redis_url, namespace, tmp_path, "--skew", "300")]
    procs += [_start(redis_url, namespace, tmp_path, backend="trio") for _ in range(2)]
    procs.append(_start(redis_url, namespace, tmp_path))
    by_pid = {proc.pid: proc for proc in procs}
    lock_key = "{" + namespace + "}:lock:replicated"
    try:
        # 1. SIGKILL in the middle of a run (whichever replica runs next takes the marker).
        await anyio.sleep(INTERVAL * 3)
        (tmp_path / "victim").touch()
        (line,) = await _claimed(tmp_path / "victim.claimed")
        victim, killed_slot = by_pid[int(line[0])], datetime.fromisoformat(line[1])
        victim.send_signal(signal.SIGKILL)
        # 2. The holder's key deleted during a run (as a restart without AOF would).
        await anyio.sleep(INTERVAL * 3)
        (tmp_path / "slow").touch()
        (line,) = await _claimed(tmp_path / "slow.claimed")
        slow_slot = datetime.fromisoformat(line[1])
        assert await redis_client.delete([lock_key]) == 1
        deleted_at = time.time()
        lost = (await _claimed(tmp_path / "slow.claimed", lines=2))[1]
        assert lost[1] == "lock_lost"
        assert float(lost[2]) - deleted_at < 0.05 + 0.5  # one renewal, and some slack
        await anyio.sleep(INTERVAL * (SLOTS - 3))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM if proc.poll() is None else 0)
        results = [await anyio.to_thread.run_sync(_communicate, p) for p in procs]
        for proc in procs:
            proc.kill()
    codes = sorted(p.returncode for p in procs)
    assert codes == [-signal.SIGKILL, 0, 0, 0], [r[1][-2000:] for r in results]

    rows = [line.split() for line in (tmp_path / "runs.txt").read_text().splitlines()]
    slots = Counter(datetime.fromisoformat(row[1]) for row in rows)
    assert max(slots.values()) == 1, [s for s, n in slots.items() if n > 1]
    ordered = sorted(slots)
    assert len(ordered) >= SLOTS
    steps = {b - a for a, b in itertools.pairwise(ordered)}
    assert steps == {timedelta(seconds=INTERVAL)}, sorted(steps)
    pids_of = {datetime.fromisoformat(row[1]): int(row[2]) for row in rows}
    assert killed_slot in slots  # re-run (once its lock expired) by another replica
    assert pids_of[killed_slot] != victim.pid
    assert slow_slot in slots  # the interrupted run's slot ran again
    # Fencing numbers grow with the slots, whichever replica ran them.
    fences = [int(row[3]) for row in sorted(rows, key=lambda row: row[1])]
    assert fences == sorted(set(fences)), fences
    took_part = set(pids_of.values())
    assert len(took_part) >= 3
    assert procs[0].pid in took_part or victim is procs[0]  # the skewed one, without harm
    assert {procs[1].pid, procs[2].pid} & took_part  # trio replicas too

    repository = RedisStateRepository(redis_url, namespace=namespace)
    try:
        state = await repository.get("replicated")
    finally:
        await repository.aclose()
    assert state is not None
    assert state.run_count == len(rows)
    assert state.last_slot == ordered[-1]
