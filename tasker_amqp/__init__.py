"""tasker_amqp: the task queue on RabbitMQ, on aiormq (asyncio only).

:class:`AmqpQueueBackend` is a :class:`tasker.queue.QueueBackend` on durable quorum queues:
persistent messages, publisher confirms on every publish, a prefetch sized to the worker,
acknowledgement only once an outcome is settled, retries and delays through a ladder of
TTL queues (no plugin), dead tasks in a dead-letter queue, and gofort's dispatcher's
topology: an exchange, routing keys, headers and queues declared with their binding keys
(:class:`AmqpQueue`). :class:`AmqpSource` is the connection, with TLS and the
reconnection policy. Needs RabbitMQ 3.10 or newer.

Under trio every entry point raises :class:`AsyncioRequiredError`: aiormq is asyncio only.

Logging: tasker_amqp logs under ``tasker_amqp``, its lines redacted of secrets.
"""

from __future__ import annotations

from . import _errors  # registers the fault classifier
from ._connection import AmqpSource
from ._errors import AmqpSetupError, AmqpUnreachableError, AsyncioRequiredError
from ._queue_backend import AmqpQueueBackend
from ._stats import QueueStats, broker_stats
from ._topology import LEVELS, MAX_DELAY_MS, AmqpQueue

__all__ = [
    "LEVELS",
    "MAX_DELAY_MS",
    "AmqpQueue",
    "AmqpQueueBackend",
    "AmqpSetupError",
    "AmqpSource",
    "AmqpUnreachableError",
    "AsyncioRequiredError",
    "QueueStats",
    "broker_stats",
]

del _errors

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith(f"{__name__}._"):
        _obj.__module__ = __name__
del _name, _obj
