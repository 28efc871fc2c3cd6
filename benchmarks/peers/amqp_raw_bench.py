"""The physical limit of one RabbitMQ queue and one consumer, for bench_amqp_queue.py.

``python amqp_raw_bench.py throughput TASKS CONCURRENCY NAME VARIANT`` or ``... latency
SAMPLES CONCURRENCY NAME VARIANT`` prints one line of JSON (see ``amqp_common.py``). VARIANT
is the client, ``aio-pika`` (run in the peer virtualenv: ``pip install aio-pika``) or
``aiormq`` (tasker_amqp's own driver: runs in tasker's virtualenv), optionally followed by
``,classic`` for a classic queue instead of a quorum one (tasker_amqp's kind) and ``,loop``
for the loop figure below as well.

No task queue at all: one durable queue ``NAME`` (``x-queue-type`` quorum or classic), on
one connection with two channels, the way tasker_amqp uses one:

- Enqueue: persistent messages (``delivery_mode=2``) of one small payload each, published to
  the queue through the default exchange on a channel with publisher confirms, in windows
  of 500 (each window's confirms awaited together), not timed.
- Drain: a consumer on the other channel with ``basic.qos(prefetch_count=100)`` and manual
  acks; for each delivery a no-op handler (an event-loop checkpoint) runs, then the
  delivery is acknowledged alone (``basic.ack``, not ``multiple``): what a task queue that
  acknowledges each task once it has run must do. CONCURRENCY is not used: the client runs
  each delivery's callback in a task of its own, so up to 100 are in flight.
- Loop (with ``,loop``; reported beside the drain, as ``loop_throughput``): the same TASKS
  published (windows of 100, confirmed) while the consumer drains them, timed from the
  first publish to the last handler's return: publish, confirm, consume and ack at once.
- Latency: the consumer waits; a producer on a connection of its own publishes one
  persistent message holding the ``time.time()`` of the publish and awaits its
  confirmation, which the handler subtracts from its own.

Every run declares its queue afresh (deleted first) and deletes it at the end.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from amqp_common import WARM_UP, Stopwatch, emit, peer_args, url

WINDOW = 500
PREFETCH = 100

Handler = Callable[[bytes], Awaitable[None]]


class Raw:
    """One connection, a confirming publisher channel and a consumer channel; per client."""

    #: Whether this one declared the queue (and deletes it on close); a producer of the
    #: latency run only publishes to it.
    owner = True

    async def open(self, address: str, name: str, queue_type: str) -> None:
        raise NotImplementedError

    async def publish(self, bodies: list[bytes]) -> None:
        raise NotImplementedError

    async def consume(self, handler: Handler) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class AioPika(Raw):
    async def open(self, address: str, name: str, queue_type: str) -> None:
        import aio_pika

        self.aio_pika = aio_pika
        self.name = name
        self.connection = await aio_pika.connect(address)
        self.publisher = await self.connection.channel(publisher_confirms=True)
        if self.owner:
            await self.publisher.queue_delete(name)
            await self.publisher.declare_queue(
                name, durable=True, arguments={"x-queue-type": queue_type}
            )
        self.consumer = await self.connection.channel(publisher_confirms=False)
        await self.consumer.set_qos(prefetch_count=PREFETCH)

    async def publish(self, bodies: list[bytes]) -> None:
        exchange = self.publisher.default_exchange
        persistent = self.aio_pika.DeliveryMode.PERSISTENT
        await asyncio.gather(
            *(
                exchange.publish(
                    self.aio_pika.Message(body, delivery_mode=persistent), routing_key=self.name
                )
                for body in bodies
            )
        )

    async def consume(self, handler: Handler) -> None:
        queue = await self.consumer.get_queue(self.name, ensure=False)

        async def on_message(message: Any) -> None:
            await handler(message.body)
            await message.ack()

        self.tag = await queue.consume(on_message, no_ack=False)
        self.queue = queue

    async def close(self) -> None:
        if self.owner:
            if hasattr(self, "tag"):
                await self.queue.cancel(self.tag)
            await self.publisher.queue_delete(self.name)
        await self.connection.close()


class Aiormq(Raw):
    async def open(self, address: str, name: str, queue_type: str) -> None:
        import aiormq
        from pamqp.commands import Basic

        self.properties = Basic.Properties(delivery_mode=2)
        self.name = name
        self.connection = await aiormq.connect(address)
        self.publisher = await self.connection.channel(publisher_confirms=True)
        if self.owner:
            await self.publisher.queue_delete(name)
            await self.publisher.queue_declare(
                name, durable=True, arguments={"x-queue-type": queue_type}
            )
        self.consumer = await self.connection.channel(publisher_confirms=False)
        await self.consumer.basic_qos(prefetch_count=PREFETCH)

    async def publish(self, bodies: list[bytes]) -> None:
        await asyncio.gather(
            *(
                self.publisher.basic_publish(
                    body, exchange="", routing_key=self.name, properties=self.properties
                )
                for body in bodies
            )
        )

    async def consume(self, handler: Handler) -> None:
        channel = self.consumer

        async def on_message(message: Any) -> None:
            await handler(message.body)
            await channel.basic_ack(message.delivery_tag)

        ok = await channel.basic_consume(self.name, on_message, no_ack=False)
        self.tag = ok.consumer_tag

    async def close(self) -> None:
        if self.owner:
            if hasattr(self, "tag"):
                await self.consumer.basic_cancel(self.tag)
            await self.publisher.queue_delete(self.name)
        await self.connection.close()


@dataclass(frozen=True, slots=True)
class Variant:
    """What VARIANT asks for: ``CLIENT[,classic][,loop]``."""

    kind: type[Raw]
    queue_type: str
    loop: bool
    version: str

    @classmethod
    def parse(cls, variant: str) -> Variant:
        name, *flags = variant.split(",")
        if unknown := set(flags) - {"classic", "loop"}:
            raise SystemExit(f"variant: unknown {', '.join(sorted(unknown))} in {variant!r}")
        queue_type = "classic" if "classic" in flags else "quorum"
        if name == "aio-pika":
            version = f"aio-pika {importlib.metadata.version('aio-pika')}"
            return cls(AioPika, queue_type, "loop" in flags, version)
        if name == "aiormq":
            version = f"aiormq {importlib.metadata.version('aiormq')}"
            return cls(Aiormq, queue_type, "loop" in flags, version)
        raise SystemExit(f"variant: aio-pika or aiormq, not {name!r}")


async def publish_all(raw: Raw, tasks: int, window: int) -> None:
    for start in range(0, tasks, window):
        await raw.publish([str(i).encode() for i in range(start, min(tasks, start + window))])


def counter(tasks: int) -> tuple[dict[int, int], asyncio.Event, Stopwatch, Handler]:
    runs: dict[int, int] = {}
    done = asyncio.Event()
    watch = Stopwatch()

    async def handler(data: bytes) -> None:
        await asyncio.sleep(0)
        index = int(data)
        runs[index] = runs.get(index, 0) + 1
        if len(runs) == tasks:
            watch.stop()
            done.set()

    return runs, done, watch, handler


async def throughput(
    kind: type[Raw], queue_type: str, name: str, tasks: int, *, loop: bool
) -> dict[str, Any]:
    raw = kind()
    await raw.open(url(), name, queue_type)
    try:
        await publish_all(raw, tasks, WINDOW)
        runs, done, watch, handler = counter(tasks)
        watch.start()
        await raw.consume(handler)
        await asyncio.wait_for(done.wait(), 600)
        await asyncio.sleep(0.2)  # the last acks out, and any double delivery in
        result: dict[str, Any] = watch.result(runs, tasks)
    finally:
        await raw.close()
    if not loop:
        return result
    # The loop: publish and drain at once, on a fresh queue.
    raw = kind()
    await raw.open(url(), name, queue_type)
    try:
        runs, done, watch, handler = counter(tasks)
        await raw.consume(handler)
        watch.start()
        producer = asyncio.create_task(publish_all(raw, tasks, 100))
        await asyncio.wait_for(done.wait(), 600)
        await producer
        result["loop_throughput"] = tasks / watch.wall
    finally:
        await raw.close()
    return result


async def latency(kind: type[Raw], queue_type: str, name: str, samples: int) -> dict[str, Any]:
    delays: list[float] = []
    arrived = asyncio.Event()

    async def handler(data: bytes) -> None:
        delays.append(time.time() - float(data))
        arrived.set()

    raw = kind()
    await raw.open(url(), name, queue_type)
    try:
        await raw.consume(handler)
        producer = kind()
        producer.owner = False
        await producer.open(url(), name, queue_type)
        try:
            await asyncio.sleep(1.0)
            for sample in range(WARM_UP + samples):
                arrived.clear()
                await producer.publish([repr(time.time()).encode()])
                await asyncio.wait_for(arrived.wait(), 30)
                if sample < WARM_UP:
                    delays.clear()
                await asyncio.sleep(0.005)
        finally:
            await producer.close()
    finally:
        await raw.close()
    return {"latencies": delays}


async def main() -> None:
    args = peer_args()
    variant = Variant.parse(args.variant or "aio-pika")
    kind, queue_type = variant.kind, variant.queue_type
    if args.mode == "throughput":
        result = await throughput(kind, queue_type, args.name, args.count, loop=variant.loop)
    else:
        result = await latency(kind, queue_type, args.name, args.count)
    emit({"version": variant.version, **result})


if __name__ == "__main__":
    asyncio.run(main())
