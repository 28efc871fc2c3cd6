"""The Postgres queue backend on a real server: contract, transactions, wake-ups, processes."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest

import tasker
from tasker.queue import GroupSpec, NewTask, Outcome, OutcomeKind, Queue, TaskState
from tasker.testing import queue_backend_machine
from tasker_pg import PostgresQueueBackend

pytestmark = pytest.mark.anyio

LOCAL_DSN = os.environ.get(
    "TASKER_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test?sslmode=disable"
)


_MACHINE_SCHEMAS: list[str] = []


async def _fresh_backend() -> PostgresQueueBackend:
    schema = f"q_{uuid.uuid4().hex[:10]}"
    _MACHINE_SCHEMAS.append(schema)
    backend = PostgresQueueBackend(LOCAL_DSN, schema=schema)
    await backend.migrate()
    return backend


@pytest.fixture
async def backend(pg_dsn: str, schema: str) -> AsyncIterator[PostgresQueueBackend]:
    queue_backend = PostgresQueueBackend(pg_dsn, schema=schema)
    await queue_backend.migrate()
    yield queue_backend
    await queue_backend.aclose()


def test_contract_state_machine(pg_dsn: str) -> None:
    """The same hypothesis state machine as every backend, against Postgres."""
    global LOCAL_DSN
    LOCAL_DSN = pg_dsn
    machine = queue_backend_machine(_fresh_backend)
    try:
        machine.TestCase("runTest").runTest()
    finally:  # one schema per example: leave the shared database as it was

        async def drop() -> None:
            conn = await asyncpg.connect(pg_dsn)
            try:
                for schema in _MACHINE_SCHEMAS:
                    await conn.execute(f'drop schema if exists "{schema}" cascade')
            finally:
                await conn.close()

        anyio.run(drop)
        _MACHINE_SCHEMAS.clear()


async def test_enqueue_in_transaction_commit_and_rollback(
    backend: PostgresQueueBackend, pg_dsn: str
) -> None:
    """A task enqueued on the caller's connection exists only if the transaction commits."""
    queue = Queue(backend)

    @queue.task("t")
    async def t(ctx: tasker.Context, payload: Any) -> None:
        pass

    conn = await asyncpg.connect(pg_dsn)
    try:
        async with conn.transaction():
            kept = await queue.enqueue("t", "commit", connection=conn)
        lost_ids: list[str] = []

        async def enqueue_then_fail() -> None:
            async with conn.transaction():
                lost_ids.append((await queue.enqueue("t", "rollback", connection=conn)).id)
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            await enqueue_then_fail()
        with pytest.raises(ValueError, match="inside a transaction"):
            await queue.enqueue("t", "no transaction", connection=conn)
    finally:
        await conn.close()
    assert (await queue.get(kept.id)) is not None
    assert await queue.get(lost_ids[0]) is None
    assert await queue.counts() == {"default": {"queued": 1}}


async def test_hostile_names_and_payloads_are_data(backend: PostgresQueueBackend) -> None:
    """Quotes and SQL in queue names, task names and payloads are stored verbatim."""
    queue = Queue(backend)
    evil = "x'); drop table queue_tasks; --"
    seen: list[Any] = []

    async def handler(ctx: tasker.Context, payload: Any) -> Any:
        seen.append(payload)
        return payload

    queue.register(evil, handler, queue=evil)
    task = await queue.enqueue(evil, {"sql": evil})
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: tasker.run(queue.worker(evil, poll=0.1), shutdown_trigger=stop.wait))
        with anyio.fail_after(10):
            while not seen:  # noqa: ASYNC110 - waiting on the handler's side effect
                await anyio.sleep(0.01)
        stop.set()
    info = await queue.get(task.id)
    assert info is not None
    assert info.result == {"sql": evil}
    assert await queue.counts() == {evil: {"succeeded": 1}}


