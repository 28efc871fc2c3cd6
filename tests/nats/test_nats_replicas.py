"""Four replica processes on one NATS server: each slot once through a SIGKILL and a lost
lock."""

from __future__ import annotations

import itertools
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import anyio
import nats
import nats.js
import pytest

from tasker_nats import NatsStateRepository

from ..helpers import python_process

pytestmark = pytest.mark.anyio

#: NATS expires a lock in whole seconds (the ttl is 1 s; the server removes the key up to
#: about a quarter second late): the interval is long enough that a SIGKILLed holder's lock
#: expires within its slot, so the slot is run again, not caught up by a later one.
INTERVAL = 2.5
TTL = 1.0
RENEW_EVERY = 0.2
SLOTS = 20


def _start(url: str, namespace: str, markers: Path, *extra: str) -> subprocess.Popen[str]:
    proc = python_process(
        [
            "tests/nats/replica_nats.py",
            *("--url", url, "--namespace", namespace, "--interval", str(INTERVAL)),
            *("--ttl", str(TTL), "--renew-every", str(RENEW_EVERY)),
            *("--markers", str(markers), "--out", str(markers / "runs.txt"), *extra),
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

    with anyio.fail_after(60):
        while len(read()) < lines:  # noqa: ASYNC110 - another process writes the file
            await anyio.sleep(0.005)
    return [line.split() for line in read()]


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[nats.js.JetStreamContext]:
    """A plain JetStream context on the test server, to delete a lock as an operator would."""
    client = await nats.connect(nats_url)
    try:
        yield client.jetstream(timeout=5.0)
    finally:
        await client.close()


@pytest.mark.slow
async def test_four_replicas_run_each_slot_once(
    nats_url: str, namespace: str, js: nats.js.JetStreamContext, tmp_path: Path
) -> None:
    """>= 20 slots over 4 processes (one with its clock 300 s ahead): each slot exactly once
    and none skipped, through a SIGKILLed holder (its lock expires on the server, its slot
    runs again elsewhere) and a lock whose key was deleted mid-run (the run stops with
    LOCK_LOST and its slot runs again); the state agrees with the side effects."""
    procs = [_start(nats_url, namespace, tmp_path, "--skew", "300")]
    procs += [_start(nats_url, namespace, tmp_path) for _ in range(3)]
    by_pid = {proc.pid: proc for proc in procs}
    try:
        # 1. SIGKILL in the middle of a run (whichever replica runs next takes the marker).
        await anyio.sleep(INTERVAL * 2)
        (tmp_path / "victim").touch()
        (line,) = await _claimed(tmp_path / "victim.claimed")
        victim, killed_slot = by_pid[int(line[0])], datetime.fromisoformat(line[1])
        victim.send_signal(signal.SIGKILL)
        # 2. The holder's key deleted during a run (by an operator, a purge of the bucket).
        await anyio.sleep(INTERVAL * 2)
        (tmp_path / "slow").touch()
        (line,) = await _claimed(tmp_path / "slow.claimed")
        slow_slot = datetime.fromisoformat(line[1])
        kv = await js.key_value(f"{namespace}_locks")
        await kv.delete("replicated")
        deleted_at = time.time()
        lost = (await _claimed(tmp_path / "slow.claimed", lines=2))[1]
        assert lost[1] == "lock_lost"
        assert float(lost[2]) - deleted_at < RENEW_EVERY + 2  # one renewal, and much slack
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
    # Replicas take turns (it is whoever asks first); the skewed one is not favoured, nor
    # asked to run a slot: with 3 to 4 replicas, >= 2 of them ran slots.
    assert len(set(pids_of.values())) >= 2

    repository = NatsStateRepository(nats_url, namespace=namespace)
    try:
        state = await repository.get("replicated")
    finally:
        await repository.aclose()
    assert state is not None
    assert state.run_count == len(rows)
    assert state.last_slot == ordered[-1]
