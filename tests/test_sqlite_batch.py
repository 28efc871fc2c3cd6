"""The batched SQLite connection under both embedded stores."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from tasker._sqlite_batch import BatchedConnection, open_database

pytestmark = pytest.mark.anyio


def _database(path: Path) -> BatchedConnection:
    def open_with_table() -> sqlite3.Connection:
        connection = open_database(path)
        connection.execute("create table if not exists t (k text primary key)")
        return connection

    return BatchedConnection(open_with_table)


def _insert(connection: sqlite3.Connection, key: str) -> str:
    connection.execute("insert into t (k) values (?)", (key,))
    return key


def _keys(connection: sqlite3.Connection, _: object) -> list[str]:
    return [row[0] for row in connection.execute("select k from t order by k")]


async def test_calls_of_one_turn_share_a_batch_and_a_failure_undoes_only_itself(
    tmp_path: Path,
) -> None:
    """Ten inserts sent together, two with the same key: nine land, the later of the two
    callers gets the IntegrityError, and every caller got an answer.

    Which of the two runs first is the scheduler's choice (trio does not promise the order in
    which tasks started together run), so the test accepts either."""
    db = _database(tmp_path / "db.sqlite3")
    answers: dict[str, object] = {}

    async def insert(key: str, name: str) -> None:
        try:
            answers[name] = await db.call(_insert, key, write=True)
        except sqlite3.IntegrityError as exc:
            answers[name] = exc

    async with anyio.create_task_group() as tg:
        for i in range(9):
            tg.start_soon(insert, f"k{i}", f"call{i}")
        tg.start_soon(insert, "k0", "duplicate")
    pair = [answers.pop("call0"), answers.pop("duplicate")]
    assert sorted(isinstance(a, sqlite3.IntegrityError) for a in pair) == [False, True]
    assert "k0" in pair
    assert answers == {f"call{i}": f"k{i}" for i in range(1, 9)}
    assert await db.call(_keys, write=False) == [f"k{i}" for i in range(9)]
    db.close()
    # Closing is not the end: the next call opens the file again and sees the same rows.
    assert len(await db.call(_keys, write=False)) == 9
    db.close()
