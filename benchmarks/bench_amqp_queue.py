"""tasker_amqp's queue against Celery, dramatiq, taskiq-aio-pika and raw aio-pika on one
RabbitMQ, one run.

Run: ``python benchmarks/bench_amqp_queue.py [--url amqp://guest:guest@127.0.0.1:5672/ |
--private-server] [--tasks 5000,20000] [--rounds N] [--peer-python
/tmp/peer-amqp-venv/bin/python] [--json [PATH]]`` (or ``nox -s bench``). The URL defaults to
``$TASKER_BENCH_AMQP_URL``, else the machine's broker as guest (RabbitMQ 3.10 or newer:
tasker_amqp's quorum queues dead-letter at least once); when neither is given and nothing
answers there, a private node is started as with ``--private-server``: a RabbitMQ node of
this run's own (``rabbitmq-server``, on free ports, its data in a temporary directory
removed afterwards), safe from other clients and from a test suite restarting the shared
one. The peers run from their own virtualenv (``--peer-python``; create it with ``python3
-m venv /tmp/peer-amqp-venv && /tmp/peer-amqp-venv/bin/pip install celery
"dramatiq[rabbitmq]" taskiq taskiq-aio-pika aio-pika``: celery 5.7, dramatiq 2.2, taskiq 0.13
with taskiq-aio-pika 0.6 and aio-pika 10.2 when written, no pin needed), through the scripts
in ``benchmarks/peers/`` (their docstrings say how each tool is configured); without that
interpreter they are reported as not available. The raw aiormq loop runs in this
interpreter (aiormq is tasker_amqp's driver). The URL reaches the peer scripts in their
environment, not on their command line, and no report shows its password.

Workload: no-op tasks, one worker with concurrency 10, every tool one after the other on the
same broker and virtual host. Every queue and exchange the run declares is named
``bench-<run id>-<tool>...`` and deleted after the tool's turn, whatever became of it; on a
broker that this machine's ``rabbitmqctl`` reaches, the run checks at the end that nothing
of its own is left, and deletes and reports what is:

- **tasker_amqp** (``tasker_amqp.AmqpQueueBackend(url, exchange=, prefix=, dead_queue=,
  namespace=)``: names of the run's own, its defaults otherwise: a quorum work queue, every
  publish persistent and confirmed, a prefetch of the worker's concurrency; reported as not
  available when it cannot be imported) and **tasker_amqp prefetch 4x** (the same with
  ``prefetch=4 x concurrency``, celery's default multiplier: a variant for comparison; the
  targets are the default's), **tasker_amqp+sqlite** (the default with
  ``store=SQLiteQueueBackend(...)`` beside it, a file of the run's own: what the store's
  claim, heartbeat and finish round trips cost), **memory** (tasker's own in-process
  ``MemoryQueueBackend``, the same worker and settings: what the worker costs without a
  broker), **celery**,
  **dramatiq** and **taskiq-aio-pika**, and the **raw** loops, which are no task queue:
  persistent messages published with publisher confirms, consumed with
  ``prefetch_count=100`` and acknowledged one by one (``peers/amqp_raw_bench.py``). **raw
  aio-pika** on a quorum queue (tasker_amqp's kind) is *the limit*: every tool is reported
  as a share of it, measured in the same run; **raw aio-pika classic** (the classic queues
  celery and dramatiq use) and **raw aiormq** (tasker_amqp's driver without aio-pika's
  layer) are for reference.
- **Throughput**: each of ``--tasks`` enqueued up front (in bulk where the tool can: tasker
  in batches of 500 through ``QueueBackend.enqueue``, each task its own confirmed publish),
  then one worker drains them; tasks/s from the worker's start to the last handler's return
  (the shutdown after is not timed). Each run checks that no task was lost or ran twice.
  **CPU us**: the worker process's CPU time (every thread's) over the same span, per task:
  the cost of a task on the client side, less disturbed than the rate by other load on the
  machine. The limit also reports its rate with publishing running at the same time
  (``loop``), in the notes.
- **Latency**: an idle worker (tasker's with ``poll=30``: it waits for a delivery to wake
  it), one task enqueued at a time, ``--samples`` times, each carrying the ``time.time()``
  of its enqueue; the handler's ``time.time()`` minus that (one machine, one clock), p50 and
  p99. The first probe (it connects the producer, and tasker_amqp's declares its topology)
  is not counted, for every tool. tasker's probes are enqueued through a second backend
  object (its own connection), so they travel through the broker as another process's
  would.

RabbitMQ without the management plugin reports no message counts over AMQP, so unlike the
Redis and NATS benchmarks this one counts no broker operations per task. The machine's load
average before and after the run is in the header: other work on the machine only ever
slows a run down, so compare figures of one run. On a busy machine ``--rounds N`` runs the
whole sequence N times and reports each size's best rate (every round's rate is listed) and
the latencies of all rounds together; ``--tools`` picks a subset. Targets (issue 15) are
reported, never asserted: tasker_amqp at least 80% of the raw limit in the same run, p50
enqueue-to-start under 3 ms. Exit status: 0 unless the harness itself fails (no broker, a
bad option, tasker_amqp importable but failing); a peer that fails is reported and the run
goes on. ``--json`` prints one JSON document of everything instead of the table; ``--json
PATH`` prints the table and writes the shares of the limit, each tool's rate on the largest
size and its latency in ``benchmarks/_report.py``'s shape to PATH.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import json
import math
import os
import re
import shutil
import signal
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
from urllib.parse import unquote, urlsplit

import _report
import aiormq
import anyio
from peers.amqp_common import DEFAULT_URL, URL_VARIABLE, WARM_UP, made

import tasker
from tasker.queue import MemoryQueueBackend, NewTask, Queue, QueueBackend, SQLiteQueueBackend

HERE = Path(__file__).resolve().parent
DEFAULT_PEER_PYTHON = "/tmp/peer-amqp-venv/bin/python"  # noqa: S108 - a documented location
TASKER = "tasker_amqp"
#: tasker_amqp with a prefetch of 4 x the concurrency (celery's default multiplier) instead of
#: its default (the concurrency): a variant, for the report's findings; the targets are the
#: default's.
TASKER_WIDE = "tasker_amqp prefetch 4x"
TASKER_STORE = "tasker_amqp+sqlite"
WIDE_FACTOR = 4
RAW_LIMIT = "raw aio-pika"
#: (tool, peer script, kind for amqp_common.made, variant, interpreter: "peer" or "ours"), in
#: the order they run, after tasker_amqp and memory.
PEERS = (
    ("celery", "celery_amqp_bench.py", "celery", None, "peer"),
    ("dramatiq", "dramatiq_amqp_bench.py", "dramatiq", None, "peer"),
    ("taskiq-aio-pika", "taskiq_aiopika_bench.py", "taskiq", None, "peer"),
    (RAW_LIMIT, "amqp_raw_bench.py", "raw", "aio-pika,loop", "peer"),
    ("raw aio-pika classic", "amqp_raw_bench.py", "raw", "aio-pika,classic", "peer"),
    ("raw aiormq", "amqp_raw_bench.py", "raw", "aiormq", "ours"),
)
TARGET_SHARE = 0.8  # of the raw limit
TARGET_P50_MS = 3.0
BATCH = 500  # tasks per QueueBackend.enqueue call


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.nan


def public(text: str) -> str:
    """``text`` with any URL's password hidden (peer errors may quote the URL)."""
    return tasker.redact_dsn(text)


