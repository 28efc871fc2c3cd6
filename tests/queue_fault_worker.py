"""A queue worker process for the fault tests: ``python tests/queue_fault_worker.py ...``.

``--backend sqlite:PATH``, ``--backend pg:DSN`` (with ``--schema``), ``--backend
redis:URL``, ``--backend nats:URL`` or ``--backend amqp:URL`` (all three with
``--namespace``, which on AMQP also names the exchange and the dead-letter queue: see
:func:`amqp_backend`; NATS and AMQP also with ``--name``, the connection's name in the
server's monitoring or in ``rabbitmqctl list_connections``, default ``tasker-queue``).
Each run of a task appends ``start <n> <pid> <t> <attempt>`` and, when its work is done,
``end <n> <pid> <t> <attempt>`` to ``--out`` (one O_APPEND write each; ``t`` is
``CLOCK_MONOTONIC``, shared by every process of the machine). ``--skew S`` sets this
process's wall clock S seconds ahead: ``time.time`` and the datetimes tasker's system clock
reads.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timedelta, tzinfo
from typing import Any

import anyio

import tasker
import tasker._clock
from tasker.queue import Queue, QueueBackend, SQLiteQueueBackend, current_task


def _skew(seconds: float) -> None:
    real_time = time.time
    time.time = lambda: real_time() + seconds

    class Skewed(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Any:
            return datetime.now(tz) + timedelta(seconds=seconds)

    tasker._clock.datetime = Skewed  # type: ignore[attr-defined]


def amqp_backend(
    url: str, namespace: str, name: str = "tasker-queue", store: str | None = None
) -> QueueBackend:
    """An AMQP backend whose exchange, work queues and dead-letter queue are all named after
    ``namespace`` (so that runs in one virtual host never share tasks), on a connection
    named ``name``; the delay ladder is the virtual host's shared one. ``store``: the path
    of a SQLite store beside it (shared by every process of a run)."""
    from tasker_amqp import AmqpQueueBackend, AmqpSource

    return AmqpQueueBackend(
        AmqpSource(url, name=name),
        exchange=namespace,
        namespace=namespace,
        dead_queue=f"{namespace}.dead",
        store=None if store is None else SQLiteQueueBackend(store),
    )


def backend_for(
    spec: str,
    schema: str,
    namespace: str = "tasker",
    name: str = "tasker-queue",
    store: str | None = None,
) -> QueueBackend:
    """The backend a ``--backend`` spec names (``name``: a NATS or AMQP connection's)."""
    kind, _, where = spec.partition(":")
    if kind == "sqlite":
        return SQLiteQueueBackend(where)
    if kind == "redis":
        from tasker_redis import RedisQueueBackend

        return RedisQueueBackend(where, namespace=namespace)
    if kind == "nats":
        from tasker_nats import NatsQueueBackend, NatsSource

        return NatsQueueBackend(NatsSource(where, name=name), namespace=namespace)
    if kind == "amqp":
        return amqp_backend(where, namespace, name, store)
    from tasker_pg import PostgresQueueBackend

    return PostgresQueueBackend(where, schema=schema)


def build(backend: QueueBackend, out: str) -> Queue:
    queue = Queue(backend)

    def record(event: str, n: int) -> None:
        running = current_task()
        attempt = 0 if running is None else running.attempt
        now = time.clock_gettime(time.CLOCK_MONOTONIC)
        line = f"{event} {n} {os.getpid()} {now:.6f} {attempt}\n"
        fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    @queue.task("work", max_attempts=10, backoff=0.05)
    async def work(ctx: tasker.Context, payload: dict[str, Any]) -> None:
        record("start", payload["n"])
        await anyio.sleep(payload["sleep"])
        record("end", payload["n"])

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    poisons: dict[str, Exception] = {
        "surrogate": ValueError("bad \ud800 text"),
        "nul": ValueError("nul \x00 byte"),
        "huge": ValueError("x" * 10_000_000),
        "unprintable": Unprintable(),
    }

    @queue.task("poison", max_attempts=1)
    async def poison(ctx: tasker.Context, kind: str) -> None:
        raise poisons[kind]

    # Chains and groups: each step's work takes a little while, so kills land inside it.
    for step in ("c1", "c2", "c3", "g"):

        async def chained(ctx: tasker.Context, payload: dict[str, Any], step: str = step) -> Any:
            await anyio.sleep(0.05)
            record(step, payload["n"])
            return payload

        queue.register(step, chained, max_attempts=20, backoff=0.05)

    @queue.task("collect", max_attempts=20, backoff=0.05)
    async def collect(ctx: tasker.Context, results: list[dict[str, Any]]) -> None:
        await anyio.sleep(0.02)
        record("collect", results[0]["group"])

    return queue


def main() -> None:
    # Run as a script, this file's folder (tests/) comes first on sys.path, and the NATS
    # tests' package there (tests/nats) would shadow nats-py: drop the folder (the project
    # root, which python_process puts on PYTHONPATH, stays).
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") != here]
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", required=True)
    parser.add_argument("--schema", default="tasker")
    parser.add_argument("--namespace", default="tasker")
    parser.add_argument("--name", default="tasker-queue")
    parser.add_argument("--out", required=True)
    parser.add_argument("--skew", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, default=5)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--loop", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--store", help="amqp: a SQLite store's path, beside the broker")
    args = parser.parse_args()
    if args.skew:
        _skew(args.skew)
    backend = backend_for(args.backend, args.schema, args.namespace, args.name, args.store)
    queue = build(backend, args.out)
    print("ready", flush=True)
    worker = queue.worker(concurrency=args.concurrency, lease=args.lease, poll=0.5)
    tasker.main(worker, grace=10, backend=args.loop)


if __name__ == "__main__":
    main()
