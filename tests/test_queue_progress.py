"""Progress reports (``current_task().report_progress``, ``QueueCapability.PROGRESS``): what
``get``, status and the dashboard show, how reports are coalesced, what a retry and a success
do to them, and the errors; on the memory and SQLite backends (the contract machine checks
the stores on Postgres too)."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import tasker
from tasker import Context
from tasker._cli import format_report
from tasker._status import collect
from tasker.abc import QueueCapability, TaskProgress
from tasker.queue import (
    MemoryQueueBackend,
    MissingCapabilityError,
    NewTask,
    Progress,
    Queue,
    SQLiteQueueBackend,
    TaskState,
    Worker,
    current_task,
)

from .test_queue_capabilities import CoreOnly

pytestmark = pytest.mark.anyio

#: Heartbeats every LEASE / 3 = 0.1 s: a kept report is written that soon.
LEASE = 0.3


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The embedded backends that declare PROGRESS, each counting its progress writes."""
    inner: Any = (
        MemoryQueueBackend()
        if request.param == "memory"
        else SQLiteQueueBackend(tmp_path / "q.sqlite3")
    )
    writes: list[tuple[str, float, str]] = []
    original = inner.report_progress

    async def counted(worker: str, task_id: str, value: float, text: str, *, now: float) -> bool:
        writes.append((task_id, value, text))
        stored: bool = await original(worker, task_id, value, text, now=now)
        return stored

    inner.report_progress = counted
    inner.writes = writes
    return inner


@asynccontextmanager
async def working(queue: Queue) -> AsyncIterator[Worker]:
    """A worker running beside the test until the block ends (then it stops)."""
    worker = queue.worker(concurrency=2, lease=LEASE, poll=0.05)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(tasker.run, worker, shutdown_trigger=stop.wait, grace=1.0))
        try:
            yield worker
        finally:
            stop.set()


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll ``check`` until it holds: the state is the backend's, no event tells of it."""
    with anyio.fail_after(timeout):
        while not await check():  # noqa: ASYNC110 - a stored state, polled
            await anyio.sleep(0.01)


def report(value: float, text: str = "") -> Awaitable[None]:
    """``current_task().report_progress(...)`` inside a handler."""
    task = current_task()
    assert task is not None
    return task.report_progress(value, text)


def test_the_memory_sqlite_and_postgres_backends_declare_progress() -> None:
    """The capability and its protocol, where it is implemented; Redis, NATS, RabbitMQ lack it."""
    from tasker_amqp import AmqpQueueBackend
    from tasker_nats import NatsQueueBackend
    from tasker_pg import PostgresQueueBackend
    from tasker_redis import RedisQueueBackend

    for implemented in (MemoryQueueBackend, SQLiteQueueBackend, PostgresQueueBackend):
        assert QueueCapability.PROGRESS in implemented.capabilities
        assert issubclass(implemented, TaskProgress)
    for missing in (RedisQueueBackend, NatsQueueBackend, AmqpQueueBackend):
        assert QueueCapability.PROGRESS not in missing.capabilities


async def test_a_report_is_shown_by_get_and_kept_after_success(backend: Any) -> None:
    """The value and text a handler reports are in ``TaskInfo.progress`` while it runs, and
    stay once it succeeded."""
    queue = Queue(backend)
    reported = anyio.Event()
    finish = anyio.Event()

    @queue.task
    async def resize(ctx: Context, n: int) -> int:
        await report(0.4, f"resized 4 of {n}")
        reported.set()
        await finish.wait()
        await report(1.0, "done")
        return n

    enqueued = await resize.enqueue(10)
    async with working(queue):
        await reported.wait()
        info = await queue.get(enqueued.id)
        assert info is not None
        assert info.state is TaskState.RUNNING
        assert info.progress is not None
        assert (info.progress.value, info.progress.text) == (0.4, "resized 4 of 10")
        assert info.progress.updated_at >= info.created_at
        finish.set()

        async def succeeded() -> bool:
            info = await queue.get(enqueued.id)
            return info is not None and info.state is TaskState.SUCCEEDED

        await until(succeeded)
    info = await queue.get(enqueued.id)
    assert info is not None
    assert info.progress is not None
    assert (info.progress.value, info.progress.text) == (1.0, "done")


