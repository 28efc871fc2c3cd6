"""The fault run of issue 10 on the embedded SQLite default, with real worker processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasker.queue import SQLiteQueueBackend

from .queue_faults import check, run_chains_under_kills, run_faults

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def anyio_backend() -> str:
    """The test's own process only enqueues and reads: once is enough (the workers, real
    processes, run on both event loops)."""
    return "asyncio"


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
async def test_sqlite_workers_survive_kill_term_skew_and_stop(tmp_path: Path, loop: str) -> None:
    """Four workers and a replacement through SIGKILL, SIGTERM mid-task, a clock 120 s ahead
    and a SIGSTOP past the lease: every task succeeds once, duplicates stay within the bound."""
    db = tmp_path / "queue.sqlite3"
    fault = await run_faults(
        backend=lambda: SQLiteQueueBackend(db),
        spec=lambda name: ["--backend", f"sqlite:{db}", "--loop", loop],
        out=tmp_path,
    )
    figures = check(fault)
    print(json.dumps(figures))  # the figures for the closing note (pytest -s)


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
async def test_sqlite_chains_and_groups_under_random_kills(tmp_path: Path, loop: str) -> None:
    """Workers SIGKILLed at random points: each chain's next step is enqueued exactly once,
    each group's callback exactly once, and every task succeeds once."""
    db = tmp_path / "queue.sqlite3"
    figures = await run_chains_under_kills(
        backend=lambda: SQLiteQueueBackend(db),
        spec=lambda name: ["--backend", f"sqlite:{db}", "--loop", loop],
        out=tmp_path,
    )
    print(json.dumps(figures))  # the figures for the closing note (pytest -s)
