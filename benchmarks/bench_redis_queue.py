"""tasker_redis's queue against arq, saq, taskiq-redis, streaq and dramatiq on one Redis, one run.

Run: ``python benchmarks/bench_redis_queue.py [--url redis://127.0.0.1:6379/15] [--tasks
5000,20000] [--peer-python /tmp/peer-redis-venv/bin/python] [--json [PATH]]`` (or ``nox -s
bench``).
The peers run from their own virtualenv (``--peer-python``; create it with ``python -m venv
/tmp/peer-redis-venv && /tmp/peer-redis-venv/bin/pip install arq saq "taskiq<0.13"
"taskiq-redis<1.1" streaq "dramatiq[redis]" redis coredis``: taskiq-redis 1.1 and later need
redis-py 8, arq needs redis-py below 6), through the scripts in ``benchmarks/peers/`` (their
docstrings say how each peer is configured); without that interpreter only tasker is
measured, and a peer that cannot run there is reported as failed, with why.

Workload: no-op tasks, one worker process with concurrency 10, every tool one after the
other on the same Redis server, each run in a database (``--url``'s, default 15; never 0)
emptied with ``FLUSHDB`` first:

- **tasker_redis** (``tasker_redis.RedisQueueBackend(url)``; reported as not available when it
  cannot be imported), **memory** (tasker's own in-process ``MemoryQueueBackend``, the same
  worker and settings: what the worker costs without Redis), the five peers, and **raw
  stream**, a batched ``XADD``/``XREADGROUP``/``XACK`` loop on one stream with a consumer
  group: the physical limit of one stream here, not a task queue.
- **Throughput**: each of ``--tasks`` enqueued up front (in bulk where the tool can: tasker
  in batches of 500 through ``QueueBackend.enqueue``), then one worker drains them; tasks/s
  from the worker's start to the last handler's return (the shutdown after is not timed).
  Each run checks that no task was lost or ran twice.
- **Latency**: an idle worker (tasker's with ``poll=30``: it waits for Redis to wake it), one
  task enqueued at a time, ``--samples`` times, each carrying the ``time.time()`` of its
  enqueue; the handler's ``time.time()`` minus that (one machine, one clock), p50 and p99.
  tasker's probes are enqueued through a second backend object, so they travel through
  Redis as another process's would.
- **Commands per task**: ``INFO commandstats`` before and after each drain, on a connection
  of the harness's own (``benchmarks/peers/redis_common.py``), so it counts every tool alike,
  whatever its client: every command the server ran, including those inside Lua scripts and
  Redis Functions (each under its own name; the ``evalsha``/``fcall`` is one more);
  ``scripts/task`` counts the script calls. The drain's window includes the worker's start
  and stop. **Idle commands/s**: the same count over ``--idle`` seconds with the latency
  worker idle, after a one-second settle.

The counts are server-wide: a window during which another database's clients were active is
marked ``*`` and names them (run with ``--private-server`` for a redis-server of this run's
own, from PATH, when the shared one is busy). On a busy machine ``--rounds N`` runs the whole
sequence N times and reports each size's best rate (every round's rate is listed: other load
only ever slows a run down) and the latencies of all rounds together; ``--tools`` picks a
subset. Targets (issue 13) are reported, never asserted: tasker_redis at least 3x the
fastest peer and at least 70% of the memory backend in the same run, p50 under 2 ms, and no
command from an idle worker beyond one blocking read. Exit status: 0 unless the harness
itself fails (no Redis, a bad option, tasker_redis importable but failing); a peer that
fails is reported and the run goes on. ``--json`` prints one JSON document of everything
instead of the table; ``--json PATH`` prints the table and writes the ratios, each tool's
rate on the largest size and its latency in ``benchmarks/_report.py``'s shape to PATH.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import math
import socket
import subprocess
import sys
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import _report
import anyio
from peers.redis_common import BLOCKING_READS, Meter, Probe, RedisURL, Window

import tasker
from tasker.queue import MemoryQueueBackend, NewTask, Queue, QueueBackend

HERE = Path(__file__).resolve().parent
DEFAULT_PEER_PYTHON = "/tmp/peer-redis-venv/bin/python"  # noqa: S108 - a documented location
#: (tool, peer script) in the order they run, after tasker_redis and memory.
PEERS = (
    ("arq", "arq_bench.py"),
    ("saq", "saq_bench.py"),
    ("taskiq-redis", "taskiq_redis_bench.py"),
    ("streaq", "streaq_bench.py"),
    ("dramatiq", "dramatiq_bench.py"),
)
RAW = ("raw stream", "redis_stream_bench.py")
SETTLE = 1.0  # seconds an idle worker runs before its idle window opens
TOP = 6  # commands listed per window


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.nan


@dataclass(kw_only=True)
class Drain:
    """One throughput run: ``tasks`` drained at ``rate`` tasks/s."""

    tasks: int
    rate: float
    lost: int = 0
    doubled: int = 0
    window: Window | None = None
    #: With several rounds: every round's rate (``rate`` is the fastest).
    rates: list[float] = field(default_factory=list)

    def per_task(self) -> float | None:
        if self.window is None or self.window.reset:
            return None
        return self.window.total / self.tasks

    def scripts_per_task(self) -> float | None:
        if self.window is None or self.window.reset:
            return None
        return self.window.scripts / self.tasks


@dataclass(kw_only=True)
class ToolResult:
    """Everything measured for one tool, or why it was not."""

    tool: str
    version: str = "-"
    #: "ok", or why the tool has no figures ("not available: ...", "failed: ...").
    status: str = "ok"
    drains: dict[int, Drain] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    idle: Window | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 0.5)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 0.99)

    def idle_rate(self) -> float | None:
        if self.idle is None or self.idle.reset:
            return None
        return self.idle.total / self.idle.seconds

    def idle_only_blocking(self) -> bool | None:
        """Whether the idle worker sent nothing beyond one blocking read (issue 13's target)."""
        if self.idle is None or self.idle.reset:
            return None
        return set(self.idle.commands) <= BLOCKING_READS and self.idle.total <= 1

    def as_json(self) -> dict[str, Any]:
        def window(w: Window | None) -> dict[str, Any] | None:
            return None if w is None else w.as_json()

        return {
            "tool": self.tool,
            "version": self.version,
            "status": self.status,
            "drains": [
                {
                    "tasks": d.tasks,
                    "throughput": d.rate,
                    "throughput_rounds": d.rates or [d.rate],
                    "lost": d.lost,
                    "doubled": d.doubled,
                    "commands_per_task": d.per_task(),
                    "scripts_per_task": d.scripts_per_task(),
                    "window": window(d.window),
                }
                for d in self.drains.values()
            ],
            "latency_ms": {"p50": self.p50, "p99": self.p99, "samples": len(self.latencies_ms)}
            if self.latencies_ms
            else None,
            "latencies_ms": self.latencies_ms,
            "idle_commands_per_s": self.idle_rate(),
            "idle_only_blocking_read": self.idle_only_blocking(),
            "idle": window(self.idle),
            "errors": self.errors,
        }


@dataclass(frozen=True, kw_only=True)
class Settings:
    url: str
    sizes: list[int]
    concurrency: int
    samples: int
    idle: float
    rounds: int
    peer_python: str
    peer_python_found: bool
    tools: set[str] | None
    out: TextIO

    def wants(self, tool: str) -> bool:
        return self.tools is None or tool in self.tools


# -- tasker's side, in this process -------------------------------------------------------

BackendFactory = Callable[[], QueueBackend]


def new_tasks(tasks: int, now: float) -> list[NewTask]:
    return [
        NewTask(
            id=uuid.uuid4().hex,
            name="noop",
            queue="default",
            payload=str(index).encode(),  # the JSON serialiser's form of the int
            run_at=now,
            created_at=now,
        )
        for index in range(tasks)
    ]


async def tasker_drain(
    make: BackendFactory, url: str | None, tasks: int, concurrency: int
) -> Drain:
    """Enqueue ``tasks`` no-op tasks in bulk, then drain them with one worker."""
    backend = make()
    queue = Queue(backend)
    runs: Counter[int] = Counter()
    finished = anyio.Event()
    last = 0.0

    @queue.task("noop", max_attempts=1)
    async def noop(ctx: tasker.Context, payload: int) -> None:
        nonlocal last
        runs[payload] += 1
        if len(runs) == tasks:
            last = time.perf_counter()
            finished.set()

    meter: Meter | None = None
    try:
        now = await backend.time()
        batch = new_tasks(tasks, now)
        for start in range(0, tasks, 500):
            await backend.enqueue(batch[start : start + 500], now=now)
        meter = Meter(url) if url is not None else None
        if meter is not None:
            meter.start()
        started = time.perf_counter()
        with anyio.fail_after(120 + tasks / 50):
            await tasker.run(
                queue.worker(concurrency=concurrency, poll=1.0), shutdown_trigger=finished.wait
            )
        window = meter.stop() if meter is not None else None
    finally:
        if meter is not None:
            meter.close()
        await backend.aclose()
    return Drain(
        tasks=tasks,
        rate=tasks / (last - started),
        lost=tasks - len(runs),
        doubled=sum(1 for n in runs.values() if n > 1),
        window=window,
    )


async def tasker_latency(
    make: BackendFactory, url: str | None, settings: Settings, *, same_backend: bool
) -> tuple[list[float], Window | None]:
    """Idle commands of a waiting worker, then enqueue-to-start latencies, in seconds."""
    backend = make()
    producer_backend = backend if same_backend else make()
    queue, producer = Queue(backend), Queue(producer_backend)
    delays: list[float] = []
    arrived = anyio.Event()

    async def probe(ctx: tasker.Context, payload: float) -> None:
        delays.append(time.time() - payload)
        arrived.set()

    for q in (queue, producer):
        q.task("probe", max_attempts=1)(probe)
    window: Window | None = None
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: tasker.run(
                    queue.worker(concurrency=settings.concurrency, poll=30),
                    shutdown_trigger=stop.wait,
                )
            )
            await anyio.sleep(SETTLE)
            if url is not None:
                meter = Meter(url)
                meter.start()
                await anyio.sleep(settings.idle)
                window = meter.stop()
                meter.close()
            for _ in range(settings.samples):
                arrived = anyio.Event()
                await producer.enqueue("probe", time.time())
                with anyio.fail_after(30):
                    await arrived.wait()
                await anyio.sleep(0.005)
            stop.set()
    finally:
        await backend.aclose()
        if producer_backend is not backend:
            await producer_backend.aclose()
    return delays, window


