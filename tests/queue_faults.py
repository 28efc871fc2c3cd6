"""The queue fault run of issue 10, shared by the SQLite and the Postgres test.

Four worker processes (concurrency 5, lease 2 s) work through 2,000 tasks, one in ten slow
(0.5 s) and three longer than the lease (5 s), plus 20 tasks delayed by 8 s. Meanwhile:

1. worker 3 runs with its wall clock 120 s ahead, from the start;
2. worker 0 is SIGKILLed;
3. worker 1 is sent SIGTERM while it runs a slow task: it drains and exits 0;
4. a replacement, worker 4, is started;
5. (Postgres) every connection of worker 2 is ended with ``pg_terminate_backend``;
6. worker 2 is SIGSTOPped for 5 s (past its lease), then SIGCONTed.

:func:`check` asserts what the README promises: every task succeeds, recorded once; a
task's work is done twice only if the killed or the stopped worker held it; two runs of a
task overlap in time only if one of them is the stopped worker's stale attempt; no delayed
task starts early; the drained workers exit 0.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from tasker.queue import Queue, QueueBackend, TaskState

from .helpers import python_process
from .queue_fault_worker import build

TASKS = 2000
DELAYED = 20
DELAY = 8.0
CONCURRENCY = 5
LEASE = 2.0
SLOW = 0.5
LONG = 5.0
STOP_FOR = 5.0
SKEW = 120.0
POISONS = ("surrogate", "nul", "huge", "unprintable")


@dataclass(kw_only=True)
class Fault:
    """A run's record: per task, its runs ``(pid, start, end or None)``; the processes."""

    runs: dict[int, list[tuple[int, float, float | None]]] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    stopped_at: tuple[float, float] = (0.0, 0.0)
    enqueued_delayed_at: float = 0.0
    states: dict[str, int] = field(default_factory=dict)
    successes: Counter[str] = field(default_factory=Counter)
    success_worker: dict[str, str] = field(default_factory=dict)
    #: Per task id, the attempt whose success was recorded.
    success_attempt: dict[str, int] = field(default_factory=dict)
    #: Per task number, the highest attempt a worker started.
    latest_attempt: dict[int, int] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)
    returncodes: dict[str, int | None] = field(default_factory=dict)
    stderr: dict[str, str] = field(default_factory=dict)
    drained_in: float = 0.0
    #: Seconds from SIGTERM to exit of the worker stopped mid-task.
    term_to_exit: float = 0.0
    poisons: dict[str, str] = field(default_factory=dict)
    poison_errors: dict[str, str | None] = field(default_factory=dict)


def _mono() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def _lines(out: Path) -> list[list[str]]:
    return [
        line.split()
        for path in sorted(out.glob("out-*.txt"))
        for line in path.read_text().splitlines()
    ]


def _read(out: Path) -> list[tuple[str, int, int, float]]:
    """Every worker's events, from the files ``out-*.txt``."""
    return [(event, int(n), int(pid), float(t)) for event, n, pid, t, _ in _lines(out)]


def _latest_attempts(out: Path) -> dict[int, int]:
    """Per task, the highest attempt number any worker started."""
    latest: dict[int, int] = {}
    for event, n, _, _, attempt in _lines(out):
        if event == "start":
            latest[int(n)] = max(latest.get(int(n), 0), int(attempt))
    return latest


def _runs(
    events: list[tuple[str, int, int, float]],
) -> dict[int, list[tuple[int, float, float | None]]]:
    runs: dict[int, list[tuple[int, float, float | None]]] = {}
    open_runs: dict[tuple[int, int], list[float]] = {}
    for event, n, pid, t in sorted(events, key=lambda e: e[3]):
        if event == "start":
            open_runs.setdefault((n, pid), []).append(t)
        else:
            start = open_runs[(n, pid)].pop(0)
            runs.setdefault(n, []).append((pid, start, t))
    for (n, pid), starts in open_runs.items():
        for start in starts:
            runs.setdefault(n, []).append((pid, start, None))
    return runs


