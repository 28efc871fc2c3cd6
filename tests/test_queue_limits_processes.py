"""Rate limits and concurrency keys hold across worker processes (SQLite): three workers
share a rate limit of 50/s and a concurrency key of 1 through the database's claim.

What "within 5% over 10 s" means here: the backend's sliding log admits at most 50 claims
in any second of its clock, so at most 500 in any 10 s, exactly. The handlers record when
they start, which trails each claim by a scheduling delay (larger on a busy machine), so
the 10 s after the first recorded start may pick up a few starts claimed just before its
end: the upper bound asserted is 500 + 5%, and the lower bound is generous (the workers
poll at most every 0.2 s and share two cores with this test).
"""

from __future__ import annotations

import itertools
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from tasker.queue import SQLiteQueueBackend

from .helpers import python_process
from .queue_limits_worker import build

pytestmark = pytest.mark.slow

WORKERS = 3


def start_workers(out: Path, db: Path) -> list[subprocess.Popen[str]]:
    procs = [
        python_process(["tests/queue_limits_worker.py", "--out", str(out), "--db", str(db)])
        for _ in range(WORKERS)
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    return procs


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=20)
        finally:
            proc.kill()
        assert proc.returncode == 0, err


def lines(out: Path) -> list[list[str]]:
    return [line.split() for line in out.read_text().splitlines()] if out.exists() else []


async def enqueue(db: Path, out: Path, name: str, payloads: list[Any]) -> None:
    queue = build(SQLiteQueueBackend(db), str(out))
    try:
        for payload in payloads:
            await queue.enqueue(name, payload)
    finally:
        await queue.aclose()


def test_a_rate_limit_of_50_per_second_holds_across_three_processes(tmp_path: Path) -> None:
    """Over the 10 s after the first start, three workers start at most 500 ticks (+5%)."""
    db, out = tmp_path / "queue.sqlite3", tmp_path / "runs.txt"
    SQLiteQueueBackend(db).close()
    anyio.run(enqueue, db, out, "tick", [None] * 800)
    procs = start_workers(out, db)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            starts = sorted(float(line[1]) for line in lines(out) if line[0] == "tick")
            if starts and starts[-1] - starts[0] >= 10.5:
                break
            time.sleep(0.2)
    finally:
        stop(procs)
    starts = sorted(float(line[1]) for line in lines(out) if line[0] == "tick")
    first = starts[0]
    in_window = [s for s in starts if s < first + 10.0]
    assert len(in_window) <= 525, len(in_window)
    assert len(in_window) >= 350, len(in_window)
    # And no second much over its 50 (one second's burst can trail into the next).
    for start in starts:
        assert sum(1 for s in starts if start <= s < start + 1.0) <= 100


def test_a_concurrency_key_of_one_never_overlaps_across_three_processes(tmp_path: Path) -> None:
    """Tasks of one key run one at a time across the workers; different keys run at once."""
    db, out = tmp_path / "queue.sqlite3", tmp_path / "runs.txt"
    SQLiteQueueBackend(db).close()
    keys = [f"k{i}" for i in range(4)]
    anyio.run(enqueue, db, out, "keyed", [{"key": keys[i % 4]} for i in range(48)])
    procs = start_workers(out, db)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sum(1 for line in lines(out) if line[0] == "end") >= 48:
                break
            time.sleep(0.1)
    finally:
        stop(procs)
    events = lines(out)
    assert sum(1 for line in events if line[0] == "end") == 48
    intervals: dict[str, list[tuple[float, float]]] = {}
    opened: dict[str, float] = {}
    for kind, key, at in events:
        if kind == "start":
            assert key not in opened, f"two tasks of {key} started without an end between"
            opened[key] = float(at)
        else:
            intervals.setdefault(key, []).append((opened.pop(key), float(at)))
    for key, spans in intervals.items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, f"two tasks of {key} overlapped"
    # The keys did share the workers: all of them ran while others ran.
    every = sorted(span for spans in intervals.values() for span in spans)
    overlapping = sum(1 for (_, end), (start, _) in itertools.pairwise(every) if start < end)
    assert overlapping > 0
