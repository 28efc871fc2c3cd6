"""How the queue's records are stored in NATS messages.

A task record is one message: a JSON object of its fields (ASCII: ``ensure_ascii``), a
newline, then its payload, result and chain bytes back to back, their lengths in the JSON
(``pl``, ``rl``, ``cl``; ``-1`` for None). Bytes stay bytes (no base64), and the fields a
view reads are decoded by one ``json.loads``. A history entry, a group and a worker are
plain JSON.
"""

from __future__ import annotations

import json
from typing import Any

from tasker.queue import GroupSpec, HistoryEntry, NewTask, TaskRecord, TaskState, WorkerInfo

__all__ = [
    "decode_group",
    "decode_history",
    "decode_new_task",
    "decode_record",
    "decode_worker",
    "encode_group",
    "encode_history",
    "encode_new_task",
    "encode_record",
    "encode_worker",
    "record_mark",
]

_STATES = {state.value: state for state in TaskState}
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _length(value: bytes | None) -> int:
    return -1 if value is None else len(value)


def encode_record(record: TaskRecord, *, mark: str | None = None) -> bytes:
    """The message of ``record``; ``mark`` names the outcome that settled it (see
    :func:`record_mark`)."""
    meta = {
        "id": record.id,
        "n": record.name,
        "q": record.queue,
        "p": record.priority,
        "r": record.run_at,
        "s": record.state.value,
        "a": record.attempts,
        "m": record.max_attempts,
        "to": record.timeout,
        "u": record.unique_key,
        "c": record.created_at,
        "lo": record.lease_owner,
        "lu": record.lease_until,
        "re": record.result_expires,
        "le": record.last_error,
        "tb": record.traceback,
        "f": record.finished_at,
        "g": record.group_id,
        "gi": record.group_index,
        "pl": len(record.payload),
        "rl": _length(record.result),
        "cl": _length(record.chain),
    }
    if mark is not None:
        meta["so"] = mark
    if record.trace is not None:  # tasker.tracing's carrier; absent, the key is left out
        meta["tr"] = record.trace
    parts = [_dumps(meta).encode("ascii"), b"\n", record.payload]
    if record.result is not None:
        parts.append(record.result)
    if record.chain is not None:
        parts.append(record.chain)
    return b"".join(parts)


def decode_record(data: bytes) -> TaskRecord:
    """The record of a message :func:`encode_record` made."""
    end = data.index(b"\n")
    meta: dict[str, Any] = json.loads(data[:end])
    at = end + 1
    payload = data[at : at + meta["pl"]]
    at += meta["pl"]
    result = chain = None
    if meta["rl"] >= 0:
        result = data[at : at + meta["rl"]]
        at += meta["rl"]
    if meta["cl"] >= 0:
        chain = data[at : at + meta["cl"]]
    return TaskRecord(
        id=meta["id"],
        name=meta["n"],
        queue=meta["q"],
        payload=bytes(payload),
        priority=meta["p"],
        run_at=meta["r"],
        state=_STATES[meta["s"]],
        attempts=meta["a"],
        max_attempts=meta["m"],
        timeout=meta["to"],
        unique_key=meta["u"],
        created_at=meta["c"],
        lease_owner=meta["lo"],
        lease_until=meta["lu"],
        result=None if result is None else bytes(result),
        result_expires=meta["re"],
        last_error=meta["le"],
        traceback=meta["tb"],
        finished_at=meta["f"],
        chain=None if chain is None else bytes(chain),
        group_id=meta["g"],
        group_index=meta["gi"],
        trace=meta.get("tr"),
    )


def record_mark(data: bytes) -> str | None:
    """The mark of the outcome that settled the record of ``data`` (None: none): how a
    finish sent again, after its answer was lost, knows its change was stored."""
    end = data.find(b"\n")
    if end < 0:
        return None
    mark: str | None = json.loads(data[:end]).get("so")
    return mark


def encode_history(entry: HistoryEntry) -> bytes:
    """The message of a history entry."""
    return _dumps(
        [
            entry.task_id,
            entry.name,
            entry.queue,
            entry.worker,
            entry.attempt,
            entry.started_at,
            entry.finished_at,
            entry.outcome,
            entry.error,
        ]
    ).encode("ascii")


def decode_history(data: bytes) -> HistoryEntry:
    """The entry of a message :func:`encode_history` made."""
    task_id, name, queue, worker, attempt, started_at, finished_at, outcome, error = json.loads(
        data
    )
    return HistoryEntry(
        task_id=task_id,
        name=name,
        queue=queue,
        worker=worker,
        attempt=attempt,
        started_at=started_at,
        finished_at=finished_at,
        outcome=outcome,
        error=error,
    )


def encode_new_task(task: NewTask) -> dict[str, Any]:
    """A new task as JSON-ready data (a group's callback, kept until the group closes)."""
    return {
        "id": task.id,
        "name": task.name,
        "queue": task.queue,
        "payload": task.payload.decode("latin-1"),
        "priority": task.priority,
        "run_at": task.run_at,
        "max_attempts": task.max_attempts,
        "timeout": task.timeout,
        "unique_key": task.unique_key,
        "unique_until": task.unique_until,
        "held": task.held,
        "chain": None if task.chain is None else task.chain.decode("latin-1"),
        "group_id": task.group_id,
        "group_index": task.group_index,
        "created_at": task.created_at,
        "trace": task.trace,
    }


def decode_new_task(data: dict[str, Any]) -> NewTask:
    """The new task :func:`encode_new_task` made data of."""
    fields = dict(data)
    fields["payload"] = fields["payload"].encode("latin-1")
    if fields["chain"] is not None:
        fields["chain"] = fields["chain"].encode("latin-1")
    return NewTask(**fields)


def encode_group(group: GroupSpec, members: list[str], done: int) -> bytes:
    """A group's message: its size, members, how many finished, and its callback."""
    return _dumps(
        {
            "id": group.id,
            "size": group.size,
            "members": members,
            "done": done,
            "callback": None if group.callback is None else encode_new_task(group.callback),
        }
    ).encode("ascii")


def decode_group(data: bytes) -> tuple[GroupSpec, list[str], int]:
    """The group, its members and its count of finished members."""
    raw = json.loads(data)
    callback = None if raw["callback"] is None else decode_new_task(raw["callback"])
    return GroupSpec(id=raw["id"], size=raw["size"], callback=callback), raw["members"], raw["done"]


def encode_worker(worker: WorkerInfo) -> bytes:
    """A worker registry entry."""
    return _dumps(
        [
            worker.id,
            list(worker.queues),
            worker.concurrency,
            worker.running,
            worker.started_at,
            worker.last_seen,
            worker.expires_at,
        ]
    ).encode("ascii")


def decode_worker(data: bytes) -> WorkerInfo:
    """The entry :func:`encode_worker` made."""
    worker_id, queues, concurrency, running, started_at, last_seen, expires_at = json.loads(data)
    return WorkerInfo(
        id=worker_id,
        queues=tuple(queues),
        concurrency=concurrency,
        running=running,
        started_at=started_at,
        last_seen=last_seen,
        expires_at=expires_at,
    )
