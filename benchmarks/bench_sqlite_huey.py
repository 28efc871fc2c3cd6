"""tasker's SQLite queue against huey's SqliteHuey, same machine, same run.

Run: ``python benchmarks/bench_sqlite_huey.py [--rounds 3] [--tasks 5000] [--samples 200]
[--json PATH]``. huey runs from its own virtualenv (``--peer-python``, default
``/tmp/peer-huey-venv/bin/python``; create it with ``python3 -m venv /tmp/peer-huey-venv &&
/tmp/peer-huey-venv/bin/pip install huey``) through ``benchmarks/peers/huey_bench.py``;
without it tasker is still measured and huey is reported as failed.

Workload: no-op tasks, each tool in a fresh database file in its own temporary directory.

- Throughput: ``--tasks`` tasks enqueued up front (not timed), then ONE consumer process
  with 10 workers drains them: for tasker a Python process running
  ``queue.worker(concurrency=10)`` on the file, for huey its ``Consumer`` (what
  ``huey_consumer -w 10 -k thread`` builds) with 10 thread workers. Both consumers time the
  same span themselves, with ``time.perf_counter``: from the start of the first task's
  handler to the end of the last one's (process start-up and imports are outside it; so is
  recording the last outcome, for both). Tasks per second = tasks / that span. Each
  consumer also reports lost and doubled tasks.
- Cross-process latency: an idle consumer process (10 workers) waits; this process (for
  huey: the peer script, which must import huey) enqueues one task at a time, every 20 ms,
  carrying ``time.time()``; the task writes ``time.time() - sent`` at its start; p50 and p99
  over ``--samples``. The approach of ``bench_queue.cross_process_latency`` (a warm-up task
  enqueued before the consumer starts and counted out, half a second idle, poll 30 s so
  only tasker's wake-up socket can start the task), with its consumer killed on every
  exit path.

Settings, alike for both: WAL journal and ``PRAGMA synchronous=NORMAL`` (what tasker's
backend sets in ``tasker._sqlite_batch.open_database``; huey's ``fsync`` option only has
FULL or OFF, so the peer's storage sets NORMAL on its connection; both are read back from
the consumers' connections and printed). huey polls from 1 ms, backing off by 1.15 up to
20 ms (``-d 0.001 -m 0.02 -b 1.15``; ``--huey-delay``, ``--huey-max-delay``). huey's results
are on with ``store_none`` off, its defaults: a no-op returns None, so huey writes no result
(the same as results off), while tasker always records the outcome in the task's row (its
durable state; it has no switch to skip it). That leaves huey the lighter write path:
``store_none=True`` would be closer in work but is not what a huey user runs.

Each round runs both tools (tasker first in odd rounds, huey first in even ones, so
neither always runs on a machine warmed or loaded by the other) and prints its figures and
ratios: tasker's throughput over huey's, huey's p50 over tasker's (above 1: tasker is
better). Then best of rounds: each tool's best round (highest throughput; lowest p50,
with that round's p99) against the other's. Targets: throughput at least 1.5x huey's;
tasker's cross-process p50 under 2 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from tasker._sqlite_batch import open_database
from tasker.queue import Queue, SQLiteQueueBackend

HERE = Path(__file__).resolve().parent
PEER = HERE / "peers" / "huey_bench.py"
WORKERS = 10
GAP = 0.02  # seconds between latency probes, as in bench_queue.cross_process_latency
THROUGHPUT_TARGET = 1.5
P50_TARGET_MS = 2.0

# The tasker consumer process. ``throughput``: a no-op task per payload, the span from the
# first handler's start to the last one's end; ``latency``: each probe writes its delay.
_CONSUMER = """
import json, sys, time, anyio, tasker
from tasker.queue import Queue, SQLiteQueueBackend

path, count, mode, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
workers = int(sys.argv[5])
queue = Queue(SQLiteQueueBackend(path))
runs = {}
span = [0.0, 0.0, 0]
done = anyio.Event()
delays = open(out, "a", buffering=1) if mode == "latency" else None

def record(key, start):
    if not runs:
        span[0] = start
    runs[key] = runs.get(key, 0) + 1
    span[1] = time.perf_counter()
    span[2] += 1
    if span[2] >= count:
        done.set()

@queue.task("noop", max_attempts=1)
async def noop(ctx, index: int) -> None:
    record(index, time.perf_counter())

@queue.task("probe", max_attempts=1)
async def probe(ctx, sent: float) -> None:
    delay = time.time() - sent
    delays.write(f"{delay}\\n")
    record(sent, time.perf_counter())

print("ready", flush=True)
poll = 30 if mode == "latency" else 5.0
anyio.run(lambda: tasker.run(
    queue.worker(concurrency=workers, poll=poll), shutdown_trigger=done.wait))
