"""The fault run of issue 10 on the embedded SQLite default, with real worker processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasker.queue import SQLiteQueueBackend

from .queue_faults import check, run_faults

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def anyio_backend() -> str:
    """The test's own process only enqueues and reads: once is enough."""
    return "asyncio"


async def test_sqlite_workers_survive_kill_term_skew_and_stop(tmp_path: Path) -> None:
    """Four workers and a replacement through SIGKILL, SIGTERM mid-task, a clock 120 s ahead
    and a SIGSTOP past the lease: every task succeeds once, duplicates stay within the bound."""
    db = tmp_path / "queue.sqlite3"
    fault = await run_faults(
        backend=lambda: SQLiteQueueBackend(db),
        spec=lambda name: ["--backend", f"sqlite:{db}"],
        out=tmp_path,
    )
    figures = check(fault)
    print(json.dumps(figures))