async def test_notify_wakes_idle_workers_fast(backend: PostgresQueueBackend) -> None:
    """With idle workers listening, enqueue-to-start is milliseconds, not the poll interval."""
    queue = Queue(backend)
    started: dict[int, float] = {}
    arrived = anyio.Event()

    @queue.task("t")
    async def t(ctx: tasker.Context, payload: int) -> None:
        started[payload] = anyio.current_time()
        arrived.set()

    delays = []
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: tasker.run(queue.worker(poll=30), shutdown_trigger=stop.wait))
        await anyio.sleep(0.3)
        for i in range(20):
            arrived = anyio.Event()
            sent = anyio.current_time()
            await queue.enqueue("t", i)
            with anyio.fail_after(5):
                await arrived.wait()
            delays.append(started[i] - sent)
        stop.set()
    delays.sort()
    assert delays[len(delays) // 2] < 0.05  # the poll interval is 30 s


async def test_listener_reconnects_after_termination(
    backend: PostgresQueueBackend, pg_dsn: str
) -> None:
    """Killing the LISTEN connection does not deafen the worker: it reconnects and catches up."""
    queue = Queue(backend)
    ran: list[int] = []

    @queue.task("t")
    async def t(ctx: tasker.Context, payload: int) -> None:
        ran.append(payload)

    stop = anyio.Event()
    admin = await asyncpg.connect(pg_dsn)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: tasker.run(queue.worker(poll=30), shutdown_trigger=stop.wait))
            await queue.enqueue("t", 1)
            with anyio.fail_after(10):
                while ran != [1]:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            with anyio.fail_after(10):
                while backend._listener.connection is None:  # noqa: ASYNC110 - the worker sets it up
                    await anyio.sleep(0.01)
            listener = backend._listener.connection
            await admin.execute("select pg_terminate_backend($1)", listener.get_server_pid())
            await anyio.sleep(0.3)
            await queue.enqueue("t", 2)
            with anyio.fail_after(10):
                while ran != [1, 2]:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            stop.set()
    finally:
        await admin.close()
    assert ran == [1, 2]


async def test_group_and_chain_on_postgres(backend: PostgresQueueBackend) -> None:
    """Chains and groups work the same way on Postgres."""
    queue = Queue(backend)
    results: list[Any] = []

    @queue.task("double")
    async def double(ctx: tasker.Context, payload: int) -> int:
        return payload * 2

    @queue.task("collect")
    async def collect(ctx: tasker.Context, payload: Any) -> None:
        results.append(payload)

    await queue.enqueue_chain(queue.step("double", 5), queue.step("double"), queue.step("collect"))
    await queue.enqueue_group(
        [queue.step("double", n) for n in (1, 2, 3)], then=queue.step("collect")
    )
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: tasker.run(queue.worker(concurrency=4, poll=0.1), shutdown_trigger=stop.wait)
        )
        with anyio.fail_after(10):
            while len(results) < 2:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        stop.set()
    assert sorted(results, key=str) == sorted([20, [2, 4, 6]], key=str)
    counts = await queue.counts()
    assert counts["default"][TaskState.SUCCEEDED.value] == 7


async def test_status_reports_depth_age_and_workers(backend: PostgresQueueBackend) -> None:
    """status(): depth per queue and state, the oldest waiting age, workers and leases."""
    queue = Queue(backend)

    @queue.task("t")
    async def t(ctx: tasker.Context, payload: Any) -> None:
        pass

    for _ in range(3):
        await queue.enqueue("t")
    claimed = await backend.claim(["default"], 1, worker="w-1", lease=30, now=time.time())
    assert len(claimed) == 1
    report = await backend.status()
    assert report.depth == {"default": {"queued": 2, "running": 1}}
    assert report.oldest_waiting["default"] >= 0
    assert [(w.worker, w.tasks) for w in report.workers] == [("w-1", 1)]
    assert 0 < report.workers[0].lease_expires_in <= 30
    assert "worker w-1: 1 task(s)" in report.format()


async def test_group_member_dying_of_an_expired_lease_completes_the_group(
    backend: PostgresQueueBackend,
) -> None:
    """A grouped task whose worker died on its last attempt dies at the next claim, and the
    group's callback is enqueued (the callback fires once, with the other member's result)."""
    queue = Queue(backend)

    @queue.task("member", max_attempts=1)
    async def member(ctx: tasker.Context, payload: int) -> int:
        return payload

    @queue.task("collect")
    async def collect(ctx: tasker.Context, payload: Any) -> None:
        pass

    await queue.enqueue_group(
        [queue.step("member", 1), queue.step("member", 2)], then=queue.step("collect")
    )
    t0 = time.time()
    first, second = await backend.claim(["default"], 2, worker="w-dies", lease=1, now=t0)
    # The survivor's report arrives; the other worker never reports.
    await backend.finish([_succeeded(first.id, "w-dies", b"10", t0)], now=t0 + 0.5)
    assert await backend.claim(["default"], 5, worker="w-next", lease=30, now=t0 + 5) == []
    dead = await backend.get(second.id)
    assert dead is not None
    assert dead.state is TaskState.DEAD
    assert "lease expired" in (dead.last_error or "")
    (callback,) = await backend.claim(["default"], 5, worker="w-next", lease=30, now=t0 + 6)
    assert callback.name == "collect"
    expected = [b"10", b"null"] if first.group_index == 0 else [b"null", b"10"]
    assert callback.payload == b"[" + b",".join(expected) + b"]"
    assert await backend.claim(["default"], 5, worker="w-next", lease=30, now=t0 + 7) == []