@dataclass(kw_only=True)
class Drain:
    """One throughput run: ``tasks`` drained at ``rate`` tasks/s."""

    tasks: int
    rate: float
    #: CPU time of the worker's process (every thread's) per task, over the same span.
    cpu_us: float | None = None
    lost: int = 0
    doubled: int = 0
    #: The raw loops' rate with publishing at the same time.
    loop_rate: float | None = None
    #: With several rounds: every round's rate (``rate`` is the fastest).
    rates: list[float] = field(default_factory=list)


@dataclass(kw_only=True)
class ToolResult:
    """Everything measured for one tool, or why it was not."""

    tool: str
    version: str = "-"
    #: "ok", or why the tool has no figures ("not available: ...", "failed: ...").
    status: str = "ok"
    drains: dict[int, Drain] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: Wall time of the tool's whole turn (enqueues, drains, latency, cleanup).
    seconds: float = 0.0

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 0.5)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 0.99)

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
                    "cpu_us_per_task": d.cpu_us,
                    "loop_throughput": d.loop_rate,
                    "lost": d.lost,
                    "doubled": d.doubled,
                }
                for d in self.drains.values()
            ],
            "latency_ms": {"p50": self.p50, "p99": self.p99, "samples": len(self.latencies_ms)}
            if self.latencies_ms
            else None,
            "latencies_ms": self.latencies_ms,
            "errors": self.errors,
            "seconds": self.seconds,
        }


@dataclass(frozen=True, kw_only=True)
class Settings:
    url: str
    run_id: str
    sizes: list[int]
    concurrency: int
    samples: int
    rounds: int
    peer_python: str
    peer_python_found: bool
    tools: set[str] | None
    out: TextIO
    #: Queues and exchanges whose deletion failed (the broker away): tried again at the end.
    undeleted: tuple[list[str], list[str]] = field(default_factory=lambda: ([], []))

    def wants(self, tool: str) -> bool:
        return self.tools is None or tool in self.tools

    def name(self, tool: str) -> str:
        """The prefix of every queue and exchange ``tool`` declares in this run."""
        return f"{self.run_id}-{re.sub(r'[^a-z0-9]+', '-', tool.lower()).strip('-')}"


