"""tasker_pg: Postgres backends for tasker, on asyncpg (asyncio only).

``tasker_pg.scheduler(dsn)`` is a :class:`tasker.Scheduler` whose locks are Postgres
advisory locks and whose state is a table, so replicas on different machines run each slot
once; :class:`PostgresQueueBackend` is a task queue on the same database.
``await tasker_pg.migrate(dsn)`` creates the tables of both. Under trio every entry point
raises :class:`AsyncioRequiredError`.
"""

from __future__ import annotations

from tasker import redact_dsn  # re-exported: it was tasker_pg's before tasker had one

from ._errors import AsyncioRequiredError, LockKeyCollisionError
from ._locks import PostgresLockerFactory, advisory_key
from ._queue_backend import PostgresQueueBackend
from ._schema import migrate
from ._setup import PostgresScheduler, scheduler
from ._state import PostgresStateRepository
from ._status import (
    LockHolder,
    QueueStatus,
    ScheduleStatus,
    WorkerLease,
    format_status,
    status,
)

__all__ = [
    "AsyncioRequiredError",
    "LockHolder",
    "LockKeyCollisionError",
    "PostgresLockerFactory",
    "PostgresQueueBackend",
    "PostgresScheduler",
    "PostgresStateRepository",
    "QueueStatus",
    "ScheduleStatus",
    "WorkerLease",
    "advisory_key",
    "format_status",
    "migrate",
    "redact_dsn",
    "scheduler",
    "status",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith(f"{__name__}._"):  # not tasker's re-export
        _obj.__module__ = __name__
del _name, _obj
