"""The backend contract suite on the in-memory and the embedded backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasker import (
    FileLockerFactory,
    MemoryLockerFactory,
    MemoryStateRepository,
    SQLiteStateRepository,
)
from tasker.testing import SchedulerBackendContract


class TestMemoryBackend(SchedulerBackendContract):
    """The in-memory pair."""

    @pytest.fixture
    def backend(self) -> tuple[MemoryLockerFactory, MemoryStateRepository]:
        return MemoryLockerFactory(), MemoryStateRepository()


class TestEmbeddedBackend(SchedulerBackendContract):
    """Lock files and SQLite."""

    @pytest.fixture
    def backend(self, tmp_path: Path) -> tuple[FileLockerFactory, SQLiteStateRepository]:
        return FileLockerFactory(tmp_path), SQLiteStateRepository(tmp_path / "state.sqlite3")