# -- tasker's side, in this process -------------------------------------------------------

BackendFactory = Callable[[str], QueueBackend]


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


async def tasker_drain(make: BackendFactory, namespace: str, tasks: int, concurrency: int) -> Drain:
    """Enqueue ``tasks`` no-op tasks in bulk, then drain them with one worker."""
    backend = make(namespace)
    queue = Queue(backend)
    runs: Counter[int] = Counter()
    finished = anyio.Event()
    last = last_cpu = 0.0

    @queue.task("noop", max_attempts=1)
    async def noop(ctx: tasker.Context, payload: int) -> None:
        nonlocal last, last_cpu
        runs[payload] += 1
        if len(runs) == tasks:
            last, last_cpu = time.perf_counter(), time.process_time()
            finished.set()

    try:
        now = await backend.time()
        batch = new_tasks(tasks, now)
        for start in range(0, tasks, BATCH):
            await backend.enqueue(batch[start : start + BATCH], now=now)
        started, cpu_started = time.perf_counter(), time.process_time()
        with anyio.fail_after(60 + tasks / 100):
            await tasker.run(
                queue.worker(concurrency=concurrency, poll=1.0), shutdown_trigger=finished.wait
            )
    finally:
        await backend.aclose()
    return Drain(
        tasks=tasks,
        rate=tasks / (last - started),
        cpu_us=(last_cpu - cpu_started) / tasks * 1e6,
        lost=tasks - len(runs),
        doubled=sum(1 for n in runs.values() if n > 1),
    )


async def tasker_latency(
    make: BackendFactory, namespace: str, settings: Settings, *, same_backend: bool
) -> list[float]:
    """Enqueue-to-start latencies of an idle worker, in seconds."""
    backend = make(namespace)
    producer_backend = backend if same_backend else make(namespace)
    queue, producer = Queue(backend), Queue(producer_backend)
    delays: list[float] = []
    arrived = anyio.Event()

    async def probe(ctx: tasker.Context, payload: float) -> None:
        delays.append(time.time() - payload)
        arrived.set()

    for q in (queue, producer):
        q.task("probe", max_attempts=1)(probe)
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: tasker.run(
                    queue.worker(concurrency=settings.concurrency, poll=30),
                    shutdown_trigger=stop.wait,
                )
            )
            await anyio.sleep(1.0)  # the worker consuming
            for sample in range(WARM_UP + settings.samples):
                arrived = anyio.Event()
                await producer.enqueue("probe", time.time())
                with anyio.fail_after(30):
                    await arrived.wait()
                if sample < WARM_UP:
                    delays.clear()
                await anyio.sleep(0.005)
            stop.set()
    finally:
        await backend.aclose()
        if producer_backend is not backend:
            await producer_backend.aclose()
    return delays


@dataclass(frozen=True, kw_only=True)
class TaskerNames:
    """What tasker_amqp declares in a run: the delay ladder, the exchange, the dead-letter
    queue (shared by the run's backends), and a work queue per namespace."""

    base: str
    levels: int
    namespaces: list[str] = field(default_factory=list)

    def queues(self) -> list[str]:
        ladder = [f"{self.base}.delay.{k}" for k in range(self.levels)]
        return [*(f"{ns}.default" for ns in self.namespaces), f"{self.base}.dead", *ladder]

    def exchanges(self) -> list[str]:
        ladder = [f"{self.base}.delay.{k}" for k in range(self.levels)]
        return [self.base, f"{self.base}.due", *ladder]


def amqp_factory(
    settings: Settings, tool: str, prefetch: int | None, *, store: bool = False
) -> tuple[BackendFactory | None, TaskerNames | None, str]:
    """A factory of tasker_amqp backends by namespace (with ``prefetch``, None for its
    default), what they declare, and tasker's version; or None and why not.

    Imported here, not at the top, so that everything else is still measured when
    tasker_amqp is missing or broken.
    """
    try:
        module = importlib.import_module("tasker_amqp")
        backend_class, levels = module.AmqpQueueBackend, int(module.LEVELS)
    except Exception as exc:  # an ImportError, or a half-written package
        return None, None, f"not available: {type(exc).__name__}: {exc}"
    names = TaskerNames(base=settings.name(tool), levels=levels)

    files = tempfile.mkdtemp(prefix="bench-amqp-store-")

    def make(namespace: str) -> QueueBackend:
        # Every backend of one namespace shares its store (the producer's and the worker's).
        backend: QueueBackend = backend_class(
            settings.url,
            exchange=names.base,
            prefix=names.base,
            dead_queue=f"{names.base}.dead",
            namespace=namespace,
            prefetch=prefetch,
            store=SQLiteQueueBackend(Path(files) / f"{namespace}.db") if store else None,
        )
        return backend

    return make, names, importlib.metadata.version("tasker-jobs")


