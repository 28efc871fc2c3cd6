"""The NATS queue backend through tasker's Queue and workers: results, chains, groups, unique
keys, delays, wake-ups, several processes' views, a server restart, and its options."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

import tasker
import tasker_nats
from tasker.queue import (
    GroupSpec,
    NewTask,
    Outcome,
    OutcomeKind,
    Queue,
    TaskState,
    UnstorableRecordError,
)
from tasker_nats import NatsQueueBackend, NatsSetupError

from .servers import PrivateNats

pytestmark = pytest.mark.anyio


@pytest.fixture
async def backend(nats_url: str, namespace: str) -> AsyncIterator[NatsQueueBackend]:
    backend = NatsQueueBackend(nats_url, namespace=namespace)
    yield backend
    await backend.aclose()


async def _until(condition: Any, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - waiting on another task's side effect
            await anyio.sleep(0.005)


async def test_tasks_run_and_their_results_are_kept(backend: NatsQueueBackend) -> None:
    queue = Queue(backend)
    seen: list[int] = []

    @queue.task("double", max_attempts=3)
    async def double(ctx: tasker.Context, payload: int) -> int:
        seen.append(payload)
        if payload == 3 and seen.count(3) == 1:
            raise RuntimeError("first try fails")
        return payload * 2

    tasks = [await double.enqueue(i) for i in range(5)]
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: tasker.run(queue.worker(poll=5), shutdown_trigger=stop.wait))
        await _until(lambda: len(seen) == 6)
        stop.set()
    results = [await double.get(t.id) for t in tasks]
    assert [r.result if r else None for r in results] == [0, 2, 4, 6, 8]
    assert sorted(seen) == [0, 1, 2, 3, 3, 4]
    counts = await queue.counts()
    assert counts == {"default": {"succeeded": 5}}
    history = await queue.history(task_id=tasks[3].id)
    assert [h.outcome for h in history] == ["succeeded", "retry"]


async def test_chains_and_groups_run_their_steps_once(backend: NatsQueueBackend) -> None:
    queue = Queue(backend)
    ran: list[str] = []

    @queue.task("step")
    async def step(ctx: tasker.Context, payload: Any) -> Any:
        ran.append(f"step:{payload}")
        return payload

    @queue.task("sum")
    async def total(ctx: tasker.Context, payload: list[int]) -> int:
        ran.append(f"sum:{payload}")
        return sum(payload)

    await queue.enqueue_chain(queue.step("step", 1), queue.step("step"))
    await queue.enqueue_group(
        [queue.step("step", 10), queue.step("step", 20), queue.step("step", 30)],
        then=queue.step("sum"),
    )
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: tasker.run(queue.worker(concurrency=4, poll=5), shutdown_trigger=stop.wait)
        )
        await _until(lambda: any(r.startswith("sum:") for r in ran) and ran.count("step:1") == 2)
        await anyio.sleep(0.3)  # nothing more may come
        stop.set()
    assert sorted(ran) == sorted(
        ["step:1", "step:1", "step:10", "step:20", "step:30", "sum:[10, 20, 30]"]
    )


async def test_unique_keys_deduplicate_across_backends(nats_url: str, namespace: str) -> None:
    """Two backends (two views, as two processes have) share one unique key."""
    first = Queue(NatsQueueBackend(nats_url, namespace=namespace))
    second = Queue(NatsQueueBackend(nats_url, namespace=namespace))
    first.register("job", _noop)
    second.register("job", _noop)
    try:
        a = await first.enqueue("job", 1, unique_key="k", unique_for=60)
        b = await second.enqueue("job", 2, unique_key="k", unique_for=60)
        assert b.id == a.id
        assert b.deduplicated
        info = await second.get(a.id)
        assert info is not None
        assert info.state is TaskState.QUEUED
    finally:
        await first.aclose()
        await second.aclose()


async def _until_async(read: Any, wanted: Any, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while await read() != wanted:  # noqa: ASYNC110 - another process's writes
            await anyio.sleep(0.005)


async def _noop(ctx: tasker.Context, payload: Any) -> None:
    return None


async def test_concurrent_claims_from_two_views_take_each_task_once(
    nats_url: str, namespace: str
) -> None:
    producer = NatsQueueBackend(nats_url, namespace=namespace)
    workers = [NatsQueueBackend(nats_url, namespace=namespace) for _ in range(2)]
    try:
        for backend in workers:  # connected, their views caught up: both start at once
            await backend.time()
        now = await producer.time()
        tasks = [
            NewTask(
                id=f"t{i:04d}",
                name="job",
                queue="q",
                payload=b"{}",
                run_at=now,
                created_at=now + i * 1e-6,
            )
            for i in range(300)
        ]
        await producer.enqueue(tasks, now=now)
        for backend in workers:  # both views know every task before either claims
            await _until_async(lambda b=backend: b.counts(), {"q": {TaskState.QUEUED: len(tasks)}})
        taken: dict[str, list[str]] = {}

        async def drain(name: str, backend: NatsQueueBackend) -> None:
            while True:
                claimed = await backend.claim(
                    ["q"], 5, worker=name, lease=30, now=await backend.time()
                )
                if not claimed:
                    if sum(len(v) for v in taken.values()) >= len(tasks):
                        return
                    await anyio.sleep(0.01)
                    continue
                for record in claimed:
                    taken.setdefault(record.id, []).append(name)
                # A worker's pace, so that on a loaded machine one view cannot take every
                # batch before the other's first claim is answered (both must take some).
                await anyio.sleep(0.005)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for index, backend in enumerate(workers):
                    tg.start_soon(drain, f"w{index}", backend)
        assert sorted(taken) == [t.id for t in tasks]
        assert all(len(owners) == 1 for owners in taken.values()), "a task was claimed twice"
        assert len({owners[0] for owners in taken.values()}) == 2, "both workers took some"
    finally:
        for backend in [producer, *workers]:
            await backend.aclose()


async def test_an_idle_worker_wakes_within_milliseconds(backend: NatsQueueBackend) -> None:
    queue = Queue(backend)
    started: dict[int, float] = {}

    @queue.task("t")
    async def t(ctx: tasker.Context, payload: int) -> None:
        started[payload] = time.monotonic()

    delays = []
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: tasker.run(queue.worker(poll=30), shutdown_trigger=stop.wait))
        await anyio.sleep(0.3)
        for i in range(20):
            sent = time.monotonic()
            await t.enqueue(i)
            await _until(lambda i=i: i in started, 5)
            delays.append(started[i] - sent)
        stop.set()
    delays.sort()
    assert delays[len(delays) // 2] < 0.05  # the poll interval is 30 s


async def test_a_delayed_task_waits_for_its_time(backend: NatsQueueBackend) -> None:
    queue = Queue(backend)
    started: list[float] = []

    @queue.task("later")
    async def later(ctx: tasker.Context, payload: None) -> None:
        started.append(time.monotonic())

    sent = time.monotonic()
    await later.enqueue(None, delay=1.0)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: tasker.run(queue.worker(poll=30), shutdown_trigger=stop.wait))
        await _until(lambda: bool(started), 10)
        stop.set()
    assert 0.9 <= started[0] - sent < 3.0


async def test_the_view_follows_a_server_restart(private_nats: PrivateNats) -> None:
    """nats.py#504: consumers that stop after a server restart. The view's ordered consumer
    resumes, so a task enqueued by another process after the restart still wakes and runs."""
    namespace = f"r{uuid.uuid4().hex[:8]}"
    queue = Queue(NatsQueueBackend(private_nats.url, namespace=namespace))
    producer = Queue(NatsQueueBackend(private_nats.url, namespace=namespace))
    ran: list[int] = []

    async def job(ctx: tasker.Context, payload: int) -> None:
        ran.append(payload)

    queue.register("job", job)
    producer.register("job", job)
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: tasker.run(queue.worker(poll=60), shutdown_trigger=stop.wait))
            await producer.enqueue("job", 1)
            await _until(lambda: ran == [1])
            private_nats.restart()
            with anyio.fail_after(30):
                while True:
                    try:
                        await producer.enqueue("job", 2)
                        break
                    except Exception:
                        await anyio.sleep(0.2)
            sent = time.monotonic()
            await _until(lambda: 2 in ran, 30)  # the worker's poll is 60 s: woken, not polled
            woke = time.monotonic() - sent
            stop.set()
    finally:
        await queue.aclose()
        await producer.aclose()
    assert ran == [1, 2]
    # The view's consumer is made again at the reconnect, not two missed heartbeats later.
    assert woke < 2.0, woke


async def test_too_old_a_server_fails_fast_with_the_fix(
    nats_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasker_nats import _queue_backend

    monkeypatch.setattr(_queue_backend, "QUEUE_MIN_VERSION", (99, 0, 0))
    backend = NatsQueueBackend(nats_url, namespace=namespace)
    with pytest.raises(NatsSetupError) as caught:
        await backend.time()
    assert "the queue needs 99.0.0 or newer (atomic batches)" in str(caught.value)
    assert "upgrade the server" in str(caught.value)
    await backend.aclose()


def test_bad_options_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="namespace"):
        NatsQueueBackend("nats://localhost", namespace="a.b")
    with pytest.raises(ValueError, match="history_limit"):
        NatsQueueBackend("nats://localhost", history_limit=-1)
    with pytest.raises(TypeError, match="history_limit"):
        NatsQueueBackend("nats://localhost", history_limit=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="replicas"):
        NatsQueueBackend("nats://localhost", replicas=0)
    with pytest.raises(ValueError, match="clock_resync"):
        NatsQueueBackend("nats://localhost", clock_resync=-1)
    with pytest.raises(ValueError, match="NatsSource"):
        NatsQueueBackend(tasker_nats.NatsSource("nats://localhost"), token="x")  # noqa: S106


def test_the_repr_hides_the_password() -> None:
    backend = NatsQueueBackend("nats://app:hunter2@localhost:4222", namespace="shop")
    assert "hunter2" not in repr(backend)
    assert "localhost:4222" in repr(backend)
    assert "shop" in repr(backend)


def test_trio_is_refused_with_the_reason() -> None:
    backend = NatsQueueBackend("nats://127.0.0.1:1")

    async def main() -> None:
        await backend.time()

    with pytest.raises(tasker_nats.AsyncioRequiredError, match="trio"):
        anyio.run(main, backend="trio")


async def test_many_members_of_one_group_settle_in_one_finish(backend: NatsQueueBackend) -> None:
    """Twelve members finished together all write their group's record: each is recorded,
    and the callback is enqueued once, with every result."""
    now = await backend.time()
    callback = NewTask(id="cb", name="sum", queue="q", payload=b"", run_at=now, created_at=now)
    members = [
        NewTask(
            id=f"m{i:02d}",
            name="job",
            queue="q",
            payload=b"{}",
            run_at=now,
            created_at=now + i * 1e-6,
            group_id="G",
            group_index=i,
        )
        for i in range(12)
    ]
    await backend.enqueue(members, group=GroupSpec(id="G", size=12, callback=callback), now=now)
    claimed = await backend.claim(["q"], 12, worker="w", lease=30, now=now)
    assert len(claimed) == 12
    outcomes = [
        Outcome(
            id=r.id,
            worker="w",
            kind=OutcomeKind.SUCCEEDED,
            started_at=now,
            finished_at=now,
            result=str(r.group_index).encode(),
        )
        for r in claimed
    ]
    await backend.finish(outcomes, now=now)
    assert await backend.counts() == {"q": {TaskState.SUCCEEDED: 12, TaskState.QUEUED: 1}}
    stored = await backend.get("cb")
    assert stored is not None
    assert stored.payload == b"[" + b",".join(str(i).encode() for i in range(12)) + b"]"


async def test_a_result_too_large_for_the_server_is_unstorable(backend: NatsQueueBackend) -> None:
    """Alone or with a follow-up (an atomic batch), a record over the server's max payload
    is the record's fault, not an outage: UnstorableRecordError, and nothing half sent."""
    now = await backend.time()
    await backend.enqueue(
        [NewTask(id="big", name="job", queue="q", payload=b"{}", run_at=now, created_at=now)],
        now=now,
    )
    (record,) = await backend.claim(["q"], 1, worker="w", lease=30, now=now)
    follow = NewTask(id="next", name="job", queue="q", payload=b"{}", run_at=now, created_at=now)
    for follow_ups in ((), (follow,)):
        outcome = Outcome(
            id=record.id,
            worker="w",
            kind=OutcomeKind.SUCCEEDED,
            started_at=now,
            finished_at=now,
            result=b"x" * (2 * 1024 * 1024),
            follow_ups=follow_ups,
        )
        with pytest.raises(UnstorableRecordError):
            await backend.finish([outcome], now=now)
    assert await backend.get("next") is None
    assert (await backend.get("big")).state is TaskState.RUNNING  # type: ignore[union-attr]
