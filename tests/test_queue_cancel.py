"""Cancelling tasks (``Queue.cancel``, ``QueueCapability.CANCEL``): before they run, while
they run (the worker learns it at a heartbeat), in chains and groups, and what the stores
keep of it; on the memory and SQLite backends (the contract machine checks the rest)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

import tasker
from tasker import Context, StopReason
from tasker._status import collect
from tasker.abc import QueueCapability, TaskCancellation
from tasker.queue import (
    CancelResult,
    CancelStatus,
    MemoryQueueBackend,
    MissingCapabilityError,
    NewTask,
    Outcome,
    OutcomeKind,
    Queue,
    Retention,
    SQLiteQueueBackend,
    TaskInfo,
    TaskState,
    Worker,
)
from tasker.testing import FakeClock
from tasker_amqp import AmqpQueueBackend
from tasker_nats import NatsQueueBackend
from tasker_redis import RedisQueueBackend

from .test_queue_capabilities import CoreOnly

pytestmark = pytest.mark.anyio

#: Heartbeats every LEASE / 3 = 0.1 s: a cancel reaches a running handler that soon.
LEASE = 0.3
GRACE = 0.5
#: What a cancel may take beyond that: round trips, the handler's stop, the recording.
MARGIN = 1.0


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The embedded backends that declare CANCEL."""
    if request.param == "memory":
        return MemoryQueueBackend()
    return SQLiteQueueBackend(tmp_path / "q.sqlite3")


@asynccontextmanager
async def working(queue: Queue, *, grace: float = GRACE) -> AsyncIterator[Worker]:
    """A worker running beside the test until the block ends (then it stops)."""
    worker = queue.worker(concurrency=4, lease=LEASE, poll=0.05)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(tasker.run, worker, shutdown_trigger=stop.wait, grace=grace))
        try:
            yield worker
        finally:
            stop.set()


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll ``check`` until it holds: the state is the backend's, no event tells of it."""
    with anyio.fail_after(timeout):
        while not await check():  # noqa: ASYNC110 - a stored state, polled
            await anyio.sleep(0.01)


async def state_of(queue: Queue, task_id: str) -> TaskState | None:
    info = await queue.get(task_id)
    return None if info is None else info.state


async def info_of(queue: Queue, task_id: str) -> TaskInfo[Any]:
    info = await queue.get(task_id)
    assert info is not None
    return info


async def outcomes_of(queue: Queue, task_id: str) -> list[str]:
    return [h.outcome for h in reversed(await queue.history(task_id=task_id))]


class Running:
    """A handler that waits to be stopped, and what its context said then."""

    def __init__(self, *, then: str = "raise") -> None:
        self.started = anyio.Event()
        self.reasons: list[StopReason | None] = []
        self.runs = 0
        self.then = then

    async def __call__(self, ctx: Context, payload: Any) -> str:
        self.runs += 1
        self.started.set()
        if self.then == "ignore":  # never looks at its context: only the hard stop ends it
            await anyio.sleep(60)
        await ctx.wait()
        self.reasons.append(ctx.reason)
        if self.then == "return":
            return "partial"
        raise RuntimeError("stopped early")


# -- before a task runs ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["queued", "delayed", "held"])
async def test_a_task_not_yet_running_is_cancelled_at_once_and_never_runs(how: str) -> None:
    """Queued, delayed or held: CANCELLED at once, and a worker never runs it (a task
    enqueued after it, which it would have preceded, runs; a dispatch finds nothing)."""
    clock = FakeClock()
    queue = Queue(MemoryQueueBackend(clock=clock), retention=None)
    ran: list[str] = []

    @queue.task("t")
    async def t(ctx: Context, n: str) -> None:
        ran.append(n)

    victim = await t.enqueue(
        "victim", **({"delay": 60} if how == "delayed" else {"held": True} if how == "held" else {})
    )
    result = await queue.cancel(victim)
    assert result == CancelResult(
        id=victim.id, status=CancelStatus.CANCELLED, state=TaskState.CANCELLED
    )
    assert result
    assert await state_of(queue, victim.id) is TaskState.CANCELLED
    clock.advance(120)  # the delayed one would be due now
    assert await queue.dispatch() == 0
    marker = await t.enqueue("marker")
    async with working(queue):
        await until(lambda: _is(queue, marker.id, TaskState.SUCCEEDED))
    assert ran == ["marker"]
    info = await info_of(queue, victim.id)
    assert (info.state, info.attempts, info.finished_at) == (
        TaskState.CANCELLED,
        0,
        clock.now().timestamp() - 120,
    )
    assert await outcomes_of(queue, victim.id) == []  # no attempt ran
    assert (await queue.counts())["default"] == {"cancelled": 1, "succeeded": 1}