def redis_factory(url: str) -> tuple[BackendFactory | None, str]:
    """A factory of tasker_redis backends and tasker's version; or None and why not.

    Imported here, not at the top, so that everything else is still measured when
    tasker_redis is missing or broken.
    """
    try:
        module = importlib.import_module("tasker_redis")
        backend_class = module.RedisQueueBackend
    except Exception as exc:  # an ImportError, or a half-written package
        return None, f"not available: {type(exc).__name__}: {exc}"

    def make() -> QueueBackend:
        backend: QueueBackend = backend_class(url, namespace="tasker")
        return backend

    return make, importlib.metadata.version("tasker-jobs")


async def measure_tasker(
    tool: str, make: BackendFactory, url: str | None, settings: Settings, version: str
) -> ToolResult:
    result = ToolResult(tool=tool, version=version)
    for size in settings.sizes:
        if url is not None:
            flush(url)
        drain = await tasker_drain(make, url, size, settings.concurrency)
        result.drains[size] = drain
        progress(settings, result, drain)
    if url is not None:
        flush(url)
    # Without Redis (the memory backend) the producer must be the worker's own backend.
    delays, result.idle = await tasker_latency(make, url, settings, same_backend=url is None)
    result.latencies_ms = [d * 1e3 for d in delays]
    progress(settings, result, None)
    return result


