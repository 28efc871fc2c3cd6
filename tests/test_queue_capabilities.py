"""Declared capabilities: a broker-shaped backend with only the core, written on tasker's
public API alone, passes the contract machine's core rules and runs tasks; whatever it lacks
fails with an error naming the backend and the capability, at construction when a
declaration is false, at the call otherwise."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

import tasker
from tasker import Context
from tasker.abc import QueueCapability
from tasker.backends import record_from_new
from tasker.queue import (
    EnqueueResult,
    GroupSpec,
    MemoryQueueBackend,
    MissingCapabilityError,
    NewTask,
    Outcome,
    OutcomeKind,
    Queue,
    SQLiteQueueBackend,
    TaskRecord,
    TaskState,
    current_task,
)
from tasker.testing import queue_backend_machine
from tasker_amqp import AmqpQueueBackend
from tasker_pg import PostgresQueueBackend

from .test_queue import Running

pytestmark = pytest.mark.anyio


class CoreOnly:
    """The core protocol and nothing else, as a message broker could offer it: due tasks by
    priority, leases by worker that expire, no lookups, no unique keys, no chains or groups,
    and no knowledge of when delayed work falls due (its waits end at new work or their
    timeout)."""

    capabilities: frozenset[QueueCapability] = frozenset()

    def __init__(self) -> None:
        #: Queued and running tasks; a task leaves when it succeeds or dies.
        self.tasks: dict[str, TaskRecord] = {}
        self.settled: list[tuple[str, OutcomeKind]] = []
        self.work = anyio.Event()

    async def time(self) -> float:
        return time.time()

    async def enqueue(
        self, tasks: Sequence[NewTask], *, group: GroupSpec | None = None, now: float
    ) -> list[EnqueueResult]:
        assert group is None
        for task in tasks:
            self.tasks[task.id] = record_from_new(task)
        self.work.set()
        return [EnqueueResult(id=t.id) for t in tasks]

    async def claim(
        self,
        queues: Sequence[str],
        limit: int,
        *,
        worker: str,
        lease: float,
        now: float,
        exclude: Sequence[str] = (),
    ) -> list[TaskRecord]:
        mine = [t for t in self.tasks.values() if t.queue in queues and t.id not in exclude]
        expired = sorted(
            (t for t in mine if t.lease_until is not None and t.lease_until <= now),
            key=lambda t: t.lease_until or 0.0,
        )
        taken: list[TaskRecord] = []
        for record in expired:  # its worker is gone: claimed again, or dead after its last
            if record.attempts >= record.max_attempts:
                del self.tasks[record.id]
                self.settled.append((record.id, OutcomeKind.DEAD))
            elif len(taken) < limit:
                taken.append(record)
        due = [t for t in mine if t.state is TaskState.QUEUED and t.run_at <= now]
        due.sort(key=lambda t: (-t.priority, t.run_at))  # stable: FIFO among equals
        taken.extend(due[: limit - len(taken)])
        for record in taken:
            self.tasks[record.id] = dataclasses.replace(
                record,
                state=TaskState.RUNNING,
                attempts=record.attempts + 1,
                lease_owner=worker,
                lease_until=now + lease,
            )
        return [self.tasks[t.id] for t in taken]

    async def heartbeat(
        self, worker: str, ids: Sequence[str], *, lease: float, now: float
    ) -> set[str]:
        held = {i for i in ids if i in self.tasks and self.tasks[i].lease_owner == worker}
        for task_id in held:
            self.tasks[task_id] = dataclasses.replace(self.tasks[task_id], lease_until=now + lease)
        return held

    async def finish(self, outcomes: Sequence[Outcome], *, now: float) -> None:
        for outcome in outcomes:
            record = self.tasks.get(outcome.id)
            if record is None or record.lease_owner != outcome.worker:
                continue  # the lease was lost: a newer attempt owns the task
            self.settled.append((outcome.id, outcome.kind))
            if outcome.kind in (OutcomeKind.SUCCEEDED, OutcomeKind.DEAD):
                del self.tasks[outcome.id]
                continue
            retry = outcome.kind is OutcomeKind.RETRY
            self.tasks[outcome.id] = dataclasses.replace(
                record,
                state=TaskState.QUEUED,
                lease_owner=None,
                lease_until=None,
                attempts=record.attempts if retry else record.attempts - 1,
                run_at=outcome.retry_at if retry and outcome.retry_at else record.run_at,
            )
            self.work.set()

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await self.work.wait()
        self.work = anyio.Event()

    async def aclose(self) -> None:
        pass

    def __repr__(self) -> str:
        return "CoreOnly()"


# The same contract machine as every backend: it gets the core rules and no others.
TestCoreOnlyBackend = queue_backend_machine(CoreOnly).TestCase


async def test_a_core_only_backend_runs_tasks() -> None:
    """Enqueue and workers need nothing beyond the core."""
    backend = CoreOnly()
    queue = Queue(backend)
    seen: list[int] = []

    @queue.task("t")
    async def t(ctx: Context, n: int) -> None:
        seen.append(n)

    for n in range(5):
        await queue.enqueue("t", n)
    async with Running(queue):
        with anyio.fail_after(10):
            while len(backend.settled) < 5:  # noqa: ASYNC110
                await anyio.sleep(0.01)
    assert sorted(seen) == list(range(5))
    assert {kind for _, kind in backend.settled} == {OutcomeKind.SUCCEEDED}


@pytest.mark.parametrize(
    ("call", "capability", "needed_by"),
    [
        (lambda q: q.get("x"), QueueCapability.INSPECTION, "Queue.get()"),
        (lambda q: q.history(), QueueCapability.INSPECTION, "Queue.history()"),
        (lambda q: q.counts(), QueueCapability.INSPECTION, "Queue.counts()"),
        (lambda q: q.dead(), QueueCapability.INSPECTION, "Queue.dead()"),
        (lambda q: q.requeue("x"), QueueCapability.ADMINISTRATION, "Queue.requeue()"),
        (lambda q: q.dispatch(), QueueCapability.ADMINISTRATION, "Queue.dispatch()"),
        (
            lambda q: q.enqueue("t", 1, held=True),
            QueueCapability.ADMINISTRATION,
            "enqueue(held=True)",
        ),
        (
            lambda q: q.enqueue("t", 1, unique_key="k"),
            QueueCapability.UNIQUE_KEYS,
            "enqueue(unique_key=...)",
        ),
        (
            lambda q: q.enqueue("t", 1, connection=object()),
            QueueCapability.TRANSACTIONAL_ENQUEUE,
            "enqueue(connection=...)",
        ),
        (
            lambda q: q.enqueue("t", 1, task_id="order-42"),
            QueueCapability.TASK_IDS,
            "enqueue(task_id=...)",
        ),
        (
            lambda q: q.enqueue_chain(q.step("t", 1), q.step("t")),
            QueueCapability.WORKFLOWS,
            "enqueue_chain()",
        ),
        (
            lambda q: q.enqueue_group([q.step("t", 1)]),
            QueueCapability.WORKFLOWS,
            "enqueue_group()",
        ),
    ],
)
async def test_a_missing_capability_is_named_at_the_call(
    call: Any, capability: QueueCapability, needed_by: str
) -> None:
    """The error names the call, the capability, the backend and what it does declare."""
    queue = Queue(CoreOnly())

    @queue.task("t")
    async def t(ctx: Context, n: int) -> None: ...

    with pytest.raises(MissingCapabilityError) as info:
        await call(queue)
    assert info.value.capability is capability
    assert info.value.needed_by == needed_by
    message = str(info.value)
    assert needed_by in message
    assert capability.value in message
    assert "CoreOnly()" in message
    assert "nothing beyond the core" in message
    assert isinstance(info.value, NotImplementedError)


def test_a_capability_needed_at_construction_fails_there() -> None:
    """A long-queue hook needs counts: refused when the queue is built, not at an enqueue."""
    needs = r"Queue\(long_queue_threshold=\.\.\.\) needs inspection"
    with pytest.raises(MissingCapabilityError, match=needs):
        Queue(CoreOnly(), long_queue_threshold=10, on_long_queue=lambda stats: None)


def test_a_false_declaration_fails_at_construction() -> None:
    """Declaring a capability without its protocol's methods is a TypeError naming both."""

    class Boastful(CoreOnly):
        capabilities = frozenset({QueueCapability.INSPECTION})

    with pytest.raises(TypeError, match=r"declares QueueCapability.INSPECTION.*QueueInspection"):
        Queue(Boastful())

    careless: Any = CoreOnly()
    careless.capabilities = {QueueCapability.INSPECTION}  # a set, not a frozenset
    with pytest.raises(TypeError, match="frozenset of QueueCapability"):
        Queue(careless)