async def measure_tasker(
    tool: str, make: BackendFactory, names: TaskerNames | None, settings: Settings, version: str
) -> ToolResult:
    result = ToolResult(tool=tool, version=version)
    began = time.monotonic()
    namespaces = [f"{names.base}.d{size}" if names else "-" for size in settings.sizes]
    latency_namespace = f"{names.base}.lat" if names else "-"
    if names is not None:
        names.namespaces.extend([*namespaces, latency_namespace])
    try:
        for size, namespace in zip(settings.sizes, namespaces, strict=True):
            drain = await tasker_drain(make, namespace, size, settings.concurrency)
            result.drains[size] = drain
            progress(settings, result, drain)
        # Without a broker (the memory backend) the producer must be the worker's own backend.
        delays = await tasker_latency(make, latency_namespace, settings, same_backend=names is None)
    finally:
        if names is not None:
            await clean_up(settings, result, names.queues(), names.exchanges())
    result.latencies_ms = [d * 1e3 for d in delays]
    result.seconds = time.monotonic() - began
    progress(settings, result, None)
    return result


# -- peers, each in its own process ------------------------------------------------------


async def run_peer(
    settings: Settings,
    script: str,
    name: str,
    variant: str | None,
    python: str,
    mode: str,
    count: int,
    timeout: float,
) -> dict[str, Any]:
    """Run one peer script; its JSON, or RuntimeError saying why not."""
    argv = [python, str(HERE / "peers" / script), mode, str(count), str(settings.concurrency)]
    argv.append(name)
    if variant is not None:
        argv.append(variant)
    env = {**os.environ, URL_VARIABLE: settings.url}
    try:
        with anyio.fail_after(timeout):
            proc = await anyio.run_process(argv, check=False, env=env)
    except TimeoutError:
        raise RuntimeError(f"{mode}: no result after {timeout:.0f} s") from None
    lines = proc.stdout.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        stderr = proc.stderr.decode(errors="replace").strip().splitlines()
        why = [line for line in stderr if "Error" in line or "error" in line][-1:] or stderr[-1:]
        raise RuntimeError(public(f"{mode}: exit {proc.returncode}: {' '.join(why)[:400]}"))
    peer_json: dict[str, Any] = json.loads(lines[-1])
    return peer_json


async def measure_peer(
    tool: str, script: str, kind: str, variant: str | None, interpreter: str, settings: Settings
) -> ToolResult:
    result = ToolResult(tool=tool)
    began = time.monotonic()
    python = sys.executable
    if interpreter == "peer":
        if not settings.peer_python_found:
            result.status = f"not available: no peer interpreter at {settings.peer_python}"
            return result
        python = settings.peer_python
    name = settings.name(tool)
    queues, exchanges = made(kind, name)
    try:
        for size in settings.sizes:
            # Celery enqueues one confirmed publish at a time (400/s here) and takes 10 s to
            # stop; an outage of the broker leaves a plain connection's consumer waiting.
            timeout = 60 + size * 0.008
            data = await run_peer(
                settings, script, name, variant, python, "throughput", size, timeout
            )
            result.version = str(data.get("version", "?"))
            loop, cpu = data.get("loop_throughput"), data.get("cpu_us_per_task")
            drain = Drain(
                tasks=size,
                rate=float(data["throughput"]),
                cpu_us=None if cpu is None else float(cpu),
                lost=int(data["lost"]),
                doubled=int(data["doubled"]),
                loop_rate=None if loop is None else float(loop),
            )
            result.drains[size] = drain
            progress(settings, result, drain)
        timeout = 60 + settings.samples / 10
        data = await run_peer(
            settings, script, name, variant, python, "latency", settings.samples, timeout
        )
        result.latencies_ms = [float(d) * 1e3 for d in data["latencies"]]
        result.seconds = time.monotonic() - began
        progress(settings, result, None)
    except (RuntimeError, KeyError, ValueError) as exc:
        result.errors.append(str(exc))
        if not result.drains and not result.latencies_ms:
            result.status = f"failed: {exc}"
        print(f"{tool}: failed: {exc}", file=settings.out)
    finally:
        await clean_up(settings, result, queues, exchanges)
    return result


# -- the broker ----------------------------------------------------------------------------


async def server_version(url: str) -> str:
    """The broker's version as it announces it; OSError, TimeoutError or an AMQP error if
    none answers (a broker out of file handles accepts the socket and then never answers)."""
    with anyio.fail_after(15):
        connection = await aiormq.connect(url)
    try:
        version = connection.server_properties.get("version", "?")
        return version.decode() if isinstance(version, bytes) else str(version)
    finally:
        await connection.close()


