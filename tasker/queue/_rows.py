"""What the SQL backends (SQLite here, Postgres in ``tasker_pg``) share: the task row's
columns and their mapping to :class:`TaskRecord`, and a group callback stored as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ._records import NewTask, TaskRecord, TaskState

__all__ = [
    "COLUMNS",
    "LIVE_STATES",
    "callback_from_json",
    "callback_to_json",
    "group_payload",
    "record_from_row",
]

#: The task columns, in the order :func:`record_from_row` reads them.
COLUMNS = (
    "id, name, queue, payload, priority, run_at, state, attempts, max_attempts, timeout,"
    " unique_key, created_at, lease_owner, lease_until, result, result_expires, last_error,"
    " traceback, finished_at, chain, group_id, group_index"
)
#: The states in which a task holds its unique key.
LIVE_STATES = ("held", "queued", "running")


def record_from_row(row: Any) -> TaskRecord:
    """A :class:`TaskRecord` from a row of :data:`COLUMNS` (a tuple, or an asyncpg record)."""
    return TaskRecord(
        id=row[0],
        name=row[1],
        queue=row[2],
        payload=bytes(row[3]),
        priority=row[4],
        run_at=row[5],
        state=TaskState(row[6]),
        attempts=row[7],
        max_attempts=row[8],
        timeout=row[9],
        unique_key=row[10],
        created_at=row[11],
        lease_owner=row[12],
        lease_until=row[13],
        result=None if row[14] is None else bytes(row[14]),
        result_expires=row[15],
        last_error=row[16],
        traceback=row[17],
        finished_at=row[18],
        chain=None if row[19] is None else bytes(row[19]),
        group_id=row[20],
        group_index=row[21],
    )


def callback_to_json(task: NewTask) -> str:
    """A group's callback task, stored until the group completes (its payload comes later)."""
    return json.dumps(
        {
            "id": task.id,
            "name": task.name,
            "queue": task.queue,
            "priority": task.priority,
            "max_attempts": task.max_attempts,
            "timeout": task.timeout,
            "created_at": task.created_at,
        }
    )


def callback_from_json(text: str, payload: bytes, now: float) -> NewTask:
    """The callback task to enqueue now, with the members' results as its payload."""
    return NewTask(payload=payload, run_at=now, **json.loads(text))


def group_payload(results: Sequence[bytes | None]) -> bytes:
    """The callback payload of a group: a JSON array of the members' JSON results, in order
    (``null`` for a member that died)."""
    return b"[" + b",".join(r if r is not None else b"null" for r in results) + b"]"
