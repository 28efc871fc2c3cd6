"""Backpressure (``Queue(max_depth=...)``, ``QueueCapability.BOUNDED_QUEUES``): enqueues past
a queue's bound raise ``QueueFullError`` and store nothing, and concurrent producers (tasks of
one event loop, and OS processes on SQLite) never pass it together nor lose an enqueue
without an error; on the memory and SQLite backends (``tests/pg`` for Postgres)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasker import Context, TaskerError
from tasker.abc import QueueCapability
from tasker.queue import (
    MemoryQueueBackend,
    MissingCapabilityError,
    Queue,
    QueueFullError,
    SQLiteQueueBackend,
    TaskState,
)

from .test_queue_capabilities import CoreOnly

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The embedded backends that declare BOUNDED_QUEUES."""
    if request.param == "memory":
        return MemoryQueueBackend()
    return SQLiteQueueBackend(tmp_path / "q.sqlite3")


def bounded(backend: Any, max_depth: Any) -> Queue:
    """A queue over ``backend`` with task ``t`` (queue ``default``) and ``m`` (``mail``)."""
    queue = Queue(backend, max_depth=max_depth)

    @queue.task("t")
    async def t(ctx: Context, n: int) -> int:
        return n

    @queue.task("m", queue="mail")
    async def m(ctx: Context, n: int) -> int:
        return n

    return queue


async def waiting(backend: Any, queue: str) -> int:
    """The depth of ``queue``: its held and queued tasks."""
    counts: dict[TaskState, int] = (await backend.counts()).get(queue, {})
    return counts.get(TaskState.QUEUED, 0) + counts.get(TaskState.HELD, 0)


async def test_an_enqueue_past_the_bound_raises_and_stores_nothing(backend: Any) -> None:
    """The error names the queue, its depth and bound, and is a RuntimeError and TaskerError."""
    queue = bounded(backend, 2)
    await queue.enqueue("t", 1)
    await queue.enqueue("t", 2, held=True)  # held tasks count
    with pytest.raises(QueueFullError) as info:
        await queue.enqueue("t", 3, delay=60)
    error = info.value
    assert (error.queue, error.depth, error.max_depth, error.adding) == ("default", 2, 2, 1)
    assert isinstance(error, RuntimeError)
    assert isinstance(error, TaskerError)
    assert "queue 'default' is full: 2 tasks waiting (held or queued) of max_depth=2" in str(error)
    assert pickle.loads(pickle.dumps(error)).max_depth == 2  # noqa: S301 - our own object
    assert await waiting(backend, "default") == 2
    await queue.enqueue("m", 1)  # every queue has its own bound
    (_claimed,) = await backend.claim(
        ["default"], 1, worker="w", lease=30.0, now=await backend.time()
    )
    await queue.enqueue("t", 4)  # a running task does not count


async def test_a_mapping_bounds_only_the_queues_it_names(backend: Any) -> None:
    """Queues not named are unbounded."""
    queue = bounded(backend, {"mail": 1})
    for n in range(5):
        await queue.enqueue("t", n)
    await queue.enqueue("m", 1)
    with pytest.raises(QueueFullError, match="'mail'"):
        await queue.enqueue("m", 2)


async def test_a_deduplicated_enqueue_is_never_refused(backend: Any) -> None:
    """A task id or a unique key already stored adds nothing, so a full queue accepts it."""
    queue = bounded(backend, 1)
    first = await queue.enqueue("t", 1, task_id="order-1", unique_key="k")
    again = await queue.enqueue("t", 1, task_id="order-1")
    assert again.deduplicated
    assert again.id == first.id
    same_key = await queue.enqueue("t", 2, unique_key="k")
    assert same_key.deduplicated
    assert same_key.id == first.id
    with pytest.raises(QueueFullError):
        await queue.enqueue("t", 3)


async def test_a_group_is_all_or_nothing_and_its_callback_is_not_counted(backend: Any) -> None:
    """Members that would not all fit are refused together; the callback and a chain's later
    steps are enqueued as the workflow moves on, never refused."""
    queue = bounded(backend, 2)
    with pytest.raises(QueueFullError) as info:
        await queue.enqueue_group([queue.step("t", n) for n in range(3)])
    assert info.value.adding == 3
    assert await waiting(backend, "default") == 0
    await queue.enqueue_group([queue.step("t", 1), queue.step("t", 2)], then=queue.step("t"))
    assert await waiting(backend, "default") == 2
    with pytest.raises(QueueFullError):
        await queue.enqueue_chain(queue.step("t", 1), queue.step("t"))


def test_bad_bounds_name_the_parameter() -> None:
    """A bound below 1, of the wrong type, or for an empty name fails at construction."""
    with pytest.raises(ValueError, match=r"max_depth must be at least 1, got 0"):
        Queue(MemoryQueueBackend(), max_depth=0)
    with pytest.raises(TypeError, match=r"max_depth must be an int .* got True"):
        Queue(MemoryQueueBackend(), max_depth=True)
    with pytest.raises(TypeError, match=r"max_depth must be an int .* got '10'"):
        Queue(MemoryQueueBackend(), max_depth="10")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"max_depth\['mail'\] must be at least 1, got -1"):
        Queue(MemoryQueueBackend(), max_depth={"mail": -1})
    with pytest.raises(ValueError, match=r"max_depth's keys must be queue names, got ''"):
        Queue(MemoryQueueBackend(), max_depth={"": 1})