async def clean_up(
    settings: Settings, result: ToolResult, queues: list[str], exchanges: list[str]
) -> None:
    """Delete what a tool declared; when the broker is away (a test suite restarting the
    shared one), try again for half a minute, then keep the names for the end of the run."""
    for attempt in range(16):
        try:
            await delete(settings.url, queues, exchanges)
            return
        except Exception as exc:  # OSError, TimeoutError, aiormq's connection errors
            if attempt == 15:
                result.errors.append(public(f"cleanup failed: {type(exc).__name__}: {exc}"))
                settings.undeleted[0].extend(queues)
                settings.undeleted[1].extend(exchanges)
                return
            await anyio.sleep(2.0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rabbitmq_server_binary() -> str:
    """Debian's own start script (``/usr/sbin/rabbitmq-server`` would switch to the
    ``rabbitmq`` user, who cannot write our temporary directory), else the one on PATH."""
    debian = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    if debian.is_file():
        return str(debian)
    on_path = shutil.which("rabbitmq-server")
    if on_path is None:
        raise RuntimeError("no rabbitmq-server: install RabbitMQ 3.10 or newer")
    return on_path


def rabbitmq_server_found() -> bool:
    try:
        rabbitmq_server_binary()
    except RuntimeError:
        return False
    return True


@contextlib.contextmanager
def private_server() -> Iterator[str]:
    """A RabbitMQ node of this run's own (its name, ports, data, logs and Erlang cookie in a
    temporary directory removed afterwards, no plugins), listening on 127.0.0.1: its URL.

    Nothing else uses it: no other client's load, and no restart by a test suite sharing
    the machine's broker. It starts in 10 to 20 seconds.
    """
    directory = Path(tempfile.mkdtemp(prefix="bench-rabbitmq-"))
    port, dist_port = free_port(), free_port()
    (directory / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{port}\n")
    (directory / "rabbitmq-env.conf").write_text("")  # not the machine's (its node name)
    (directory / "enabled_plugins").write_text("[].\n")
    env = {
        **os.environ,
        "HOME": str(directory),  # the Erlang cookie
        "RABBITMQ_NODENAME": f"bench{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
        "RABBITMQ_CONF_ENV_FILE": str(directory / "rabbitmq-env.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
        "RABBITMQ_LOG_BASE": str(directory / "log"),
    }
    log = (directory / "server.out").open("wb")
    server = subprocess.Popen(
        [rabbitmq_server_binary()],
        cwd=directory,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its Erlang VM and helpers in a group of their own
    )
    url = f"amqp://guest:guest@127.0.0.1:{port}/"
    try:
        # RabbitMQ opens its listener last, once it is ready for clients (a plain socket:
        # aiormq would log every refused attempt).
        deadline = time.monotonic() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(
                        f"rabbitmq-server did not start; see {directory / 'server.out'}"
                    ) from None
                time.sleep(0.25)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)  # a clean stop (the VM's init:stop)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


async def delete(url: str, queues: list[str], exchanges: list[str]) -> None:
    """Delete queues (with what they hold) and exchanges; a missing one is no error."""
    with anyio.fail_after(15):
        connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)
    finally:
        await connection.close()


async def leftovers(url: str, run_id: str) -> tuple[list[str], list[str]] | None:
    """The queues and exchanges named ``run_id...`` still on the broker, from
    ``rabbitmqctl``; None when it cannot tell (no rabbitmqctl, or one that reaches another
    node than the URL's: it must list a marker queue declared through the URL)."""
    marker = f"{run_id}-marker"
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.queue_declare(marker, auto_delete=False, durable=False)
        try:
            found = await anyio.to_thread.run_sync(list_named, url, run_id)
        finally:
            await channel.queue_delete(marker)
    finally:
        await connection.close()
    if found is None or marker not in found[0]:
        return None
    return [q for q in found[0] if q != marker], found[1]


def list_named(url: str, run_id: str) -> tuple[list[str], list[str]] | None:
    """``rabbitmqctl``'s queues and exchanges named ``run_id...`` in the URL's virtual host
    (of the machine's default node); None without rabbitmqctl or an answer."""
    parts = urlsplit(url)
    if shutil.which("rabbitmqctl") is None or parts.hostname not in ("127.0.0.1", "localhost"):
        return None
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    vhost = unquote(path) if path else "/"
    found: list[list[str]] = []
    for what in ("list_queues", "list_exchanges"):
        try:
            done = subprocess.run(
                ["rabbitmqctl", "-q", "--no-table-headers", what, "-p", vhost, "name"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return None
        if done.returncode != 0:
            return None
        found.append([n for n in done.stdout.split() if n.startswith(run_id)])
    return found[0], found[1]


# -- report --------------------------------------------------------------------------------


def progress(settings: Settings, result: ToolResult, drain: Drain | None) -> None:
    if drain is not None:
        loop = f", loop {drain.loop_rate:.0f}/s" if drain.loop_rate is not None else ""
        damage = (
            f", {drain.lost} lost, {drain.doubled} doubled" if drain.lost or drain.doubled else ""
        )
        cpu = f", {drain.cpu_us:.0f} us CPU/task" if drain.cpu_us is not None else ""
        print(
            f"{result.tool:23} {drain.tasks:6} tasks: {drain.rate:8.0f} tasks/s{cpu}{loop}{damage}",
            file=settings.out,
        )
        return
    print(
        f"{result.tool:23} enqueue to start p50 {result.p50:6.2f} ms, p99 {result.p99:6.2f} ms"
        f" ({len(result.latencies_ms)} samples; {result.seconds:.0f} s for the tool)",
        file=settings.out,
    )


def fmt(value: float | None, spec: str, width: int) -> str:
    if value is None or math.isnan(value):
        return f"{'-':>{width}}"
    return f"{value:{width}{spec}}"


def limit_rate(results: list[ToolResult], size: int) -> float | None:
    for r in results:
        if r.tool == RAW_LIMIT and r.status == "ok" and size in r.drains:
            return r.drains[size].rate
    return None


def table(results: list[ToolResult], settings: Settings, header: str) -> list[str]:
    lines = [header, ""]
    head = f"{'tool':23} {'version':22}"
    for size in settings.sizes:
        head += f" {f'{size} tasks/s':>14} {'of raw':>6} {'CPU us':>6}"
    head += f" {'p50 ms':>7} {'p99 ms':>7}"
    lines.append(head)
    notes: list[str] = []
    for r in results:
        if r.status != "ok":
            lines.append(f"{r.tool:23} {r.version[:22]:22} {r.status}")
            continue
        row = f"{r.tool:23} {r.version[:22]:22}"
        for size in settings.sizes:
            d = r.drains.get(size)
            limit = limit_rate(results, size)
            share = d.rate / limit if d is not None and limit else None
            row += f" {fmt(d.rate if d else None, '.0f', 14)}"
            row += f" {fmt(share, '.0%', 6)} {fmt(d.cpu_us if d else None, '.0f', 6)}"
        row += f" {fmt(r.p50, '.2f', 7)} {fmt(r.p99, '.2f', 7)}"
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
        notes.extend(f"{r.tool}: {error}" for error in r.errors)
    return [*lines, "", *notes]


def ratios(results: list[ToolResult], settings: Settings) -> tuple[list[str], dict[str, Any]]:
    by_tool = {r.tool: r for r in results if r.status == "ok"}
    ours = by_tool.get(TASKER)
    lines: list[str] = []
    figures: dict[str, Any] = {}
    for size in settings.sizes:
        limit = limit_rate(results, size)
        if limit is None:
            lines.append(f"{size:6} tasks: no {RAW_LIMIT} figure: no shares of the limit")
            continue
        entry: dict[str, Any] = {"limit": {"tool": RAW_LIMIT, "throughput": limit}}
        for r in by_tool.values():
            if r.tool == RAW_LIMIT or size not in r.drains:
                continue
            share = r.drains[size].rate / limit
            entry[r.tool] = share
            goal = ""
            if r.tool == TASKER:  # the targets are for its defaults
                met = "met" if share >= TARGET_SHARE else "missed"
                goal = f" (target >= {TARGET_SHARE:.0%}: {met})"
            lines.append(f"{size:6} tasks: {r.tool} / {RAW_LIMIT}: {share:6.1%}{goal}")
        figures[str(size)] = entry
    if ours is None:
        status = next((r.status for r in results if r.tool == TASKER), "not run")
        lines.append(f"{TASKER}: {status}")
        figures[TASKER] = status
        return lines, figures
    met = "met" if ours.p50 < TARGET_P50_MS else "missed"
    raw = by_tool.get(RAW_LIMIT)
    floor = ""
    if raw is not None and raw.latencies_ms:
        floor = f"; {RAW_LIMIT}'s own: {raw.p50:.2f} ms"
    lines.append(
        f"{TASKER} p50 enqueue to start: {ours.p50:.2f} ms (target < {TARGET_P50_MS:g} ms:"
        f" {met}){floor}"
    )
    figures["p50_ms"] = {"value": ours.p50, "target": TARGET_P50_MS}
    return lines, figures


def json_report(
    results: list[ToolResult], settings: Settings, figures: dict[str, Any], cleanup: list[str]
) -> _report.Report:
    """:func:`ratios`' shares of the limit, each tool's rate on the largest size and its
    latency, in ``benchmarks/_report.py``'s shape."""
    out = _report.Report.of(__file__)
    largest = max(settings.sizes)
    by_tool = out.tools(
        results,
        backend="rabbitmq",
        largest=largest,
        concurrency=settings.concurrency,
        tool_of=lambda tool: "tasker" if tool == "memory" else tool.replace(TASKER, "tasker"),
    )
    limit = by_tool.get(RAW_LIMIT)
    for size in settings.sizes:
        entry = figures.get(str(size))
        if entry is None or limit is None:
            out.note(f"{size:,} tasks: no {RAW_LIMIT} figure: no shares of the limit")
            continue
        for tool, share in entry.items():
            if tool == "limit":
                continue
            out.ratio(
                f"{size:,} tasks: {tool} / {RAW_LIMIT} (quorum queue), throughput",
                share,
                f">= {TARGET_SHARE:g}" if tool == TASKER else None,  # the defaults' target
                runs=_rounds(by_tool[tool].drains[size], limit.drains[size], settings.rounds),
            )
    ours = by_tool.get(TASKER)
    if ours is not None:
        target = f"< {TARGET_P50_MS:g}"
        out.note(
            f"{TASKER} enqueue to start p50 {ours.p50:.2f} ms (target {target} ms:"
            f" {_report.verdict(ours.p50, target)})"
        )
    out.notes.extend(cleanup)
    return out


def _rounds(mine: Drain, other: Drain, rounds: int) -> list[float]:
    """The ratio in each round, when both tools have every round's rate."""
    if rounds > 1 and len(mine.rates) == len(other.rates) == rounds:
        return [a / b for a, b in zip(mine.rates, other.rates, strict=True)]
    return []


# -- main ----------------------------------------------------------------------------------


async def run_round(settings: Settings) -> tuple[list[ToolResult], bool]:
    """Every tool, one after the other; and whether tasker_amqp failed (a harness failure)."""
    results: list[ToolResult] = []
    broken = False
    version = importlib.metadata.version("tasker-jobs")
    variants = (
        (TASKER, None, False),
        (TASKER_WIDE, WIDE_FACTOR * settings.concurrency, False),
        (TASKER_STORE, None, True),
    )
    for tool, prefetch, store in variants:
        if not settings.wants(tool):
            continue
        make, names, why = amqp_factory(settings, tool, prefetch, store=store)
        if make is None:
            results.append(ToolResult(tool=tool, status=why))
            print(f"{tool}: {why}", file=settings.out)
            continue
        try:
            results.append(await measure_tasker(tool, make, names, settings, why))
        except Exception as exc:
            broken = True
            traceback.print_exc(file=sys.stderr)
            status = public(f"failed: {type(exc).__name__}: {exc}")
            results.append(ToolResult(tool=tool, version=why, status=status))
    if settings.wants("memory"):
        results.append(
            await measure_tasker("memory", lambda _: MemoryQueueBackend(), None, settings, version)
        )
    for tool, script, kind, variant, interpreter in PEERS:
        if settings.wants(tool):
            results.append(await measure_peer(tool, script, kind, variant, interpreter, settings))
    return results, broken


def merge(rounds: list[ToolResult]) -> ToolResult:
    """One tool's rounds as one result: each size's fastest drain (all rates kept; as with
    timeit, other load on the machine only ever slows a run down), every latency sample."""
    ok = [r for r in rounds if r.status == "ok"]
    if not ok:
        return rounds[0]
    merged = ToolResult(tool=ok[0].tool, version=ok[0].version)
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
    whether tasker_amqp failed in any."""
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
    parser.add_argument("--url", help=f"the broker (default ${URL_VARIABLE}, else {DEFAULT_URL})")
    parser.add_argument("--tasks", default="5000,20000", help="sizes, comma-separated")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--samples", type=int, default=200, help="latency samples")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every tool N times; report the fastest"
    )
    parser.add_argument("--peer-python", default=DEFAULT_PEER_PYTHON)
    names = [TASKER, TASKER_WIDE, TASKER_STORE, "memory", *(p[0] for p in PEERS)]
    parser.add_argument("--tools", help=f"a comma-separated subset of: {', '.join(names)}")
    parser.add_argument(
        "--private-server",
        action="store_true",
        help="start a RabbitMQ node of this run's own (rabbitmq-server, on free ports)",
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
    if args.private_server and args.url is not None:
        parser.error("--url: not with --private-server (its own is used)")
    args.url_given = args.url is not None or bool(os.environ.get(URL_VARIABLE))
    if args.url is None:
        args.url = os.environ.get(URL_VARIABLE) or DEFAULT_URL
    if urlsplit(args.url).scheme not in ("amqp", "amqps"):
        parser.error(f"--url: an amqp:// or amqps:// URL, not {public(args.url)!r}")
    return args


async def run_checked(
    settings: Settings, private: bool
) -> tuple[list[ToolResult], bool, list[str]]:
    """:func:`run_all`, then the check that the run left nothing behind (notes to print)."""
    try:
        results, broken = await run_all(settings)
    finally:
        notes = ["cleanup: the private broker and its data are removed"]
        if not private:
            notes = await check_cleanup(settings)
    return results, broken, notes


async def check_cleanup(settings: Settings) -> list[str]:
    """Delete what could not be deleted during the run, then look for anything of the run's
    still on the broker (and delete it); what happened, as notes."""
    try:
        if any(settings.undeleted):
            await delete(settings.url, *settings.undeleted)
        left = await leftovers(settings.url, settings.run_id)
        if left is not None and any(left):
            await delete(settings.url, *left)
    except Exception as exc:  # the broker away again
        queues, exchanges = settings.undeleted
        named = f"; not deleted: queues {', '.join(queues)}" if queues else ""
        named += f"; exchanges {', '.join(exchanges)}" if exchanges else ""
        return [public(f"cleanup: not checked ({type(exc).__name__}: {exc}){named}")]
    if left is None:
        return [
            f"cleanup: not checked (no rabbitmqctl on this machine that lists the queues of"
            f" {public(settings.url)})"
        ]
    if any(left):
        named = f"queues {', '.join(left[0]) or '-'}; exchanges {', '.join(left[1]) or '-'}"
        return [f"cleanup: left behind and now deleted: {named}"]
    return [f"cleanup: nothing named {settings.run_id}* left on the broker"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = sys.stderr if args.json else sys.stdout
    with contextlib.ExitStack() as stack:
        url = args.url
        if args.private_server:
            print("starting a private RabbitMQ node", file=out)
            url = stack.enter_context(private_server())
        try:
            broker_version = anyio.run(server_version, url, backend="asyncio")
        except Exception as exc:  # OSError, TimeoutError, or aiormq's connection errors
            why = public(f"no RabbitMQ at {url}: {type(exc).__name__}: {exc}")
            if args.url_given or args.private_server or not rabbitmq_server_found():
                print(f"{why}: try --private-server", file=sys.stderr)
                return 2
            # The default address without a working broker: a run of its own rather than
            # a failure, so that `nox -s bench` works anywhere RabbitMQ is installed.
            print(f"{why}; starting a private RabbitMQ node", file=out)
            args.private_server = True
            url = stack.enter_context(private_server())
            broker_version = anyio.run(server_version, url, backend="asyncio")
        return measure(args, url, broker_version, out)


def measure(args: argparse.Namespace, url: str, broker_version: str, out: TextIO) -> int:
    """Run every tool on the broker at ``url`` and print the report."""
    settings = Settings(
        url=url,
        run_id=f"bench-{uuid.uuid4().hex[:8]}",
        sizes=args.sizes,
        concurrency=args.concurrency,
        samples=args.samples,
        rounds=args.rounds,
        peer_python=args.peer_python,
        peer_python_found=Path(args.peer_python).exists(),
        tools=args.tool_set,
        out=out,
    )
    started = datetime.now().astimezone()
    load_before = os.getloadavg()[0]
    # asyncio: aiormq (tasker_amqp's driver) runs on nothing else.
    results, broken, cleanup = anyio.run(
        run_checked, settings, args.private_server, backend="asyncio"
    )
    load_after = os.getloadavg()[0]
    header = (
        f"RabbitMQ queues, {started:%Y-%m-%d %H:%M %Z}: RabbitMQ {broker_version} at"
        f" {public(url)}{' (private)' if args.private_server else ''}, one worker with"
        f" concurrency {args.concurrency},"
        f" {args.samples} latency samples"
        + (f"; best of {args.rounds} rounds" if args.rounds > 1 else "")
        + f"; load average {load_before:.2f} before, {load_after:.2f} after"
        f" ({os.cpu_count()} CPUs)"
    )
    ratio_lines, figures = ratios(results, settings)
    json_report(results, settings, figures, cleanup).write(args.json_path)
    if args.json:
        document = {
            "started": started.isoformat(timespec="seconds"),
            "rabbitmq_version": broker_version,
            "url": public(url),
            "private_server": args.private_server,
            "run_id": settings.run_id,
            "concurrency": args.concurrency,
            "sizes": args.sizes,
            "samples": args.samples,
            "rounds": args.rounds,
            "load_average": [load_before, load_after],
            "results": [r.as_json() for r in results],
            "ratios": figures,
            "cleanup": cleanup,
        }
        print(json.dumps(document, indent=1))
    else:
        print()
        for line in table(results, settings, header):
            print(line)
        for line in cleanup:
            print(line)
        print()
        for line in ratio_lines:
            print(line)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