async def test_a_task_waiting_for_its_retry_is_cancelled_at_once(backend: Any) -> None:
    """A task that failed and waits for its retry is queued: cancelled at once, it is not
    tried again."""
    queue = Queue(backend, retention=None)
    calls = 0

    @queue.task("flaky", max_attempts=3, backoff=60)
    async def flaky(ctx: Context) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("boom")

    enqueued = await flaky.enqueue(None)
    async with working(queue):
        await until(lambda: _attempts(queue, enqueued.id, 1, TaskState.QUEUED))
        assert (await queue.cancel(enqueued.id)).status is CancelStatus.CANCELLED
    info = await info_of(queue, enqueued.id)
    assert (info.state, info.attempts, info.error, calls) == (
        TaskState.CANCELLED,
        1,
        "ValueError: boom",
        1,
    )
    assert await outcomes_of(queue, enqueued.id) == ["retry"]


async def test_cancel_of_a_finished_or_unknown_task_changes_nothing(backend: Any) -> None:
    """Succeeded, dead, already cancelled, or unknown: FINISHED or UNKNOWN, false, and the
    task is left as it was."""
    queue = Queue(backend, retention=None)

    @queue.task("ok")
    async def ok(ctx: Context) -> int:
        return 1

    @queue.task("bad", max_attempts=1)
    async def bad(ctx: Context) -> None:
        raise ValueError("no")

    done, dead = await ok.enqueue(None), await bad.enqueue(None)
    cancelled = await ok.enqueue(None, delay=60)
    await queue.cancel(cancelled)
    async with working(queue):
        await until(lambda: _is(queue, done.id, TaskState.SUCCEEDED))
        await until(lambda: _is(queue, dead.id, TaskState.DEAD))
    for task_id, state in [
        (done.id, TaskState.SUCCEEDED),
        (dead.id, TaskState.DEAD),
        (cancelled.id, TaskState.CANCELLED),
    ]:
        before = await info_of(queue, task_id)
        result = await queue.cancel(task_id)
        assert result == CancelResult(id=task_id, status=CancelStatus.FINISHED, state=state)
        assert not result
        assert await info_of(queue, task_id) == before
    unknown = await queue.cancel("no-such-task")
    assert unknown == CancelResult(id="no-such-task", status=CancelStatus.UNKNOWN, state=None)
    assert not unknown


# -- while a task runs ----------------------------------------------------------------


@pytest.mark.parametrize("max_attempts", [1, 3])
@pytest.mark.parametrize("sqlite", [False, True], ids=["memory", "sqlite"])
async def test_a_running_task_is_stopped_at_the_next_heartbeat(
    sqlite: bool, max_attempts: int, tmp_path: Path, anyio_backend: str
) -> None:
    """Its context becomes done with StopReason.CANCELLED within a heartbeat; the handler
    raises, and the task ends CANCELLED: one attempt, a "cancelled" history row, no retry,
    no on_failure (not even on its last attempt, where a failure would be dead)."""
    backend = SQLiteQueueBackend(tmp_path / "q.sqlite3") if sqlite else MemoryQueueBackend()
    failures: list[TaskInfo[Any]] = []
    queue = Queue(backend, retention=None, on_failure=failures.append)
    handler = Running()
    queue.register("long", handler, max_attempts=max_attempts, backoff=0)
    enqueued = await queue.enqueue("long")
    async with working(queue) as worker:
        await handler.started.wait()
        info = await info_of(queue, enqueued.id)
        assert (info.state, info.cancel_requested) == (TaskState.RUNNING, False)
        asked = time.monotonic()
        result = await queue.cancel(enqueued)
        assert result == CancelResult(
            id=enqueued.id, status=CancelStatus.REQUESTED, state=TaskState.RUNNING
        )
        assert (await info_of(queue, enqueued.id)).cancel_requested
        await until(lambda: _is(queue, enqueued.id, TaskState.CANCELLED))
        took = time.monotonic() - asked
        assert worker.statistics().cancelled == 1
    assert handler.reasons == [StopReason.CANCELLED]
    assert took < LEASE / 3 + MARGIN, took
    info = await info_of(queue, enqueued.id)
    assert (info.state, info.attempts, info.cancel_requested, info.error) == (
        TaskState.CANCELLED,
        1,
        True,
        "RuntimeError: stopped early",
    )
    assert info.finished_at is not None
    assert await outcomes_of(queue, enqueued.id) == ["cancelled"]
    assert handler.runs == 1
    assert failures == []
    assert (await queue.counts())["default"] == {"cancelled": 1}


