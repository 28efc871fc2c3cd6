"""Durable background tasks whose workers are tasker jobs.

Register handlers by name, enqueue tasks now, later or held for a manual dispatch, and run
``queue.worker(...)`` beside the rest of the program in :func:`tasker.main`. Backends sit
behind :class:`QueueBackend`: in memory, the embedded SQLite default, or Postgres.
"""

from __future__ import annotations

from ._backend import QueueBackend
from ._memory import MemoryQueueBackend
from ._queue import (
    Enqueued,
    Handler,
    PayloadError,
    Queue,
    Step,
    TaskInfo,
    UnknownTaskError,
    UnstorableRecordError,
)
from ._records import (
    EnqueueResult,
    GroupSpec,
    HistoryEntry,
    NewTask,
    Outcome,
    OutcomeKind,
    TaskRecord,
    TaskState,
)
from ._serializer import JSONSerializer, Serializer
from ._sqlite import SQLiteQueueBackend

__all__ = [
    "EnqueueResult",
    "Enqueued",
    "GroupSpec",
    "Handler",
    "HistoryEntry",
    "JSONSerializer",
    "MemoryQueueBackend",
    "NewTask",
    "Outcome",
    "OutcomeKind",
    "PayloadError",
    "Queue",
    "QueueBackend",
    "SQLiteQueueBackend",
    "Serializer",
    "Step",
    "TaskInfo",
    "TaskRecord",
    "TaskState",
    "UnknownTaskError",
    "UnstorableRecordError",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = __name__
del _name, _obj
