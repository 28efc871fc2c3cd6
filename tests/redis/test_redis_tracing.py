"""``tasker.tracing`` on Redis: the task hash carries the context, so a producer and a
worker process share one trace."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from ..test_tracing import check_one_trace, run_processes

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_trace_crosses_processes_on_redis(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    """A producer process enqueues under a span into a Redis queue; a worker process runs
    it: the run span's parent is the enqueue span, in the producer's trace."""
    produced, consumed = await anyio.to_thread.run_sync(
        run_processes, f"redis:{namespace}:{redis_url}", tmp_path
    )
    check_one_trace(produced, consumed)
