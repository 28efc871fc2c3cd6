"""Celery (RabbitMQ broker, no result backend) side of bench_amqp_queue.py; runs in the peer
virtualenv.

``python celery_amqp_bench.py throughput TASKS CONCURRENCY NAME`` or ``... latency SAMPLES
CONCURRENCY NAME`` prints one line of JSON (see ``amqp_common.py``).

Settings (celery 5.x on kombu and py-amqp), chosen to match what tasker gets:

- ``Celery(broker=URL)`` with no result backend (``task_ignore_result``), the default queue,
  exchange and routing key all ``NAME`` (a classic durable queue and a direct exchange:
  celery's defaults but for the names), persistent messages (its default), and
  ``broker_transport_options={"confirm_publish": True}``: every publish waits for the
  broker's confirm, as every tasker_amqp enqueue does (celery's default is off).
- One worker in this process: celery's embedded worker (``celery.contrib.testing.worker``:
  the real ``WorkController`` in a thread) with ``pool="threads"`` and
  ``concurrency=CONCURRENCY``, so that it is one process with CONCURRENCY slots like the
  others (the default prefork pool would be CONCURRENCY processes); gossip, mingle,
  heartbeats, events and remote control off (what ``celery worker`` does by default but a
  single worker does not need: they would also declare exchanges and reply queues). Its
  prefetch and acknowledgement stay at their defaults: 4 x concurrency = 40 unacknowledged
  deliveries, each acknowledged *before* its task runs (``task_acks_late=False``; tasker and
  the other peers acknowledge after, which costs them more), at most once on a crash.
- Enqueue: ``apply_async()`` for each task through one producer (celery has no bulk
  enqueue), not timed. Probes: ``apply_async()`` through the same app.
- Throughput: from the worker's start (its thread started, before it connected) to the last
  handler's return; then the worker is stopped (not timed).

At the end the script deletes its queue and exchange (the harness does too, whatever
happened).
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from amqp_common import WARM_UP, Stopwatch, emit, made, peer_args, url
from celery import Celery
from celery.contrib.testing.worker import start_worker


def make_app(name: str) -> Celery:
    app = Celery("bench", broker=url(), set_as_current=True)
    app.conf.update(
        task_default_queue=name,
        task_default_exchange=name,
        task_default_routing_key=name,
        task_ignore_result=True,
        result_backend=None,
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=True,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
    )
    return app


@contextmanager
def worker(app: Celery, concurrency: int) -> Iterator[None]:
    with start_worker(
        app,
        pool="threads",
        concurrency=concurrency,
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=30.0,
    ):
        yield


def delete_topology(app: Celery, name: str) -> None:
    queues, exchanges = made("celery", name)
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in queues:
            channel.queue_delete(queue)
        for exchange in exchanges:
            channel.exchange_delete(exchange)


def throughput(name: str, tasks: int, concurrency: int) -> dict[str, Any]:
    app = make_app(name)
    runs: dict[int, int] = {}
    lock = threading.Lock()
    done = threading.Event()
    watch = Stopwatch()

    @app.task(name="noop")
    def noop(index: int) -> None:
        with lock:
            runs[index] = runs.get(index, 0) + 1
            if len(runs) == tasks:
                watch.stop()
                done.set()

    try:
        with app.producer_or_acquire() as producer:
            for index in range(tasks):
                noop.apply_async((index,), producer=producer)
        watch.start()
        with worker(app, concurrency):
            if not done.wait(600):
                raise TimeoutError("celery did not run every task in 600 s")
            time.sleep(0.2)  # any double delivery in
    finally:
        delete_topology(app, name)
    return watch.result(runs, tasks)


def latency(name: str, samples: int, concurrency: int) -> dict[str, Any]:
    app = make_app(name)
    delays: list[float] = []
    arrived = threading.Event()

    @app.task(name="probe")
    def probe(sent: float) -> None:
        delays.append(time.time() - sent)
        arrived.set()

    try:
        with worker(app, concurrency):
            time.sleep(1.0)
            for sample in range(WARM_UP + samples):
                arrived.clear()
                probe.apply_async((time.time(),))
                if not arrived.wait(30):
                    raise TimeoutError("a celery probe did not run in 30 s")
                if sample < WARM_UP:
                    delays.clear()
                time.sleep(0.005)
    finally:
        delete_topology(app, name)
    return {"latencies": delays}


def main() -> None:
    args = peer_args()
    logging.basicConfig(level=logging.WARNING)
    if args.mode == "throughput":
        result = throughput(args.name, args.count, args.concurrency)
    else:
        result = latency(args.name, args.count, args.concurrency)
    emit({"version": importlib.metadata.version("celery"), **result})


if __name__ == "__main__":
    main()