async def test_a_handler_that_ignores_its_context_is_cut_off_after_its_grace() -> None:
    """A handler that never looks at its context is cancelled once the grace period after
    the cancel ran out, and the task ends CANCELLED (not handed back to run again)."""
    queue = Queue(MemoryQueueBackend(), retention=None)
    handler = Running(then="ignore")
    queue.register("stubborn", handler, max_attempts=3)
    enqueued = await queue.enqueue("stubborn")
    async with working(queue, grace=GRACE):
        await handler.started.wait()
        asked = time.monotonic()
        await queue.cancel(enqueued.id)
        await until(lambda: _is(queue, enqueued.id, TaskState.CANCELLED))
        took = time.monotonic() - asked
    assert GRACE <= took < LEASE / 3 + GRACE + MARGIN, took
    info = await info_of(queue, enqueued.id)
    assert (info.attempts, info.error) == (1, "cancelled: cut off after its grace period (0.5 s)")
    assert await outcomes_of(queue, enqueued.id) == ["cancelled"]
    assert (handler.runs, handler.reasons) == (1, [])


async def test_a_handler_that_returns_after_the_cancel_is_a_success(backend: Any) -> None:
    """The work is done: a handler that still returns records a success, with its result
    (and the cancel request still visible)."""
    queue = Queue(backend, retention=None)
    handler = Running(then="return")
    queue.register("finishes", handler)
    enqueued = await queue.enqueue("finishes")
    async with working(queue):
        await handler.started.wait()
        await queue.cancel(enqueued.id)
        await until(lambda: _is(queue, enqueued.id, TaskState.SUCCEEDED))
    info = await info_of(queue, enqueued.id)
    assert (info.result, info.cancel_requested) == ("partial", True)
    assert handler.reasons == [StopReason.CANCELLED]
    assert await outcomes_of(queue, enqueued.id) == ["succeeded"]


async def test_a_cancel_twice_is_requested_twice_and_stops_once(backend: Any) -> None:
    """Cancelling a running task again while it stops changes nothing more."""
    queue = Queue(backend, retention=None)
    handler = Running()
    queue.register("long", handler)
    enqueued = await queue.enqueue("long")
    async with working(queue) as worker:
        await handler.started.wait()
        first, second = await queue.cancel(enqueued.id), await queue.cancel(enqueued.id)
        assert first.status is second.status is CancelStatus.REQUESTED
        await until(lambda: _is(queue, enqueued.id, TaskState.CANCELLED))
    assert worker.statistics().cancelled == 1
    assert await outcomes_of(queue, enqueued.id) == ["cancelled"]


# -- what the stores do with a requested cancel ------------------------------------------


def _new(task_id: str, now: float, **options: Any) -> NewTask:
    return NewTask(
        id=task_id, name="t", queue="q", payload=b"1", run_at=now, created_at=now, **options
    )


def _outcome(task_id: str, kind: OutcomeKind, now: float, **fields: Any) -> Outcome:
    return Outcome(id=task_id, worker="w", kind=kind, started_at=now, finished_at=now, **fields)


