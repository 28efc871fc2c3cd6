"""The task queue's backend on RabbitMQ: delivery, leases, retries and dead letters.

**What RabbitMQ does.** Tasks are persistent messages in durable quorum queues, every
publish confirmed. Each process consumes each queue its workers take from once, with a
prefetch (by default the first claim's limit: the worker's concurrency, so that what it
holds unacknowledged is what it runs plus its free slots). A delivery is acknowledged only
once its outcome is settled: a retry or a dead letter is published, and confirmed, before
the original is acknowledged. A worker that dies, or whose connection drops, leaves its
deliveries unacknowledged, and RabbitMQ hands them to another consumer; the quorum queue's
``x-delivery-count`` says how often, so the attempt each crash cost is counted.

**Leases.** A claim leases a delivery to a worker of this process; heartbeats extend it in
memory, with no I/O. The lease is lost when the delivery is: the channel or the connection
closed (a drop, or RabbitMQ's ``consumer_timeout``), and then another process may already
run the task. Inside the process a lease also expires by time, as the protocol says: a
claim may take over a delivery whose lease expired (counting an attempt), or make it dead
on its last attempt.

**Order.** Deliveries wait in the process in priority, then ``run_at``, order, and a claim
takes the first that are due on the ``now`` it is given; RabbitMQ's quorum queues deliver in
FIFO order, so priority orders what a process has been delivered, not the whole queue.

**What it cannot do alone**: look tasks up, unique keys, held tasks, chains and groups need
a store RabbitMQ does not have, so alone this backend declares none of those capabilities.
With a ``store=`` it offers the store's (``_stored``): the store leases, the broker delivers.

**Guarantees.** At least once: a task runs again only if a worker died or lost its
connection after it started (or after its outcome was decided but before the broker had
the acknowledgement), and never silently disappears: an unroutable enqueue raises, an
unreadable message goes to the dead-letter queue, and a message beyond the delay ladder's
reach goes round again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import heapq
import itertools
import logging
import math
import time as _time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aiormq
import aiormq.abc
import aiormq.exceptions
from pamqp.commands import Basic

from tasker.abc import QueueBackend, QueueCapability
from tasker.backends import LEASE_EXPIRED, to_seconds
from tasker.queue import (
    EnqueueResult,
    GroupSpec,
    HeaderValue,
    HistoryEntry,
    MissingCapabilityError,
    NewTask,
    Outcome,
    OutcomeKind,
    TaskRecord,
    TaskState,
    WorkerInfo,
)

from ._acks import Acks, ack_all
from ._codec import Meta, NotATaskError, clip, decode, encode, is_reserved, micros
from ._connection import AmqpSource, check_asyncio
from ._errors import AmqpSetupError
from ._stats import QueueStats, broker_stats
from ._stored import StoreSide, store_capabilities
from ._topology import (
    LEVELS,
    AmqpQueue,
    ExchangeType,
    check_exchange_type,
    check_name,
    check_routing_key,
    delay_headers,
    routes_to,
)

__all__ = ["AmqpQueueBackend"]

logger = logging.getLogger("tasker_amqp")

#: A delivery due further ahead than this on the worker's clock went round the delay ladder
#: early (a delay beyond its reach): it is sent round again rather than held here.
_REDELAY_AHEAD = 60.0
#: How long a publication is waited for by :meth:`AmqpQueueBackend.wait_delivered` after it
#: fell due (then it was taken by another process, or lost with a connection).
_PENDING_FOR = 30.0
#: How long a claim that starts a queue's consumer waits for what was waiting in it.
_FIRST_FLOW = 2.0
_QUORUM = {"x-queue-type": "quorum"}
#: Channels of a dropped link being closed in the background (kept from the collector).
_CLOSING: set[asyncio.Future[None]] = set()


@dataclass(slots=True, eq=False)
class _Delivery:
    meta: Meta
    payload: bytes
    queue: str
    channel: aiormq.abc.AbstractChannel
    acks: Acks  # the channel's
    tag: int
    seq: int
    attempts: int  # attempts made before this claim, redeliveries counted
    #: Whether the broker delivered this message before (to a worker that died or lost
    #: its connection): its attempt was cut short, and counts.
    redelivered: bool
    # once claimed:
    worker: str | None = None
    lease_until: float = 0.0

    @property
    def key(self) -> tuple[int, float, int]:
        return (-self.meta.priority, self.meta.run_at, self.seq)

    def record(self) -> TaskRecord:
        meta = self.meta
        return TaskRecord(
            id=meta.id,
            name=meta.name,
            queue=self.queue,
            payload=self.payload,
            priority=meta.priority,
            run_at=meta.run_at,
            state=TaskState.RUNNING,
            attempts=self.attempts,
            max_attempts=meta.max_attempts,
            timeout=meta.timeout,
            unique_key=None,
            created_at=meta.created_at,
            headers=meta.headers or None,
            trace=meta.trace,
            lease_owner=self.worker,
            lease_until=self.lease_until,
        )


@dataclass(slots=True)
class _Flow:
    """The deliveries a consumer that just started is still to receive."""

    waiting: int
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True)
class _Buffer:
    """One queue's deliveries not yet claimed: due ones by claim order, early ones by
    ``run_at``, and those the last claim set aside (see :func:`_skim`)."""

    ready: list[tuple[tuple[int, float, int], _Delivery]] = field(default_factory=list)
    early: list[tuple[float, int, _Delivery]] = field(default_factory=list)
    aside: list[_Delivery] = field(default_factory=list)

    def promote(self, now: float) -> None:
        for delivery in self.aside:
            heapq.heappush(self.ready, (delivery.key, delivery))
        self.aside.clear()
        # Times travel as whole microseconds: a task due "now" may read a hair later.
        while self.early and self.early[0][0] <= now + 1e-6:
            _, _, delivery = heapq.heappop(self.early)
            heapq.heappush(self.ready, (delivery.key, delivery))

    def __len__(self) -> int:
        return len(self.ready) + len(self.early) + len(self.aside)


@dataclass(slots=True)
class _Link:
    """The channels of one connection generation, and what was set up on them."""

    generation: int
    publisher: aiormq.abc.AbstractChannel
    consumer: aiormq.abc.AbstractChannel
    acks: Acks
    declared: set[str] = field(default_factory=set)
    consuming: dict[str, str] = field(default_factory=dict)

    def is_open(self) -> bool:
        return not (self.publisher.is_closed or self.consumer.is_closed)


class AmqpQueueBackend:
    """A :class:`tasker.queue.QueueBackend` on RabbitMQ quorum queues (asyncio only).

    Alone, the core protocol: enqueue (``delay=``/``at=`` through the delay ladder of
    :mod:`tasker_amqp`'s topology), claims with leases, heartbeats, retries with backoff,
    dead letters to ``dead_queue``, and waiting for work. Looking tasks up, unique keys,
    held tasks, chains and groups need a ``store`` beside the broker: with one, the backend
    declares what the store does of those, and the store holds the tasks' state and
    leases while RabbitMQ delivers them (see the RabbitMQ guide for what holds across the
    two).

    Args:
        url: an ``amqp://`` or ``amqps://`` URL, or an :class:`AmqpSource` (to share one
            connection among backends, or set TLS and the reconnection policy).
        exchange: the exchange tasks are published to (declared durable).
        exchange_type: ``"topic"`` (default: a plain routing key works as on a direct
            exchange, patterns too), ``"direct"``, ``"fanout"`` or ``"headers"``.
        queues: the queues to declare at start, with their bindings (:class:`AmqpQueue`,
            or a name: a queue bound with its own name). Without it, each queue name used
            by an enqueue or a worker is a queue bound with its own name, declared when
            first used.
        headers: per task name, headers published with it (what a headers exchange
            routes by).
        dead_queue: the quorum queue dead tasks go to, with their last error.
        namespace: a prefix of every work queue's name on the broker (``namespace.name``),
            so several applications can share a virtual host; the tasks' queues, workers'
            queues and routing keys stay as they are.
        prefix: the prefix of the delay ladder's queues and exchanges, shared by every
            backend on the virtual host that uses the same prefix.
        prefetch: how many unacknowledged deliveries this process takes per queue;
            default: the limit of the first claim (the worker's concurrency).
        ssl_context, reconnect_retries, reconnect_interval: as :class:`AmqpSource`
            (only with a URL).
        store: a queue backend that declares ``CLAIM_BY_ID`` and ``INSPECTION``
            (:class:`tasker.queue.SQLiteQueueBackend`, tasker_pg's, tasker_redis's): it
            keeps the tasks, their leases and outcomes; this backend closes it with itself.
        republish_after: with a store, how long a task may be overdue in the store, with
            nothing waiting in its queue on the broker, before it is published again (its
            publication was lost between the two systems); swept every third of it.

    Raises:
        ValueError: for a bad name, exchange type, or option, or a store that cannot
            claim tasks by id or look them up.
        TypeError: a store that is not a queue backend.
    """

    capabilities: frozenset[QueueCapability] = frozenset({QueueCapability.HEADERS})

    def __init__(
        self,
        url: str | AmqpSource,
        *,
        exchange: str = "tasker",
        exchange_type: ExchangeType = "topic",
        queues: Sequence[AmqpQueue | str] | None = None,
        headers: Mapping[str, Mapping[str, HeaderValue]] | None = None,
        dead_queue: str = "tasker.dead",
        namespace: str | None = None,
        prefix: str = "tasker",
        prefetch: int | None = None,
        ssl_context: Any = None,
        reconnect_retries: int | None = None,
        reconnect_interval: float | timedelta = 1.0,
        store: QueueBackend | None = None,
        republish_after: float | timedelta = 30.0,
    ) -> None:
        self._stored = (
            None
            if store is None
            else StoreSide(
                self, store, to_seconds(republish_after, "republish_after", allow_zero=False)
            )
        )
        if store is not None:
            self.capabilities = frozenset({QueueCapability.HEADERS}) | store_capabilities(store)
        if isinstance(url, AmqpSource):
            if ssl_context is not None or reconnect_retries is not None:
                raise ValueError(
                    "give ssl_context and reconnect_retries to the AmqpSource, not here"
                )
            self._source = url
        else:
            self._source = AmqpSource(
                url,
                ssl_context=ssl_context,
                reconnect_retries=reconnect_retries,
                reconnect_interval=reconnect_interval,
            )
        self.exchange = check_name(exchange, "exchange")
        self.exchange_type = check_exchange_type(exchange_type)
        self.dead_queue = check_name(dead_queue, "dead_queue")
        self.prefix = check_name(prefix, "prefix")
        self.namespace = None if namespace is None else check_name(namespace, "namespace")
        if prefetch is not None and (
            isinstance(prefetch, bool)
            or not isinstance(prefetch, int)
            or not 1 <= prefetch <= 65535
        ):
            raise ValueError(f"prefetch must be None or an int from 1 to 65535, got {prefetch!r}")
        self._prefetch = prefetch
        self._auto = queues is None
        declared: dict[str, AmqpQueue] = {}
        for queue in queues or ():
            spec = AmqpQueue(queue) if isinstance(queue, str) else queue
            if not isinstance(spec, AmqpQueue):
                raise TypeError(f"queues must hold AmqpQueue or str, got {queue!r}")
            if spec.name in declared:
                raise ValueError(f"queue {spec.name!r} is declared twice")
            if spec.name == self.dead_queue:
                raise ValueError(f"queue {spec.name!r} is also the dead_queue")
            declared[spec.name] = spec
        if queues is not None and not declared:
            raise ValueError("queues must declare at least one queue (or be None)")
        self._queues = declared
        self._headers: dict[str, dict[str, HeaderValue]] = {}
        for name, values in (headers or {}).items():
            for key, value in values.items():
                if not isinstance(key, str) or not isinstance(value, HeaderValue):
                    raise TypeError(
                        f"headers map task names to str -> str, int or bool, got"
                        f" {key!r}: {value!r} for {name!r}"
                    )
                if is_reserved(key):
                    raise ValueError(f"header {key!r} (task {name!r}) is reserved")
            self._headers[name] = dict(values)
        self._link: _Link | None = None
        self._setup_lock: asyncio.Lock | None = None
        self._buffers: dict[str, _Buffer] = {}
        self._buffered: set[tuple[str, str]] = set()
        # Deliveries claimed, by (worker, task id), and the same by (queue, task id): a
        # message routed to several queues is a copy per queue, each run by its queue's
        # workers, under the one task id.
        self._held: dict[tuple[str | None, str], _Delivery] = {}
        # No held lease expires before this (a lower bound: a renewal only moves a lease
        # later), so a claim before it need not look at the held deliveries at all.
        self._next_expiry = math.inf
        self._running: set[tuple[str, str]] = set()
        # Tasks whose held delivery is being replaced by a fresh message (see _redeliver).
        # The first deliveries a starting consumer waits for, per queue (see _consume).
        self._flows: dict[str, _Flow] = {}
        self._republishing: set[str] = set()
        self._wake: asyncio.Event | None = None
        self._seq = itertools.count()
        # Publications to queues this process consumes, not yet delivered back to it (for
        # wait_delivered): task id -> (queue, monotonic time it falls due).
        # (queue, task id) -> monotonic time it falls due: a copy per queue it reaches.
        self._pending: dict[tuple[str, str], float] = {}
        self._pending_order: collections.deque[tuple[float, tuple[str, str]]] = collections.deque()
        self._closed = False

    def __repr__(self) -> str:
        store = "" if self._stored is None else f", store={self._stored.store!r}"
        return f"AmqpQueueBackend({self._source.url!r}, exchange={self.exchange!r}{store})"

    @property
    def source(self) -> AmqpSource:
        """The connection this backend uses."""
        return self._source

    # -- the connection, the channels and the topology ----------------------------------

    async def _connected(self) -> _Link:
        check_asyncio()
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        link = self._link
        if (
            link is not None
            and link.generation == self._source.generation
            and link.is_open()
            and self._source.is_open()
        ):
            return link
        if self._setup_lock is None:
            self._setup_lock = asyncio.Lock()
        async with self._setup_lock:
            link = self._link
            connection = await self._source.connection()
            if link is not None and link.generation == self._source.generation and link.is_open():
                return link
            consumed = list(link.consuming) if link is not None else []
            lost = self._lost(link)
            link = await self._open(connection)
            self._link = link
            for queue in consumed:
                await self._consume(link, queue)
            if lost is not None:
                logger.warning(
                    "the channels to RabbitMQ were lost; reconnected, with the topology and"
                    " the consumers of %d queues restored (%d tasks running here %s)",
                    len(consumed),
                    lost,
                    "lost their leases: RabbitMQ hands them to a worker again"
                    if self._stored is None
                    else "keep their leases in the store; their messages, redelivered,"
                    " wait for them",
                )
            return link

    def _lost(self, link: _Link | None) -> int | None:
        """The channels are gone: so are the deliveries taken on them. How many of those
        were running (None: there was no link)."""
        if link is None:
            return None
        held = len(self._held)
        reason = _close_reason(link.consumer)
        if held and "acknowledgement" in reason and "timed out" in reason:
            logger.error(
                "RabbitMQ closed the channel of %d running tasks because a delivery stayed"
                " unacknowledged longer than its consumer_timeout (%s): the tasks lost their"
                " leases and will run again. Raise consumer_timeout (rabbitmq.conf, in ms) or,"
                " on RabbitMQ 3.12+, give the queue x-consumer-timeout, above the longest"
                " task; keep the tasks' timeout= below it",
                held,
                reason,
            )
        self._held.clear()
        self._running.clear()
        self._buffers.clear()
        self._buffered.clear()
        for channel in (link.publisher, link.consumer):
            if not channel.is_closed:
                task = asyncio.ensure_future(_close_quietly(channel))
                _CLOSING.add(task)
                task.add_done_callback(_CLOSING.discard)
        return held

    async def _open(self, connection: aiormq.abc.AbstractConnection) -> _Link:
        publisher = await connection.channel(publisher_confirms=True)
        consumer = await connection.channel(publisher_confirms=False)
        link = _Link(self._source.generation, publisher, consumer, Acks(consumer))
        try:
            await self._declare(link)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise AmqpSetupError(
                f"a queue or exchange tasker_amqp declares exists with other arguments ({exc})",
                "delete it (`rabbitmqctl delete_queue NAME`) if nothing in it is needed, or use"
                " other names (prefix=, dead_queue=, exchange=, queue names)",
            ) from None
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise AmqpSetupError(
                f"RabbitMQ refused to declare tasker_amqp's topology ({exc})",
                "give the user configure, write and read permissions on the virtual host"
                " (`rabbitmqctl set_permissions -p VHOST USER '.*' '.*' '.*'`)",
            ) from None
        return link

    async def _declare(self, link: _Link) -> None:
        channel = link.publisher
        prefix = self.prefix
        due = f"{prefix}.due"
        await channel.exchange_declare(due, exchange_type="headers", durable=True)
        for k in range(LEVELS):
            level = f"{prefix}.delay.{k}"
            below = f"{prefix}.delay.{k - 1}" if k else due
            await channel.exchange_declare(level, exchange_type="headers", durable=True)
            await channel.queue_declare(
                level,
                durable=True,
                arguments={
                    **_QUORUM,
                    "x-message-ttl": 2**k,
                    "x-dead-letter-exchange": below,
                    "x-dead-letter-strategy": "at-least-once",
                    "x-overflow": "reject-publish",
                },
            )
            await channel.queue_bind(level, level, arguments={"x-match": "all", f"d{k}": "1"})
            await channel.exchange_bind(below, level, arguments={"x-match": "all", f"d{k}": "0"})
        await channel.exchange_declare(
            self.exchange, exchange_type=self.exchange_type, durable=True
        )
        await channel.exchange_bind(
            self.exchange, due, arguments={"x-match": "all", "tasker-to": f"x:{self.exchange}"}
        )
        await channel.queue_declare(self.dead_queue, durable=True, arguments=dict(_QUORUM))
        for spec in self._queues.values():
            await self._declare_queue(link, spec)

    def amqp_name(self, queue: str) -> str:
        """The broker's name of the work queue ``queue`` (with the namespace)."""
        return f"{self.namespace}.{queue}" if self.namespace else queue

    async def _declare_queue(self, link: _Link, spec: AmqpQueue) -> None:
        channel = link.publisher
        name = self.amqp_name(spec.name)
        await channel.queue_declare(name, durable=True, arguments={**spec.arguments, **_QUORUM})
        if self.exchange_type == "headers":
            await channel.queue_bind(
                name,
                self.exchange,
                arguments={"x-match": spec.x_match, **spec.binding_headers},
            )
        elif self.exchange_type == "fanout":
            await channel.queue_bind(name, self.exchange)
        else:
            for key in spec.binding_keys:
                await channel.queue_bind(name, self.exchange, routing_key=key)
        # Where a retry or a delayed redelivery comes back to, from the end of the ladder.
        await channel.queue_bind(
            name,
            f"{self.prefix}.due",
            arguments={"x-match": "all", "tasker-to": f"q:{name}"},
        )
        link.declared.add(spec.name)

    async def _queue_spec(self, link: _Link, name: str) -> AmqpQueue:
        """The declared queue ``name`` (auto-declared without ``queues=``)."""
        spec = self._queues.get(name)
        if spec is None:
            if not self._auto:
                raise ValueError(
                    f"queue {name!r} is not among the declared queues"
                    f" {sorted(self._queues)} (AmqpQueueBackend(queues=...))"
                )
            check_name(name, "a queue name")
            spec = self._queues[name] = AmqpQueue(name)
        if name not in link.declared:
            await self._declare_queue(link, spec)
        return spec

    async def _consume(
        self, link: _Link, queue: str, limit: int = 1, *, first_flow: bool = False
    ) -> None:
        if queue in link.consuming:
            return
        await self._queue_spec(link, queue)
        if self._prefetch is None:
            self._prefetch = max(1, min(limit, 65535))
        await link.consumer.basic_qos(prefetch_count=self._prefetch)
        # What waits in the queue now is delivered right after the consumer starts: the
        # claim that starts it waits for that first flow (bounded), so that it finds the
        # tasks that were due before it came, as a claim on a store would. (Not when the
        # consumers are restored after a reconnection: that claim takes nothing anyway.)
        waiting = 0
        if first_flow:
            declared = await link.consumer.queue_declare(self.amqp_name(queue), passive=True)
            waiting = min(int(declared.message_count or 0), self._prefetch)
        flow = _Flow(waiting)
        self._flows[queue] = flow
        try:
            ok = await link.consumer.basic_consume(
                self.amqp_name(queue),
                # A coroutine function, which aiormq runs as it is (a lambda returning the
                # coroutine would be wrapped in one more coroutine per delivery).
                functools.partial(self._on_message, link, queue),
                no_ack=False,
            )
            link.consuming[queue] = str(ok.consumer_tag)
            if flow.waiting > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_FIRST_FLOW):
                        await flow.arrived.wait()
        finally:
            del self._flows[queue]

    # -- deliveries --------------------------------------------------------------------

    async def _on_message(
        self, link: _Link, queue: str, message: aiormq.abc.DeliveredMessage
    ) -> None:
        tag = message.delivery_tag
        assert tag is not None
        # Before anything else, and before any await: see _acks.
        link.acks.delivered(tag)
        flow = self._flows.get(queue)
        if flow is not None:
            flow.waiting -= 1
            if flow.waiting <= 0:
                flow.arrived.set()
        try:
            meta, redelivered = decode(message.header.properties)
        except NotATaskError as exc:
            await self._unreadable(link, queue, message, str(exc))
            return
        self._pending.pop((queue, meta.id), None)
        if meta.id not in self._republishing and (
            (queue, meta.id) in self._buffered or (queue, meta.id) in self._running
        ):
            # A second copy of a task this process already has (a publish resent after a
            # lost confirmation): the one here runs. Not the copy this process publishes
            # to replace a delivery it still holds (a retry, a hand-back): that one may
            # arrive before the publish is confirmed, while the old delivery is held.
            await link.acks.ack((tag,))
            return
        delivery = _Delivery(
            meta=meta,
            payload=message.body,
            queue=queue,
            channel=link.consumer,
            acks=link.acks,
            tag=tag,
            seq=next(self._seq),
            attempts=meta.attempts + redelivered,
            redelivered=redelivered > 0,
        )
        buffer = self._buffers.get(queue)
        if buffer is None:
            buffer = self._buffers[queue] = _Buffer()
        heapq.heappush(buffer.early, (meta.run_at, delivery.seq, delivery))
        self._buffered.add((queue, meta.id))
        if self._wake is not None:
            self._wake.set()

    async def _unreadable(
        self, link: _Link, queue: str, message: aiormq.abc.DeliveredMessage, problem: str
    ) -> None:
        """A message tasker did not write: kept in the dead-letter queue, never dropped."""
        logger.error(
            "queue %r holds a message tasker_amqp cannot read (%s): moved to %r",
            queue,
            problem,
            self.dead_queue,
        )
        properties = message.header.properties
        headers = dict(properties.headers or {})
        headers.update({"tasker-error": problem, "tasker-from": queue})
        properties.headers = headers
        await link.publisher.basic_publish(
            message.body, exchange="", routing_key=self.dead_queue, properties=properties
        )
        tag = message.delivery_tag
        assert tag is not None
        await link.acks.ack((tag,))

    def _drop(self, delivery: _Delivery) -> None:
        """Forget a claim on ``delivery`` (settled, lost, or taken over)."""
        if self._held.get((delivery.worker, delivery.meta.id)) is delivery:
            del self._held[delivery.worker, delivery.meta.id]
            self._running.discard((delivery.queue, delivery.meta.id))
            # A copy a claim set aside while this one ran (a retry's message that came
            # back before its publish was confirmed) may be taken now: wake the waiter,
            # which does not look at what is set aside.
            if self._wake is not None and any(b.aside for b in self._buffers.values()):
                self._wake.set()

    def _valid(self, delivery: _Delivery) -> bool:
        link = self._link
        return (
            link is not None
            and delivery.channel is link.consumer
            and not delivery.channel.is_closed
            # A channel may not know yet that its connection is gone.
            and link.generation == self._source.generation
            and self._source.is_open()
        )

    # -- the core protocol ---------------------------------------------------------------

    async def time(self) -> float:
        """This machine's clock: RabbitMQ has none to read. Due times are kept by the
        broker's TTL timers, measured from each publish, and leases by the connection.
        With a store, the store's clock: it keeps the leases and due times."""
        if self._stored is not None:
            reading: float = await self._stored.store.time()
            return reading
        return _time.time()

    async def enqueue(
        self, tasks: Sequence[NewTask], *, group: GroupSpec | None = None, now: float
    ) -> list[EnqueueResult]:
        """Publish ``tasks``, each confirmed by the broker; a delayed one through the ladder.

        With a store: the store stores the tasks first (deduplicating, holding, grouping),
        then each stored, unheld one is published; a publish that fails after the store's
        write is logged, and the sweep publishes the task once it is overdue.

        Raises:
            ValueError: without a store, a task held, with a unique key, a chain or a
                group; a routing key no declared queue is bound to (nothing is stored).
        """
        if group is not None and self._stored is None:
            raise ValueError(
                "tasker_amqp alone has no groups: they need a store (chains and groups)"
            )
        for task in tasks:
            if self._stored is None and (
                task.held or task.unique_key is not None or task.chain is not None
            ):
                raise ValueError(
                    f"task {task.id!r}: held tasks, unique keys and chains need a store;"
                    " tasker_amqp alone has none"
                )
            check_routing_key(task.queue)
            for key in task.headers or ():
                if is_reserved(key):
                    raise ValueError(
                        f"task {task.id!r}: header {key!r} is reserved (tasker-*, x-* and"
                        " d<number> are tasker_amqp's and the broker's)"
                    )
        if not tasks:
            return []
        link = await self._connected()
        if self._stored is not None:
            return await self._stored.enqueue(link, tasks, group, now)
        sends = []
        for task in tasks:
            meta = self._meta(task)
            targets = await self._target(link, task.queue, meta.headers)
            sends.append(self._send(link, meta, task.payload, now, targets=targets))
        await _all(sends)
        return [EnqueueResult(id=task.id) for task in tasks]

    def _meta(self, task: NewTask | TaskRecord, *, callback: str | None = None) -> Meta:
        """The message fields of a task to publish (first publication: no attempts)."""
        return Meta(
            id=task.id,
            name=task.name,
            queue=task.queue,
            priority=task.priority,
            run_at=task.run_at,
            attempts=0,
            max_attempts=task.max_attempts,
            timeout=task.timeout,
            created_at=task.created_at,
            headers={**self._headers.get(task.name, {}), **(task.headers or {})},
            callback=callback,
            trace=task.trace,
        )

    def _reaches(self, routing_key: str, headers: Mapping[str, HeaderValue]) -> list[str]:
        """The queues (tasker's names) a task published with ``routing_key`` reaches."""
        if self._auto and self.exchange_type in ("topic", "direct"):
            # A queue name has no '*' or '#': its key reaches that queue and no other.
            return [routing_key]
        return [
            spec.name
            for spec in self._queues.values()
            if routes_to(spec, self.exchange_type, routing_key, headers)
        ]

    async def _target(
        self, link: _Link, routing_key: str, headers: Mapping[str, HeaderValue]
    ) -> list[str]:
        """The queues a routing key reaches (for wait_delivered), after checking that it
        reaches one at all."""
        if self._auto and self.exchange_type in ("topic", "direct"):
            await self._queue_spec(link, routing_key)
            return [routing_key]
        hits = self._reaches(routing_key, headers)
        if not hits:
            raise ValueError(
                f"no declared queue is bound to routing key {routing_key!r}"
                f"{' with headers ' + repr(dict(headers)) if headers else ''} on exchange"
                f" {self.exchange!r}: declare one (AmqpQueueBackend(queues=[AmqpQueue(...,"
                " binding_keys=...)])), or enqueue to a queue that is"
            )
        return hits

    async def _send(
        self,
        link: _Link,
        meta: Meta,
        payload: bytes,
        now: float,
        *,
        targets: Sequence[str] = (),
        to_queue: str | None = None,
    ) -> None:
        """Publish one task message, to the exchange (``to_queue`` None) or straight back
        to a queue, now or through the delay ladder; return once confirmed."""
        # The delay runs from the publish, which may come well after ``now`` was read (a
        # store written first, a slow confirm before): measured from a fresh reading of the
        # clock, the message falls due at its run_at, not that much later.
        now = max(now, await self.time())
        delay_ms = math.ceil((meta.run_at - now) * 1000) if meta.run_at > now else 0
        headers: dict[str, Any] = {}
        if delay_ms > 0:
            top, bits = delay_headers(delay_ms)
            headers.update(bits)
            headers["tasker-to"] = (
                f"q:{self.amqp_name(to_queue)}" if to_queue else f"x:{self.exchange}"
            )
            exchange, routing_key = f"{self.prefix}.delay.{top}", meta.queue
        elif to_queue is not None:
            exchange, routing_key = "", self.amqp_name(to_queue)
        else:
            exchange, routing_key = self.exchange, meta.queue
        properties = encode(meta, extra=headers)
        due = _time.monotonic() + max(0, delay_ms) / 1000
        keys = [(q, meta.id) for q in ([to_queue] if to_queue else targets) if q in link.consuming]
        for key in keys:
            self._pending[key] = due
            self._pending_order.append((due, key))
        try:
            confirmation = await link.publisher.basic_publish(
                payload,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=exchange != "" and delay_ms == 0,
            )
        except aiormq.exceptions.PublishError as exc:
            for key in keys:
                self._pending.pop(key, None)
            raise ValueError(
                f"RabbitMQ could not route task {meta.id!r} (routing key {routing_key!r} on"
                f" exchange {exchange!r}): {exc}"
            ) from None
        if not isinstance(confirmation, Basic.Ack):
            for key in keys:
                self._pending.pop(key, None)
            raise ConnectionError(
                f"RabbitMQ did not take task {meta.id!r} (it answered {confirmation!r})"
            )

    async def claim(
        self,
        queues: Sequence[str],
        limit: int,
        *,
        worker: str,
        lease: float,
        now: float,
        exclude: Sequence[str] = (),
    ) -> list[TaskRecord]:
        """Lease up to ``limit`` due deliveries of ``queues`` (consuming them from now on).

        Deliveries whose lease expired in this process are taken over first (or made dead
        on their last attempt), then those delivered, in priority and ``run_at`` order.
        """
        before = self._link
        link = await self._connected()
        for queue in queues:
            if queue not in link.consuming:
                await self._consume(link, queue, limit, first_flow=True)
        if link is not before:
            # The channels were (re)opened while this claim waited, maybe through a whole
            # outage: ``now``, and the worker's own clock of the leases it would be given,
            # date from before that wait, so those leases could be born expired. This claim
            # takes nothing; the next, with a fresh ``now``, takes what the consumers have
            # been delivered meanwhile.
            return []
        if self._stored is not None:
            return await self._stored.claim(link, queues, limit, worker, lease, now, exclude)
        taken, dying, redelays = self._pick(queues, limit, now, set(exclude), alone=True)
        for delivery in dying:
            # A lease expired on the last attempt, or a redelivery whose last attempt's
            # worker died: dead (a retry published by an outcome is claimed as it is).
            await self._bury(link, delivery, LEASE_EXPIRED, None, now)
        for delivery in redelays:
            await self._redeliver(link, delivery, delivery.meta, now)
        records = []
        for delivery in taken:
            self._drop(delivery)  # a lease taken over: held by its old worker until now
            delivery.attempts += 1
            delivery.worker = worker
            delivery.lease_until = now + lease
            self._next_expiry = min(self._next_expiry, delivery.lease_until)
            self._held[worker, delivery.meta.id] = delivery
            self._running.add((delivery.queue, delivery.meta.id))
            records.append(delivery.record())
        return records

    def _take_over(
        self,
        wanted: set[str],
        limit: int,
        now: float,
        skip: set[str],
        alone: bool,
        taken: list[_Delivery],
        dying: list[_Delivery],
    ) -> None:
        """Add to ``taken`` the held deliveries of ``wanted`` whose lease expired by
        ``now`` (to ``dying`` those on their last attempt, ``alone``), and move
        ``_next_expiry`` to the earliest lease still running."""
        earliest = math.inf
        for delivery in list(self._held.values()):
            if len(taken) >= limit:
                earliest = -math.inf  # not all were looked at: look again next time
                break
            if delivery.lease_until > now:
                earliest = min(earliest, delivery.lease_until)
                continue
            if delivery.queue not in wanted or delivery.meta.id in skip:
                earliest = -math.inf  # expired, and still held: the next claim looks again
                continue
            if not self._valid(delivery):
                self._drop(delivery)
            elif alone and delivery.attempts >= delivery.meta.max_attempts:
                self._drop(delivery)
                dying.append(delivery)
            else:
                taken.append(delivery)
        self._next_expiry = earliest

    def _pick(
        self, queues: Sequence[str], limit: int, now: float, skip: set[str], *, alone: bool
    ) -> tuple[list[_Delivery], list[_Delivery], list[_Delivery]]:
        """What a claim of ``queues`` may take, up to ``limit``: deliveries whose lease
        expired in this process first, then those delivered, in priority and ``run_at``
        order. Returns them, the dead among them (``alone``: the attempts are counted
        here, and one whose last attempt's worker died is dead; with a store, the store
        decides), and the deliveries due too far ahead (round the delay ladder again).
        The deliveries returned have left their buffers."""
        taken: list[_Delivery] = []
        dying: list[_Delivery] = []
        wanted = set(queues)
        if now >= self._next_expiry:
            self._take_over(wanted, limit, now, skip, alone, taken, dying)
        redelays: list[_Delivery] = []
        heads: list[tuple[tuple[int, float, int], str]] = []
        for queue in queues:
            buffer = self._buffers.get(queue)
            if buffer is None:
                continue
            buffer.promote(now)
            _skim(buffer, self._running, skip)
            if buffer.ready:
                heads.append((buffer.ready[0][0], queue))
        heapq.heapify(heads)
        while heads and len(taken) < limit:
            _, queue = heapq.heappop(heads)
            buffer = self._buffers[queue]
            _, delivery = heapq.heappop(buffer.ready)
            self._buffered.discard((queue, delivery.meta.id))
            # One whose channel closed went back to its queue with it: it is dropped here.
            if self._valid(delivery):
                if delivery.meta.run_at - now > _REDELAY_AHEAD:
                    redelays.append(delivery)
                elif (
                    alone
                    and delivery.redelivered
                    and delivery.attempts >= delivery.meta.max_attempts
                ):
                    dying.append(delivery)
                else:
                    taken.append(delivery)
            _skim(buffer, self._running, skip)
            if buffer.ready:
                heapq.heappush(heads, (buffer.ready[0][0], queue))
        return taken, dying, redelays

    def _unpick(self, deliveries: Sequence[_Delivery]) -> None:
        """Put back deliveries :meth:`_pick` took from their buffers (a claim that failed)."""
        for delivery in deliveries:
            if self._held.get((delivery.worker, delivery.meta.id)) is delivery:
                continue  # an expired lease: still held where it was
            key = (delivery.queue, delivery.meta.id)
            if key in self._buffered or not self._valid(delivery):
                continue
            buffer = self._buffers.setdefault(delivery.queue, _Buffer())
            heapq.heappush(buffer.early, (delivery.meta.run_at, delivery.seq, delivery))
            self._buffered.add(key)

    async def heartbeat(
        self, worker: str, ids: Sequence[str], *, lease: float, now: float
    ) -> set[str]:
        """Extend ``worker``'s leases on ``ids`` (in memory); the ids whose delivery is
        still held (its channel open). With a store, the store's leases."""
        check_asyncio()
        if self._stored is not None:
            return await self._stored.heartbeat(worker, ids, lease, now)
        held: set[str] = set()
        for task_id in ids:
            delivery = self._held.get((worker, task_id))
            if delivery is None:
                continue
            if not self._valid(delivery):
                continue  # lost with its channel (dropped at the reconnection)
            delivery.lease_until = now + lease
            held.add(task_id)
        return held

    async def finish(self, outcomes: Sequence[Outcome], *, now: float) -> None:
        """Settle outcomes: a success is acknowledged; a retry published back to its queue
        through the delay ladder, a dead task to ``dead_queue``, a hand-back to its queue
        (the attempt not counted), each confirmed before the original is acknowledged.
        With a store, the store records the outcomes first."""
        if self._stored is not None:
            await self._stored.finish(outcomes, now)
            return
        mine: list[tuple[Outcome, _Delivery]] = []
        for outcome in outcomes:
            delivery = self._held.get((outcome.worker, outcome.id))
            if delivery is None:
                continue  # not held by this worker: its lease expired and was taken
            if not self._valid(delivery):
                continue  # lost with its channel: RabbitMQ redelivers it
            mine.append((outcome, delivery))
        if not mine:
            return
        link = await self._connected()
        others = []
        # The common case, successes: no coroutine each, and one acknowledgement for the
        # run of them.
        succeeded: list[tuple[Acks, int]] = []
        for outcome, delivery in mine:
            if outcome.kind is OutcomeKind.SUCCEEDED:
                self._drop(delivery)
                succeeded.append((delivery.acks, delivery.tag))
            else:
                others.append(self._settle(link, outcome, delivery, now))
        await ack_all(succeeded)
        if others:
            await _all(others)

    async def _settle(self, link: _Link, outcome: Outcome, delivery: _Delivery, now: float) -> None:
        meta = delivery.meta
        kind = outcome.kind
        if kind is OutcomeKind.RETRY:
            run_at = outcome.retry_at if outcome.retry_at is not None else now
            await self._redeliver(
                link, delivery, _with(meta, run_at=run_at, attempts=delivery.attempts), now
            )
        elif kind is OutcomeKind.DEAD:
            await self._bury(link, delivery, outcome.error, outcome.traceback, now)
        elif kind in (OutcomeKind.RELEASED, OutcomeKind.INTERRUPTED):
            # Back to its queue as it was, the attempt not counted: a fresh message (a
            # requeued delivery would count one in x-delivery-count).
            await self._redeliver(link, delivery, _with(meta, attempts=delivery.attempts - 1), now)
        else:
            self._drop(delivery)
            await delivery.acks.ack((delivery.tag,))

    async def _redeliver(self, link: _Link, delivery: _Delivery, meta: Meta, now: float) -> None:
        """Publish ``meta`` back to the delivery's queue (delayed until its ``run_at``),
        then acknowledge the delivery."""
        self._republishing.add(meta.id)
        try:
            await self._send(link, meta, delivery.payload, now, to_queue=delivery.queue)
        finally:
            self._republishing.discard(meta.id)
        self._drop(delivery)
        await delivery.acks.ack((delivery.tag,))

    async def _bury(
        self,
        link: _Link,
        delivery: _Delivery,
        error: str | None,
        traceback: str | None,
        now: float,
    ) -> None:
        """Move a dead task to the dead-letter queue, with its last error."""
        meta = _with(delivery.meta, attempts=delivery.attempts)
        extra: dict[str, Any] = {"tasker-from": delivery.queue, "tasker-finished-at": micros(now)}
        if error is not None:
            extra["tasker-error"] = clip(error)
        if traceback is not None:
            extra["tasker-traceback"] = clip(traceback)
        confirmation = await link.publisher.basic_publish(
            delivery.payload,
            exchange="",
            routing_key=self.dead_queue,
            properties=encode(meta, extra=extra),
        )
        if not isinstance(confirmation, Basic.Ack):
            raise ConnectionError(f"RabbitMQ did not take dead task {meta.id!r}")
        self._drop(delivery)
        await delivery.acks.ack((delivery.tag,))

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Return when a delivery of ``queues`` is here (or falls due, or a lease here
        expires), or after ``timeout`` seconds."""
        link = await self._connected()
        for queue in queues:
            if queue not in link.consuming:
                await self._consume(link, queue)
        if self._wake is None:
            self._wake = asyncio.Event()
        now = _time.time()
        soonest = now + timeout
        for queue in queues:
            buffer = self._buffers.get(queue)
            if buffer is None:
                continue
            if buffer.ready:
                soonest = now
                break
            if buffer.early:
                soonest = min(soonest, buffer.early[0][0])
        if self._stored is not None:
            soonest = min(soonest, now + self._stored.sweep_in())
        wanted = set(queues)
        for delivery in self._held.values():
            # A lease expired already was there for the claim that came just before this
            # wait, which did not take it over: the claiming worker's own task (excluded).
            # Waking for it would only make the worker's claim loop spin.
            if delivery.queue in wanted and delivery.lease_until > now:
                soonest = min(soonest, delivery.lease_until)
        if soonest <= now:
            # Once round the event loop even so: a claim loop that finds nothing it may
            # take must not keep the tasks that would change that (the worker's runners and
            # heartbeats) from running.
            await asyncio.sleep(0)
            return
        self._wake.clear()
        try:
            async with asyncio.timeout(soonest - now):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def wait_delivered(self, timeout: float = 5.0) -> bool:
        """Wait until every task this backend published to a queue it consumes, and that
        has fallen due, has been delivered back to it: read-your-writes, for a producer
        and its workers in one process (and for tests). Returns False at ``timeout``.

        A publication taken by a consumer in another process is waited for at most 30 s
        after it fell due, and then forgotten.
        """
        check_asyncio()
        deadline = _time.monotonic() + timeout
        while True:
            now = _time.monotonic()
            while self._pending_order and self._pending_order[0][0] + _PENDING_FOR < now:
                _, key = self._pending_order.popleft()
                due = self._pending.get(key)
                if due is not None and due + _PENDING_FOR < now:
                    del self._pending[key]
            waiting = [due for due in self._pending.values() if due <= now]
            if not waiting:
                return True
            if now >= deadline:
                return False
            await asyncio.sleep(0.002)

    async def queue_stats(
        self, queues: Sequence[str] | None = None, *, management_url: str | None = None
    ) -> list[QueueStats]:
        """The counts of ``queues`` (tasker's names; default: those declared or used so
        far) and of the dead-letter queue: see :func:`tasker_amqp.broker_stats`, which
        counts unacknowledged messages too when given the management API's URL."""
        await self._connected()
        names = [self.amqp_name(q) for q in (queues if queues is not None else self._queues)]
        names.append(self.dead_queue)
        return await broker_stats(self._source, names, management_url=management_url)

    async def aclose(self) -> None:
        """Close the channels (unacknowledged deliveries go back to their queues), and the
        connection when this backend made it; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        link, self._link = self._link, None
        self._held.clear()
        self._running.clear()
        self._buffers.clear()
        self._buffered.clear()
        try:
            if link is not None:
                for channel in (link.consumer, link.publisher):
                    await _close_quietly(channel)
            await self._source.aclose()
        finally:
            if self._stored is not None:
                await self._stored.store.aclose()

    # -- with a store: its capabilities, passed through ----------------------------------

    def _store(self, capability: QueueCapability, needed_by: str) -> Any:
        if self._stored is None or capability not in self.capabilities:
            raise MissingCapabilityError(self, capability, f"AmqpQueueBackend.{needed_by}()")
        return self._stored.store

    async def get(self, task_id: str) -> TaskRecord | None:
        """The task with this id, from the store (``INSPECTION``)."""
        record: TaskRecord | None = await self._store(QueueCapability.INSPECTION, "get").get(
            task_id
        )
        return record

    async def tasks(
        self, *, state: TaskState | None = None, queue: str | None = None, limit: int = 100
    ) -> list[TaskRecord]:
        """Tasks, newest first, from the store (``INSPECTION``)."""
        store = self._store(QueueCapability.INSPECTION, "tasks")
        found: list[TaskRecord] = await store.tasks(state=state, queue=queue, limit=limit)
        return found

    async def counts(self) -> dict[str, dict[TaskState, int]]:
        """Task counts per queue and state, from the store (``INSPECTION``); the broker's
        counts of waiting messages are :meth:`queue_stats`."""
        found: dict[str, dict[TaskState, int]] = await self._store(
            QueueCapability.INSPECTION, "counts"
        ).counts()
        return found

    async def history(self, *, task_id: str | None = None, limit: int = 100) -> list[HistoryEntry]:
        """Finished attempts, newest first, from the store (``INSPECTION``)."""
        store = self._store(QueueCapability.INSPECTION, "history")
        found: list[HistoryEntry] = await store.history(task_id=task_id, limit=limit)
        return found

    async def requeue(self, task_id: str, *, now: float) -> bool:
        """Requeue a dead task in the store, then publish it (``ADMINISTRATION``)."""
        self._store(QueueCapability.ADMINISTRATION, "requeue")
        assert self._stored is not None
        return await self._stored.requeue(await self._connected(), task_id, now)

    async def dispatch(
        self, queue: str, *, name: str | None = None, limit: int | None = None, now: float
    ) -> int:
        """Release held tasks in the store, then publish them (``ADMINISTRATION``)."""
        self._store(QueueCapability.ADMINISTRATION, "dispatch")
        assert self._stored is not None
        return await self._stored.dispatch(await self._connected(), queue, name, limit, now)

    async def purge(
        self,
        *,
        now: float,
        history_before: float | None = None,
        dead_before: float | None = None,
    ) -> int:
        """Delete what retention no longer keeps, in the store (``ADMINISTRATION``)."""
        store = self._store(QueueCapability.ADMINISTRATION, "purge")
        deleted: int = await store.purge(
            now=now, history_before=history_before, dead_before=dead_before
        )
        return deleted

    async def worker_seen(self, worker: WorkerInfo) -> None:
        """Register ``worker`` in the store (``WORKERS``)."""
        await self._store(QueueCapability.WORKERS, "worker_seen").worker_seen(worker)

    async def worker_gone(self, worker_id: str) -> None:
        """Remove ``worker_id`` from the store's registry (``WORKERS``)."""
        await self._store(QueueCapability.WORKERS, "worker_gone").worker_gone(worker_id)

    async def workers(self, *, now: float) -> list[WorkerInfo]:
        """The live workers in the store's registry (``WORKERS``)."""
        found: list[WorkerInfo] = await self._store(QueueCapability.WORKERS, "workers").workers(
            now=now
        )
        return found


