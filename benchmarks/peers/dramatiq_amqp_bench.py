"""dramatiq (its RabbitMQ broker) side of bench_amqp_queue.py; runs in the peer virtualenv.

``python dramatiq_amqp_bench.py throughput TASKS CONCURRENCY NAME`` or ``... latency SAMPLES
CONCURRENCY NAME`` prints one line of JSON (see ``amqp_common.py``).

Settings (dramatiq 2.x, ``dramatiq.brokers.rabbitmq.RabbitmqBroker(url=URL,
confirm_delivery=True)`` on pika), chosen to match what tasker gets:

- ``confirm_delivery=True``: every ``send()`` waits for the broker's publisher confirm, as
  every tasker_amqp enqueue does (dramatiq's default is off). Its messages are always
  persistent; its queues are classic durable queues (``NAME``, with ``NAME.DQ`` for delays and
  ``NAME.XQ`` for dead letters), dramatiq's only kind.
- One ``dramatiq.Worker(broker, worker_threads=CONCURRENCY)`` in this process: dramatiq's
  workers are threads and its actors here are plain functions (dramatiq's own model). Its
  consumer thread takes deliveries pushed by the broker with its default prefetch (2 x
  threads = 20) and acknowledges each after its actor returned; the broker's default
  middleware (age limit, time limit, retries, callbacks, pipelines, shutdown
  notifications) is kept; no result backend.
- Enqueue: ``actor.send()`` for each task (dramatiq has no bulk enqueue), not timed. Probes:
  ``send()`` through the same broker.
- Throughput: from ``Worker.start()`` to the last handler's return; then ``Worker.join()``
  and ``Worker.stop()`` (acks flushed; not timed, counted).

At the end the script deletes its three queues (the harness does too, whatever happened).
"""

from __future__ import annotations

import importlib.metadata
import threading
import time
from typing import Any

import dramatiq
from amqp_common import WARM_UP, Stopwatch, emit, made, peer_args, url
from dramatiq.brokers.rabbitmq import RabbitmqBroker


def make_broker() -> RabbitmqBroker:
    broker = RabbitmqBroker(url=url(), confirm_delivery=True)
    dramatiq.set_broker(broker)
    return broker


def delete_queues(broker: RabbitmqBroker, name: str) -> None:
    queues, _ = made("dramatiq", name)
    for queue in queues:
        broker.channel.queue_delete(queue)
    broker.close()


def throughput(name: str, tasks: int, concurrency: int) -> dict[str, Any]:
    broker = make_broker()
    runs: dict[int, int] = {}
    lock = threading.Lock()
    done = threading.Event()
    watch = Stopwatch()

    @dramatiq.actor(actor_name="noop", queue_name=name, broker=broker)
    def noop(index: int) -> None:
        with lock:
            runs[index] = runs.get(index, 0) + 1
            if len(runs) == tasks:
                watch.stop()
                done.set()

    try:
        for index in range(tasks):
            noop.send(index)
        watch.start()
        worker = dramatiq.Worker(broker, worker_threads=concurrency)
        worker.start()
        if not done.wait(600):
            raise TimeoutError("dramatiq did not run every task in 600 s")
        worker.join()
        worker.stop()
    finally:
        delete_queues(broker, name)
    return watch.result(runs, tasks)


def latency(name: str, samples: int, concurrency: int) -> dict[str, Any]:
    broker = make_broker()
    delays: list[float] = []
    arrived = threading.Event()

    @dramatiq.actor(actor_name="probe", queue_name=name, broker=broker)
    def probe(sent: float) -> None:
        delays.append(time.time() - sent)
        arrived.set()

    try:
        broker.declare_queue(name, ensure=True)
        worker = dramatiq.Worker(broker, worker_threads=concurrency)
        worker.start()
        time.sleep(1.0)
        for sample in range(WARM_UP + samples):
            arrived.clear()
            probe.send(time.time())
            if not arrived.wait(30):
                raise TimeoutError("a dramatiq probe did not run in 30 s")
            if sample < WARM_UP:
                delays.clear()
            time.sleep(0.005)
        worker.join()
        worker.stop()
    finally:
        delete_queues(broker, name)
    return {"latencies": delays}


def main() -> None:
    args = peer_args()
    if args.mode == "throughput":
        result = throughput(args.name, args.count, args.concurrency)
    else:
        result = latency(args.name, args.count, args.concurrency)
    emit({"version": importlib.metadata.version("dramatiq"), **result})


if __name__ == "__main__":
    main()