async def test_a_dead_workers_cancelled_task_is_cancelled_by_the_next_claim(backend: Any) -> None:
    """Its worker died after the cancel was requested: once the lease expires, the next
    claim makes it CANCELLED instead of running it again (it has attempts left)."""
    await backend.enqueue([_new("a", 100.0, max_attempts=3)], now=100.0)
    assert len(await backend.claim(["q"], 1, worker="w", lease=30, now=100.0)) == 1
    assert (await backend.cancel("a", now=101.0)).status is CancelStatus.REQUESTED
    assert await backend.cancel_requested("w", ["a", "b"]) == {"a"}
    assert await backend.cancel_requested("other", ["a"]) == set()
    assert await backend.claim(["q"], 1, worker="w2", lease=30, now=129.0) == []
    assert (await backend.get("a")).state is TaskState.RUNNING  # the lease still holds
    assert await backend.claim(["q"], 1, worker="w2", lease=30, now=131.0) == []
    stored = await backend.get("a")
    assert (stored.state, stored.lease_owner, stored.finished_at) == (
        TaskState.CANCELLED,
        None,
        131.0,
    )
    await backend.aclose()


async def test_a_cancel_after_the_lease_expired_is_at_once(backend: Any) -> None:
    """A running task whose lease expired (its worker is gone) is cancelled at once, as the
    next claim would; its late worker's report is then ignored."""
    await backend.enqueue([_new("a", 100.0, max_attempts=3)], now=100.0)
    await backend.claim(["q"], 1, worker="w", lease=30, now=100.0)
    result = await backend.cancel("a", now=140.0)
    assert (result.status, result.state) == (CancelStatus.CANCELLED, TaskState.CANCELLED)
    await backend.finish([_outcome("a", OutcomeKind.SUCCEEDED, 141.0, result=b"1")], now=141.0)
    assert (await backend.get("a")).state is TaskState.CANCELLED
    assert await backend.history(task_id="a") == []
    await backend.aclose()


@pytest.mark.parametrize(
    "kind",
    [OutcomeKind.RETRY, OutcomeKind.DEAD, OutcomeKind.RELEASED, OutcomeKind.INTERRUPTED],
)
async def test_any_outcome_but_success_of_a_cancelled_task_records_it_cancelled(
    backend: Any, kind: OutcomeKind
) -> None:
    """A worker that had not heard of the cancel yet reports a failure (a retry), or hands
    the task back at a shutdown: the store records it cancelled, never requeued."""
    await backend.enqueue([_new("a", 100.0, max_attempts=3)], now=100.0)
    await backend.claim(["q"], 1, worker="w", lease=30, now=100.0)
    await backend.cancel("a", now=101.0)
    outcome = _outcome("a", kind, 102.0, error="Boom: x", retry_at=103.0)
    await backend.finish([outcome], now=102.0)
    stored = await backend.get("a")
    assert (stored.state, stored.attempts, stored.finished_at) == (TaskState.CANCELLED, 1, 102.0)
    assert [h.outcome for h in await backend.history(task_id="a")] == ["cancelled"]
    assert await backend.claim(["q"], 1, worker="w", lease=30, now=200.0) == []
    await backend.aclose()


# -- chains and groups -------------------------------------------------------------------


@pytest.mark.parametrize("then", ["raise", "return", "queued"])
async def test_a_cancelled_chain_step_ends_the_chain(backend: Any, then: str) -> None:
    """The steps after a cancelled one never run: whether it was cancelled before it ran,
    or while it ran (and raised, or even returned)."""
    queue = Queue(backend, retention=None)
    handler = Running(then="raise" if then == "queued" else then)
    queue.register("first", handler)
    later: list[object] = []

    @queue.task("second")
    async def second(ctx: Context, value: object) -> None:
        later.append(value)

    @queue.task("marker")
    async def marker(ctx: Context) -> None: ...

    chain = await queue.enqueue_chain(queue.step("first"), queue.step("second"))
    if then == "queued":
        assert (await queue.cancel(chain.id)).status is CancelStatus.CANCELLED
    async with working(queue):
        if then != "queued":
            await handler.started.wait()
            assert (await queue.cancel(chain.id)).status is CancelStatus.REQUESTED
            final = TaskState.SUCCEEDED if then == "return" else TaskState.CANCELLED
            await until(lambda: _is(queue, chain.id, final))
        # A task enqueued now runs after anything the chain would have enqueued.
        done = await marker.enqueue(None)
        await until(lambda: _is(queue, done.id, TaskState.SUCCEEDED))
    assert later == []
    names = {t.name for t in await backend.tasks(limit=100)}
    assert "second" not in names