def test_a_backend_without_bounded_queues_is_refused_at_construction() -> None:
    """max_depth on a backend that cannot check it atomically fails when the queue is built."""
    with pytest.raises(MissingCapabilityError) as info:
        Queue(CoreOnly(), max_depth=10)
    assert info.value.capability is QueueCapability.BOUNDED_QUEUES
    assert info.value.needed_by == "Queue(max_depth=...)"


@pytest.fixture
def anyio_backend() -> str:
    """Hypothesis drives the event loop itself here: asyncio (trio runs the unit tests)."""
    return "asyncio"


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    bound=st.integers(1, 8),
    producers=st.lists(st.lists(st.integers(1, 3), min_size=1, max_size=6), min_size=2, max_size=5),
    consume=st.lists(st.integers(0, 3), max_size=6),
    use_sqlite=st.booleans(),
)
async def test_concurrent_producers_never_pass_the_bound_nor_lose_an_enqueue(
    tmp_path_factory: pytest.TempPathFactory,
    bound: int,
    producers: list[list[int]],
    consume: list[int],
    use_sqlite: bool,
) -> None:
    """Producers enqueueing batches at once (each a task of one loop) while a worker takes
    tasks: at every observation at most ``bound`` tasks wait, and every task was either
    stored or refused with QueueFullError (counted: stored + refused = offered)."""
    backend: Any = (
        SQLiteQueueBackend(tmp_path_factory.mktemp("bp") / "q.sqlite3")
        if use_sqlite
        else MemoryQueueBackend()
    )
    queue = bounded(backend, bound)
    stored: list[str] = []
    refused = 0
    refusals: list[tuple[int, int, int]] = []  # (max_depth, adding, the batch's size)
    observed: list[int] = []

    async def produce(batches: list[int]) -> None:
        nonlocal refused
        for size in batches:
            try:
                if size == 1:
                    stored.append((await queue.enqueue("t", 0)).id)
                else:
                    group = await queue.enqueue_group([queue.step("t", n) for n in range(size)])
                    stored.extend(e.id for e in group)
            except QueueFullError as exc:
                refusals.append((exc.max_depth, exc.adding, size))
                refused += size
            observed.append(await waiting(backend, "default"))

    claimed: list[str] = []

    async def take() -> None:
        for limit in consume:
            now = await backend.time()
            records = await backend.claim(["default"], limit, worker="w", lease=30.0, now=now)
            claimed.extend(r.id for r in records)
            await anyio.lowlevel.checkpoint()

    try:
        async with anyio.create_task_group() as tg:
            for batches in producers:
                tg.start_soon(produce, batches)
            tg.start_soon(take)
        offered = sum(sum(batches) for batches in producers)
        assert max(observed) <= bound, observed
        assert all(got == bound and adding == size for got, adding, size in refusals)
        assert len(stored) + refused == offered
        assert len(set(stored)) == len(stored)
        counts = await backend.counts()
        in_store = sum(counts.get("default", {}).values())
        assert in_store == len(stored), "every task reported stored is stored, and no other"
        assert await waiting(backend, "default") == len(stored) - len(claimed) <= bound
    finally:
        await backend.aclose()


_PRODUCER = """
import anyio, json, sys
from tasker import Context
from tasker.queue import Queue, QueueFullError, SQLiteQueueBackend

async def main() -> None:
    queue = Queue(SQLiteQueueBackend(sys.argv[1]), max_depth=int(sys.argv[2]))

    @queue.task("t")
    async def t(ctx: Context, n: int) -> None: ...

    stored = refused = 0
    for n in range(int(sys.argv[3])):
        try:
            await queue.enqueue("t", n)
            stored += 1
        except QueueFullError:
            refused += 1
    print(json.dumps({"stored": stored, "refused": refused}))

anyio.run(main)
"""


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_producer_processes_on_sqlite_never_pass_the_bound(tmp_path: Path) -> None:
    """Four OS processes enqueue 40 tasks each against a bound of 50 while this one takes
    tasks: the queue never holds more than 50, and stored + refused = offered."""
    path = tmp_path / "q.sqlite3"
    backend = SQLiteQueueBackend(path)
    await backend.counts()  # the file and its schema exist before the producers start
    processes = [
        subprocess.Popen(  # noqa: ASYNC220 - started at once, then polled without blocking
            [sys.executable, "-c", _PRODUCER, str(path), "50", "40"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    taken = 0
    peak = 0
    try:
        while any(p.poll() is None for p in processes):
            peak = max(peak, await waiting(backend, "default"))
            now = await backend.time()
            taken += len(await backend.claim(["default"], 3, worker="w", lease=60.0, now=now))
            await anyio.sleep(0.005)
        results = [json.loads(p.communicate()[0]) for p in processes]
    finally:
        for p in processes:
            p.kill()
        await backend.aclose()
    backend = SQLiteQueueBackend(path)
    try:
        depth = await waiting(backend, "default")
        total = sum((await backend.counts()).get("default", {}).values())
    finally:
        await backend.aclose()
    assert max(peak, depth) <= 50
    assert sum(r["stored"] + r["refused"] for r in results) == 160
    assert sum(r["stored"] for r in results) == total == depth + taken