async def test_a_tight_loop_is_coalesced_and_its_last_report_stored_before_the_outcome(
    backend: Any,
) -> None:
    """Ten thousand reports cost a handful of writes, and the last one is stored when the
    task's outcome is recorded."""
    queue = Queue(backend)

    @queue.task
    async def busy(ctx: Context, n: int) -> None:
        for i in range(1, n + 1):
            await report(i / n, f"{i} of {n}")
        await anyio.lowlevel.checkpoint()

    enqueued = await busy.enqueue(10_000)
    async with working(queue):

        async def done() -> bool:
            info = await queue.get(enqueued.id)
            return info is not None and info.state is TaskState.SUCCEEDED

        await until(done)
    info = await queue.get(enqueued.id)
    assert info is not None
    assert info.progress is not None
    assert (info.progress.value, info.progress.text) == (1.0, "10000 of 10000")
    assert 2 <= len(backend.writes) <= 5, backend.writes  # the first, maybe a few, the last
    assert backend.writes[0][1:] == (1 / 10_000, "1 of 10000")


async def test_a_kept_report_is_written_at_the_next_heartbeat(backend: Any) -> None:
    """A report within the interval of the last write reaches the store at the next
    heartbeat (every ``lease / 3``), while the handler still runs."""
    queue = Queue(backend)
    finish = anyio.Event()

    @queue.task
    async def slow(ctx: Context) -> None:
        await report(0.1, "started")
        await report(0.2, "kept")  # within 0.5 s of the first write
        await finish.wait()

    enqueued = await slow.enqueue()
    async with working(queue):

        async def kept_written() -> bool:
            info = await queue.get(enqueued.id)
            return info is not None and info.progress is not None and info.progress.value == 0.2

        await until(kept_written, timeout=2.0)
        info = await queue.get(enqueued.id)
        assert info is not None
        assert info.state is TaskState.RUNNING
        finish.set()


async def test_a_retry_keeps_the_progress_until_the_next_attempt_starts(backend: Any) -> None:
    """The failed attempt's progress is shown while the retry waits; the next attempt starts
    without one."""
    queue = Queue(backend)
    second = anyio.Event()
    finish = anyio.Event()

    @queue.task(max_attempts=2, backoff=tasker.Backoff(initial=0.3, maximum=0.3, jitter=0.0))
    async def flaky(ctx: Context) -> None:
        task = current_task()
        assert task is not None
        if task.attempt == 1:
            await report(0.5, "half way")
            raise RuntimeError("boom")
        second.set()
        await finish.wait()

    enqueued = await flaky.enqueue()
    async with working(queue):

        async def waiting_for_retry() -> bool:
            info = await queue.get(enqueued.id)
            return info is not None and info.state is TaskState.QUEUED and info.attempts == 1

        await until(waiting_for_retry)
        info = await queue.get(enqueued.id)
        assert info is not None
        assert info.progress is not None
        assert (info.progress.value, info.progress.text) == (0.5, "half way")
        await second.wait()
        info = await queue.get(enqueued.id)
        assert info is not None
        assert info.state is TaskState.RUNNING
        assert info.progress is None
        finish.set()


@pytest.mark.parametrize(
    ("value", "text", "error", "match"),
    [
        (math.nan, "", ValueError, r"value must be a fraction from 0.0 to 1.0, got nan"),
        (-0.1, "", ValueError, r"value .* got -0.1"),
        (1.5, "", ValueError, r"value .* got 1.5"),
        (math.inf, "", ValueError, r"value .* got inf"),
        (True, "", TypeError, r"value must be a number .* got True"),
        ("0.5", "", TypeError, r"value must be a number .* got '0.5'"),
        (0.5, None, TypeError, r"text must be a str, got None"),
        (0.5, "x" * 201, ValueError, r"text must be at most 200 characters, got 201"),
    ],
)
async def test_a_bad_report_fails_in_the_handler_naming_the_parameter(
    value: Any, text: Any, error: type[Exception], match: str
) -> None:
    """A bad value or text raises at the report (the handler fails with it); nothing is
    stored."""
    queue = Queue(MemoryQueueBackend())
    raised: list[BaseException] = []

    @queue.task(max_attempts=1)
    async def bad(ctx: Context) -> None:
        try:
            await report(value, text)
        except Exception as exc:
            raised.append(exc)
            raise

    enqueued = await bad.enqueue()
    async with working(queue):

        async def dead() -> bool:
            info = await queue.get(enqueued.id)
            return info is not None and info.state is TaskState.DEAD

        await until(dead)
    (exc,) = raised
    assert isinstance(exc, error)
    with pytest.raises(error, match=match):
        raise exc
    info = await queue.get(enqueued.id)
    assert info is not None
    assert info.progress is None