# -- peers, each in its own process ------------------------------------------------------


async def run_peer(
    settings: Settings, script: str, mode: str, count: int, timeout: float
) -> dict[str, Any]:
    """Run one peer script in a flushed database; its JSON, or RuntimeError saying why not."""
    flush(settings.url)
    argv = [settings.peer_python, str(HERE / "peers" / script), settings.url, mode, str(count)]
    argv += [str(settings.concurrency), str(settings.idle)]
    try:
        with anyio.fail_after(timeout):
            proc = await anyio.run_process(argv, check=False)
    except TimeoutError:
        raise RuntimeError(f"{mode}: no result after {timeout:.0f} s") from None
    lines = proc.stdout.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        stderr = proc.stderr.decode(errors="replace").strip().splitlines()
        why = [line for line in stderr if "Error" in line or "error" in line][-1:] or stderr[-1:]
        raise RuntimeError(f"{mode}: exit {proc.returncode}: {' '.join(why)[:400]}")
    peer_json: dict[str, Any] = json.loads(lines[-1])
    return peer_json


def window_of(data: dict[str, Any]) -> Window:
    return Window(
        commands=Counter({k: int(v) for k, v in data["commands"].items()}),
        seconds=float(data["seconds"]),
        foreign=list(data["foreign"]),
        reset=bool(data.get("reset", False)),
    )