def _with(meta: Meta, **changes: Any) -> Meta:
    return dataclasses.replace(meta, **changes)


def _skim(buffer: _Buffer, running: set[tuple[str, str]], skip: set[str]) -> None:
    """Move the entries at the head of ``buffer.ready`` that a claim may not take now (an
    excluded task, or a copy of one this process runs from the same queue) to
    ``buffer.aside``, from where the next claim promotes them again. Not to ``early``: they
    are due, and wait_for_work would return at once for them, again and again, while what
    excludes them (an attempt of the same task, ending) runs."""
    while buffer.ready:
        delivery = buffer.ready[0][1]
        if delivery.meta.id in skip or (delivery.queue, delivery.meta.id) in running:
            buffer.aside.append(heapq.heappop(buffer.ready)[1])
            continue
        break


def _close_reason(channel: aiormq.abc.AbstractChannel) -> str:
    """Why the broker closed ``channel`` (empty when it is open, or closed by us)."""
    closing = channel.closing
    if not closing.done() or closing.cancelled():
        return ""
    exc = closing.exception()
    return "" if exc is None else str(exc)


async def _close_quietly(channel: aiormq.abc.AbstractChannel) -> None:
    try:
        async with asyncio.timeout(5.0):
            await channel.close()
    except (OSError, aiormq.exceptions.AMQPError, TimeoutError, RuntimeError):
        pass


async def _all(coroutines: Sequence[Any]) -> None:
    if len(coroutines) == 1:
        await coroutines[0]
        return
    results = await asyncio.gather(*coroutines, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
