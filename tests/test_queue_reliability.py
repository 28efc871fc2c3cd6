"""Queue reliability on the memory and SQLite backends (issue 10).

Poison outcomes never block other outcomes or a shutdown; the queue keeps time on the
backend's clock; a lost lease stops the task and discards its outcome; priorities and
payloads fail at enqueue with the errors the README names.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

import tasker
from tasker import Context, StopReason
from tasker.queue import (
    GroupSpec,
    MemoryQueueBackend,
    NewTask,
    Outcome,
    PayloadError,
    Queue,
    SQLiteQueueBackend,
    TaskState,
    _machine_clock,
    _sqlite,
)
from tasker.testing import FakeClock

from .test_queue import Running, finished, until

pytestmark = pytest.mark.anyio


def _poisoned(outcomes: Sequence[Outcome]) -> bool:
    """An outcome this test's backends refuse unless it is in its bare, last-resort form."""
    for outcome in outcomes:
        if outcome.result is not None and b"POISON" in outcome.result:
            return True
        if outcome.error is not None and "POISON" in outcome.error and outcome.traceback:
            return True
    return False


class PickyMemory(MemoryQueueBackend):
    """A memory backend that refuses to store some outcomes, as a database would."""

    async def finish(self, outcomes: Sequence[Outcome], *, now: float) -> None:
        if _poisoned(outcomes):
            raise ValueError("invalid byte sequence for encoding UTF8")
        await super().finish(outcomes, now=now)


class PickySQLite(SQLiteQueueBackend):
    """The SQLite backend, refusing the same outcomes."""

    async def finish(self, outcomes: Sequence[Outcome], *, now: float) -> None:
        if _poisoned(outcomes):
            raise ValueError("invalid byte sequence for encoding UTF8")
        await super().finish(outcomes, now=now)

    async def finish_and_claim(self, outcomes: Sequence[Outcome], **kwargs: Any) -> Any:
        if _poisoned(outcomes):
            raise ValueError("invalid byte sequence for encoding UTF8")
        return await super().finish_and_claim(outcomes, **kwargs)