async def measure_peer(tool: str, script: str, settings: Settings) -> ToolResult:
    result = ToolResult(tool=tool)
    if not settings.peer_python_found:
        result.status = f"not available: no peer interpreter at {settings.peer_python}"
        return result
    try:
        for size in settings.sizes:
            data = await run_peer(settings, script, "throughput", size, 120 + size / 20)
            result.version = str(data.get("version", "?"))
            drain = Drain(
                tasks=size,
                rate=float(data["throughput"]),
                lost=int(data["lost"]),
                doubled=int(data["doubled"]),
                window=window_of(data),
            )
            result.drains[size] = drain
            progress(settings, result, drain)
        data = await run_peer(
            settings, script, "latency", settings.samples, 60 + settings.samples * 0.5
        )
        result.latencies_ms = [float(d) * 1e3 for d in data["latencies"]]
        result.idle = window_of(data["idle"])
        progress(settings, result, None)
    except (RuntimeError, KeyError, ValueError) as exc:
        result.errors.append(str(exc))
        if not result.drains and not result.latencies_ms:
            result.status = f"failed: {exc}"
        print(f"{tool}: failed: {exc}", file=settings.out)
    return result


# -- the Redis server ----------------------------------------------------------------------


def flush(url: str) -> None:
    probe = Probe(url)
    try:
        probe.flushdb()
    finally:
        probe.close()


def server_version(url: str) -> str:
    probe = Probe(url)
    try:
        for line in probe.text("INFO", "server").splitlines():
            if line.startswith("redis_version:"):
                return line.partition(":")[2]
        return "?"
    finally:
        probe.close()


