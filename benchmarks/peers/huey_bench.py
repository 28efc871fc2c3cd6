"""huey side of bench_sqlite_huey.py; runs in the peer virtualenv (never imports tasker).

``python huey_bench.py throughput DB --tasks N`` enqueues N no-op tasks into ``DB`` (a
SqliteHuey file that does not exist yet), then starts one consumer process (this script's
``consume`` mode) with ``--workers`` thread workers that drains them; it prints JSON with the
consumer's drain time (its first task's start to its last task's end, ``time.perf_counter``
inside the consumer) and how often each task ran.

``python huey_bench.py latency DB --samples N`` starts the consumer first and lets it idle
half a second, then enqueues one probe every ``--gap`` seconds carrying ``time.time()``;
each probe writes ``time.time() - sent`` at its start. It prints JSON with the delays.

Configuration, as ``bench_sqlite_huey.py`` states: ``SqliteHuey``'s storage in WAL mode
(its default) with ``PRAGMA synchronous=NORMAL`` on its connection (what tasker's SQLite
backend sets; huey's own ``fsync`` option only knows FULL or OFF, and leaving it unset
means SQLite's default, FULL), results on but ``store_none`` off (huey's defaults: a no-op
returning None writes no result), the consumer's Consumer API as ``huey_consumer`` builds
it (``-w 10 -k thread``, periodic tasks off: there are none), polling from ``--delay`` with
``--backoff`` up to ``--max-delay``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from huey import SqliteHuey
from huey.consumer import Consumer
from huey.storage import SqliteStorage


class NormalSyncStorage(SqliteStorage):  # type: ignore[misc]
    """huey's SQLite storage with ``synchronous=NORMAL``, as tasker's backend has."""

    def _create_connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection = super()._create_connection()
        connection.execute("pragma synchronous=1")
        return connection


def make_huey(db: str) -> Any:
    return SqliteHuey(
        "bench", filename=db, storage_class=NormalSyncStorage, results=True, store_none=False
    )


class Tally:
    """What the consumer's tasks did: first start and last end, runs per payload."""

    def __init__(self, count: int, out: str | None) -> None:
        self.count = count
        self.lock = threading.Lock()
        self.first = 0.0
        self.last = 0.0
        self.runs: dict[Any, int] = {}
        self.total = 0
        self.done = threading.Event()
        self.out = open(out, "a", buffering=1) if out else None  # noqa: SIM115 - kept open

    def record(self, key: Any, start: float) -> None:
        with self.lock:
            if not self.runs:
                self.first = start
            self.runs[key] = self.runs.get(key, 0) + 1
            self.total += 1
            self.last = max(self.last, time.perf_counter())
            if self.total >= self.count:
                self.done.set()


def tasks(huey: Any, tally: Tally | None) -> tuple[Any, Any]:
    """The two tasks, registered alike in the producer and the consumer (``__main__.*``)."""

    @huey.task()
    def noop(index: int) -> None:
        if tally is not None:
            tally.record(index, time.perf_counter())

    @huey.task()
    def probe(sent: float) -> None:
        delay = time.time() - sent
        if tally is not None:
            if tally.out is not None:
                tally.out.write(f"{delay}\n")
            tally.record(sent, time.perf_counter())

    return noop, probe


def consume(args: argparse.Namespace) -> None:
    """The consumer process: ``--workers`` threads until ``--count`` tasks ran."""
    huey = make_huey(args.db)
    tally = Tally(args.count, args.out)
    tasks(huey, tally)
    consumer = Consumer(
        huey,
        workers=args.workers,
        worker_type="thread",
        periodic=False,
        initial_delay=args.delay,
        backoff=args.backoff,
        max_delay=args.max_delay,
    )
    settings = {
        "journal_mode": huey.storage.conn.execute("pragma journal_mode").fetchone()[0],
        "synchronous": huey.storage.conn.execute("pragma synchronous").fetchone()[0],
    }
    # Consumer.run() is start() and then a loop that wakes every 0.1 s to look at its
    # stop flag and the workers' health; here the main thread waits for the count instead.
    consumer.start()
    print("ready", flush=True)
    finished = tally.done.wait(args.timeout)
    consumer.stop(graceful=True)
    runs = list(tally.runs.values())
    print(
        json.dumps(
            {
                "finished": finished,
                "seconds": tally.last - tally.first,
                "runs": sum(runs),
                "distinct": len(runs),
                "doubled": sum(1 for n in runs if n > 1),
                **settings,
            }
        ),
        flush=True,
    )


def consumer_command(args: argparse.Namespace, count: int, out: str | None) -> list[str]:
    command = [sys.executable, str(Path(__file__).resolve()), "consume", args.db]
    command += ["--count", str(count), "--workers", str(args.workers)]
    command += ["--delay", str(args.delay), "--max-delay", str(args.max_delay)]
    command += ["--backoff", str(args.backoff), "--timeout", str(args.timeout)]
    return command + (["--out", out] if out else [])


def stop(process: subprocess.Popen[str]) -> None:
    """Kill the consumer if it still runs (any exit path of this script)."""
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait()


def last_json(text: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    return result


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    huey = make_huey(args.db)
    noop, _ = tasks(huey, None)
    for index in range(args.tasks):
        noop(index)
    huey.storage.close()
    process = subprocess.Popen(
        consumer_command(args, args.tasks, None), stdout=subprocess.PIPE, text=True
    )
    try:
        stdout, _ = process.communicate(timeout=args.timeout + 30)
    finally:
        stop(process)
    if process.returncode != 0:
        raise SystemExit(f"huey consumer exited with {process.returncode}")
    report = last_json(stdout)
    if not report["finished"]:
        raise SystemExit(f"huey consumer ran {report['runs']} of {args.tasks} tasks in time")
    report["tasks_per_s"] = args.tasks / report["seconds"]
    report["lost"] = args.tasks - report["distinct"]
    return report


def latency(args: argparse.Namespace) -> dict[str, Any]:
    huey = make_huey(args.db)
    _, probe = tasks(huey, None)
    out = f"{args.db}.delays"
    probe(time.time())  # warms the consumer's first dequeue; counted out below
    process = subprocess.Popen(
        consumer_command(args, args.samples + 1, out), stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise SystemExit("huey consumer did not start")
        time.sleep(0.5)  # its workers idle: their poll has backed off to --max-delay
        for _ in range(args.samples):
            probe(time.time())
            time.sleep(args.gap)
        stdout, _ = process.communicate(timeout=args.timeout + 30)
    finally:
        stop(process)
    report = last_json(stdout)
    delays = [float(line) for line in Path(out).read_text().split()[1:]]
    os.remove(out)
    if len(delays) != args.samples:
        raise SystemExit(f"huey consumer ran {len(delays)} of {args.samples} probes")
    return {"latencies": delays, **report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["throughput", "latency", "consume"])
    parser.add_argument("db", help="the SqliteHuey file")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--count", type=int, default=0, help="consume: tasks to wait for")
    parser.add_argument("--out", default=None, help="consume: the probes' delays file")
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--delay", type=float, default=0.001, help="initial poll, seconds")
    parser.add_argument("--max-delay", type=float, default=0.02, help="poll ceiling, seconds")
    parser.add_argument("--backoff", type=float, default=1.15)
    parser.add_argument("--gap", type=float, default=0.02, help="latency: between probes")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    if args.mode == "consume":
        consume(args)
        return
    report = throughput(args) if args.mode == "throughput" else latency(args)
    report["version"] = importlib.metadata.version("huey")
    report["sqlite"] = sqlite3.sqlite_version
    print(json.dumps(report))


if __name__ == "__main__":
    main()
