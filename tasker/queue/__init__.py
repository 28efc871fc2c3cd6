"""Durable background tasks whose workers are tasker jobs.

Register handlers (``@queue.task`` returns a :class:`Task` typed by the handler's payload and
result), enqueue tasks now, later or held for a manual dispatch, and run
``queue.worker(...)`` beside the rest of the program in :func:`tasker.main`. Backends sit
behind :class:`QueueBackend`: in memory, the embedded SQLite default, or Postgres.
"""

from __future__ import annotations

import inspect

from ._backend import (
    BoundedEnqueue,
    ClaimById,
    FinishAndClaim,
    QueueAdministration,
    QueueBackend,
    QueueCapability,
    QueueInspection,
    TaskCancellation,
    TaskProgress,
    TransactionalEnqueue,
    WorkerRegistry,
)
from ._chain import Step
from ._current import RunningTask, current_task
from ._errors import (
    MissingCapabilityError,
    PayloadError,
    QueueFullError,
    UnknownTaskError,
    UnstorableRecordError,
)
from ._info import Enqueued, TaskInfo
from ._limits import RateLimit
from ._long_queue import LongQueue
from ._memory import MemoryQueueBackend
from ._queue import Handler, Queue
from ._records import (
    CancelResult,
    CancelStatus,
    EnqueueResult,
    GroupSpec,
    HeaderValue,
    HistoryEntry,
    NewTask,
    Outcome,
    OutcomeKind,
    Progress,
    TaskRecord,
    TaskState,
    WorkerInfo,
)
from ._retention import Retention
from ._serializer import JSONSerializer, Serializer
from ._sqlite import SQLiteQueueBackend
from ._task import Task
from ._worker import Worker, WorkerStatistics

__all__ = [
    "BoundedEnqueue",
    "CancelResult",
    "CancelStatus",
    "ClaimById",
    "EnqueueResult",
    "Enqueued",
    "FinishAndClaim",
    "GroupSpec",
    "Handler",
    "HeaderValue",
    "HistoryEntry",
    "JSONSerializer",
    "LongQueue",
    "MemoryQueueBackend",
    "MissingCapabilityError",
    "NewTask",
    "Outcome",
    "OutcomeKind",
    "PayloadError",
    "Progress",
    "Queue",
    "QueueAdministration",
    "QueueBackend",
    "QueueCapability",
    "QueueFullError",
    "QueueInspection",
    "RateLimit",
    "Retention",
    "RunningTask",
    "SQLiteQueueBackend",
    "Serializer",
    "Step",
    "Task",
    "TaskCancellation",
    "TaskInfo",
    "TaskProgress",
    "TaskRecord",
    "TaskState",
    "TransactionalEnqueue",
    "UnknownTaskError",
    "UnstorableRecordError",
    "Worker",
    "WorkerInfo",
    "WorkerRegistry",
    "WorkerStatistics",
    "current_task",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) or inspect.isfunction(_obj):
        _obj.__module__ = __name__
del _name, _obj
