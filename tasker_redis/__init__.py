"""tasker_redis: the task queue and the Scheduler's backends on Redis, on coredis (asyncio
and trio).

:class:`RedisQueueBackend` is a :class:`tasker.queue.QueueBackend` with every capability
but transactional enqueue. Needs Redis 6.2 or newer; there is nothing to migrate.

``tasker_redis.scheduler(url)`` is a :class:`tasker.Scheduler` whose locks are keys with a
TTL and a fencing number (:class:`RedisLockerFactory`, :func:`fencing_token`) and whose
state is a hash (:class:`RedisStateRepository`), so replicas on different machines run
each slot once.

Logging: tasker_redis logs under ``tasker_redis``. The driver's own logger, ``coredis``,
reports every dropped connection and script reload at INFO (what tasker's workers and
Scheduler already report once per outage); unless the program set its level, it is set
to WARNING here.
"""

from __future__ import annotations

import logging

from . import _errors  # registers the fault classifier
from ._connection import MIN_VERSION
from ._locks import RedisLockerFactory, fencing_token
from ._queue_backend import RedisQueueBackend
from ._setup import scheduler
from ._state import RedisStateRepository

__all__ = [
    "MIN_VERSION",
    "RedisLockerFactory",
    "RedisQueueBackend",
    "RedisStateRepository",
    "fencing_token",
    "scheduler",
]

del _errors

if logging.getLogger("coredis").level == logging.NOTSET:
    logging.getLogger("coredis").setLevel(logging.WARNING)

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith(f"{__name__}._"):
        _obj.__module__ = __name__
del _name, _obj