def test_the_capability_table() -> None:
    """What each built-in backend declares (the README's table)."""
    everything = frozenset(QueueCapability)
    headers = QueueCapability.HEADERS
    assert PostgresQueueBackend.capabilities == everything - {headers}
    without_transactions = everything - {QueueCapability.TRANSACTIONAL_ENQUEUE}
    assert SQLiteQueueBackend.capabilities == without_transactions - {headers}
    assert MemoryQueueBackend.capabilities == without_transactions
    assert AmqpQueueBackend.capabilities == {headers}


async def test_headers_reach_the_handler_where_the_backend_carries_them(tmp_path: Path) -> None:
    """The memory backend carries headers (a test double for a broker's); SQLite does not,
    and says so when they are given; bad headers are named before either is asked."""
    async with Queue(MemoryQueueBackend()) as queue:
        seen: list[dict[str, object]] = []

        @queue.task("t")
        async def t(ctx: Context) -> None:
            task = current_task()
            assert task is not None
            seen.append(dict(task.headers))

        await t.enqueue(headers={"tenant": "acme", "n": 3, "vip": True})
        await t.enqueue()
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: tasker.run(queue.worker(), shutdown_trigger=stop.wait))
            with anyio.fail_after(10):
                while len(seen) < 2:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            stop.set()
        assert sorted(seen, key=len) == [{}, {"tenant": "acme", "n": 3, "vip": True}]
        with pytest.raises(TypeError, match="floats would lose digits"):
            await t.enqueue(headers={"a": 1.5})  # type: ignore[dict-item]
        with pytest.raises(ValueError, match="non-empty str"):
            await t.enqueue(headers={"": "x"})
        with pytest.raises(ValueError, match="more than 16384"):
            await t.enqueue(headers={"big": "x" * 20000})

    async with Queue(SQLiteQueueBackend(tmp_path / "q.db")) as stored:

        @stored.task("t")
        async def t2(ctx: Context) -> None: ...

        with pytest.raises(MissingCapabilityError, match="headers"):
            await t2.enqueue(headers={"a": "b"})
        with pytest.raises(TypeError, match="floats would lose digits"):
            await t2.enqueue(headers={"a": 1.5})  # type: ignore[dict-item]
        await t2.enqueue(headers={})  # none given: nothing to carry