def start_private_server() -> tuple[subprocess.Popen[bytes], str]:
    """A redis-server of this run's own on a free port, keeping nothing on disk."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = subprocess.Popen(["redis-server", *options], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/15"
    deadline = time.monotonic() + 10
    while True:
        try:
            Probe(url).close()
            return server, url
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise
            time.sleep(0.05)


# -- report --------------------------------------------------------------------------------


def progress(settings: Settings, result: ToolResult, drain: Drain | None) -> None:
    if drain is not None:
        per_task = drain.per_task()
        counted = f", {per_task:.2f} commands/task" if per_task is not None else ""
        damage = (
            f", {drain.lost} lost, {drain.doubled} doubled" if drain.lost or drain.doubled else ""
        )
        print(
            f"{result.tool:13} {drain.tasks:6} tasks: {drain.rate:8.0f} tasks/s{counted}{damage}",
            file=settings.out,
        )
        return
    rate = result.idle_rate()
    idle = f"; idle {rate:.2f} commands/s" if rate is not None else ""
    print(
        f"{result.tool:13} enqueue to start p50 {result.p50:6.2f} ms, p99 {result.p99:6.2f} ms"
        f" ({len(result.latencies_ms)} samples){idle}",
        file=settings.out,
    )


def fmt(value: float | None, spec: str, width: int) -> str:
    if value is None or math.isnan(value):
        return f"{'-':>{width}}"
    return f"{value:{width}{spec}}"


def top(window: Window, per: float) -> str:
    return ", ".join(f"{name} {n / per:.2f}" for name, n in window.commands.most_common(TOP))


def table(results: list[ToolResult], settings: Settings, header: str) -> list[str]:
    lines = [header, ""]
    head = f"{'tool':13} {'version':20}"
    for size in settings.sizes:
        head += f" {f'{size} tasks/s':>14} {'cmd/task':>8}"
    head += f" {'scripts/task':>12} {'p50 ms':>7} {'p99 ms':>7} {'idle cmd/s':>10}"
    lines.append(head)
    notes: list[str] = []
    for r in results:
        if r.status != "ok":
            lines.append(f"{r.tool:13} {r.version:20} {r.status}")
            continue
        row = f"{r.tool:13} {r.version[:20]:20}"
        for size in settings.sizes:
            d = r.drains.get(size)
            mark = "*" if d is not None and d.window is not None and d.window.foreign else " "
            row += f" {fmt(d.rate if d else None, '.0f', 14)}"
            row += f" {fmt(d.per_task() if d else None, '.2f', 7)}{mark}"
        largest = r.drains.get(max(settings.sizes))
        row += f" {fmt(largest.scripts_per_task() if largest else None, '.2f', 12)}"
        row += f" {fmt(r.p50, '.2f', 7)} {fmt(r.p99, '.2f', 7)}"
        mark = "*" if r.idle is not None and r.idle.foreign else " "
        row += f" {fmt(r.idle_rate(), '.2f', 9)}{mark}"
        lines.append(row)
        for d in r.drains.values():
            if len(d.rates) > 1:
                rates = ", ".join(f"{rate:.0f}" for rate in d.rates)
                notes.append(f"{r.tool} {d.tasks}: tasks/s in each round: {rates}")
            if d.window is not None and not d.window.reset:
                notes.append(f"{r.tool} {d.tasks}: per task {top(d.window, d.tasks)}")
            if d.lost or d.doubled:
                notes.append(f"{r.tool} {d.tasks}: {d.lost} tasks lost, {d.doubled} ran twice")
            if d.window is not None and d.window.foreign:
                notes.append(f"* {r.tool} {d.tasks}: also active: {'; '.join(d.window.foreign)}")
        if r.idle is not None and not r.idle.reset:
            idle = top(r.idle, r.idle.seconds) or "nothing"
            notes.append(f"{r.tool} idle {r.idle.seconds:.1f} s: per second {idle}")
            if r.idle.foreign:
                notes.append(f"* {r.tool} idle: also active: {'; '.join(r.idle.foreign)}")
        notes.extend(f"{r.tool}: {error}" for error in r.errors)
    return [*lines, "", *notes]


def ratios(results: list[ToolResult], settings: Settings) -> tuple[list[str], dict[str, Any]]:
    by_tool = {r.tool: r for r in results if r.status == "ok"}
    peers = [by_tool[name] for name, _ in PEERS if name in by_tool]
    ours = by_tool.get("tasker_redis")
    lines: list[str] = []
    figures: dict[str, Any] = {}
    if ours is None:
        status = next((r.status for r in results if r.tool == "tasker_redis"), "not run")
        return [f"tasker_redis: {status}; no ratios"], {"tasker_redis": status}
    for size in settings.sizes:
        mine = ours.drains.get(size)
        if mine is None:
            continue
        entry: dict[str, Any] = {}
        rated = [(p.drains[size].rate, p.tool) for p in peers if size in p.drains]
        if rated:
            rate, tool = max(rated)
            entry["fastest_peer"] = {"tool": tool, "ratio": mine.rate / rate, "target": 3.0}
            lines.append(
                f"{size:6} tasks: tasker_redis / fastest peer ({tool}):"
                f" {mine.rate / rate:5.2f}x (target >= 3x)"
            )
        for name, key, target in (("memory", "memory", 0.7), (RAW[0], "raw_stream", None)):
            other = by_tool.get(name)
            if other is not None and size in other.drains:
                ratio = mine.rate / other.drains[size].rate
                entry[key] = {"ratio": ratio, "target": target}
                goal = f" (target >= {target:.0%})" if target is not None else ""
                lines.append(f"{size:6} tasks: tasker_redis / {name}: {ratio:6.2%}{goal}")
        figures[str(size)] = entry
    lines.append(f"tasker_redis p50 enqueue to start: {ours.p50:.2f} ms (target < 2 ms)")
    only_blocking = ours.idle_only_blocking()
    idle = _idle_line(ours, only_blocking)
    if idle is not None:
        lines.append(idle)
    figures["p50_ms"] = {"value": ours.p50, "target": 2.0}
    figures["idle_only_blocking_read"] = only_blocking
    return lines, figures


def json_report(
    results: list[ToolResult], settings: Settings, figures: dict[str, Any]
) -> _report.Report:
    """:func:`ratios`' figures, each tool's rate on the largest size and its latency, in
    ``benchmarks/_report.py``'s shape."""
    out = _report.Report.of(__file__)
    largest = max(settings.sizes)
    by_tool = out.tools(
        results,
        backend="redis",
        largest=largest,
        concurrency=settings.concurrency,
        tool_of=lambda tool: "tasker" if tool in ("tasker_redis", "memory") else tool,
    )
    ours = by_tool.get("tasker_redis")
    if ours is None:
        out.note(f"tasker_redis: {figures.get('tasker_redis', 'not run')}; no ratios")
        return out
    for size in settings.sizes:
        entry = figures.get(str(size), {})
        for key, name in (("fastest_peer", None), ("memory", "memory"), ("raw_stream", RAW[0])):
            if key not in entry:
                continue
            other = by_tool[name or entry[key]["tool"]]
            what = f"fastest peer ({other.tool})" if name is None else name
            target = entry[key]["target"]
            out.ratio(
                f"{size:,} tasks: tasker_redis / {what}, throughput",
                entry[key]["ratio"],
                None if target is None else f">= {target:g}",
                runs=_rounds(ours.drains[size], other.drains[size], settings.rounds),
            )
    out.note(
        f"tasker_redis enqueue to start p50 {ours.p50:.2f} ms (target < 2 ms:"
        f" {_report.verdict(ours.p50, '< 2')})"
    )
    idle = _idle_line(ours, figures.get("idle_only_blocking_read"))
    if idle is not None:
        out.note(idle)
    return out