async def test_a_report_after_the_lease_moved_on_is_ignored(
    backend: PostgresQueueBackend,
) -> None:
    """A slow worker's late outcome neither finishes the task nor writes history."""
    queue = Queue(backend)

    @queue.task("t", max_attempts=3)
    async def t(ctx: tasker.Context, payload: Any) -> None:
        pass

    await queue.enqueue("t")
    t0 = time.time()
    (slow,) = await backend.claim(["default"], 1, worker="w-slow", lease=1, now=t0)
    (again,) = await backend.claim(["default"], 1, worker="w-fast", lease=30, now=t0 + 2)
    assert again.id == slow.id
    assert again.attempts == 2
    await backend.finish([_succeeded(slow.id, "w-slow", b"1", t0)], now=t0 + 3)
    stored = await backend.get(slow.id)
    assert stored is not None
    assert (stored.state, stored.lease_owner) == (TaskState.RUNNING, "w-fast")
    assert await backend.history(task_id=slow.id) == []
    await backend.finish([_succeeded(slow.id, "w-fast", b"2", t0 + 2)], now=t0 + 4)
    stored = await backend.get(slow.id)
    assert stored is not None
    assert (stored.state, stored.result) == (TaskState.SUCCEEDED, b"2")
    assert [(h.worker, h.attempt) for h in await backend.history(task_id=slow.id)] == [
        ("w-fast", 2)
    ]


def _succeeded(task_id: str, worker: str, result: bytes, started: float) -> Outcome:
    return Outcome(
        id=task_id,
        worker=worker,
        kind=OutcomeKind.SUCCEEDED,
        started_at=started,
        finished_at=started + 0.1,
        result=result,
    )


async def test_finish_and_claim_never_takes_a_reported_task(
    backend: PostgresQueueBackend,
) -> None:
    """The combined call's claim spares the outcomes' tasks in every path: a late report of a
    task queued again by another worker, a retry due at once beside a chain step (the
    transactional path), and a grouped task reported late while its lease had expired."""
    t0 = time.time()

    def task(task_id: str, **options: Any) -> NewTask:
        return NewTask(
            id=task_id, name="n", queue="q", payload=b"1", run_at=t0, created_at=t0, **options
        )

    def outcome(task_id: str, worker: str, kind: OutcomeKind, **options: Any) -> Outcome:
        return Outcome(
            id=task_id, worker=worker, kind=kind, started_at=t0, finished_at=t0, **options
        )

    # A late report of a task that another worker took over and queued again.
    await backend.enqueue([task("late", max_attempts=5)], now=t0)
    await backend.claim(["q"], 1, worker="w1", lease=1, now=t0)
    await backend.claim(["q"], 1, worker="w2", lease=30, now=t0 + 2)
    await backend.finish(
        [outcome("late", "w2", OutcomeKind.RETRY, error="e", retry_at=t0 + 2)], now=t0 + 2
    )
    got = await backend.finish_and_claim(
        [outcome("late", "w1", OutcomeKind.SUCCEEDED, result=b"1")],
        now=t0 + 3, queues=["q"], limit=1, worker="w1", lease=30,
    )  # fmt: skip
    assert got == []
    # A retry due at once, reported with a chain step's success (a follow-up to enqueue).
    await backend.enqueue([task("retry", max_attempts=5), task("step")], now=t0 + 3)
    claimed = await backend.claim(["q"], 5, worker="w3", lease=30, now=t0 + 3)
    assert sorted(r.id for r in claimed) == ["late", "retry", "step"]
    got = await backend.finish_and_claim(
        [
            outcome("retry", "w3", OutcomeKind.RETRY, error="e", retry_at=t0 + 3),
            outcome("step", "w3", OutcomeKind.SUCCEEDED, follow_ups=(task("next"),)),
        ],
        now=t0 + 3, queues=["q"], limit=5, worker="w3", lease=30,
    )  # fmt: skip
    assert [r.id for r in got] == ["next"]
    # A grouped task reported late while another member's lease expired on its last attempt.
    await backend.enqueue(
        [task("g0", max_attempts=1, group_id="G", group_index=0),
         task("g1", max_attempts=1, group_id="G", group_index=1)],
        group=GroupSpec(id="G", size=2, callback=None), now=t0 + 4,
    )  # fmt: skip
    await backend.claim(["q"], 2, worker="w4", lease=1, now=t0 + 4)
    await backend.finish_and_claim(
        [outcome("g0", "w4", OutcomeKind.SUCCEEDED, result=b"1")],
        now=t0 + 6, queues=["q"], limit=1, worker="w4", lease=30,
    )  # fmt: skip
    g0, g1 = await backend.get("g0"), await backend.get("g1")
    assert g0 is not None
    assert g1 is not None
    assert (g0.state, g1.state) == (TaskState.SUCCEEDED, TaskState.DEAD)