async def test_the_worker_is_a_job_with_statistics_and_a_repr() -> None:
    """queue.worker() is a Worker: a job, whose statistics and repr show what it did."""
    async with Queue(MemoryQueueBackend()) as queue:

        @queue.task("t")
        async def t(ctx: Context, n: int) -> None: ...

        worker = queue.worker(concurrency=3, worker_id="w-1")
        assert repr(worker) == (
            "<tasker.queue.Worker 'w-1' queues=['default'] new running=0/3 completed=0>"
        )
        for n in range(4):
            await queue.enqueue("t", n)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: tasker.run(worker, shutdown_trigger=stop.wait, grace=1))
            with anyio.fail_after(10):
                while worker.statistics().completed < 4:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            assert "running" in repr(worker)
            stop.set()
        stats = worker.statistics()
    assert (stats.worker_id, stats.queues, stats.concurrency) == ("w-1", ("default",), 3)
    assert (stats.completed, stats.running, stats.leases_lost, stats.discarded) == (4, 0, 0, 0)
    assert stats.stopping


async def test_queue_and_scheduler_close_their_stores(tmp_path: Any) -> None:
    """``async with`` closes the stores; closing twice is fine."""
    backend = SQLiteQueueBackend(tmp_path / "q.sqlite3")
    async with Queue(backend) as queue:

        @queue.task("t")
        async def t(ctx: Context, n: int) -> None: ...

        await queue.enqueue("t", 1)
        assert _thread_of(backend) is not None
    assert _thread_of(backend) is None
    await queue.aclose()
    async with tasker.Scheduler(state_dir=tmp_path / "state") as scheduler:
        assert scheduler.statistics().runs_started == 0
    await scheduler.aclose()


def _thread_of(backend: SQLiteQueueBackend) -> object:
    """The backend's connection thread, if it has one now."""
    return backend._db._thread
