"""The backend contract suite on the in-memory and the embedded backends."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasker import (
    FileLockerFactory,
    MemoryLockerFactory,
    MemoryStateRepository,
    ScheduleState,
    SQLiteStateRepository,
)
from tasker.backends import schedule_state_from_json, schedule_state_to_json
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


_MOMENTS = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
    ),
)


@given(
    name=st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=50)
    .filter(str.strip)
    .filter(str.isprintable),
    last_slot=_MOMENTS,
    started=st.none() | _MOMENTS,
    error=st.none() | st.text(max_size=50),
    runs=st.integers(0, 2**40),
)
def test_schedule_state_json_round_trips(
    name: str, last_slot: datetime, started: datetime | None, error: str | None, runs: int
) -> None:
    """``tasker.backends.schedule_state_to_json`` / ``_from_json`` (the key-value backends'
    encoding): every state reads back equal, with its UTC offsets, and the JSON is ASCII."""
    state = ScheduleState(
        name=name,
        last_slot=last_slot,
        last_started=started,
        last_finished=started,
        last_error=error,
        run_count=runs,
        failure_count=runs // 2,
        next_due=last_slot,
    )
    text = schedule_state_to_json(state)
    assert text.isascii()
    back = schedule_state_from_json(name, text.encode())
    assert back == state
    assert back.last_slot.utcoffset() == last_slot.utcoffset()