@pytest.fixture(params=["memory", "sqlite"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _backend(
    kind: str, tmp_path: Path, memory: type = MemoryQueueBackend, sql: type = SQLiteQueueBackend
) -> Any:
    if kind == "memory":
        return memory()
    return sql(tmp_path / "queue.sqlite3")


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


async def test_poison_error_texts_are_stored_readably(kind: str, tmp_path: Path) -> None:
    """Lone surrogates, NUL, 10 MB messages and a failing __str__ are stored, escaped; the
    good tasks of the same batches all succeed."""
    queue = Queue(_backend(kind, tmp_path))
    failures = {
        "surrogate": ValueError("bad \ud800 text"),
        "nul": ValueError("nul \x00 byte"),
        "huge": ValueError("x" * 10_000_000),
        "unprintable": Unprintable(),
    }

    @queue.task("fail", max_attempts=1)
    async def fail(ctx: Context, which: str) -> None:
        raise failures[which]

    @queue.task("good")
    async def good(ctx: Context, n: int) -> int:
        return n

    bad = {which: (await queue.enqueue("fail", which)).id for which in failures}
    goods = [(await queue.enqueue("good", n)).id for n in range(10)]
    async with Running(queue, concurrency=8):
        for task_id in [*bad.values(), *goods]:
            await until(lambda task_id=task_id: finished(queue, task_id))
    for n, task_id in enumerate(goods):
        info = await queue.get(task_id)
        assert info is not None
        assert info.state is TaskState.SUCCEEDED
        assert info.result == n
    errors = {}
    for which, task_id in bad.items():
        info = await queue.get(task_id)
        assert info is not None
        assert info.state is TaskState.DEAD
        assert info.error is not None
        assert info.traceback is not None
        info.error.encode("utf-8")  # storable text: no lone surrogate left
        assert "\x00" not in info.error
        assert "\x00" not in info.traceback
        errors[which] = info.error
    assert errors["surrogate"] == "ValueError: bad \\ud800 text"
    assert errors["nul"] == "ValueError: nul \\x00 byte"
    assert errors["huge"].startswith("ValueError: xxx")
    assert len(errors["huge"]) == 2000
    assert errors["unprintable"] == "Unprintable: <str() of the exception failed: RuntimeError>"


async def test_an_unstorable_outcome_is_isolated_and_stored_bare(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """When the backend refuses one outcome, the others of its batch are recorded, and that
    one is recorded in its bare form (a dead letter saying why), never retried as an outage."""
    queue = Queue(_backend(kind, tmp_path, PickyMemory, PickySQLite))

    @queue.task("fail", max_attempts=1)
    async def fail(ctx: Context, n: int) -> None:
        raise RuntimeError("POISON")

    @queue.task("poison-result")
    async def poison_result(ctx: Context, n: int) -> str:
        return "POISON"

    @queue.task("good")
    async def good(ctx: Context, n: int) -> int:
        await anyio.sleep(0.01)
        return n

    ids = [(await queue.enqueue("good", n)).id for n in range(20)]
    bad = (await queue.enqueue("fail", 0)).id
    bad_result = (await queue.enqueue("poison-result", 0)).id
    with caplog.at_level(logging.WARNING, logger="tasker.queue"):
        async with Running(queue, concurrency=10):
            for task_id in [*ids, bad, bad_result]:
                await until(lambda task_id=task_id: finished(queue, task_id))
    for task_id in ids:
        info = await queue.get(task_id)
        assert info is not None
        assert info.state is TaskState.SUCCEEDED
    info = await queue.get(bad)
    assert info is not None
    assert info.state is TaskState.DEAD
    assert info.error is not None
    assert info.error.startswith("tasker could not store")
    info = await queue.get(bad_result)
    assert info is not None
    assert info.state is TaskState.DEAD
    assert info.result is None
    assert info.error is not None
    assert "its result was dropped" in info.error
    assert "reduced form" in caplog.text
    assert "cannot record" not in caplog.text  # never taken for an outage


class DownAfterRun(MemoryQueueBackend):
    """Claims work; every outcome and hand-back fails, as in an outage."""

    async def finish(self, outcomes: Sequence[Outcome], *, now: float) -> None:
        await anyio.sleep(0.05)
        raise OSError("connection refused")

    async def finish_and_claim(self, outcomes: Sequence[Outcome], **kwargs: Any) -> Any:
        raise OSError("connection refused")


async def test_a_stopping_worker_stops_within_its_grace_whatever_the_backend_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Outcomes that cannot be recorded are given up at the end of the grace period, the
    worker returns by itself (no hard stop), and the log names what was not recorded."""
    queue = Queue(DownAfterRun())
    started = anyio.Event()

    @queue.task("quick")
    async def quick(ctx: Context, n: int) -> int:
        started.set()
        return n

    @queue.task("slow")
    async def slow(ctx: Context, n: int) -> None:
        await anyio.sleep(60)  # ignores its context: cut off before the grace ends

    for n in range(3):
        await queue.enqueue("quick", n)
    await queue.enqueue("slow", 0)
    stop = anyio.Event()
    grace = 1.5
    with caplog.at_level(logging.INFO):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: tasker.run(queue.worker(poll=0.05), shutdown_trigger=stop.wait, grace=grace)
            )
            await started.wait()
            await anyio.sleep(0.3)  # the outcomes are being retried now
            begun = anyio.current_time()
            stop.set()
        elapsed = anyio.current_time() - begun
    assert elapsed < grace + 0.5
    assert "did not stop within its" not in caplog.text  # the worker returned by itself
    assert "not recorded" in caplog.text
    assert "could not hand back" in caplog.text


class LosesLeases(MemoryQueueBackend):
    """Heartbeats say every lease is gone: another worker took the tasks."""

    async def heartbeat(
        self, worker: str, ids: Sequence[str], *, lease: float, now: float
    ) -> set[str]:
        return set()


class CannotRenew(MemoryQueueBackend):
    """Heartbeats fail: the worker can no longer tell whether it holds its leases."""

    async def heartbeat(
        self, worker: str, ids: Sequence[str], *, lease: float, now: float
    ) -> set[str]:
        raise OSError("connection refused")


@pytest.mark.parametrize("backend_type", [LosesLeases, CannotRenew])
async def test_a_lost_lease_stops_the_task_and_discards_its_outcome(
    backend_type: type, caplog: pytest.LogCaptureFixture
) -> None:
    """The task's context becomes done with LEASE_LOST; a task that ignores it is cancelled
    after the grace; no outcome of either reaches the backend, and the log says so."""
    backend = backend_type()
    queue = Queue(backend)
    reasons: list[StopReason | None] = []
    cancelled: list[str] = []

    @queue.task("polite", max_attempts=1)
    async def polite(ctx: Context, n: int) -> str:
        await ctx.wait()
        reasons.append(ctx.reason)
        return "finished anyway"

    @queue.task("stubborn", max_attempts=1)
    async def stubborn(ctx: Context, n: int) -> None:
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            cancelled.append("stubborn")
            raise

    await queue.enqueue("polite", 0)
    stubborn_id = (await queue.enqueue("stubborn", 0)).id
    with caplog.at_level(logging.WARNING, logger="tasker.queue"):
        async with anyio.create_task_group() as tg:
            stop = anyio.Event()
            tg.start_soon(
                lambda: tasker.run(
                    queue.worker(lease=0.3, poll=0.05), shutdown_trigger=stop.wait, grace=0.3
                )
            )
            with anyio.fail_after(10):
                while len(reasons) < 1 or len(cancelled) < 1:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            await anyio.sleep(0.1)
            stop.set()
    assert reasons[0] is StopReason.LEASE_LOST
    assert cancelled[0] == "stubborn"
    history = await queue.history()
    info = await queue.get(stubborn_id)
    assert info is not None
    if backend_type is LosesLeases:
        # Another worker owns both tasks: neither outcome may reach the backend.
        assert reasons == [StopReason.LEASE_LOST]
        assert history == []
        assert caplog.text.count("discarded the outcome") == 2
        # The lease decides: still leased, or dead once it expired on its last attempt.
        assert info.state in (TaskState.RUNNING, TaskState.DEAD)
        assert info.attempts == 1
    else:
        # Nobody could be asked. The one that returned is reported and the backend's owner
        # check decides (it still owned the lease here); the cancelled one is handed back,
        # uncounted, as the lease may still be this worker's: no outcome is discarded; its
        # history says it was interrupted, nothing else.
        assert {h.outcome for h in history if h.name == "stubborn"} <= {"interrupted"}
        assert caplog.text.count("discarded the outcome") == 0
        assert info.state in (TaskState.QUEUED, TaskState.RUNNING, TaskState.DEAD)


async def test_priority_is_bounded_and_the_bounds_are_stored(kind: str, tmp_path: Path) -> None:
    """Priorities outside a signed 32-bit integer fail at enqueue and registration with a
    ValueError naming the range; the bounds themselves are stored and ordered."""
    queue = Queue(_backend(kind, tmp_path))
    order: list[int] = []

    @queue.task("p")
    async def p(ctx: Context, n: int) -> None:
        order.append(n)

    for bad in (2**31, -(2**31) - 1, 2**63):
        with pytest.raises(
            ValueError, match=r"priority must be an integer from -2147483648 to 2147483647"
        ):
            await queue.enqueue("p", 0, priority=bad)
        with pytest.raises(ValueError, match="priority"):
            queue.register(f"q{bad}", p, priority=bad)
    await queue.enqueue("p", 0, priority=0)
    await queue.enqueue("p", -1, priority=-(2**31))
    await queue.enqueue("p", 1, priority=2**31 - 1)
    async with Running(queue, concurrency=1):
        await until(lambda: _len(order, 3))
    assert order == [1, 0, -1]


async def _len(items: list[int], n: int) -> bool:
    return len(items) >= n


async def test_a_deeply_nested_payload_is_a_payload_error(kind: str, tmp_path: Path) -> None:
    """100,000 levels of nesting give PayloadError at enqueue, not RecursionError."""
    queue = Queue(_backend(kind, tmp_path))

    @queue.task("t")
    async def t(ctx: Context, payload: Any) -> None: ...

    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(PayloadError, match="nested too deeply"):
        await queue.enqueue("t", deep)


async def test_the_queue_keeps_time_on_the_backends_clock() -> None:
    """A delayed task waits for the backend's clock, not the process's."""
    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    queue = Queue(MemoryQueueBackend(clock=clock))
    ran: list[int] = []

    @queue.task("t")
    async def t(ctx: Context, n: int) -> None:
        ran.append(n)

    task = await queue.enqueue("t", 1, delay=30)
    async with Running(queue):
        await anyio.sleep(0.3)
        assert ran == []
        clock.advance(30)
        await until(lambda: finished(queue, task.id))
    assert ran == [1]
    info = await queue.get(task.id)
    assert info is not None
    assert info.created_at == clock.now().timestamp() - 30


async def test_the_embedded_clock_ignores_wall_clock_steps_while_tasks_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite a wall-clock step does not move the queue's clock while a lease is held
    (no lease expires early); once nothing runs, the clock follows the wall clock again."""
    monkeypatch.setattr(_sqlite, "_ANCHOR_REFRESH", 0.0)
    backend = SQLiteQueueBackend(tmp_path / "queue.sqlite3")
    queue = Queue(backend)

    @queue.task("t")
    async def t(ctx: Context, n: int) -> None: ...

    await queue.enqueue("t", 1)
    before = await backend.time()
    (record,) = await backend.claim(["default"], 1, worker="a", lease=30, now=before)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 120)
    stepped = await backend.time()
    assert 0 <= stepped - before < 1.0  # the step did not reach the queue's clock
    other = await backend.claim(["default"], 1, worker="b", lease=30, now=await backend.time())
    assert other == []  # the lease still holds
    assert await backend.heartbeat("a", [record.id], lease=30, now=await backend.time()) == {
        record.id
    }
    await backend.finish(
        [
            Outcome(
                id=record.id,
                worker="a",
                kind=tasker.queue.OutcomeKind.SUCCEEDED,
                started_at=stepped,
                finished_at=stepped,
            )
        ],
        now=stepped,
    )
    assert abs(await backend.time() - (real() + 120)) < 1.0  # idle: re-anchored
    backend.close()


async def test_a_stale_clock_reading_is_translated_inside_claims(tmp_path: Path) -> None:
    """A process still holding the old anchor claims on the database's current clock."""
    path = tmp_path / "queue.sqlite3"
    stale = SQLiteQueueBackend(path)
    queue = Queue(stale)

    @queue.task("t")
    async def t(ctx: Context, n: int) -> None: ...

    now = await stale.time()
    await queue.enqueue("t", 1, delay=50)
    with sqlite3.connect(path) as db:  # another process re-anchored the clock by +100 s
        db.execute("update queue_clock set anchor = anchor + 100")
    claimed = await stale.claim(["default"], 1, worker="a", lease=30, now=now)
    assert [r.state for r in claimed] == [TaskState.RUNNING]
    assert claimed[0].lease_until is not None
    assert claimed[0].lease_until > now + 100
    stale.close()


def test_the_boot_clock_is_shared_and_monotonic() -> None:
    """The boot clock never goes back and the boot id is stable within a boot."""
    first = _machine_clock.boot_seconds()
    assert _machine_clock.boot_seconds() >= first
    assert _machine_clock.boot_id() == _machine_clock.boot_id()


class ClockGoesAway(MemoryQueueBackend):
    """The backend's clock answers once, then fails (an outage, for a remote clock)."""

    def __init__(self) -> None:
        super().__init__()
        self.readings = 0

    async def time(self) -> float:
        self.readings += 1
        if self.readings > 1:
            raise OSError("connection refused")
        return await super().time()


async def test_a_worker_keeps_time_when_the_backend_clock_cannot_be_read() -> None:
    """A worker extrapolates its last reading of the backend's clock instead of failing."""
    backend = ClockGoesAway()
    queue = Queue(backend)

    @queue.task("t")
    async def t(ctx: Context, n: int) -> int:
        return n

    await backend.enqueue(
        [
            tasker.queue.NewTask(
                id=f"t{n}", name="t", queue="default", payload=b"1", run_at=0.0, created_at=0.0
            )
            for n in range(5)
        ],
        now=0.0,
    )
    async with Running(queue):
        for n in range(5):
            await until(lambda n=n: finished(queue, f"t{n}"))
    assert backend.readings > 1
    assert {(await queue.get(f"t{n}")).state for n in range(5)} == {TaskState.SUCCEEDED}  # type: ignore[union-attr]


async def test_a_password_in_a_failure_is_not_stored(kind: str, tmp_path: Path) -> None:
    """A handler's error quoting a DSN is stored, in its message and traceback, redacted."""
    queue = Queue(_backend(kind, tmp_path))

    @queue.task("connect", max_attempts=1)
    async def connect(ctx: Context, n: int) -> None:
        raise ConnectionError("cannot reach postgresql://app:Zq9-s3cr3t@db:5432/app")

    task = await queue.enqueue("connect", 0)
    async with Running(queue):
        await until(lambda: finished(queue, task.id))
    info = await queue.get(task.id)
    assert info is not None
    assert info.error == "ConnectionError: cannot reach postgresql://app:***@db:5432/app"
    assert info.traceback is not None
    assert "Zq9-s3cr3t" not in info.traceback
    assert "postgresql://app:***@db:5432/app" in info.traceback


async def test_a_worker_never_takes_back_its_own_task_while_the_attempt_runs() -> None:
    """A loop blocked past the lease: the claim loop does not start a second attempt of the
    task beside the first (the worker's claims exclude what it runs)."""
    queue = Queue(MemoryQueueBackend())
    runs: list[str] = []

    @queue.task("blocking")
    async def blocking(ctx: Context, n: int) -> str:
        runs.append("start")
        time.sleep(0.5)  # noqa: ASYNC251 - blocks the event loop past the lease, on purpose
        await anyio.sleep(0.3)
        runs.append("end")
        return "done"

    task = await queue.enqueue("blocking", 0)
    async with Running(queue, lease=0.3):
        await until(lambda: finished(queue, task.id))
    assert runs == ["start", "end"]
    info = await queue.get(task.id)
    assert info is not None
    assert (info.state, info.result, info.attempts) == (TaskState.SUCCEEDED, "done", 1)


class Blips(MemoryQueueBackend):
    """The first two attempts to record fail as an outage does (not for the data)."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 2

    async def finish(self, outcomes: Sequence[Outcome], *, now: float) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionResetError("connection reset by peer")
        await super().finish(outcomes, now=now)

    async def finish_and_claim(self, outcomes: Sequence[Outcome], **kwargs: Any) -> Any:
        raise ConnectionResetError("connection reset by peer")


async def test_an_outage_never_turns_an_outcome_into_its_reduced_form(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A brief outage while recording: the success is recorded as it was, with its result."""
    queue = Queue(Blips())

    @queue.task("t")
    async def t(ctx: Context, n: int) -> int:
        return n * 2

    task = await queue.enqueue("t", 21)
    with caplog.at_level(logging.WARNING, logger="tasker.queue"):
        async with Running(queue):
            await until(lambda: finished(queue, task.id))
    info = await queue.get(task.id)
    assert info is not None
    assert (info.state, info.result) == (TaskState.SUCCEEDED, 42)
    assert "reduced form" not in caplog.text
    assert "cannot record 1 task(s) yet" in caplog.text


class StuckClaims(MemoryQueueBackend):
    """The second claim never returns (a backend call held up, say by a lock)."""

    def __init__(self) -> None:
        super().__init__()
        self.claims = 0

    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        self.claims += 1
        if self.claims > 1:
            await anyio.sleep_forever()
        return await super().claim(*args, **kwargs)


async def test_a_claim_held_up_at_shutdown_does_not_hold_up_the_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The worker returns by itself within its grace period although a claim never returns."""
    backend = StuckClaims()
    queue = Queue(backend)

    @queue.task("t")
    async def t(ctx: Context, n: int) -> None: ...

    stop = anyio.Event()
    with caplog.at_level(logging.WARNING):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: tasker.run(queue.worker(poll=0.05), shutdown_trigger=stop.wait, grace=1)
            )
            await queue.enqueue("t", 1)
            with anyio.fail_after(5):
                while backend.claims < 2:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            begun = anyio.current_time()
            stop.set()
        elapsed = anyio.current_time() - begun
    assert elapsed < 1.0
    assert "did not stop within its" not in caplog.text


class SilentHeartbeats(MemoryQueueBackend):
    """Heartbeats never answer (a connection gone silent, not closed)."""

    async def heartbeat(self, *args: Any, **kwargs: Any) -> set[str]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


async def test_a_heartbeat_that_hangs_still_stops_the_task_in_time() -> None:
    """Fencing does not wait for a heartbeat that never answers: the task sees LEASE_LOST
    about a lease after it started."""
    queue = Queue(SilentHeartbeats())
    seen: list[tuple[StopReason | None, float]] = []

    @queue.task("t", max_attempts=1)
    async def t(ctx: Context, n: int) -> None:
        begun = anyio.current_time()
        await ctx.wait()
        seen.append((ctx.reason, anyio.current_time() - begun))

    await queue.enqueue("t", 1)
    async with Running(queue, lease=0.3):
        with anyio.fail_after(5):
            while not seen:  # noqa: ASYNC110
                await anyio.sleep(0.01)
    ((reason, after),) = seen
    assert reason is StopReason.LEASE_LOST
    assert after < 2.0  # about lease + lease / 3; never the task's whole run


async def test_a_stale_anchor_is_translated_for_enqueues_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a wall-clock step while idle, another process re-anchors the clock; a delayed
    task enqueued by a process still holding the old anchor is due on the current timeline,
    not early."""
    path = tmp_path / "queue.sqlite3"
    stale = SQLiteQueueBackend(path)
    queue = Queue(stale)

    @queue.task("t")
    async def t(ctx: Context, n: int) -> None: ...

    await stale.time()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 60)  # the wall clock steps ahead
    fresh = SQLiteQueueBackend(path)
    now = await fresh.time()  # a new process: the queue is idle, so it re-anchors
    assert abs(now - time.time()) < 1.0
    await queue.enqueue("t", 1, delay=30)  # the stale process's reading is 60 s behind
    assert await fresh.claim(["default"], 1, worker="b", lease=30, now=now) == []
    (record,) = await fresh.claim(["default"], 1, worker="b", lease=30, now=now + 31)
    assert 29 < record.run_at - now < 31
    stale.close()
    fresh.close()


async def test_a_write_lock_stall_longer_than_the_lease_hands_no_task_over(
    tmp_path: Path,
) -> None:
    """Another process holds SQLite's write lock for twice the lease: when it lets go, the
    other worker's claim does not take the task whose owner could not renew meanwhile, and
    the owner's heartbeat still holds it."""
    path = tmp_path / "queue.sqlite3"
    owner, other = SQLiteQueueBackend(path), SQLiteQueueBackend(path)
    queue = Queue(owner)

    @queue.task("t")
    async def t(ctx: Context, n: int) -> None: ...

    await queue.enqueue("t", 1)
    (record,) = await owner.claim(["default"], 1, worker="a", lease=1.0, now=await owner.time())
    await other.time()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("begin immediate")
    answers: dict[str, object] = {}

    async def heartbeat() -> None:
        now = await owner.time()
        answers["held"] = await owner.heartbeat("a", [record.id], lease=1.0, now=now)

    async def steal() -> None:
        now = await other.time()
        answers["stolen"] = await other.claim(["default"], 1, worker="b", lease=1.0, now=now)

    async with anyio.create_task_group() as tg:
        tg.start_soon(steal)
        tg.start_soon(heartbeat)
        await anyio.sleep(2.0)  # twice the lease
        blocker.execute("commit")
    blocker.close()
    assert answers == {"stolen": [], "held": {record.id}}
    # The heartbeat sent before the stall renewed the lease from when it ran, not from when
    # it was sent: a claim right after still finds it held.
    assert await other.claim(["default"], 1, worker="b", lease=1.0, now=await other.time()) == []
    owner.close()
    other.close()


async def test_retention_keeps_the_tables_from_growing(kind: str, tmp_path: Path) -> None:
    """Workers apply the retention: after waves of tasks, succeeded, dead and history rows
    stop growing (results expire, dead tasks and history age out)."""
    from tasker.queue import Retention

    queue = Queue(
        _backend(kind, tmp_path),
        result_ttl=0.05,
        retention=Retention(dead=0.05, history=0.05, every=0.05),
    )

    @queue.task("ok")
    async def ok(ctx: Context, n: int) -> int:
        return n

    @queue.task("bad", max_attempts=1)
    async def bad(ctx: Context, n: int) -> None:
        raise RuntimeError("dies")

    sizes = []
    async with Running(queue):
        for _wave in range(4):
            ids = [(await queue.enqueue("ok", n)).id for n in range(30)]
            ids += [(await queue.enqueue("bad", n)).id for n in range(5)]
            for task_id in ids:
                await until(lambda task_id=task_id: _gone_or_finished(queue, task_id))
            await anyio.sleep(0.4)  # a few purge rounds
            counts = (await queue.counts()).get("default", {})
            sizes.append((sum(counts.values()), len(await queue.history(limit=10_000))))
    # Each wave added 35 tasks and 35 history entries; all of them aged out.
    assert sizes[-1][0] <= 35, sizes
    assert sizes[-1][1] <= 35, sizes


async def _gone_or_finished(queue: Queue, task_id: str) -> bool:
    info = await queue.get(task_id)
    return info is None or info.state in (TaskState.SUCCEEDED, TaskState.DEAD)


def test_an_explicit_retention_needs_administration() -> None:
    """Retention given to a backend that cannot purge is refused when the queue is built."""
    from tasker.queue import MissingCapabilityError, Retention

    from .test_queue_capabilities import CoreOnly

    Queue(CoreOnly())  # the default retention is skipped
    with pytest.raises(MissingCapabilityError, match=r"Queue\(retention=\.\.\.\)"):
        Queue(CoreOnly(), retention=Retention())
    with pytest.raises(ValueError, match="every"):
        Retention(every=0)


async def check_purge(backend: Any) -> None:
    """Purge deletes expired successes, old dead tasks and old history, but never a task
    whose unique window is open nor a member of a group still waiting for its callback."""
    queue = Queue(backend, result_ttl=1.0, retention=None)

    @queue.task("ok")
    async def ok(ctx: Context, n: int) -> int:
        return n

    @queue.task("bad", max_attempts=1)
    async def bad(ctx: Context, n: int) -> None:
        raise RuntimeError("dies")

    plain = (await queue.enqueue("ok", 1)).id
    windowed = (await queue.enqueue("ok", 2, unique_key="w", unique_for=3600)).id
    dead = (await queue.enqueue("bad", 3)).id
    # A group held open: one member waits for a manual dispatch, so no callback yet.
    now = await backend.time()
    member, waiting = (
        NewTask(
            id=f"member-{i}",
            name="ok",
            queue="default",
            payload=b"4",
            run_at=now,
            created_at=now,
            held=held,
            group_id="g1",
            group_index=i,
        )
        for i, held in enumerate((False, True))
    )
    callback = NewTask(
        id="callback", name="ok", queue="default", payload=b"null", run_at=now, created_at=now
    )
    await backend.enqueue(
        [member, waiting], group=GroupSpec(id="g1", size=2, callback=callback), now=now
    )
    async with Running(queue):
        for task_id in (plain, windowed, dead, member.id):
            await until(lambda task_id=task_id: finished(queue, task_id))
    now = await backend.time()
    deleted = await backend.purge(now=now + 2, history_before=now + 2, dead_before=now + 2)
    assert deleted == 2
    assert await queue.get(plain) is None
    assert await queue.get(dead) is None
    assert await queue.get(windowed) is not None  # its unique window is open for an hour
    assert await queue.get(member.id) is not None  # its group still waits for its callback
    assert await queue.history(limit=100) == []


async def test_purge_keeps_open_unique_windows(kind: str, tmp_path: Path) -> None:
    """check_purge on the memory and SQLite backends."""
    await check_purge(_backend(kind, tmp_path))
