"""Shared fixtures: every async test runs on asyncio and on trio; queue tests that take
``backend`` run on the memory and on the SQLite backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasker.queue import MemoryQueueBackend, QueueBackend, SQLiteQueueBackend


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each anyio test once per backend."""
    return str(request.param)


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> QueueBackend:
    """The embedded queue backends: each test that takes it runs on both (a module or a
    directory with backends of its own defines its own ``backend``)."""
    if request.param == "memory":
        return MemoryQueueBackend()
    return SQLiteQueueBackend(tmp_path / "queue.sqlite3")