print(json.dumps({
    "seconds": span[1] - span[0],
    "runs": sum(runs.values()),
    "distinct": len(runs),
    "doubled": sum(1 for n in runs.values() if n > 1),
}), flush=True)
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


#: Every process started and not yet killed: main() kills what is left on any way out.
_LIVE: set[subprocess.Popen[str]] = set()


def start(command: list[str], *, stderr: bool = False) -> subprocess.Popen[str]:
    # Its own process group, so that a peer's consumer (its child) is killed with it.
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if stderr else None,
        text=True,
        start_new_session=True,
    )
    _LIVE.add(process)
    return process


def kill(process: subprocess.Popen[str]) -> None:
    """Kill ``process`` and its group if anything of it still runs."""
    with contextlib.suppress(ProcessLookupError):  # all of it exited already
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    _LIVE.discard(process)


def last_json(text: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    return result


async def enqueue_all(path: Path, name: str, payloads: list[Any]) -> None:
    """Enqueue every payload (concurrently, so they share transactions: this is not timed)."""
    queue = Queue(SQLiteQueueBackend(path))

    @queue.task(name, max_attempts=1)
    async def handler(ctx: object, payload: Any) -> None: ...

    async def some(part: list[Any]) -> None:
        for payload in part:
            await queue.enqueue(name, payload)

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(some, payloads[i::50])
    await queue.aclose()


def tasker_throughput(tasks: int, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "q.sqlite3"
        anyio.run(enqueue_all, path, "noop", list(range(tasks)))
        command = [sys.executable, "-c", _CONSUMER, str(path), str(tasks), "throughput"]
        process = start([*command, "-", str(WORKERS)])
        try:
            stdout, _ = process.communicate(timeout=timeout)
        finally:
            kill(process)
        if process.returncode != 0:
            raise RuntimeError(f"tasker consumer exited with {process.returncode}")
        report = last_json(stdout)
    report["tasks_per_s"] = tasks / report["seconds"]
    report["lost"] = tasks - report["distinct"]
    return report


async def _latency_probes(path: Path, out: Path, samples: int, timeout: float) -> None:
    queue = Queue(SQLiteQueueBackend(path))

    @queue.task("probe", max_attempts=1)
    async def probe(ctx: object, sent: float) -> None: ...

    await queue.enqueue("probe", time.time())  # makes the file; counted out below
    command = [sys.executable, "-c", _CONSUMER, str(path), str(samples + 1), "latency"]
    process = start([*command, str(out), str(WORKERS)])
    try:
        assert process.stdout is not None
        ready = await anyio.to_thread.run_sync(process.stdout.readline)
        if ready.strip() != "ready":
            raise RuntimeError("tasker consumer did not start")
        await anyio.sleep(0.5)  # its workers wait
        for _ in range(samples):
            await queue.enqueue("probe", time.time())
            await anyio.sleep(GAP)
        await anyio.to_thread.run_sync(process.communicate, None, timeout)
    finally:
        kill(process)
        await queue.aclose()


def tasker_latency(samples: int, timeout: float) -> list[float]:
    """Enqueue here, start in a tasker consumer process: the delays in ms."""
    with tempfile.TemporaryDirectory() as directory:
        path, out = Path(directory) / "q.sqlite3", Path(directory) / "delays"
        anyio.run(_latency_probes, path, out, samples, timeout)
        delays = [float(line) * 1e3 for line in out.read_text().split()[1:]]
    if len(delays) != samples:
        raise RuntimeError(f"tasker consumer ran {len(delays)} of {samples} probes")
    return delays


def huey_run(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """One run of the peer script in a fresh directory: its JSON report."""
    with tempfile.TemporaryDirectory() as directory:
        command = [args.peer_python, str(PEER), mode, str(Path(directory) / "huey.db")]
        command += ["--tasks", str(args.tasks), "--samples", str(args.samples)]
        command += ["--workers", str(WORKERS), "--gap", str(GAP)]
        command += ["--delay", str(args.huey_delay), "--max-delay", str(args.huey_max_delay)]
        command += ["--backoff", str(args.huey_backoff), "--timeout", str(args.timeout)]
        process = start(command, stderr=True)
        try:
            stdout, stderr = process.communicate(timeout=args.timeout + 60)
        finally:
            kill(process)
        if process.returncode != 0:
            tail = " | ".join(stderr.strip().splitlines()[-3:])
            raise RuntimeError(f"huey_bench.py {mode} exited with {process.returncode}: {tail}")
        return last_json(stdout)


@dataclass
class Tool:
    name: str
    rates: list[float] = field(default_factory=list)
    p50s: list[float] = field(default_factory=list)
    p99s: list[float] = field(default_factory=list)
    failure: str | None = None
    lost: int = 0  # over the rounds' throughput runs
    doubled: int = 0

    def best_rate(self) -> float:
        return max(self.rates) if self.rates else float("nan")

    def best_latency(self) -> tuple[float, float]:
        """The round with the lowest p50: its p50 and p99."""
        if not self.p50s:
            return float("nan"), float("nan")
        i = self.p50s.index(min(self.p50s))
        return self.p50s[i], self.p99s[i]


def figures(name: str, rate: float, p50: float, p99: float) -> str:
    return f"{name:6} {rate:7.0f} tasks/s; cross-process p50 {p50:5.2f} ms, p99 {p99:6.2f} ms"


def measure_tasker(tool: Tool, args: argparse.Namespace, notes: set[str]) -> str:
    report = tasker_throughput(args.tasks, args.timeout)
    delays = tasker_latency(args.samples, args.timeout)
    tool.rates.append(report["tasks_per_s"])
    tool.p50s.append(percentile(delays, 0.5))
    tool.p99s.append(percentile(delays, 0.99))
    tool.lost += report["lost"]
    tool.doubled += report["doubled"]
    return figures(tool.name, tool.rates[-1], tool.p50s[-1], tool.p99s[-1])


def measure_huey(tool: Tool, args: argparse.Namespace, notes: set[str]) -> str:
    if tool.failure is not None:
        return f"huey   failed: {tool.failure}"
    try:
        report = huey_run(args, "throughput")
        lat = huey_run(args, "latency")
    except (OSError, RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
        tool.failure = str(exc)
        return f"huey   failed: {tool.failure}"
    delays = [d * 1e3 for d in lat["latencies"]]
    tool.rates.append(report["tasks_per_s"])
    tool.p50s.append(percentile(delays, 0.5))
    tool.p99s.append(percentile(delays, 0.99))
    notes.add(
        f"huey {report['version']} (SqliteHuey, SQLite {report['sqlite']}):"
        f" journal_mode={report['journal_mode']} synchronous={report['synchronous']}"
        f" (read back in its consumer), results on, store_none off, Consumer workers={WORKERS}"
        f" worker_type=thread periodic off, initial_delay={args.huey_delay}"
        f" max_delay={args.huey_max_delay} backoff={args.huey_backoff}"
    )
    tool.lost += report["lost"]
    tool.doubled += report["doubled"]
    return figures(tool.name, tool.rates[-1], tool.p50s[-1], tool.p99s[-1])


def tasker_settings() -> str:
    with tempfile.TemporaryDirectory() as directory:
        connection = open_database(Path(directory) / "probe.sqlite3")
        journal = connection.execute("pragma journal_mode").fetchone()[0]
        synchronous = connection.execute("pragma synchronous").fetchone()[0]
        connection.close()
    return (
        f"tasker {importlib.metadata.version('tasker-jobs')} (SQLiteQueueBackend, SQLite"
        f" {sqlite3.sqlite_version}): journal_mode={journal} synchronous={synchronous}"
        f" (tasker._sqlite_batch.open_database), one consumer process,"
        f" queue.worker(concurrency={WORKERS}, poll=5.0; latency: poll=30)"
    )


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def finite(value: float) -> float | None:
    """``value``, or None (JSON's null) for NaN: a figure that could not be measured."""
    return None if math.isnan(value) else value


def main() -> None:
    # SIGTERM as an exception, so that the ``finally`` blocks kill the consumers; the
    # process groups they run in do not get the terminal's signals.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        bench()
    finally:
        for process in list(_LIVE):
            kill(process)


def bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peer-python", default="/tmp/peer-huey-venv/bin/python")  # noqa: S108
    parser.add_argument("--huey-delay", type=float, default=0.001, help="huey's -d, seconds")
    parser.add_argument("--huey-max-delay", type=float, default=0.02, help="huey's -m")
    parser.add_argument("--huey-backoff", type=float, default=1.15, help="huey's -b")
    parser.add_argument("--timeout", type=float, default=300.0, help="per consumer run")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    tasker_tool, huey_tool = Tool("tasker"), Tool("huey")
    if not Path(args.peer_python).exists():
        huey_tool.failure = f"no peer interpreter at {args.peer_python}"
    notes: set[str] = set()
    print(
        f"{args.tasks} no-op tasks, one consumer process with {WORKERS} workers;"
        f" {args.samples} cross-process probes; {os.cpu_count()} CPUs"
    )
    for round_ in range(1, args.rounds + 1):
        order = [measure_tasker, measure_huey]
        tools = [tasker_tool, huey_tool]
        if round_ % 2 == 0:
            order.reverse()
            tools.reverse()
        print(f"round {round_}:")
        for measure, tool in zip(order, tools, strict=True):
            print("  " + measure(tool, args, notes))
        if huey_tool.failure is None:
            rate = ratio(tasker_tool.rates[-1], huey_tool.rates[-1])
            p50 = ratio(huey_tool.p50s[-1], tasker_tool.p50s[-1])
            print(
                f"  tasker / huey throughput {rate:.2f}x (target >= {THROUGHPUT_TARGET}x);"
                f" huey / tasker p50 {p50:.2f}x"
            )

    t_rate, (t_p50, t_p99) = tasker_tool.best_rate(), tasker_tool.best_latency()
    h_rate, (h_p50, h_p99) = huey_tool.best_rate(), huey_tool.best_latency()
    huey_ok = huey_tool.failure is None and bool(huey_tool.rates)
    print(f"best of {args.rounds} rounds:")
    print("  " + figures("tasker", t_rate, t_p50, t_p99))
    if huey_ok:
        print("  " + figures("huey", h_rate, h_p50, h_p99))
    else:
        print(f"  huey   failed: {huey_tool.failure}")
    throughput_ratio = ratio(t_rate, h_rate) if huey_ok else float("nan")
    p50_ratio = ratio(h_p50, t_p50) if huey_ok else float("nan")
    rounds = min(len(tasker_tool.rates), len(huey_tool.rates))
    throughput_runs = [ratio(tasker_tool.rates[i], huey_tool.rates[i]) for i in range(rounds)]
    p50_runs = [ratio(huey_tool.p50s[i], tasker_tool.p50s[i]) for i in range(rounds)]
    throughput_met = throughput_ratio >= THROUGHPUT_TARGET if huey_ok else None
    p50_met = t_p50 < P50_TARGET_MS
    if huey_ok:
        print(
            f"  tasker / huey throughput {throughput_ratio:.2f}x (target >= {THROUGHPUT_TARGET}x:"
            f" {'met' if throughput_met else 'NOT met'}); huey / tasker p50 {p50_ratio:.2f}x"
        )
    print(
        f"  tasker cross-process p50 {t_p50:.2f} ms (target < {P50_TARGET_MS} ms:"
        f" {'met' if p50_met else 'NOT met'})"
    )
    notes.add(tasker_settings())
    notes.update(
        f"{tool.name}: {tool.lost} tasks lost, {tool.doubled} run twice over"
        f" {len(tool.rates)} throughput runs"
        for tool in (tasker_tool, huey_tool)
        if tool.rates
    )
    notes.add(
        "throughput: tasks / (first handler start .. last handler end), timed inside each"
        " consumer process with time.perf_counter; tasks enqueued up front, not timed"
    )
    notes.add(
        f"latency: enqueue (time.time() taken just before) to handler start (time.time()),"
        f" one probe every {GAP * 1e3:.0f} ms to an idle consumer process"
    )
    notes.add(
        f"best of rounds: each tool's best round (highest tasks/s; lowest p50 with its p99);"
        f" {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    for note in sorted(notes):
        print(note)
    if args.json is None:
        return
    result: dict[str, Any] = {
        "benchmark": "bench_sqlite_huey",
        "ratios": [
            {
                "measurement": "throughput, tasker / huey (1 consumer process, 10 workers)",
                "value": finite(throughput_ratio),
                "target": f">= {THROUGHPUT_TARGET}",
                "met": throughput_met,
                "runs": throughput_runs,
            },
            {
                "measurement": "cross-process enqueue-to-start p50, huey / tasker",
                "value": finite(p50_ratio),
                "target": "none (informational)",
                "met": None,
                "runs": p50_runs,
            },
            {
                "measurement": "tasker cross-process enqueue-to-start p50, ms (not a ratio)",
                "value": t_p50,
                "target": f"< {P50_TARGET_MS}",
                "met": p50_met,
                "runs": tasker_tool.p50s,
            },
        ],
        "throughput": [{"backend": "sqlite", "tool": "tasker", "tasks_per_s": t_rate}],
        "latency": [{"backend": "sqlite", "tool": "tasker", "p50_ms": t_p50, "p99_ms": t_p99}],
        "notes": sorted(notes),
    }
    if huey_ok:
        result["throughput"].append({"backend": "sqlite", "tool": "huey", "tasks_per_s": h_rate})
        result["latency"].append(
            {"backend": "sqlite", "tool": "huey", "p50_ms": h_p50, "p99_ms": h_p99}
        )
    else:
        result["notes"].append(f"huey: failed: {huey_tool.failure}")
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
