"""The RabbitMQ queue under faults, with real worker processes on the machine's broker.

The issue's process test: four workers (concurrency 5, so each consumer's prefetch is 5)
work through 5,000 tasks while, in one run,

1. worker 0 is SIGKILLed;
2. the broker closes worker 1's connection (``rabbitmqctl close_connection``; the
   connection is found by the name the worker gave it, ``AmqpSource(name=...)``);
3. the broker closes every connection of the session's virtual host
   (``rabbitmqctl close_all_connections --vhost``);
4. the broker's application restarts (``rabbitmqctl stop_app``, a second down, then
   ``start_app``): the Erlang node runs on, its listeners and queues stop and recover.

Then 15 tasks of 2 s, as many as the three survivors' slots: each survivor must run some,
which it can only if it consumes again after the restart.

The worker processes are ``tests/queue_fault_worker.py --backend amqp:URL``, each with a
connection name of its own (``--name``), and the test's own exchange, work queue and
dead-letter queue (``--namespace``: see ``queue_fault_worker.amqp_backend``).

**Re-runs, and their bound.** In ``tasker_amqp`` a lease lives as long as the channel its
delivery came on, and a delivery is acknowledged only once its outcome is settled. So a
task runs again only if the worker that ran it died or lost its connection while it ran,
or after it ran but before the broker had the acknowledgement. Either way the broker had
given that delivery to the worker's consumer and not yet had its ack when the fault came,
and a consumer holds at most ``prefetch`` such deliveries (its QoS). So a fault re-runs at
most ``prefetch`` tasks per worker it cuts off, each a run that started before the fault
followed by one that started after it. Here that is at most 5 x (1 + 1 + 3 + 3) = 40
(the SIGKILL and the closed connection cut off one worker each, the others three), and it
is checked per fault and worker: each re-run is matched with the first fault that cut off
the worker of the run before it. Deliveries prefetched but not yet claimed go back too;
they never ran, so they are no re-runs (their attempt is counted). The runs measured here
come close: some 30 to 37 re-runs, the restart's 14 or 15 of its 15.

**With a store** (the second run: every process with the same SQLite file beside the
broker, ``--store``), the leases live in the store, renewed by heartbeats that never touch
the broker: a closed connection or the restart costs no run (the copies RabbitMQ hands out
again wait for the leases and are dropped once the store says the task succeeded), so
only the SIGKILL may re-run tasks, at most the ones w0 was running.

**The broker restart** stops the node's application for every user of the node: other
tests on it at the same moment meet an outage too. A ``finally`` starts it again and waits
for ``rabbitmqctl await_startup`` and a working connection, so the node is left running as
the test found it (and the test's teardown starts it again should its timeout have cut that
short: ``start_app`` does nothing to a running application).
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiormq
import anyio
import pytest

from tasker.queue import Queue
from tasker_amqp import AmqpSource

from ..helpers import python_process
from ..queue_fault_worker import amqp_backend, build
from .broker import connection_pids, delete_queues, rabbitmqctl

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TASKS = 5000
WORKERS = 4
CONCURRENCY = 5
#: The workers' prefetch: tasker_amqp's default, the first claim's limit (the concurrency).
PREFETCH = CONCURRENCY
LEASE = 2.0
#: Each task's work: long enough that the faults land while tasks run, and that work is
#: left for after the restart although each ``rabbitmqctl`` call may take seconds (the
#: 5,000 take some 30 s, the restart included).
WORK = 0.05
#: The faults come when this many tasks are done (SIGKILL, close_connection,
#: close_all_connections, the restart), and each at least ``APART`` tasks after the
#: previous one was over: the runs one fault cut off are long settled when the next comes,
#: so each re-run is told apart by its fault.
AT = (500, 800, 1100, 1400)
APART = 100
#: How long the broker's application stays stopped.
OUTAGE = 1.0
#: After the run, tasks of 2 s, as many as the survivors' slots (see the module docstring).
PROBES = (WORKERS - 1) * CONCURRENCY
PROBE = 2.0
#: The run's deadline, far beyond its usual 30 s (then its workers are stopped and their
#: logs kept beside their events), and the test's, which leaves time for that.
RUN_FOR = 150.0
TIMEOUT = 240.0


def _mono() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)  # the workers' clock for their events


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """One run of a task, from the workers' files."""

    pid: int
    start: float
    end: float | None
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """A fault: what it was, the workers it cut off, and when (between ``before`` and
    ``after`` on the monotonic clock)."""

    what: str
    pids: frozenset[int]
    before: float
    after: float


