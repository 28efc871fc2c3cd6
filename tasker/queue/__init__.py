"""Durable background tasks whose workers are tasker jobs.

Register handlers by name, enqueue tasks now, later or held for a manual dispatch, and run
``queue.worker(...)`` beside the rest of the program in :func:`tasker.main`. Backends sit
behind :class:`QueueBackend`: in memory, the embedded SQLite default, or Postgres.
"""

from __future__ import annotations

from ._backend import (
    FinishAndClaim,
    QueueAdministration,
    QueueBackend,
    QueueCapability,
    QueueInspection,
    TransactionalEnqueue,
)
from ._memory import MemoryQueueBackend
from ._queue import (
    Enqueued,
    Handler,
    MissingCapabilityError,
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
    "FinishAndClaim",
    "GroupSpec",
    "Handler",
    "HistoryEntry",
    "JSONSerializer",
    "MemoryQueueBackend",
    "MissingCapabilityError",
    "NewTask",
    "Outcome",
    "OutcomeKind",
    "PayloadError",
    "Queue",
    "QueueAdministration",
    "QueueBackend",
    "QueueCapability",
    "QueueInspection",
    "SQLiteQueueBackend",
    "Serializer",
    "Step",
    "TaskInfo",
    "TaskRecord",
    "TaskState",
    "TransactionalEnqueue",
    "UnknownTaskError",
    "UnstorableRecordError",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__module__ = __name__
del _name, _obj
