"""The backend contract suite on the in-memory and the embedded backends."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from tasker import (
    FileLockerFactory,
    MemoryLockerFactory,
    MemoryStateRepository,
    ScheduleState,
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


@pytest.mark.anyio
async def test_sqlite_batch_commits_many_saves_together_and_reports_a_broken_file(
    tmp_path: Path,
) -> None:
    """Saves made in the same moment share a batch and all land; when the database cannot be
    opened, every caller of that batch gets the error (none waits forever)."""
    repository = SQLiteStateRepository(tmp_path / "state.sqlite3")
    slot = datetime(2026, 1, 1, tzinfo=UTC)
    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(repository.save, ScheduleState(name=f"s{i}", last_slot=slot))
    states = [await repository.get(f"s{i}") for i in range(50)]
    assert [s.last_slot if s else None for s in states] == [slot] * 50
    repository.close()

    broken = SQLiteStateRepository(tmp_path)  # a directory: SQLite cannot open it
    errors: list[BaseException] = []

    async def read(name: str) -> None:
        try:
            await broken.get(name)
        except sqlite3.Error as exc:
            errors.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for name in ("a", "b", "c"):
                tg.start_soon(read, name)
    assert len(errors) == 3
