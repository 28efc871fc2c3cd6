"""tasker_nats: the task queue and the Scheduler's backends on NATS JetStream, on nats-py
(asyncio only).

:class:`NatsQueueBackend` is a :class:`tasker.queue.QueueBackend` with every capability but
transactional enqueue: one record per task in a stream, changed by compare-and-set on its
revision, claimed through each process's view of the records. Needs NATS 2.12 or newer.

``tasker_nats.scheduler(url)`` is a :class:`tasker.Scheduler` whose locks are KV keys with
a server-side TTL and a revision as fencing number (:class:`NatsLockerFactory`,
:func:`fencing_token`) and whose state is a KV bucket (:class:`NatsStateRepository`), so
replicas on different machines run each slot once. Needs NATS server 2.11 or newer
(:data:`MIN_VERSION`) with JetStream; there is nothing to migrate.

Under trio every entry point raises :class:`AsyncioRequiredError`: nats-py is asyncio only.

Logging: tasker_nats logs under ``tasker_nats``, its lines redacted of secrets.
"""

from __future__ import annotations

from . import _errors  # registers the fault classifier
from ._connection import MIN_VERSION, NatsSource
from ._errors import AsyncioRequiredError, NatsSetupError
from ._locks import NatsLockerFactory, fencing_token
from ._queue_backend import NatsQueueBackend
from ._setup import scheduler
from ._state import NatsStateRepository

__all__ = [
    "MIN_VERSION",
    "AsyncioRequiredError",
    "NatsLockerFactory",
    "NatsQueueBackend",
    "NatsSetupError",
    "NatsSource",
    "NatsStateRepository",
    "fencing_token",
    "scheduler",
]

del _errors

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith(f"{__name__}._"):
        _obj.__module__ = __name__
del _name, _obj
