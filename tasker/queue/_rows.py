"""What the SQL backends (SQLite here, Postgres in ``tasker_pg``) share: the task row's
columns and their mapping to :class:`TaskRecord`, and a group callback stored as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ._quick import quick_replace
from ._records import (
    HistoryEntry,
    NewTask,
    Outcome,
    OutcomeKind,
    Progress,
    TaskRecord,
    TaskState,
)

__all__ = [
    "COLUMNS",
    "FINISHED_STATES",
    "LEASE_EXPIRED",
    "LIVE_STATES",
    "PROGRESS_CLEARED",
    "WAITING_STATES",
    "callback_from_json",
    "callback_to_json",
    "dead_record",
    "group_payload",
    "progress_from_row",
    "record_from_row",
    "replace_record",
    "settled_kind",
    "settled_record",
]

#: The task columns, in the order :func:`record_from_row` reads them.
COLUMNS = (
    "id, name, queue, payload, priority, run_at, state, attempts, max_attempts, timeout,"
    " unique_key, created_at, lease_owner, lease_until, result, result_expires, last_error,"
    " traceback, finished_at, chain, group_id, group_index, cancel_requested,"
    " progress, progress_text, progress_at, trace"
)
#: What a claim sets to start an attempt without the last one's progress (``PROGRESS``).
PROGRESS_CLEARED = "progress = null, progress_text = null, progress_at = null"
#: The states of a task that counts towards its queue's depth (``BOUNDED_QUEUES``).
WAITING_STATES = ("held", "queued")
#: The states in which a task holds its unique key.
LIVE_STATES = ("held", "queued", "running")
#: The states of a finished task (a group's member in one of them has settled).
FINISHED_STATES = ("succeeded", "dead", "cancelled")
#: The error of a task whose last attempt's lease expired (its worker stopped responding).
LEASE_EXPIRED = "lease expired (the worker stopped responding)"


#: A state by its stored value: a dict lookup, not ``TaskState(value)`` (an enum call).
_STATES = {state.value: state for state in TaskState}


def record_from_row(row: Any) -> TaskRecord:
    """A :class:`TaskRecord` from a row of :data:`COLUMNS` (a tuple, or an asyncpg record)."""
    state = _STATES.get(row[6])
    return TaskRecord(
        id=row[0],
        name=row[1],
        queue=row[2],
        payload=bytes(row[3]),
        priority=row[4],
        run_at=row[5],
        state=TaskState(row[6]) if state is None else state,  # the enum's error if unknown
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
        cancel_requested=bool(row[22]),
        progress=None if row[23] is None else progress_from_row(row[23], row[24], row[25]),
        trace=row[26],
    )


def progress_from_row(value: float | None, text: str | None, at: float | None) -> Progress | None:
    """The :class:`Progress` of the ``progress``, ``progress_text`` and ``progress_at``
    columns (None when no progress was stored)."""
    if value is None or at is None:
        return None
    return Progress(value=value, text=text or "", updated_at=at)


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
            "trace": task.trace,
        }
    )


def callback_from_json(text: str, payload: bytes, now: float) -> NewTask:
    """The callback task to enqueue now, with the members' results as its payload."""
    return NewTask(payload=payload, run_at=now, **json.loads(text))


def group_payload(results: Sequence[bytes | None]) -> bytes:
    """The callback payload of a group: a JSON array of the members' JSON results, in order
    (``null`` for a member that died)."""
    return b"[" + b",".join(r if r is not None else b"null" for r in results) + b"]"


def record_from_new(task: NewTask) -> TaskRecord:
    """The record of a task just enqueued (for a store that keeps records, not rows)."""
    return TaskRecord(
        id=task.id,
        name=task.name,
        queue=task.queue,
        payload=task.payload,
        priority=task.priority,
        run_at=task.run_at,
        state=TaskState.HELD if task.held else TaskState.QUEUED,
        attempts=0,
        max_attempts=task.max_attempts,
        timeout=task.timeout,
        unique_key=task.unique_key,
        created_at=task.created_at,
        chain=task.chain,
        group_id=task.group_id,
        group_index=task.group_index,
        headers=task.headers,
        trace=task.trace,
    )


