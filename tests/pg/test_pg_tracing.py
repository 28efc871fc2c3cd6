"""``tasker.tracing`` on Postgres: a producer and a worker process share one trace."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from ..test_tracing import check_one_trace, run_processes

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_a_trace_crosses_processes_on_postgres(
    pg_dsn: str, schema: str, tmp_path: Path
) -> None:
    """A producer process enqueues under a span into a Postgres queue; a worker process runs
    it: the run span's parent is the enqueue span, in the producer's trace."""
    produced, consumed = await anyio.to_thread.run_sync(
        run_processes, f"pg:{schema}:{pg_dsn}", tmp_path
    )
    check_one_trace(produced, consumed)
