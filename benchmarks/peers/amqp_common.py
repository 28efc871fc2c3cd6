"""What bench_amqp_queue.py and its RabbitMQ peer scripts share: names, arguments, output.

Standard library only, so the same code runs in tasker's virtualenv and in the peers' one.

- :func:`made`: the queues and exchanges each peer script declares under the name the harness
  gives it, so the harness can delete them after the run whatever became of the script (a
  crash, a timeout). Every name a run makes starts with ``bench-<run id>``.
- :func:`peer_args` and :func:`emit`: the peers' command line and their one line of JSON.

A peer script runs as ``python PEER.py throughput TASKS CONCURRENCY NAME [VARIANT]`` (enqueue
TASKS no-op tasks, then drain them with one worker of CONCURRENCY) or ``python PEER.py
latency SAMPLES CONCURRENCY NAME [VARIANT]`` (an idle worker, then SAMPLES enqueue-to-start
latencies). The broker's URL comes in the environment (:data:`URL_VARIABLE`), not on the
command line, so its password is not in the process list. NAME is the prefix of every queue
and exchange the script declares; VARIANT is a peer-specific setting (the raw loop's client
and queue type).

It prints one line of JSON, the last line of its output: ``version``, and for throughput
``throughput`` (tasks/s from the worker's start to the last handler's return),
``cpu_us_per_task`` (the script's CPU time over the same span, every thread's, per task),
``lost`` and ``doubled``; for latency ``latencies`` (seconds, enqueue to handler start, one
clock; the first :data:`WARM_UP` probes left out).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

#: Where the harness puts the broker's URL for the peer scripts (and where a user may put it
#: for the harness: it is its ``--url`` default).
URL_VARIABLE = "TASKER_BENCH_AMQP_URL"
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
#: Latency probes sent first and not counted, by every tool: the first connects the producer
#: (and declares its topology: tasker_amqp's delay ladder is 36 queues and 37 exchanges).
WARM_UP = 1


def made(kind: str, name: str) -> tuple[list[str], list[str]]:
    """The queues and exchanges a peer script of ``kind`` declares under ``name``."""
    if kind == "celery":
        # One queue, its direct exchange; remote control, events, gossip and mingle are off,
        # so no pidbox or celeryev exchange and no reply queues.
        return [name], [name]
    if kind == "dramatiq":
        # The actor's queue, its delay queue and its dead-letter queue, on the default
        # exchange.
        return [name, f"{name}.DQ", f"{name}.XQ"], []
    if kind == "taskiq":
        return [name, f"{name}.dead_letter"], [name]
    if kind == "raw":
        return [name], []
    raise ValueError(f"kind: unknown peer kind {kind!r}")


def url() -> str:
    return os.environ.get(URL_VARIABLE) or DEFAULT_URL


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerArgs:
    """A peer script's command line (see the module docstring)."""

    mode: str
    count: int
    concurrency: int
    name: str
    variant: str | None


def peer_args(argv: list[str] | None = None) -> PeerArgs:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 4 or args[0] not in ("throughput", "latency"):
        raise SystemExit("usage: PEER.py throughput|latency COUNT CONCURRENCY NAME [VARIANT]")
    return PeerArgs(
        mode=args[0],
        count=int(args[1]),
        concurrency=int(args[2]),
        name=args[3],
        variant=args[4] if len(args) > 4 else None,
    )


@dataclass(slots=True)
class Stopwatch:
    """A drain's wall time and this process's CPU time (every thread's) from :meth:`start`
    (the worker's start) to :meth:`stop` (the last handler's return)."""

    started: float = 0.0
    cpu_started: float = 0.0
    wall: float = 0.0
    cpu: float = 0.0

    def start(self) -> None:
        self.started, self.cpu_started = time.perf_counter(), time.process_time()

    def stop(self) -> None:
        self.wall = time.perf_counter() - self.started
        self.cpu = time.process_time() - self.cpu_started

    def result(self, runs: dict[int, int], tasks: int) -> dict[str, float]:
        """``throughput``, ``cpu_us_per_task``, and ``lost`` and ``doubled`` of a drain whose
        handler counted ``runs`` per task index."""
        return {
            "throughput": tasks / self.wall,
            "cpu_us_per_task": self.cpu / tasks * 1e6,
            "lost": tasks - len(runs),
            "doubled": sum(1 for n in runs.values() if n > 1),
        }


def emit(result: dict[str, Any]) -> None:
    """Print the peer's result: one line of JSON, the last line of its output."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