async def run_faults(
    *,
    backend: Callable[[], QueueBackend],
    spec: Callable[[str], list[str]],
    out: Path,
    terminate: Callable[[str], Awaitable[int]] | None = None,
) -> Fault:
    """Run the workers through the faults; ``spec(name)`` gives a worker's backend args."""
    fault = Fault()
    queue = build(backend(), str(out / "filler.txt"))
    inspect: Any = queue.backend  # SQLite or Postgres: both inspectable
    payloads: list[dict[str, Any]] = [
        {"n": n, "sleep": LONG if n in (7, 8, 9) else SLOW if n % 10 == 0 else 0.002}
        for n in range(TASKS)
    ]
    for index, payload in enumerate(payloads):
        fault.ids[(await queue.enqueue("work", payload)).id] = payload["n"]
        if index % 250 == 0:  # poison outcomes among the good ones, all through the run
            kind = POISONS[(index // 250) % len(POISONS)]
            fault.poisons[(await queue.enqueue("poison", kind)).id] = kind
    procs: dict[str, subprocess.Popen[str]] = {}

    def start(name: str, *extra: str) -> None:
        proc = python_process(
            [
                "tests/queue_fault_worker.py",
                *spec(name),
                "--out",
                str(out / f"out-{name}.txt"),
                "--concurrency",
                str(CONCURRENCY),
                "--lease",
                str(LEASE),
                *extra,
            ]
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", proc.stderr and proc.stderr.read()
        procs[name] = proc
        fault.pids[name] = proc.pid

    def ended() -> int:
        return len({n for event, n, _, _ in _read(out) if event == "end"})

    async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            with anyio.fail_after(timeout):
                while not predicate():  # noqa: ASYNC110 - the work is done by other processes
                    await anyio.sleep(0.02)
        except TimeoutError:
            raise AssertionError(f"no {what} within {timeout} s ({ended()} tasks done)") from None

    began = _mono()
    try:
        for name in ("w0", "w1", "w2"):
            start(name)
        start("w3", "--skew", str(SKEW))
        fault.enqueued_delayed_at = _mono()
        for n in range(TASKS, TASKS + DELAYED):
            fault.ids[(await queue.enqueue("work", {"n": n, "sleep": 0.002}, delay=DELAY)).id] = n
        await until(lambda: ended() >= 300, 60, "300 tasks done")
        procs["w0"].send_signal(signal.SIGKILL)

        def slow_running(pid: int) -> bool:
            events = _read(out)
            starts = Counter(n for e, n, p, _ in events if e == "start" and p == pid)
            ends = Counter(n for e, n, p, _ in events if e == "end" and p == pid)
            return any(payloads[n]["sleep"] >= SLOW for n in starts - ends if n < TASKS)

        await until(lambda: slow_running(fault.pids["w1"]), 30, "slow task on w1")
        exited: list[float] = []

        def watch(proc: subprocess.Popen[str] = procs["w1"]) -> None:
            proc.wait()
            exited.append(_mono())

        threading.Thread(target=watch, daemon=True).start()
        termed = _mono()
        procs["w1"].send_signal(signal.SIGTERM)
        start("w4")
        if terminate is not None:
            await until(lambda: ended() >= 700, 60, "700 tasks done")
            assert await terminate("w2") >= 1
        await until(lambda: ended() >= 1000, 60, "1000 tasks done")
        await until(lambda: bool(exited), 30, "exit of w1 after SIGTERM")
        fault.term_to_exit = exited[0] - termed
        fault.stopped_at = (_mono(), 0.0)
        procs["w2"].send_signal(signal.SIGSTOP)
        await anyio.sleep(STOP_FOR)
        procs["w2"].send_signal(signal.SIGCONT)
        fault.stopped_at = (fault.stopped_at[0], _mono())
        await until(lambda: ended() >= TASKS + DELAYED, 90, "every task done")

        async def recorded() -> bool:
            counts = await inspect.counts()
            return bool(counts.get("default", {}).get(TaskState.SUCCEEDED, 0) >= TASKS + DELAYED)

        with anyio.fail_after(30):
            while not await recorded():  # noqa: ASYNC110
                await anyio.sleep(0.05)
        fault.drained_in = _mono() - began
        counts = await inspect.counts()
        fault.states = {s.value: c for s, c in counts.get("default", {}).items()}
        for task_id in fault.poisons:
            record = await inspect.get(task_id)
            fault.poison_errors[task_id] = None if record is None else record.last_error
        for entry in await inspect.history(limit=10 * TASKS):
            if entry.outcome == "succeeded":
                fault.successes[entry.task_id] += 1
                fault.success_worker[entry.task_id] = entry.worker
                fault.success_attempt[entry.task_id] = entry.attempt
    finally:
        for name, proc in procs.items():
            if name != "w0" and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for name, proc in procs.items():
            try:
                _, err = await anyio.to_thread.run_sync(_communicate, proc)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            fault.returncodes[name] = proc.returncode
            fault.stderr[name] = err
        await _close(queue)
    fault.runs = _runs(_read(out))
    fault.latest_attempt = _latest_attempts(out)
    return fault


def _communicate(proc: subprocess.Popen[str]) -> tuple[str, str]:
    return proc.communicate(timeout=60)


async def _close(queue: Queue) -> None:
    await queue.backend.aclose()


def check(fault: Fault) -> dict[str, object]:
    """Assert the promises; return the figures for the closing note."""
    stderr = {name: err[-3000:] for name, err in fault.stderr.items()}
    assert {n: fault.returncodes[n] for n in ("w1", "w2", "w3", "w4")} == dict.fromkeys(
        ("w1", "w2", "w3", "w4"), 0
    ), stderr
    assert fault.states == {"succeeded": TASKS + DELAYED, "dead": len(fault.poisons)}, fault.states
    # Poison outcomes were stored, escaped and readable, beside the good ones.
    for task_id, kind in fault.poisons.items():
        error = fault.poison_errors[task_id]
        assert error is not None, kind
        expected = {
            "surrogate": "ValueError: bad \\ud800 text",
            "nul": "ValueError: nul \\x00 byte",
            "unprintable": "Unprintable: <str() of the exception failed: RuntimeError>",
        }.get(kind)
        if expected is not None:
            assert error == expected, (kind, error)
        else:
            assert error.startswith("ValueError: xxx"), kind
            assert len(error) == 2000
    assert set(fault.successes) == set(fault.ids), "a task has no success recorded"
    # The worker sent SIGTERM mid-task drained within its grace period (10 s).
    assert fault.term_to_exit < 10, fault.term_to_exit
    assert set(fault.successes.values()) == {1}, "a success was recorded twice"
    assert set(fault.runs) == set(range(TASKS + DELAYED)), "a task never ran"
    killed, stopped = fault.pids["w0"], fault.pids["w2"]
    # Work done twice: only for tasks the killed or the stopped worker held.
    done_twice = {
        n: runs for n, runs in fault.runs.items() if sum(r[2] is not None for r in runs) > 1
    }
    for n, runs in done_twice.items():
        assert {killed, stopped} & {pid for pid, _, _ in runs}, (n, runs)
    by_killed = [n for n, runs in done_twice.items() if killed in {r[0] for r in runs}]
    by_stopped = [n for n, runs in done_twice.items() if stopped in {r[0] for r in runs}]
    # The killed worker held at most CONCURRENCY running tasks plus as many being recorded.
    assert len(by_killed) <= 2 * CONCURRENCY, by_killed
    # The stopped worker, likewise: at most CONCURRENCY running tasks when it was stopped,
    # plus as many whose work was done and whose outcome it was still recording.
    assert len(by_stopped) <= 2 * CONCURRENCY, by_stopped
    # Two runs of one task at the same time: only the stopped worker's stale attempt.
    overlapping = []
    for n, runs in fault.runs.items():
        for i, (pid_a, start_a, end_a) in enumerate(runs):
            for pid_b, start_b, end_b in runs[i + 1 :]:
                if pid_a == killed or pid_b == killed:
                    continue  # a killed run has no end, and did nothing after its kill
                a_end = end_a if end_a is not None else float("inf")
                b_end = end_b if end_b is not None else float("inf")
                if start_a < b_end and start_b < a_end:
                    overlapping.append((n, runs))
                    assert stopped in (pid_a, pid_b), (n, runs)
    # No delayed task started before its delay, whatever the skewed worker's clock said.
    for n in range(TASKS, TASKS + DELAYED):
        first = min(start for _, start, _ in fault.runs[n])
        assert first >= fault.enqueued_delayed_at + DELAY - 0.05, (n, first)
    # Fencing: a task's recorded success is its latest claim's, never a stale attempt's (the
    # stopped worker's, whose lease lapsed while it was stopped). The stopped worker's own
    # success is right when it claimed the task after resuming, e.g. because the worker
    # running it could not record its outcome in time (the stopped process held SQLite's
    # write lock) and so lost the lease.
    ids_by_n = {n: task_id for task_id, n in fault.ids.items()}
    for n in range(TASKS + DELAYED):
        task_id = ids_by_n[n]
        assert fault.success_attempt[task_id] == fault.latest_attempt[n], (
            n,
            fault.runs[n],
            fault.success_worker[task_id],
            fault.success_attempt[task_id],
            fault.latest_attempt[n],
            fault.pids,
        )
    # And it said so: a stale attempt found out is logged as discarded.
    discarded = fault.stderr["w2"].count("discarded the outcome")
    if by_stopped:
        assert "lease" in fault.stderr["w2"], stderr["w2"]
    return {
        "discarded by the stopped worker": discarded,
        "tasks": TASKS + DELAYED,
        "done twice (killed worker)": len(by_killed),
        "done twice (stopped worker)": len(by_stopped),
        "bound": f"{2 * CONCURRENCY} + {2 * CONCURRENCY}",
        "overlapping runs": len(overlapping),
        "drained in (s)": round(fault.drained_in, 1),
        "SIGTERM to exit (s)": round(fault.term_to_exit, 2),
        "poison outcomes stored": len(fault.poisons),
    }


CHAINS = 150
GROUPS = 60
MEMBERS = 4
KILLS = 12


async def run_chains_under_kills(
    *, backend: Callable[[], QueueBackend], spec: Callable[[str], list[str]], out: Path
) -> dict[str, object]:
    """Chains of three steps and groups of four with a callback, while workers are SIGKILLed
    at random points and replaced; then assert each next step and each callback was
    enqueued exactly once and succeeded once.
    """
    import json
    import random

    queue = build(backend(), str(out / "filler.txt"))
    inspect: Any = queue.backend  # SQLite or Postgres: both inspectable
    for n in range(CHAINS):
        await queue.enqueue_chain(queue.step("c1", {"n": n}), queue.step("c2"), queue.step("c3"))
    for g in range(GROUPS):
        await queue.enqueue_group(
            [queue.step("g", {"n": g * MEMBERS + i, "group": g}) for i in range(MEMBERS)],
            then=queue.step("collect"),
        )
    procs: list[subprocess.Popen[str]] = []
    counter = iter(range(1000))

    def start() -> None:
        name = f"k{next(counter)}"
        proc = python_process(
            [
                "tests/queue_fault_worker.py",
                *spec(name),
                "--out",
                str(out / f"out-{name}.txt"),
                "--concurrency",
                "4",
                "--lease",
                "1.0",
            ]
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        procs.append(proc)

    rng = random.Random(10)
    expected = CHAINS * 3 + GROUPS * (MEMBERS + 1)
    try:
        for _ in range(3):
            start()
        for _ in range(KILLS):
            await anyio.sleep(rng.uniform(0.1, 0.3))
            alive = [p for p in procs if p.poll() is None]
            victim = rng.choice(alive)
            victim.send_signal(signal.SIGKILL)
            start()

        async def settled() -> bool:
            counts = (await inspect.counts()).get("default", {})
            return bool(counts.get(TaskState.SUCCEEDED, 0) >= expected)

        with anyio.fail_after(90):
            while not await settled():  # noqa: ASYNC110 - the work is done elsewhere
                await anyio.sleep(0.05)
        records = await inspect.tasks(limit=10 * expected)
        history = await inspect.history(limit=100 * expected)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await anyio.to_thread.run_sync(_communicate, proc)
            except subprocess.TimeoutExpired:
                proc.kill()
        await _close(queue)
    assert {r.state for r in records} == {TaskState.SUCCEEDED}
    per_step: Counter[tuple[str, int]] = Counter()
    for record in records:
        payload = json.loads(record.payload)
        key = payload[0]["group"] if record.name == "collect" else payload["n"]
        per_step[(record.name, key)] += 1
    # Every step of every chain, every member and every callback: exactly one task each.
    assert set(per_step.values()) == {1}, [k for k, v in per_step.items() if v != 1]
    assert len(per_step) == expected
    successes = Counter(h.task_id for h in history if h.outcome == "succeeded")
    assert set(successes.values()) == {1}
    assert len(successes) == expected
    runs = Counter((e, n) for e, n, _, _ in _read(out) if e in ("c1", "c2", "c3", "g", "collect"))
    return {
        "chains": CHAINS,
        "groups": GROUPS,
        "kills": KILLS,
        "tasks": expected,
        "callbacks enqueued": sum(1 for (name, _) in per_step if name == "collect"),
        "handler runs beyond one (killed mid-run or before recording)": sum(runs.values())
        - expected,
    }