def test_a_progress_record_validates_itself() -> None:
    """``Progress`` is a frozen value that refuses what a report would."""
    with pytest.raises(ValueError, match="Progress: value must be a fraction"):
        Progress(value=2.0, updated_at=0.0)
    progress = Progress(value=1, text="all", updated_at=5.0)
    assert progress.value == 1
    assert progress.text == "all"


async def test_a_backend_without_progress_fails_the_report_fast() -> None:
    """On a backend that does not declare PROGRESS the report raises MissingCapabilityError
    naming it (a silent no-op would hide that progress is never shown)."""
    queue = Queue(CoreOnly())
    raised: list[BaseException] = []

    @queue.task(max_attempts=1)
    async def reporting(ctx: Context) -> None:
        try:
            await report(0.5)
        except Exception as exc:
            raised.append(exc)
            raise

    await reporting.enqueue()
    async with working(queue):
        with anyio.fail_after(10):
            while not raised:  # noqa: ASYNC110 - set by the handler
                await anyio.sleep(0.01)
    (exc,) = raised
    assert isinstance(exc, MissingCapabilityError)
    assert exc.capability is QueueCapability.PROGRESS
    assert "current_task().report_progress()" in str(exc)


async def test_only_the_lease_holder_writes(backend: Any) -> None:
    """The store takes a report only from the worker that holds the task."""
    now = await backend.time()
    task = NewTask(id="t1", name="n", queue="q", payload=b"{}", run_at=now, created_at=now)
    await backend.enqueue([task], now=now)
    assert not await backend.report_progress("w1", "t1", 0.5, "queued", now=now)
    (claimed,) = await backend.claim(["q"], 1, worker="w1", lease=30.0, now=now)
    assert claimed.progress is None
    assert not await backend.report_progress("w2", "t1", 0.5, "not mine", now=now)
    assert await backend.report_progress("w1", "t1", 0.5, "mine", now=now)
    assert not await backend.report_progress("w1", "nope", 0.5, "unknown", now=now)
    record = await backend.get("t1")
    assert record.progress == Progress(value=0.5, text="mine", updated_at=now)


async def test_status_shows_the_progress_of_running_tasks(backend: Any) -> None:
    """``tasker status`` lists running tasks with their progress."""
    queue = Queue(backend)
    reported = anyio.Event()
    finish = anyio.Event()

    @queue.task
    async def resize(ctx: Context) -> None:
        await report(0.25, "resized 1 of 4")
        reported.set()
        await finish.wait()

    enqueued = await resize.enqueue()
    async with working(queue):
        await reported.wait()
        report_ = await collect([queue])
        finish.set()
    (row,) = report_.progress
    assert (row["id"], row["name"], row["value"], row["text"]) == (
        enqueued.id,
        resize.name,
        0.25,
        "resized 1 of 4",
    )
    text = format_report(report_)
    assert "25%  resized 1 of 4" in text


async def test_a_database_of_an_earlier_version_gets_the_progress_columns(
    tmp_path: Path,
) -> None:
    """Opening a SQLite file made before progress adds its columns, and keeps its tasks."""
    path = tmp_path / "old.sqlite3"
    backend = SQLiteQueueBackend(path)
    now = await backend.time()
    task = NewTask(id="old", name="n", queue="q", payload=b"{}", run_at=now, created_at=now)
    await backend.enqueue([task], now=now)
    await backend.aclose()
    with sqlite3.connect(path) as db:
        for column in ("progress", "progress_text", "progress_at"):
            db.execute(f"alter table tasks drop column {column}")
    reopened = SQLiteQueueBackend(path)
    try:
        (claimed,) = await reopened.claim(["q"], 1, worker="w", lease=30.0, now=now)
        assert claimed.id == "old"
        assert claimed.progress is None
        assert await reopened.report_progress("w", "old", 1.0, "", now=now)
    finally:
        await reopened.aclose()