def _idle_line(ours: ToolResult, only_blocking: bool | None) -> str | None:
    """What tasker_redis sent while idle, against its target (None: not measured)."""
    if only_blocking is None or ours.idle is None:
        return None
    verdict = "met" if only_blocking else "missed"
    if ours.idle.foreign and not only_blocking:
        verdict = "unknown: other clients were active, the counts include theirs"
    return (
        f"tasker_redis idle: {ours.idle.total} commands in {ours.idle.seconds:.1f} s"
        f" (target: nothing beyond one blocking read: {verdict})"
    )


def _rounds(mine: Drain, other: Drain, rounds: int) -> list[float]:
    """The ratio in each round, when both tools have every round's rate."""
    if rounds > 1 and len(mine.rates) == len(other.rates) == rounds:
        return [a / b for a, b in zip(mine.rates, other.rates, strict=True)]
    return []


# -- main ----------------------------------------------------------------------------------


async def run_round(settings: Settings) -> tuple[list[ToolResult], bool]:
    """Every tool, one after the other; and whether tasker_redis failed (a harness failure)."""
    results: list[ToolResult] = []
    broken = False
    version = importlib.metadata.version("tasker-jobs")
    if settings.wants("tasker_redis"):
        make, why = redis_factory(settings.url)
        if make is None:
            results.append(ToolResult(tool="tasker_redis", status=why))
            print(f"tasker_redis: {why}", file=settings.out)
        else:
            try:
                results.append(
                    await measure_tasker("tasker_redis", make, settings.url, settings, why)
                )
            except Exception as exc:
                broken = True
                traceback.print_exc(file=sys.stderr)
                status = f"failed: {type(exc).__name__}: {exc}"
                results.append(ToolResult(tool="tasker_redis", version=why, status=status))
    if settings.wants("memory"):
        results.append(await measure_tasker("memory", MemoryQueueBackend, None, settings, version))
    for tool, script in (*PEERS, RAW):
        if settings.wants(tool):
            results.append(await measure_peer(tool, script, settings))
    return results, broken


def merge(rounds: list[ToolResult]) -> ToolResult:
    """One tool's rounds as one result: each size's fastest drain (all rates kept; as with
    timeit, other load on the machine only ever slows a run down), every latency sample, the
    first idle window."""
    ok = [r for r in rounds if r.status == "ok"]
    if not ok:
        return rounds[0]
    merged = ToolResult(tool=ok[0].tool, version=ok[0].version, idle=ok[0].idle)
    for size in {size for r in ok for size in r.drains}:
        best = max((r.drains[size] for r in ok if size in r.drains), key=lambda d: d.rate)
        best.rates = [r.drains[size].rate for r in ok if size in r.drains]
        merged.drains[size] = best
    merged.latencies_ms = [ms for r in ok for ms in r.latencies_ms]
    merged.errors = [error for r in rounds for error in r.errors]
    if len(ok) < len(rounds):
        merged.errors.append(f"{len(rounds) - len(ok)} of {len(rounds)} rounds failed")
    return merged