async def test_a_cancelled_group_member_counts_as_not_succeeded(backend: Any) -> None:
    """Only the member named is cancelled; the callback runs once every member finished,
    with None in the cancelled member's place (as for a dead one)."""
    queue = Queue(backend, retention=None)
    seen: list[list[Any]] = []

    @queue.task("member")
    async def member(ctx: Context, n: int) -> int:
        return n * 10

    @queue.task("collect")
    async def collect_results(ctx: Context, results: list[Any]) -> None:
        seen.append(results)

    members = await queue.enqueue_group(
        [queue.step("member", 1), queue.step("member", 2), queue.step("member", 3)],
        then=queue.step("collect"),
    )
    assert (await queue.cancel(members[1].id)).status is CancelStatus.CANCELLED
    async with working(queue):
        await until(lambda: _has(seen))
    assert seen == [[10, None, 30]]
    states = [await state_of(queue, m.id) for m in members]
    assert states == [TaskState.SUCCEEDED, TaskState.CANCELLED, TaskState.SUCCEEDED]


async def test_cancelling_the_last_open_member_fires_the_callback(backend: Any) -> None:
    """The callback is enqueued by the cancel itself when the cancelled member was the last
    one the group waited for."""
    queue = Queue(backend, retention=None)

    @queue.task("member")
    async def member(ctx: Context, n: int) -> int:
        return n

    @queue.task("collect")
    async def collect_results(ctx: Context, results: list[Any]) -> None: ...

    (only,) = await queue.enqueue_group([queue.step("member", 1)], then=queue.step("collect"))
    await queue.cancel(only.id)
    (callback,) = [t for t in await backend.tasks(limit=10) if t.name == "collect"]
    assert (callback.state, json.loads(callback.payload)) == (TaskState.QUEUED, [None])


# -- unique keys, retention, status -----------------------------------------------------


async def test_a_cancelled_task_frees_its_unique_key_as_a_finished_one_does(
    backend: Any,
) -> None:
    """Cancelled, it no longer holds its key; a ``unique_for`` window still applies."""
    queue = Queue(backend, retention=None)

    @queue.task("t")
    async def t(ctx: Context) -> None: ...

    first = await t.enqueue(None, unique_key="k", delay=60)
    assert (await t.enqueue(None, unique_key="k")).deduplicated
    await queue.cancel(first.id)
    again = await t.enqueue(None, unique_key="k")
    assert (again.deduplicated, again.id != first.id) == (False, True)
    windowed = await t.enqueue(None, unique_key="w", unique_for=3600, delay=60)
    await queue.cancel(windowed.id)
    assert (await t.enqueue(None, unique_key="w")).id == windowed.id  # in its window


async def test_cancelled_tasks_are_purged_with_the_dead_ones(backend: Any) -> None:
    """``purge(dead_before=)`` (``Retention(dead=)``) deletes cancelled tasks too."""
    await backend.enqueue([_new("a", 100.0), _new("b", 100.0)], now=100.0)
    await backend.cancel("a", now=110.0)
    assert await backend.purge(now=115.0, dead_before=105.0) == 0
    assert await backend.purge(now=120.0, dead_before=111.0) == 1
    assert await backend.get("a") is None
    assert (await backend.get("b")).state is TaskState.QUEUED
    await backend.aclose()


async def test_the_status_report_counts_cancelled_tasks(backend: Any) -> None:
    """``tasker status`` lists cancelled tasks per queue, as it does the other states."""
    queue = Queue(backend, retention=Retention())

    @queue.task("t")
    async def t(ctx: Context) -> None: ...

    await queue.cancel(await t.enqueue(None))
    await t.enqueue(None)
    report = await collect([queue])
    assert report.queues == {"default": {"cancelled": 1, "queued": 1}}


# -- the SQLite file of an earlier version ------------------------------------------------


