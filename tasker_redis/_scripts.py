"""The queue's Lua scripts (``queue.lua``: a shared prelude, then one line per script), and
how Python values travel to them and back.

Each script is the prelude plus a one-line body, sent once per connection pool
(``EVALSHA``, reloaded by the driver if the server lost its script cache in a restart).
Records travel as ``n`` followed by n field/value pairs of the fields that are set; a
float is sent as ``repr(float)`` (exact both ways) and stored as it came.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

import coredis

from tasker.queue import GroupSpec, HistoryEntry, NewTask, Outcome, TaskRecord, TaskState

__all__ = [
    "SCRIPTS",
    "Scripts",
    "decode_history",
    "decode_record",
    "encode_group",
    "encode_outcome",
    "encode_task",
]

_PRELUDE = resources.files(__package__).joinpath("queue.lua").read_text(encoding="utf-8")

#: Script name -> its body after the prelude.
SCRIPTS = {
    "enqueue": "return enqueue_main()",
    "claim": "return claim_main(false)",
    "finish_and_claim": "return claim_main(true)",
    "finish": "return finish_main()",
    "heartbeat": "return heartbeat_main()",
    "next_due": "return next_due_main()",
    "requeue": "return requeue_main()",
    "dispatch": "return dispatch_main()",
    "purge": "return purge_main()",
    "tasks": "return tasks_main()",
    "history": "return history_main()",
    "worker_seen": "return worker_seen_main()",
    "worker_gone": "return worker_gone_main()",
    "workers": "return workers_main()",
    "time": "return redis.call('TIME')",
}


class Scripts:
    """The scripts registered on one client (``scripts.claim(...)`` runs one)."""

    def __init__(self, client: coredis.Redis[bytes]) -> None:
        self.client = client
        self._scripts = {
            name: client.register_script(_PRELUDE + "\n" + body) for name, body in SCRIPTS.items()
        }

    async def run(self, name: str, key: str, args: Sequence[Any]) -> Any:
        """Run script ``name`` with ``KEYS[1] = key`` (the namespace's slot) and ``args``."""
        return await self._scripts[name](keys=[key], args=args)


def _f(value: float) -> str:
    return repr(float(value))


def encode_task(task: NewTask, out: list[Any], *, callback: bool = False) -> None:
    """Append ``task`` as a record (a group callback without payload, run_at and state)."""
    pairs: list[Any] = [
        "id",
        task.id,
        "name",
        task.name,
        "queue",
        task.queue,
        "priority",
        str(task.priority),
        "max_attempts",
        str(task.max_attempts),
        "created_at",
        _f(task.created_at),
    ]
    if not callback:
        pairs += [
            "payload",
            task.payload,
            "run_at",
            _f(task.run_at),
            "state",
            "held" if task.held else "queued",
            "attempts",
            "0",
        ]
    if task.timeout is not None:
        pairs += ["timeout", _f(task.timeout)]
    if task.unique_key is not None:
        pairs += ["unique_key", task.unique_key]
    if task.unique_until is not None:
        pairs += ["unique_until", _f(task.unique_until)]
    if task.chain is not None:
        pairs += ["chain", task.chain]
    if task.group_id is not None:
        pairs += ["group_id", task.group_id]
    if task.group_index is not None:
        pairs += ["group_index", str(task.group_index)]
    out.append(str(len(pairs) // 2))
    out.extend(pairs)


def encode_group(group: GroupSpec | None, out: list[Any]) -> None:
    """Append ``group`` (``"0"`` for none): its id, size and callback record."""
    if group is None:
        out.append("0")
        return
    out += ["1", group.id, str(group.size)]
    if group.callback is None:
        out.append("0")
    else:
        encode_task(group.callback, out, callback=True)


def encode_outcome(outcome: Outcome, out: list[Any]) -> None:
    """Append ``outcome`` as a record, then its follow-up tasks."""
    pairs: list[Any] = [
        "id",
        outcome.id,
        "worker",
        outcome.worker,
        "kind",
        outcome.kind.value,
        "started_at",
        _f(outcome.started_at),
        "finished_at",
        _f(outcome.finished_at),
    ]
    if outcome.result is not None:
        pairs += ["result", outcome.result]
    if outcome.result_expires is not None:
        pairs += ["result_expires", _f(outcome.result_expires)]
    if outcome.error is not None:
        pairs += ["error", outcome.error]
    if outcome.traceback is not None:
        pairs += ["traceback", outcome.traceback]
    if outcome.retry_at is not None:
        pairs += ["retry_at", _f(outcome.retry_at)]
    out.append(str(len(pairs) // 2))
    out.extend(pairs)
    out.append(str(len(outcome.follow_ups)))
    for task in outcome.follow_ups:
        encode_task(task, out)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "surrogateescape")


def _float(value: bytes | None) -> float | None:
    return None if value is None else float(value)


def decode_record(flat: Sequence[bytes]) -> TaskRecord:
    """A :class:`TaskRecord` from a task hash's ``HGETALL`` (a flat field/value list)."""
    it = iter(flat)
    f: dict[bytes, bytes] = dict(zip(it, it, strict=True))
    group_index = f.get(b"group_index")
    return TaskRecord(
        id=f[b"id"].decode(),
        name=f[b"name"].decode(),
        queue=f[b"queue"].decode(),
        payload=f.get(b"payload", b""),
        priority=int(f[b"priority"]),
        run_at=float(f[b"run_at"]),
        state=TaskState(f[b"state"].decode()),
        attempts=int(f.get(b"attempts", b"0")),
        max_attempts=int(f[b"max_attempts"]),
        timeout=_float(f.get(b"timeout")),
        unique_key=_text(f.get(b"unique_key")),
        created_at=float(f[b"created_at"]),
        lease_owner=_text(f.get(b"lease_owner")),
        lease_until=_float(f.get(b"lease_until")),
        result=f.get(b"result"),
        result_expires=_float(f.get(b"result_expires")),
        last_error=_text(f.get(b"last_error")),
        traceback=_text(f.get(b"traceback")),
        finished_at=_float(f.get(b"finished_at")),
        chain=f.get(b"chain"),
        group_id=_text(f.get(b"group_id")),
        group_index=None if group_index is None else int(group_index),
    )


def decode_history(flat: Sequence[bytes]) -> HistoryEntry:
    """A :class:`HistoryEntry` from a history stream entry's field/value list."""
    it = iter(flat)
    f: dict[bytes, bytes] = dict(zip(it, it, strict=True))
    return HistoryEntry(
        task_id=f[b"task_id"].decode(),
        name=f[b"name"].decode(),
        queue=f[b"queue"].decode(),
        worker=f[b"worker"].decode(),
        attempt=int(f[b"attempt"]),
        started_at=float(f[b"started_at"]),
        finished_at=float(f[b"finished_at"]),
        outcome=f[b"outcome"].decode(),
        error=_text(f.get(b"error")),
    )
