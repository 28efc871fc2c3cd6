"""Rate limits and concurrency keys hold on Postgres: across worker processes (three
workers share a rate limit of 50/s and a concurrency key of 1, as the SQLite tests in
``tests/test_queue_limits_processes.py``), and across claims sent at once on separate
connections.

What "within 5% over 10 s" means: the claim's sliding log admits at most 50 starts in any
second of the server's clock, so at most 500 in any 10 s, exactly. The handlers record when
they start, which trails each claim by a scheduling delay, so the upper bound asserted is
500 + 5% (strict), and the lower bound is generous (the workers poll at most every 0.2 s).
"""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from tasker.queue import NewTask, RateLimit
from tasker_pg import PostgresQueueBackend

from ..helpers import python_process
from ..queue_limits_worker import build

pytestmark = pytest.mark.anyio

WORKERS = 3


def _start_workers(out: Path, dsn: str, schema: str) -> list[subprocess.Popen[str]]:
    procs = [
        python_process(
            ["tests/queue_limits_worker.py", "--out", str(out), "--dsn", dsn, "--schema", schema]
        )
        for _ in range(WORKERS)
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    return procs


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=20)
        finally:
            proc.kill()
        assert proc.returncode == 0, err


def _lines(out: Path) -> list[list[str]]:
    return [line.split() for line in out.read_text().splitlines()] if out.exists() else []


async def _enqueue(dsn: str, schema: str, out: Path, name: str, payloads: list[Any]) -> None:
    backend = PostgresQueueBackend(dsn, schema=schema)
    await backend.migrate()
    queue = build(backend, str(out))
    try:
        for payload in payloads:
            await queue.enqueue(name, payload)
    finally:
        await queue.aclose()


@pytest.mark.slow
async def test_a_rate_limit_of_50_per_second_holds_across_three_processes(
    tmp_path: Path, pg_dsn: str, schema: str
) -> None:
    """Over the 10 s after the first start, three workers start at most 500 ticks (+5%)."""
    out = tmp_path / "runs.txt"
    await _enqueue(pg_dsn, schema, out, "tick", [None] * 800)
    procs = _start_workers(out, pg_dsn, schema)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            starts = sorted(float(line[1]) for line in _lines(out) if line[0] == "tick")
            if starts and starts[-1] - starts[0] >= 10.5:
                break
            await anyio.sleep(0.2)
    finally:
        await anyio.to_thread.run_sync(_stop, procs)
    starts = sorted(float(line[1]) for line in _lines(out) if line[0] == "tick")
    first = starts[0]
    in_window = [s for s in starts if s < first + 10.0]
    assert len(in_window) <= 525, len(in_window)
    assert len(in_window) >= 350, len(in_window)
    # And no second much over its 50 (one second's burst can trail into the next).
    for start in starts:
        assert sum(1 for s in starts if start <= s < start + 1.0) <= 100


@pytest.mark.slow
async def test_a_concurrency_key_of_one_never_overlaps_across_three_processes(
    tmp_path: Path, pg_dsn: str, schema: str
) -> None:
    """Tasks of one key run one at a time across the workers; different keys run at once."""
    out = tmp_path / "runs.txt"
    keys = [f"k{i}" for i in range(4)]
    await _enqueue(pg_dsn, schema, out, "keyed", [{"key": keys[i % 4]} for i in range(48)])
    procs = _start_workers(out, pg_dsn, schema)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sum(1 for line in _lines(out) if line[0] == "end") >= 48:
                break
            await anyio.sleep(0.1)
    finally:
        await anyio.to_thread.run_sync(_stop, procs)
    events = _lines(out)
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
    every = sorted(span for spans in intervals.values() for span in spans)
    overlapping = sum(1 for (_, end), (start, _) in itertools.pairwise(every) if start < end)
    assert overlapping > 0


def _task(index: int, now: float, **limits: Any) -> NewTask:
    return NewTask(
        id=f"t{index}",
        name="limited",
        queue="default",
        payload=b"null",
        run_at=now,
        created_at=now + index * 1e-6,
        **limits,
    )


async def _claims_at_once(
    dsn: str, schema: str, tasks: list[NewTask], now: float, claimers: int = 8
) -> list[list[str]]:
    """Enqueue ``tasks``, then claim from ``claimers`` backends (a pool each) at once."""
    backends = [PostgresQueueBackend(dsn, schema=schema) for _ in range(claimers)]
    try:
        await backends[0].migrate()
        await backends[0].enqueue(tasks, now=now)
        taken: list[list[str]] = [[] for _ in backends]

        async def claim(index: int) -> None:
            records = await backends[index].claim(
                ["default"], 10, worker=f"w{index}", lease=60.0, now=now
            )
            taken[index] = [r.id for r in records]

        for backend in backends:  # open every pool first, so that the claims overlap
            await backend.counts()
        async with anyio.create_task_group() as tg:
            for index in range(claimers):
                tg.start_soon(claim, index)
        return taken
    finally:
        for backend in backends:
            await backend.aclose()


async def test_claims_on_separate_connections_never_exceed_a_rate_limit(
    pg_dsn: str, schema: str
) -> None:
    """Eight claims at once of tasks limited to 5 per minute start exactly 5 of them."""
    now = time.time()
    tasks = [_task(i, now, rate_limit=RateLimit(count=5, per=60.0)) for i in range(40)]
    taken = await _claims_at_once(pg_dsn, schema, tasks, now)
    assert sum(len(ids) for ids in taken) == 5
    # The oldest five, in claim order, whichever claims took them.
    assert sorted(i for ids in taken for i in ids) == sorted(f"t{i}" for i in range(5))


async def test_claims_on_separate_connections_never_exceed_a_concurrency_key(
    pg_dsn: str, schema: str
) -> None:
    """Eight claims at once of tasks of one key with a limit of 3 start exactly 3."""
    now = time.time()
    tasks = [_task(i, now, concurrency_key="k", concurrency_limit=3) for i in range(40)]
    taken = await _claims_at_once(pg_dsn, schema, tasks, now)
    assert sum(len(ids) for ids in taken) == 3


async def test_next_run_at_reports_when_a_full_window_frees_and_skips_a_full_key(
    pg_dsn: str, schema: str
) -> None:
    """A full rate window makes a task due at the expiry that frees a slot; a full key
    leaves its task out of the due times, until a finish of the key frees it."""
    backend = PostgresQueueBackend(pg_dsn, schema=schema)
    try:
        await backend.migrate()
        now = await backend.time()
        rated = [_task(i, now, rate_limit=RateLimit(count=1, per=600.0)) for i in range(2)]
        await backend.enqueue(rated, now=now)
        (first,) = await backend.claim(["default"], 5, worker="w", lease=900.0, now=now)
        assert first.id == "t0"
        due = await backend.next_run_at(["default"])
        # The lease of t0 ends later than the window's slot frees.
        assert due == pytest.approx(now + 600.0)
        keyed = NewTask(
            id="k1",
            name="keyed",
            queue="other",
            payload=b"null",
            run_at=now,
            created_at=now,
            concurrency_key="k",
        )
        second = dataclasses.replace(keyed, id="k2", created_at=now + 1e-3)
        await backend.enqueue([keyed, second], now=now)
        (running,) = await backend.claim(["other"], 5, worker="w", lease=900.0, now=now)
        assert running.id == "k1"
        assert await backend.next_run_at(["other"]) == pytest.approx(now + 900.0)  # its lease
    finally:
        await backend.aclose()
