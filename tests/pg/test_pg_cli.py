"""``tasker migrate`` and ``tasker status`` on Postgres, as real processes."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import anyio
import asyncpg
import pytest

from ..test_cli import completed, tasker_cmd

pytestmark = pytest.mark.slow


def test_migrate_then_status_on_postgres(pg_dsn: str, tmp_path: Path) -> None:
    """migrate creates the tables (idempotent); status reads them; the DSN never shows."""
    schema = f"t_cli_{uuid.uuid4().hex[:10]}"
    try:
        _migrate_then_status(pg_dsn, schema, tmp_path)
    finally:

        async def drop() -> None:
            conn = await asyncpg.connect(pg_dsn)
            try:
                await conn.execute(f'drop schema if exists "{schema}" cascade')
            finally:
                await conn.close()

        anyio.run(drop)


def _migrate_then_status(pg_dsn: str, schema: str, tmp_path: Path) -> None:
    for _ in range(2):
        result = completed(
            tasker_cmd("migrate", "--dsn", pg_dsn, "--schema", schema, state=tmp_path)
        )
        assert result.returncode == 0, result.stderr
        assert f"migrated schema {schema}" in result.stdout
    report = completed(
        tasker_cmd("status", "--dsn", pg_dsn, "--schema", schema, "--json", state=tmp_path)
    )
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout) == {
        "schedules": [],
        "queues": {},
        "oldest_waiting": {},
        "workers": [],
        "broker": [],
        "progress": [],
    }


def test_status_of_a_database_never_migrated_says_so(pg_dsn: str, tmp_path: Path) -> None:
    """An error, exit 1, that names the missing relation; no traceback."""
    result = completed(
        tasker_cmd("status", "--dsn", pg_dsn, "--schema", "never_migrated", state=tmp_path)
    )
    assert result.returncode == 1
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