def _runs(out: Path) -> dict[int, list[Run]]:
    """Per task, its runs in the order they started. An end belongs to the latest start of
    its task in its process (a run cancelled after its lease was lost has no end)."""
    events: list[tuple[float, str, int, int, int]] = []
    for path in sorted(out.glob("out-*.txt")):
        for line in path.read_text().splitlines():
            kind, number, process, at, tried = line.split()
            events.append((float(at), kind, int(number), int(process), int(tried)))
    runs: dict[int, list[Run]] = {}
    open_runs: dict[tuple[int, int], list[Run]] = {}
    for t, event, n, pid, attempt in sorted(events):
        if event == "start":
            open_runs.setdefault((n, pid), []).append(
                Run(pid=pid, start=t, end=None, attempt=attempt)
            )
            continue
        run = open_runs[(n, pid)].pop()
        runs.setdefault(n, []).append(Run(pid=pid, start=run.start, end=t, attempt=run.attempt))
    for (n, _), left in open_runs.items():
        runs.setdefault(n, []).extend(left)
    for task_runs in runs.values():
        task_runs.sort(key=lambda run: run.start)
    return runs


class Progress:
    """What the workers' files say so far, read incrementally (a full re-read at every poll
    would cost the two cores the workers need)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.ended: set[int] = set()
        self._offsets: dict[Path, int] = {}

    def poll(self) -> None:
        for path in self.out.glob("out-*.txt"):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as file:
                file.seek(offset)
                data = file.read()
            complete = data.rfind(b"\n") + 1  # a line is one write, but be safe
            self._offsets[path] = offset + complete
            for line in data[:complete].decode().splitlines():
                event, n, *_ = line.split()
                if event == "end":
                    self.ended.add(int(n))


def _start(url: str, out: Path, names: str, name: str, store: str | None) -> subprocess.Popen[str]:
    proc = python_process(
        [
            "tests/queue_fault_worker.py",
            *(["--store", store] if store else []),
            "--backend",
            f"amqp:{url}",
            "--namespace",
            names,
            "--name",
            _connection_name(names, name),
            "--out",
            str(out / f"out-{name}.txt"),
            "--concurrency",
            str(CONCURRENCY),
            "--lease",
            str(LEASE),
        ]
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", proc.stderr and proc.stderr.read()
    return proc


def _connection_name(names: str, name: str) -> str:
    return f"tasker-{names}-{name}"


def _communicate(proc: subprocess.Popen[str]) -> tuple[str, str]:
    return proc.communicate(timeout=30)  # a drain takes at most the grace period, 10 s


async def _until(
    predicate: Callable[[], bool], timeout: float, what: str, progress: Progress
) -> None:
    try:
        with anyio.fail_after(timeout):
            while True:
                progress.poll()
                if predicate():
                    return
                await anyio.sleep(0.05)
    except TimeoutError:
        done = len(progress.ended)
        raise AssertionError(f"no {what} within {timeout} s ({done} tasks done)") from None


def _messages(vhost: str) -> dict[str, tuple[int, int]]:
    """Per queue of ``vhost``, its ready and unacknowledged messages."""
    out = rabbitmqctl(
        "list_queues", "-p", vhost, "-q", "-s", "name", "messages_ready", "messages_unacknowledged"
    )
    found = {}
    for line in out.splitlines():
        name, ready, unacked = line.split("\t")
        found[name] = (int(ready), int(unacked))
    return found


def _restart_app(url: str) -> tuple[float, float]:
    """Stop the broker's application for ``OUTAGE`` seconds and start it again; when it
    stopped and when it was back. The application is started again whatever happens."""
    try:
        rabbitmqctl("stop_app", timeout=120)
        stopped = _mono()
        time.sleep(OUTAGE)
    finally:
        rabbitmqctl("start_app", timeout=120)
        rabbitmqctl("await_startup", timeout=120)
        anyio.run(_connects, url, backend="asyncio")
    return stopped, _mono()


async def _connects(url: str) -> None:
    """Wait until a connection to ``url`` opens (the listener is up, the vhost started)."""
    with anyio.fail_after(60):
        while True:
            try:
                connection = await aiormq.connect(url)
            except (OSError, aiormq.exceptions.AMQPError):
                await anyio.sleep(0.2)
                continue
            await connection.close()
            return


@pytest.fixture
def app_restarted() -> Iterator[None]:
    """After the test, the broker's application is started if it is not running (a
    ``start_app`` does nothing to a running one): in case the test's timeout cut the
    restart's own ``finally`` short."""
    yield
    rabbitmqctl("start_app", timeout=120)
    rabbitmqctl("await_startup", timeout=120)


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.usefixtures("app_restarted")
@pytest.mark.parametrize("with_store", [False, True], ids=["alone", "with-sqlite-store"])
async def test_four_workers_5000_tasks_survive_sigkill_closed_connections_and_restart(
    url: str, names: str, tmp_path: Path, with_store: bool
) -> None:
    """The issue's process test: with a SIGKILL, a closed connection, every connection
    closed and the broker's application restarted in one run, every task succeeds (its
    last run ended and nothing is left in the queues); none is lost; a task ran again
    only after a fault that cut off the worker running it, at most ``PREFETCH`` per worker
    cut off, with its attempt counted; each survivor logs each outage once, consumes again
    after the restart and ends connected once."""
    vhost = AmqpSource(url).vhost
    work_queue, dead_queue = f"{names}.default", f"{names}.dead"
    # With a store, every process shares one SQLite file beside the broker: the store
    # keeps the leases, so only the SIGKILL can cost a run (a connection lost keeps them).
    store = str(tmp_path / "store" / "tasks.db") if with_store else None
    queue = build(
        amqp_backend(url, names, f"tasker-{names}-producer", store), str(tmp_path / "x.txt")
    )
    figures: dict[str, object] = {}
    wnames = [f"w{i}" for i in range(WORKERS)]
    procs: list[subprocess.Popen[str]] = []
    results: list[tuple[str, str]] = []
    faults: list[Fault] = []
    progress = Progress(tmp_path)
    probes = set(range(TASKS, TASKS + PROBES))
    total = TASKS + PROBES

    async def enqueue(producer: Queue, first: int, count: int, sleep: float) -> None:
        for n in range(first, first + count):
            await producer.enqueue("work", {"n": n, "sleep": sleep})

    try:
        filling = time.monotonic()
        async with anyio.create_task_group() as tg:
            for chunk in range(10):
                tg.start_soon(enqueue, queue, chunk * (TASKS // 10), TASKS // 10, WORK)
        figures["enqueue of 5,000 (s)"] = round(time.monotonic() - filling, 1)
    finally:
        # Closed before the faults: the test's own connection would only be cut with them.
        await queue.backend.aclose()
    try:
        with anyio.fail_after(RUN_FOR):  # then the finally collects the workers
            procs.extend(_start(url, tmp_path, names, name, store) for name in wnames)
            pids = {name: proc.pid for name, proc in zip(wnames, procs, strict=True)}
            survivors = frozenset(pids[name] for name in wnames[1:])
            began = _mono()

            async def until_fault(at: int) -> None:
                progress.poll()
                least = max(at, len(progress.ended) + APART) if faults else at
                await _until(lambda: len(progress.ended) >= least, 60, f"{least} done", progress)

            await until_fault(AT[0])
            killed_at = _mono()
            procs[0].send_signal(signal.SIGKILL)
            faults.append(
                Fault(
                    what="SIGKILL", pids=frozenset({pids["w0"]}), before=killed_at, after=killed_at
                )
            )

            # w1's connection, looked up ahead: its close is then one rabbitmqctl call.
            w1_name = _connection_name(names, "w1")
            [w1_connection] = await anyio.to_thread.run_sync(connection_pids, w1_name)
            await until_fault(AT[1])
            before = _mono()
            await anyio.to_thread.run_sync(
                rabbitmqctl, "close_connection", w1_connection, "closed by a tasker test"
            )
            faults.append(
                Fault(
                    what="close_connection w1",
                    pids=frozenset({pids["w1"]}),
                    before=before,
                    after=_mono(),
                )
            )

            await until_fault(AT[2])
            before = _mono()
            await anyio.to_thread.run_sync(
                rabbitmqctl, "close_all_connections", "--vhost", vhost, "closed by a tasker test"
            )
            faults.append(
                Fault(what="close_all_connections", pids=survivors, before=before, after=_mono())
            )

            await until_fault(AT[3])
            before = _mono()
            stopped, back_at = await anyio.to_thread.run_sync(_restart_app, url)
            faults.append(
                Fault(what="stop_app/start_app", pids=survivors, before=before, after=back_at)
            )
            figures["broker down (s)"] = round(back_at - stopped, 2)
            await _until(lambda: len(progress.ended) >= TASKS, 90, "every task done", progress)
            figures["drained in (s)"] = round(_mono() - began, 1)

            producer = build(
                amqp_backend(url, names, f"tasker-{names}-prober", store),
                str(tmp_path / "x.txt"),
            )
            try:
                await enqueue(producer, TASKS, PROBES, PROBE)
            finally:
                await producer.backend.aclose()
            await _until(lambda: probes <= progress.ended, 60, "every probe done", progress)

            def settled() -> bool:
                return _messages(vhost).get(work_queue) == (0, 0)

            with anyio.fail_after(30):
                while not await anyio.to_thread.run_sync(settled):  # noqa: ASYNC110 - the workers ack
                    await anyio.sleep(0.2)
            connections = {
                name: await anyio.to_thread.run_sync(connection_pids, _connection_name(names, name))
                for name in wnames[1:]
            }
    finally:
        for proc in procs[1:]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                results.append(await anyio.to_thread.run_sync(_communicate, proc))
            except subprocess.TimeoutExpired:
                proc.kill()
                results.append(proc.communicate())
        for (_, err), name in zip(results, wnames, strict=False):  # beside the events
            (tmp_path / f"stderr-{name}.txt").write_text(err)

    try:
        left = _messages(vhost)
    finally:
        await delete_queues(url, work_queue, dead_queue)
    stderr = [err for _, err in results]
    assert [p.returncode for p in procs[1:]] == [0] * (WORKERS - 1), [e[-2000:] for e in stderr]
    # Nothing is left: every task was acknowledged, none went to the dead-letter queue.
    assert left[work_queue] == (0, 0), left
    assert left[dead_queue] == (0, 0), left
    runs = _runs(tmp_path)
    assert set(runs) == set(range(total)), "a task never ran"
    # Each task's last run ended: the one whose acknowledgement settled it.
    unfinished = {n: r for n, r in runs.items() if r[-1].end is None}
    assert not unfinished, unfinished
    assert pids["w0"] in {run.pid for r in runs.values() for run in r}, "w0 never worked"
    # The restart came while the workers were busy: much of the work was still to do.
    figures["done when the broker stopped"] = done = sum(
        1 for r in runs.values() if any(run.end is not None and run.end < stopped for run in r)
    )
    assert done < TASKS - 500, done
    # Every re-run follows a fault that cut off the worker of the run before it, which
    # started before the fault ended; the re-run started after the fault began, with its
    # attempt counted (x-delivery-count).
    rerun_by: Counter[tuple[str, int]] = Counter()
    for n, task_runs in runs.items():
        for earlier, later in itertools.pairwise(task_runs):
            cause = next(
                (f for f in faults if earlier.pid in f.pids and earlier.start < f.after), None
            )
            assert cause is not None, (n, task_runs)
            assert later.start > cause.before, (n, task_runs, cause)
            assert later.attempt > earlier.attempt, (n, task_runs)
            rerun_by[(cause.what, earlier.pid)] += 1
    # At most PREFETCH per worker a fault cut off: its unacknowledged deliveries.
    assert all(count <= PREFETCH for count in rerun_by.values()), rerun_by
    bound = PREFETCH * sum(len(f.pids) for f in faults)
    reruns = sum(rerun_by.values())
    assert reruns <= bound, rerun_by
    if with_store:
        # The leases live in the store: a lost connection or a broker restart costs none.
        assert {what for what, _ in rerun_by} <= {"SIGKILL"}, rerun_by
    # Each survivor consumed again after the restart (the probes went to all three).
    probe_runs = Counter(
        name for n in probes for run in runs[n] for name, pid in pids.items() if pid == run.pid
    )
    assert set(probe_runs) == set(wnames[1:]), probe_runs
    # Each survivor ends connected once, under its name (w1 on another connection than
    # the one closed).
    assert {name: len(found) for name, found in connections.items()} == dict.fromkeys(
        wnames[1:], 1
    ), connections
    assert w1_connection not in connections["w1"], (w1_connection, connections)
    # Each outage is logged once by each part of a worker that met it, and its end once: the
    # connection (tasker_amqp, when a reconnection attempt failed: the restart), the claim
    # loop and the recording of outcomes. w1 met three (its connection closed, every
    # connection closed, the restart), the others two.
    for name, err in zip(wnames[1:], stderr[1:], strict=True):
        assert "Traceback" not in err, (name, err[-3000:])
        outages = 3 if name == "w1" else 2
        for began_text, ended_text, most in [
            ("is unreachable", "is reachable again", 1),
            ("backend unavailable", "backend reachable again", outages),
            ("cannot record", "recorded the outcomes held back", outages),
        ]:
            assert err.count(began_text) == err.count(ended_text), (name, err[-3000:])
            assert err.count(began_text) <= most, (name, err[-3000:])
    per_fault: Counter[str] = Counter()
    for (what, _), count in rerun_by.items():
        per_fault[what] += count
    figures.update(
        {
            "tasks": total,
            "re-runs": reruns,
            "bound": bound,
            "re-runs per fault": {f.what: per_fault[f.what] for f in faults},
            "redelivered (attempt > 1 in its last run)": sum(
                1 for r in runs.values() if r[-1].attempt > 1
            ),
            "probes per worker": dict(sorted(probe_runs.items())),
            "dropped-connection warnings": [e.count("lost their leases") for e in stderr[1:]],
            "claim outage warnings": [e.count("backend unavailable") for e in stderr[1:]],
            "lease warnings": [e.count("the lease on task") for e in stderr[1:]],
        }
    )
    print(json.dumps(figures))  # the figures for the closing note (pytest -s)