def test_an_older_sqlite_file_gets_the_column_when_opened(tmp_path: Path) -> None:
    """A database made before cancels existed (no ``cancel_requested`` column) is migrated
    when a backend opens it: its tasks are kept, and can be cancelled."""
    db = tmp_path / "q.sqlite3"
    backend = SQLiteQueueBackend(db)
    anyio.run(lambda: backend.enqueue([_new("old", 100.0)], now=100.0))
    backend.close()
    with sqlite3.connect(db) as conn:
        conn.execute("alter table tasks drop column cancel_requested")
        assert "cancel_requested" not in {r[1] for r in conn.execute("pragma table_info(tasks)")}
    for _ in range(2):  # idempotent: a second open finds the column
        reopened = SQLiteQueueBackend(db)

        async def check(backend: SQLiteQueueBackend = reopened) -> CancelResult:
            stored = await backend.get("old")
            assert stored is not None
            assert stored.cancel_requested is False
            result: CancelResult = await backend.cancel("old", now=101.0)
            return result

        anyio.run(check)
        reopened.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("select state from tasks").fetchall() == [("cancelled",)]


# -- the API ----------------------------------------------------------------------------


async def test_a_backend_without_cancel_is_named_at_the_call() -> None:
    """A backend that does not declare CANCEL: MissingCapabilityError naming the call and
    the capability; Redis, NATS and RabbitMQ do not declare it (yet)."""
    queue = Queue(CoreOnly())
    with pytest.raises(MissingCapabilityError) as info:
        await queue.cancel("x")
    assert (info.value.capability, info.value.needed_by) == (
        QueueCapability.CANCEL,
        "Queue.cancel()",
    )
    assert "cancel" in str(info.value)
    assert "CoreOnly()" in str(info.value)
    for backend in (RedisQueueBackend, NatsQueueBackend, AmqpQueueBackend):
        assert QueueCapability.CANCEL not in backend.capabilities
    for declares in (MemoryQueueBackend, SQLiteQueueBackend):
        assert QueueCapability.CANCEL in declares.capabilities
        assert issubclass(declares, TaskCancellation)


def test_a_declared_cancel_without_its_methods_fails_at_construction() -> None:
    """Declaring CANCEL without ``cancel``/``cancel_requested`` is a TypeError naming both."""

    class Boastful(CoreOnly):
        capabilities = frozenset({QueueCapability.CANCEL})

    with pytest.raises(TypeError, match=r"declares QueueCapability.CANCEL.*TaskCancellation"):
        Queue(Boastful())


async def test_cancel_takes_an_id_or_an_enqueued_and_nothing_else() -> None:
    """The message names the parameter and shows the value."""
    queue = Queue(MemoryQueueBackend(), retention=None)
    for bad in ("", 42, None):
        with pytest.raises(ValueError, match=rf"task must be a task id.*got {bad!r}"):
            await queue.cancel(bad)  # type: ignore[arg-type]


def test_a_cancel_result_is_true_when_it_took_effect() -> None:
    """True for CANCELLED and REQUESTED; a state exactly unless the task is unknown."""
    cancelled = CancelResult(id="a", status=CancelStatus.CANCELLED, state=TaskState.CANCELLED)
    requested = CancelResult(id="a", status=CancelStatus.REQUESTED, state=TaskState.RUNNING)
    finished = CancelResult(id="a", status=CancelStatus.FINISHED, state=TaskState.DEAD)
    unknown = CancelResult(id="a", status=CancelStatus.UNKNOWN, state=None)
    assert [bool(r) for r in (cancelled, requested, finished, unknown)] == [
        True,
        True,
        False,
        False,
    ]
    with pytest.raises(ValueError, match="state must be None exactly for an unknown task"):
        CancelResult(id="a", status=CancelStatus.UNKNOWN, state=TaskState.DEAD)
    with pytest.raises(ValueError, match="state must be None exactly for an unknown task"):
        CancelResult(id="a", status=CancelStatus.FINISHED, state=None)
    with pytest.raises(TypeError, match="status must be a CancelStatus, got 'cancelled'"):
        CancelResult(id="a", status="cancelled", state=None)  # type: ignore[arg-type]


# -- helpers -----------------------------------------------------------------------------


async def _is(queue: Queue, task_id: str, state: TaskState) -> bool:
    return await state_of(queue, task_id) is state


async def _attempts(queue: Queue, task_id: str, attempts: int, state: TaskState) -> bool:
    info = await queue.get(task_id)
    return info is not None and (info.attempts, info.state) == (attempts, state)


async def _has(items: list[Any]) -> bool:
    await anyio.lowlevel.checkpoint()
    return bool(items)
