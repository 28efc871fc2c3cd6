"""dramatiq (its Redis broker) side of bench_redis_queue.py; runs in the peer virtualenv.

``python dramatiq_bench.py URL throughput TASKS CONCURRENCY`` or ``... URL latency SAMPLES
CONCURRENCY IDLE`` prints one line of JSON (see ``redis_common.py``).

Settings (dramatiq 2.x, ``dramatiq.brokers.redis.RedisBroker(url=URL)`` with redis-py and
hiredis), chosen to match what tasker gets:

- One ``dramatiq.Worker(broker, worker_threads=CONCURRENCY, worker_timeout=10)`` in this
  process. dramatiq's workers are threads and its actors here are plain functions (dramatiq's
  own model; its asyncio actors need an extra middleware and still run on threads).
  ``worker_timeout=10`` ms: dramatiq's Redis consumer has no blocking read; an empty fetch
  backs off from 5 ms up to ``worker_timeout`` (default 1000 ms), so this is its poll
  interval, set to 10 ms as for arq. Its prefetch stays at its default (2 x threads = 20
  messages per fetch); the broker's default middleware (age limit, time limit, retries,
  callbacks, pipelines, shutdown notifications) is kept; no result backend.
- Enqueue: ``actor.send()`` for each task (one Lua ``dispatch`` call each; dramatiq has no
  bulk enqueue), not timed. Probes: ``send()`` through the same broker.
- Throughput: from ``Worker.start()`` to the last handler's return; then ``Worker.join()``
  and ``Worker.stop()`` (acks flushed; not timed, counted).
"""

from __future__ import annotations

import importlib.metadata
import threading
import time
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from redis_common import Meter, emit, peer_args


def throughput(url: str, tasks: int, concurrency: int) -> dict[str, Any]:
    broker = RedisBroker(url=url)
    dramatiq.set_broker(broker)
    runs: dict[int, int] = {}
    lock = threading.Lock()
    done = threading.Event()
    finished = 0.0

    @dramatiq.actor(actor_name="noop", broker=broker)
    def noop(index: int) -> None:
        nonlocal finished
        with lock:
            runs[index] = runs.get(index, 0) + 1
            if len(runs) == tasks:
                finished = time.perf_counter()
                done.set()

    for index in range(tasks):
        noop.send(index)
    meter = Meter(url)
    meter.start()
    started = time.perf_counter()
    worker = dramatiq.Worker(broker, worker_threads=concurrency, worker_timeout=10)
    worker.start()
    if not done.wait(600):
        raise TimeoutError("dramatiq did not run every task in 600 s")
    worker.join()
    worker.stop()
    window = meter.stop()
    broker.close()
    return {
        "throughput": tasks / (finished - started),
        "lost": tasks - len(runs),
        "doubled": sum(1 for n in runs.values() if n > 1),
        **window.as_json(),
    }


def latency(url: str, samples: int, concurrency: int, idle: float) -> dict[str, Any]:
    broker = RedisBroker(url=url)
    dramatiq.set_broker(broker)
    delays: list[float] = []
    arrived = threading.Event()

    @dramatiq.actor(actor_name="probe", broker=broker)
    def probe(sent: float) -> None:
        delays.append(time.time() - sent)
        arrived.set()

    worker = dramatiq.Worker(broker, worker_threads=concurrency, worker_timeout=10)
    worker.start()
    time.sleep(1.0)
    meter = Meter(url)
    meter.start()
    time.sleep(idle)
    window = meter.stop()
    for _ in range(samples):
        arrived.clear()
        probe.send(time.time())
        if not arrived.wait(30):
            raise TimeoutError("a dramatiq probe did not run in 30 s")
        time.sleep(0.005)
    worker.join()
    worker.stop()
    broker.close()
    return {"latencies": delays, "idle": window.as_json()}


def main() -> None:
    args = peer_args()
    if args.mode == "throughput":
        result = throughput(args.url, args.count, args.concurrency)
    else:
        result = latency(args.url, args.count, args.concurrency, args.idle)
    emit({"version": importlib.metadata.version("dramatiq"), **result})


if __name__ == "__main__":
    main()
