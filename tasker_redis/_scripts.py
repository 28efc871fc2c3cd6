"""The queue's Lua scripts (``queue.lua``: a shared prelude, then one line per script), and
how Python values travel to them and back.

Each script is the prelude plus a one-line body, run by ``EVALSHA`` (loaded again when
the server lost its script cache in a restart): the worker's calls (:data:`WIRE_SCRIPTS`)
on the queue's own connections (``_wire.py``), with their arguments as they are; the
others by a :class:`~._shared.ScriptSet` on the driver, with their arguments packed
(:func:`pack`). Records travel as ``n`` followed by n field/value pairs of the fields that
are set; a float is sent as ``repr(float)`` (exact both ways) and stored as it came. The
claims return their records as one JSON string (:func:`decode_json_records`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

from tasker.queue import GroupSpec, HistoryEntry, NewTask, Outcome, TaskRecord, TaskState

__all__ = [
    "RECORD_FIELDS",
    "SCRIPTS",
    "SCRIPT_TEXTS",
    "WIRE_SCRIPTS",
    "decode_history",
    "decode_json_records",
    "decode_record",
    "encode_group",
    "encode_outcome",
    "encode_task",
    "pack",
]

_PRELUDE = resources.files(__package__).joinpath("queue.lua").read_text(encoding="utf-8")

#: Script name -> its body after the prelude.
SCRIPTS = {
    "enqueue": "return enqueue_main()",
    "claim": "return cjson.encode(claim_main(false))",
    "finish_and_claim": "return cjson.encode(claim_main(true))",
    "finish": "return finish_main()",
    "heartbeat": "return heartbeat_main()",
    "claim_ids": "return cjson.encode(claim_ids_main())",
    "overdue": "return overdue_main()",
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


#: The scripts a worker runs (on the queue's own connections, see ``_wire.py``).
WIRE_SCRIPTS = frozenset(
    {"claim", "finish_and_claim", "claim_ids", "finish", "heartbeat", "next_due", "time"}
)

#: Script name -> its whole source (the prelude, then the body), for a ``ScriptSet``.
SCRIPT_TEXTS = {name: _PRELUDE + "\n" + body for name, body in SCRIPTS.items()}


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
    if task.trace is not None:
        pairs += ["trace", task.trace]
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


#: The fields of a task record as the scripts return it (``RECORD`` in ``queue.lua``).
RECORD_FIELDS = (
    "id",
    "name",
    "queue",
    "payload",
    "priority",
    "run_at",
    "state",
    "attempts",
    "max_attempts",
    "timeout",
    "unique_key",
    "created_at",
    "lease_owner",
    "lease_until",
    "result",
    "result_expires",
    "last_error",
    "traceback",
    "finished_at",
    "chain",
    "group_id",
    "group_index",
    "trace",
)


def decode_record(v: Sequence[bytes | None]) -> TaskRecord:
    """A :class:`TaskRecord` from a task hash's values of :data:`RECORD_FIELDS`, in order.

    The lease's fields count only while the task runs (a finish leaves them stored).
    """
    group_index = v[21]
    state = TaskState(v[6].decode())  # type: ignore[union-attr]
    running = state is TaskState.RUNNING
    return TaskRecord(
        id=v[0].decode(),  # type: ignore[union-attr]
        name=v[1].decode(),  # type: ignore[union-attr]
        queue=v[2].decode(),  # type: ignore[union-attr]
        payload=v[3] or b"",
        priority=int(v[4]),  # type: ignore[arg-type]
        run_at=float(v[5]),  # type: ignore[arg-type]
        state=state,
        attempts=int(v[7] or b"0"),
        max_attempts=int(v[8]),  # type: ignore[arg-type]
        timeout=_float(v[9]),
        unique_key=_text(v[10]),
        created_at=float(v[11]),  # type: ignore[arg-type]
        lease_owner=_text(v[12]) if running else None,
        lease_until=_float(v[13]) if running else None,
        result=v[14],
        result_expires=_float(v[15]),
        last_error=_text(v[16]),
        traceback=_text(v[17]),
        finished_at=_float(v[18]),
        chain=v[19],
        group_id=_text(v[20]),
        group_index=None if group_index is None else int(group_index),
        trace=_text(v[22]),
    )


def _bytes(value: str | bool) -> bytes | None:
    return None if value is False else value.encode("utf-8", "surrogateescape")  # type: ignore[union-attr]


def _opt_float(value: str | bool) -> float | None:
    return None if value is False else float(value)


def _opt_text(value: str | bool) -> str | None:
    return None if value is False else value  # type: ignore[return-value]


def decode_json_records(data: bytes) -> list[TaskRecord]:
    """The records a claim returns: a JSON array (``cjson``) of arrays of
    :data:`RECORD_FIELDS`' values, strings or ``false`` for a field not set.

    cjson copies a string's bytes as they are (escaping only ``"``, ``\\``, ``/`` and
    control characters), so decoding the document with ``surrogateescape`` and encoding a
    binary field back the same way gives its exact bytes, UTF-8 or not. An empty Lua table
    encodes as ``{}``.
    """
    rows = json.loads(data.decode("utf-8", "surrogateescape"))
    records = []
    running = TaskState.RUNNING
    for v in rows:
        state = TaskState(v[6])
        held = state is running
        group_index = v[21]
        records.append(
            TaskRecord(
                id=v[0],
                name=v[1],
                queue=v[2],
                payload=_bytes(v[3]) or b"",
                priority=int(v[4]),
                run_at=float(v[5]),
                state=state,
                attempts=int(v[7] or "0"),
                max_attempts=int(v[8]),
                timeout=_opt_float(v[9]),
                unique_key=_opt_text(v[10]),
                created_at=float(v[11]),
                lease_owner=_opt_text(v[12]) if held else None,
                lease_until=_opt_float(v[13]) if held else None,
                result=_bytes(v[14]),
                result_expires=_opt_float(v[15]),
                last_error=_opt_text(v[16]),
                traceback=_opt_text(v[17]),
                finished_at=_opt_float(v[18]),
                chain=_bytes(v[19]),
                group_id=_opt_text(v[20]),
                group_index=None if group_index is False else int(group_index),
                trace=_opt_text(v[22]),
            )
        )
    return records


def pack(items: Sequence[str | bytes]) -> bytes:
    """``items`` as one argument: each as ``b"<length>:<bytes>"`` (the scripts unpack it)."""
    out = []
    for item in items:
        data = item if isinstance(item, bytes) else item.encode()
        out.append(b"%d:%b" % (len(data), data))
    return b"".join(out)


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
