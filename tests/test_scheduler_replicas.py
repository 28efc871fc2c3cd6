"""Four real replica processes on the embedded default: each slot once, a SIGKILL survived."""

from __future__ import annotations

import itertools
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from .helpers import python_process

INTERVAL = 0.2


def _start(tmp_path: Path, out: Path, victim: int = 0) -> subprocess.Popen[str]:
    args = ["tests/replica_scheduler.py", "--state-dir", str(tmp_path / "state"), "--out", str(out)]
    args += ["--interval", str(INTERVAL), "--victim", str(victim)]
    proc = python_process(args)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.slow
def test_four_replicas_run_each_slot_once_and_survive_sigkill(tmp_path: Path) -> None:
    """>= 50 slots over 4 processes: every slot exactly once; the killed run's slot re-runs."""
    out = tmp_path / "runs.txt"
    victim = _start(tmp_path, out, victim=4)
    others = [_start(tmp_path, out) for _ in range(3)]
    try:
        assert victim.stdout is not None
        line = victim.stdout.readline().split()
        assert line[0] == "victim", line
        killed_slot = datetime.fromisoformat(line[1])
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=10)
        time.sleep(INTERVAL * 56)
    finally:
        for proc in others:
            proc.send_signal(signal.SIGTERM)
        outputs = [proc.communicate(timeout=20) for proc in others]
        for proc in [victim, *others]:
            proc.kill()
    assert [proc.returncode for proc in others] == [0, 0, 0], outputs

    lines = [line.split() for line in out.read_text().splitlines()]
    rows = [line[1:] for line in lines if line[0] == "done"]
    # A run that started more than an interval late covered the missed slots (catch_up="once").
    catch_ups = {
        datetime.fromisoformat(line[2]): datetime.fromisoformat(line[1])
        for line in lines
        if line[0] == "catchup"
    }
    slots = [datetime.fromisoformat(slot) for slot, _ in rows]
    counts = Counter(slots)
    assert max(counts.values()) == 1, [s for s, n in counts.items() if n > 1]
    ordered = sorted(slots)
    assert len(ordered) >= 50
    # No lost slot: consecutive runs are one interval apart, or the later one caught up on
    # exactly the slots in between (a machine stalled every replica past a slot).
    step = timedelta(seconds=INTERVAL)
    gaps = [(a, b) for a, b in itertools.pairwise(ordered) if b - a != step]
    assert all(catch_ups.get(b) == a + step for a, b in gaps), (gaps, catch_ups)
    assert len(gaps) <= 5, gaps  # a stall, not a habit
    # The slot the victim was running when killed was run (or caught up) by another replica.
    covered = {datetime.fromisoformat(slot): pid for slot, pid in rows}
    killed_by = covered.get(killed_slot)
    if killed_by is None:
        late = [slot for slot, first in catch_ups.items() if first == killed_slot]
        assert late, (killed_slot, catch_ups)
        killed_by = covered[late[0]]
    assert killed_by != str(victim.pid)
    # The shared state agrees with the side effects.
    with sqlite3.connect(tmp_path / "state" / "state.sqlite3") as db:
        (run_count,) = db.execute(
            "select run_count from schedule_state where name = 'replicated'"
        ).fetchone()
    assert run_count == len(rows)
    # Every replica took part.
    assert len({pid for _, pid in rows}) >= 3


@pytest.mark.slow
def test_replicas_starting_together_make_one_first_run(tmp_path: Path) -> None:
    """Eight processes on one state directory start their schedulers in the same millisecond
    with ``first_run="immediately"``: exactly one of them runs the first run, and the state
    records it (no regular slot falls in the test: the interval is 10^7 seconds)."""
    out, go = tmp_path / "runs.txt", tmp_path / "go"
    args = ["tests/replica_scheduler.py", "--state-dir", str(tmp_path / "state"), "--out", str(out)]
    args += ["--interval", "1e7", "--first-run", "immediately", "--go-file", str(go)]
    # Runs without work: the race to beat is a replica that read "no state", then lost the
    # lock to a whole first run, then took the lock; only the read under the lock saves it.
    args += ["--work", "0"]
    procs = [python_process(args) for _ in range(8)]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        go.touch()
        deadline = time.monotonic() + 10
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(1.5)  # time for a second, wrong first run to show up
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        outputs = [proc.communicate(timeout=20) for proc in procs]
        for proc in procs:
            proc.kill()
    assert [proc.returncode for proc in procs] == [0] * 8, outputs
    rows = [line.split() for line in out.read_text().splitlines()]
    assert [row[0] for row in rows] == ["done"], rows
    with sqlite3.connect(tmp_path / "state" / "state.sqlite3") as db:
        last_slot, run_count = db.execute(
            "select last_slot, run_count from schedule_state where name = 'replicated'"
        ).fetchone()
    assert run_count == 1
    assert datetime.fromisoformat(last_slot) == datetime.fromisoformat(rows[0][1])