async def run_all(settings: Settings) -> tuple[list[ToolResult], bool]:
    """``settings.rounds`` rounds of every tool, merged per tool (see :func:`merge`); and
    whether tasker_redis failed in any."""
    per_tool: dict[str, list[ToolResult]] = {}
    broken = False
    for number in range(settings.rounds):
        if settings.rounds > 1:
            print(f"-- round {number + 1} of {settings.rounds}", file=settings.out)
        results, failed = await run_round(settings)
        broken = broken or failed
        for result in results:
            per_tool.setdefault(result.tool, []).append(result)
    return [merge(rounds) for rounds in per_tool.values()], broken


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="redis://127.0.0.1:6379/15", help="never database 0")
    parser.add_argument("--tasks", default="5000,20000", help="sizes, comma-separated")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--samples", type=int, default=200, help="latency samples")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idle counting")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every tool N times; report the fastest"
    )
    parser.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON)
    names = ["tasker_redis", "memory", *(p for p, _ in PEERS), RAW[0]]
    parser.add_argument("--tools", help=f"a comma-separated subset of: {', '.join(names)}")
    parser.add_argument(
        "--private-server", action="store_true", help="start a redis-server from PATH instead"
    )
    _report.add_json_option(parser, document=True)
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(size) for size in args.tasks.split(",")]
        if not args.sizes or min(args.sizes) < 1:
            raise ValueError(args.tasks)
    except ValueError:
        parser.error(f"--tasks: positive integers separated by commas, not {args.tasks!r}")
    args.tool_set = None
    if args.tools:
        args.tool_set = {t.strip() for t in args.tools.split(",")}
        if unknown := args.tool_set - set(names):
            parser.error(f"--tools: unknown {', '.join(sorted(unknown))}")
    if args.rounds < 1:
        parser.error(f"--rounds: at least 1, not {args.rounds}")
    if RedisURL.parse(args.url).db == 0 and not args.private_server:
        parser.error("--url: database 0 is never flushed; give another database (/15)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = sys.stderr if args.json else sys.stdout
    server: subprocess.Popen[bytes] | None = None
    url = args.url
    if args.private_server:
        server, url = start_private_server()
    try:
        try:
            redis_version = server_version(url)
        except OSError as exc:
            print(f"no Redis at {RedisURL.parse(url)}: {exc}", file=sys.stderr)
            return 2
        settings = Settings(
            url=url,
            sizes=args.sizes,
            concurrency=args.concurrency,
            samples=args.samples,
            idle=args.idle,
            rounds=args.rounds,
            peer_python=args.peer_python,
            peer_python_found=Path(args.peer_python).exists(),
            tools=args.tool_set,
            out=out,
        )
        started = datetime.now().astimezone()
        results, broken = anyio.run(run_all, settings)
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
    header = (
        f"Redis queues, {started:%Y-%m-%d %H:%M %Z}: Redis {redis_version} at"
        f" {RedisURL.parse(url)}, one worker with concurrency {args.concurrency},"
        f" {args.samples} latency samples, {args.idle:g} s idle"
        + (f"; best of {args.rounds} rounds" if args.rounds > 1 else "")
    )
    ratio_lines, figures = ratios(results, settings)
    json_report(results, settings, figures).write(args.json_path)
    if args.json:
        document = {
            "started": started.isoformat(timespec="seconds"),
            "redis_version": redis_version,
            "url": str(RedisURL.parse(url)),
            "private_server": args.private_server,
            "concurrency": args.concurrency,
            "sizes": args.sizes,
            "samples": args.samples,
            "idle_seconds": args.idle,
            "rounds": args.rounds,
            "results": [r.as_json() for r in results],
            "ratios": figures,
        }
        print(json.dumps(document, indent=1))
    else:
        print()
        for line in table(results, settings, header):
            print(line)
        print()
        for line in ratio_lines:
            print(line)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