#: The columns of an insert of a new task, in the order of :func:`task_insert_values`.
TASK_INSERT_COLUMNS = (
    "id, name, queue, payload, priority, run_at, state, max_attempts, timeout, unique_key,"
    " unique_until, created_at, chain, group_id, group_index, trace"
)


def task_insert_values(task: NewTask) -> tuple[object, ...]:
    """The values of :data:`TASK_INSERT_COLUMNS` for ``task``."""
    return (
        task.id,
        task.name,
        task.queue,
        task.payload,
        task.priority,
        task.run_at,
        "held" if task.held else "queued",
        task.max_attempts,
        task.timeout,
        task.unique_key,
        task.unique_until,
        task.created_at,
        task.chain,
        task.group_id,
        task.group_index,
        task.trace,
    )


#: The history columns, in the order :func:`history_from_row` reads them.
HISTORY_COLUMNS = "task_id, name, queue, worker, attempt, started_at, finished_at, outcome, error"


def history_from_row(row: Any) -> HistoryEntry:
    """A :class:`HistoryEntry` from a row of :data:`HISTORY_COLUMNS`."""
    return HistoryEntry(
        task_id=row[0],
        name=row[1],
        queue=row[2],
        worker=row[3],
        attempt=row[4],
        started_at=row[5],
        finished_at=row[6],
        outcome=row[7],
        error=row[8],
    )


_replace_record = quick_replace(TaskRecord)


def replace_record(record: TaskRecord, /, **changes: Any) -> TaskRecord:
    """``dataclasses.replace`` for a :class:`TaskRecord`: a copy with ``changes``, without
    the per-call field introspection or the frozen ``__init__`` (a hot path of the stores
    that keep records). An unknown field is a :class:`TypeError`, as there."""
    new: TaskRecord = _replace_record(record, **changes)
    return new


def dead_record(
    record: TaskRecord, error: str, traceback: str | None, finished_at: float
) -> TaskRecord:
    """``record`` dead: its lease released, its error and traceback kept."""
    return replace_record(
        record,
        state=TaskState.DEAD,
        lease_owner=None,
        lease_until=None,
        last_error=error,
        traceback=traceback,
        finished_at=finished_at,
    )


def settled_kind(kind: OutcomeKind, cancel_requested: bool) -> OutcomeKind:
    """How an outcome of ``kind`` is recorded: as itself, except that a task whose cancel
    was requested ends cancelled unless it succeeded (``tasker.abc.TaskCancellation``)."""
    if cancel_requested and kind is not OutcomeKind.SUCCEEDED:
        return OutcomeKind.CANCELLED
    return kind


def settled_record(record: TaskRecord, outcome: Outcome) -> TaskRecord:
    """The record ``outcome`` leaves of the running ``record`` (for a store that keeps
    records): succeeded with its result, dead, cancelled, or queued again (a retry at
    ``retry_at`` with the attempt counted; a release or an interruption with it handed
    back). The caller has applied :func:`settled_kind` to ``outcome.kind``."""
    kind = outcome.kind
    if kind is OutcomeKind.CANCELLED:
        return replace_record(
            record,
            state=TaskState.CANCELLED,
            lease_owner=None,
            lease_until=None,
            last_error=outcome.error,
            traceback=outcome.traceback,
            finished_at=outcome.finished_at,
        )
    if kind is OutcomeKind.SUCCEEDED:
        return replace_record(
            record,
            state=TaskState.SUCCEEDED,
            lease_owner=None,
            lease_until=None,
            result=outcome.result,
            result_expires=outcome.result_expires,
            last_error=None,
            traceback=None,
            finished_at=outcome.finished_at,
        )
    if kind is OutcomeKind.DEAD:
        return dead_record(
            record, outcome.error or "failed", outcome.traceback, outcome.finished_at
        )
    retry = kind is OutcomeKind.RETRY
    return replace_record(
        record,
        state=TaskState.QUEUED,
        lease_owner=None,
        lease_until=None,
        attempts=record.attempts if retry else record.attempts - 1,
        run_at=outcome.retry_at if retry and outcome.retry_at is not None else record.run_at,
        last_error=outcome.error if retry else record.last_error,
        traceback=outcome.traceback if retry else record.traceback,
    )
