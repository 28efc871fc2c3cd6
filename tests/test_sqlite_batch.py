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


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    """Another connection (another process, say) holding SQLite's write lock."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("begin immediate")
    return other


async def test_a_call_given_up_while_its_batch_waits_for_the_lock_never_runs(
    tmp_path: Path,
) -> None:
    """Cancelled while the database is locked by someone else: the insert is withdrawn, and
    a call of the same batch whose caller still waits is answered once the lock is free."""
    path = tmp_path / "db.sqlite3"
    db = _database(path)
    await db.call(_keys, write=False)  # open and create the table
    other = _hold_write_lock(path)
    answers: dict[str, object] = {}
    drains = 0
    drain = db._drain

    async def counted() -> None:
        nonlocal drains
        drains += 1
        await drain()

    db._drain = counted  # type: ignore[method-assign]

    async def patient() -> None:
        answers["patient"] = await db.call(_insert, "kept", write=True)

    async def impatient() -> None:
        with anyio.move_on_after(0.2):
            await db.call(_insert, "withdrawn", write=True)

    async with anyio.create_task_group() as tg:
        # Both calls are sent in one turn: one batch, drained by the impatient caller.
        tg.start_soon(impatient)
        tg.start_soon(patient)
        await anyio.sleep(0.7)  # the patient caller waits; it must not spin meanwhile
        assert drains <= 3
        other.execute("commit")
    other.close()
    assert answers == {"patient": "kept"}
    assert await db.call(_keys, write=False) == ["kept"]
    db.close()
