"""The worker registry of the SQLite queue backend (``QueueCapability.WORKERS``)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from ._records import WorkerInfo

__all__ = ["SQLiteWorkerRegistry"]

SCHEMA = """create table if not exists queue_workers (
    id text primary key, queues text not null, concurrency integer not null,
    running integer not null, started_at real not null, last_seen real not null,
    expires_at real not null)"""

_COLUMNS = "id, queues, concurrency, running, started_at, last_seen, expires_at"


class SQLiteWorkerRegistry:
    """Registry methods of :class:`tasker.queue.SQLiteQueueBackend`: one row per worker,
    replaced at each heartbeat, deleted when it stops or expires."""

    _call: Callable[..., Any]

    async def worker_seen(self, worker: WorkerInfo) -> None:
        """Insert or replace ``worker``'s entry."""
        await self._call(_seen, worker)

    async def worker_gone(self, worker_id: str) -> None:
        """Remove ``worker_id``'s entry."""
        await self._call(_gone, worker_id)

    async def workers(self, *, now: float) -> list[WorkerInfo]:
        """The live entries, by id; expired ones are deleted."""
        found: list[WorkerInfo] = await self._call(_live, now)
        return found


def _seen(db: sqlite3.Connection, worker: WorkerInfo) -> None:
    db.execute(SCHEMA)
    db.execute(
        f"insert or replace into queue_workers ({_COLUMNS}) values (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608 - constant
        (
            worker.id,
            json.dumps(list(worker.queues)),
            worker.concurrency,
            worker.running,
            worker.started_at,
            worker.last_seen,
            worker.expires_at,
        ),
    )


def _gone(db: sqlite3.Connection, worker_id: str) -> None:
    db.execute(SCHEMA)
    db.execute("delete from queue_workers where id = ?", (worker_id,))


def _live(db: sqlite3.Connection, now: float) -> list[WorkerInfo]:
    db.execute(SCHEMA)
    db.execute("delete from queue_workers where expires_at <= ?", (now,))
    rows = db.execute(
        f"select {_COLUMNS} from queue_workers order by id"  # noqa: S608 - constant
    ).fetchall()
    return [
        WorkerInfo(
            id=row[0],
            queues=tuple(json.loads(row[1])),
            concurrency=row[2],
            running=row[3],
            started_at=row[4],
            last_seen=row[5],
            expires_at=row[6],
        )
        for row in rows
    ]
