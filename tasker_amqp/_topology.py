"""What tasker_amqp declares on the broker, and where a message goes.

**The work.** The backend's exchange (``exchange``, of ``exchange_type``) routes each task by
its routing key (the task's ``queue``) or, on a headers exchange, by its headers, to quorum
queues declared with their binding keys (:class:`AmqpQueue`), as gofort's dispatcher
declares its ``InitQueues``. Without ``queues=``, every queue name a worker or an enqueue
uses is a quorum queue of that name bound with that name.

**Delays without the plugin.** A message that must wait ``d`` milliseconds passes through
the levels of a binary ladder: level ``k`` is a quorum queue whose messages expire after
``2**k`` ms and are then dead-lettered to the level below, and a message visits exactly the
levels of the bits set in ``d`` (a header per bit, matched by headers exchanges; a level
whose bit is clear is skipped through an exchange-to-exchange binding). Every message in a
level queue has the same TTL, so they expire in order at its head, which is all RabbitMQ
expires. After level 0 comes ``<prefix>.due``, which hands the message to its work queue
(a retry, back where it came from) or to the backend's exchange (a delayed enqueue, routed
then). :data:`LEVELS` levels hold delays up to 2**36 ms (about 2.2 years); a longer one
arrives early and goes round again. The ladder is shared by every backend on the virtual
host with the same ``prefix``: it holds nothing of theirs but messages in transit.

This is kombu's native delayed delivery (binary levels), with headers instead of routing-key
bits so the routing key survives the trip; the levels dead-letter *at least once* (quorum
queues, ``x-dead-letter-strategy``, RabbitMQ 3.10 or newer), so a broker restart loses no
waiting message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

from tasker.queue import HeaderValue

__all__ = [
    "LEVELS",
    "MAX_DELAY_MS",
    "AmqpQueue",
    "ExchangeType",
    "delay_headers",
    "routes_to",
]

#: The number of delay levels: level ``k`` holds messages ``2**k`` ms.
LEVELS = 36
#: The longest delay one trip through the ladder can give.
MAX_DELAY_MS = 2**LEVELS - 1

ExchangeType = Literal["direct", "topic", "fanout", "headers"]
_EXCHANGE_TYPES = ("direct", "topic", "fanout", "headers")

#: What AMQP allows in a queue or exchange name (a short string of at most 255 bytes);
#: tasker keeps to printable ASCII so names stay safe in logs and in rabbitmqctl.
_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,200}")
_TOPIC_KEY = re.compile(r"[^\x00-\x1f\x7f]{0,255}")


def check_name(value: object, what: str) -> str:
    """A queue, exchange or prefix name: 1 to 200 letters, digits, ``_ . : -``."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(
            f"{what} must be 1 to 200 letters, digits, '_', '.', ':' or '-', got {value!r}"
        )
    if value.startswith("amq."):
        raise ValueError(f"{what} may not start with 'amq.' (RabbitMQ reserves it), got {value!r}")
    return value


def check_exchange_type(value: object) -> ExchangeType:
    if value not in _EXCHANGE_TYPES:
        raise ValueError(f"exchange_type must be one of {_EXCHANGE_TYPES}, got {value!r}")
    return value  # type: ignore[return-value]


def check_routing_key(value: str) -> str:
    if not _TOPIC_KEY.fullmatch(value) or len(value.encode()) > 255:
        raise ValueError(
            "a routing key (a task's queue) must be at most 255 bytes without control"
            f" characters, got {value!r}"
        )
    return value


@dataclass(frozen=True, slots=True)
class AmqpQueue:
    """A quorum queue the backend declares at start, with what routes tasks to it.

    Args:
        name: the queue's name: what workers consume (``Queue.worker(queues=[name])``).
        binding_keys: the routing keys (patterns on a topic exchange: ``*`` one word,
            ``#`` any) that bind it to the exchange; default: its own name. A task's
            routing key is its ``queue`` (``enqueue(..., queue="eu.emails")``).
        binding_headers: on a headers exchange, the headers a task must carry to reach it
            (``x_match`` says whether all or any must match).
        x_match: ``"all"`` or ``"any"``, for ``binding_headers``.
        arguments: extra queue arguments (``{"x-consumer-timeout": 7_200_000}`` on
            RabbitMQ 3.12 and newer; ``x-queue-type`` is always ``quorum``).
    """

    name: str
    binding_keys: tuple[str, ...] = ()
    binding_headers: Mapping[str, HeaderValue] = field(default_factory=dict)
    x_match: Literal["all", "any"] = "all"
    arguments: Mapping[str, HeaderValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name(self.name, "AmqpQueue name")
        if isinstance(cast(object, self.binding_keys), str):
            raise TypeError("binding_keys must be a sequence of str, not one str")
        keys = tuple(self.binding_keys) or (self.name,)
        for key in keys:
            if not isinstance(key, str):
                raise TypeError(f"binding_keys must be str, got {key!r}")
            check_routing_key(key)
        object.__setattr__(self, "binding_keys", keys)
        if self.x_match not in ("all", "any"):
            raise ValueError(f"x_match must be 'all' or 'any', got {self.x_match!r}")
        for key, value in {**self.binding_headers, **self.arguments}.items():
            if not isinstance(key, str) or not isinstance(value, HeaderValue):
                raise TypeError(
                    f"binding_headers and arguments map str to str, int or bool,"
                    f" got {key!r}: {value!r}"
                )
        if "x-queue-type" in self.arguments:
            raise ValueError("arguments may not set x-queue-type: tasker_amqp uses quorum queues")
        object.__setattr__(self, "binding_headers", dict(self.binding_headers))
        object.__setattr__(self, "arguments", dict(self.arguments))


def topic_matches(pattern: str, key: str) -> bool:
    """Whether a topic exchange routes ``key`` through a binding of ``pattern``."""
    return _topic(pattern.split("."), key.split("."))


def _topic(pattern: Sequence[str], words: Sequence[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_topic(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _topic(rest, words[1:])


def routes_to(
    queue: AmqpQueue,
    exchange_type: ExchangeType,
    routing_key: str,
    headers: Mapping[str, HeaderValue],
) -> bool:
    """Whether the exchange routes a message with ``routing_key`` and ``headers`` to
    ``queue``, as RabbitMQ would by the bindings tasker declared."""
    if exchange_type == "fanout":
        return True
    if exchange_type == "direct":
        return routing_key in queue.binding_keys
    if exchange_type == "topic":
        return any(topic_matches(pattern, routing_key) for pattern in queue.binding_keys)
    wanted = queue.binding_headers
    if not wanted:
        return False
    hits = [headers.get(key) == value for key, value in wanted.items()]
    return all(hits) if queue.x_match == "all" else any(hits)


def delay_headers(delay_ms: int) -> tuple[int, dict[str, str]]:
    """The level to publish a delay of ``delay_ms`` to, and the bit headers that steer it
    down the ladder (``delay_ms`` is capped at :data:`MAX_DELAY_MS`)."""
    delay_ms = max(1, min(delay_ms, MAX_DELAY_MS))
    top = delay_ms.bit_length() - 1
    return top, {f"d{k}": "1" if delay_ms >> k & 1 else "0" for k in range(top + 1)}
