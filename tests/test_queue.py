"""The task queue on the memory and SQLite backends: options, outcomes, chains, groups, hooks."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

import tasker
from tasker import Backoff, Context
from tasker.queue import (
    PayloadError,
    Queue,
    QueueBackend,
    SQLiteQueueBackend,
    TaskState,
    UnknownTaskError,
)

from .helpers import check_chosen_task_ids

pytestmark = pytest.mark.anyio


async def until(predicate: Any, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not await predicate():  # noqa: ASYNC110 - polling the queue's public API
            await anyio.sleep(0.01)


class Running:
    """Runs a queue's worker in the background for the duration of a block."""

    def __init__(self, queue: Queue, **options: Any) -> None:
        self.queue = queue
        self.options = options

    async def __aenter__(self) -> Running:
        self._stop = anyio.Event()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        worker = self.queue.worker(**{"poll": 0.05, **self.options})
        self._tg.start_soon(lambda: tasker.run(worker, shutdown_trigger=self._stop.wait, grace=2))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        await self._tg.__aexit__(None, None, None)


async def finished(queue: Queue, task_id: str) -> bool:
    info = await queue.get(task_id)
    return info is not None and info.state in (TaskState.SUCCEEDED, TaskState.DEAD)


async def test_enqueue_run_and_result(backend: QueueBackend) -> None:
    """A task runs once with its payload; its result is retrievable by id."""
    queue = Queue(backend)
    seen: list[Any] = []

    @queue.task("add")
    async def add(ctx: Context, payload: dict[str, int]) -> int:
        seen.append(payload)
        return payload["a"] + payload["b"]

    task = await queue.enqueue("add", {"a": 2, "b": 3})
    assert not task.deduplicated
    async with Running(queue):
        await until(lambda: finished(queue, task.id))
    info = await queue.get(task.id)
    assert info is not None
    assert (info.state, info.result, info.attempts) == (TaskState.SUCCEEDED, 5, 1)
    assert seen == [{"a": 2, "b": 3}]
    history = await queue.history(task_id=task.id)
    assert [h.outcome for h in history] == ["succeeded"]
    assert history[0].duration >= 0


async def test_retries_then_dead_letter_with_traceback_and_hook(backend: QueueBackend) -> None:
    """A failing task is retried per its backoff, then dies with its error; on_failure runs."""
    failures: list[str] = []
    queue = Queue(backend, on_failure=lambda info: failures.append(info.id))
    attempts: list[int] = []

    @queue.task("flaky", max_attempts=3, backoff=Backoff.fixed(0.01))
    async def flaky(ctx: Context, payload: None) -> None:
        attempts.append(1)
        raise ValueError(f"attempt {len(attempts)} broke")

    task = await queue.enqueue("flaky")
    async with Running(queue):
        await until(lambda: finished(queue, task.id))
    info = await queue.get(task.id)
    assert info is not None
    assert (info.state, info.attempts, info.error) == (
        TaskState.DEAD,
        3,
        "ValueError: attempt 3 broke",
    )
    assert info.traceback is not None
    assert "ValueError: attempt 3 broke" in info.traceback
    assert len(attempts) == 3
    assert failures == [task.id]
    assert [d.id for d in await queue.dead()] == [task.id]
    assert [h.outcome for h in await queue.history(task_id=task.id)] == ["dead", "retry", "retry"]


async def test_requeue_dead_task(backend: QueueBackend) -> None:
    """A dead task re-enqueued with requeue() runs again with fresh attempts."""
    queue = Queue(backend)
    fail = True

    @queue.task("once", max_attempts=1)
    async def once(ctx: Context, payload: None) -> str:
        if fail:
            raise RuntimeError("not yet")
        return "ok"

    task = await queue.enqueue("once")
    async with Running(queue):
        await until(lambda: finished(queue, task.id))
        fail = False
        assert await queue.requeue(task.id)
        assert not await queue.requeue("no-such-task")

        async def succeeded() -> bool:
            info = await queue.get(task.id)
            return info is not None and info.state is TaskState.SUCCEEDED

        await until(succeeded)
    info = await queue.get(task.id)
    assert info is not None
    assert info.result == "ok"


async def test_delay_priority_and_queues(backend: QueueBackend) -> None:
    """Delayed tasks wait; higher priority runs first; a worker only takes its queues."""
    queue = Queue(backend)
    order: list[str] = []

    @queue.task("record")
    async def record(ctx: Context, payload: str) -> None:
        order.append(payload)

    started = anyio.current_time()
    await queue.enqueue("record", "late", delay=0.3)
    await queue.enqueue("record", "low", priority=1)
    await queue.enqueue("record", "high", priority=9)
    await queue.enqueue("record", "other queue", queue="other")
    async with Running(queue, concurrency=1):
        await until(lambda: _true(len(order) == 3))
    assert order == ["high", "low", "late"]
    assert anyio.current_time() - started >= 0.29
    counts = await queue.counts()
    assert counts["other"] == {"queued": 1}


async def _true(value: bool) -> bool:
    return value


async def test_at_a_time(backend: QueueBackend) -> None:
    """at= schedules a task for an aware datetime."""
    queue = Queue(backend)
    ran: list[float] = []

    @queue.task("t")
    async def t(ctx: Context, payload: None) -> None:
        ran.append(anyio.current_time())

    start = anyio.current_time()
    await queue.enqueue("t", at=datetime.now(UTC) + timedelta(seconds=0.25))
    async with Running(queue):
        await until(lambda: _true(bool(ran)))
    assert ran[0] - start >= 0.2


async def test_unique_key_deduplicates_while_pending_and_within_window(
    backend: QueueBackend,
) -> None:
    """A second enqueue of a pending unique key is deduplicated and names the first task."""
    queue = Queue(backend)

    @queue.task("report")
    async def report(ctx: Context, payload: None) -> None:
        pass

    first = await queue.enqueue("report", unique_key="daily-2026-01-01", unique_for=60)
    second = await queue.enqueue("report", unique_key="daily-2026-01-01", unique_for=60)
    assert second.deduplicated
    assert second.id == first.id
    async with Running(queue):
        await until(lambda: finished(queue, first.id))
    third = await queue.enqueue("report", unique_key="daily-2026-01-01")
    assert third.deduplicated  # finished, but within its 60 s window
    other = await queue.enqueue("report", unique_key="daily-2026-01-02")
    assert not other.deduplicated


async def test_a_chosen_task_id_deduplicates_while_the_task_is_stored(
    backend: QueueBackend,
) -> None:
    """An enqueue retried with its ``task_id`` runs the task once, before or after it ran
    (the typed enqueue takes it too); a bad id is refused before anything is stored."""
    await check_chosen_task_ids(backend)
    queue = Queue(backend)

    @queue.task("charge")
    async def charge(ctx: Context, cents: int) -> None:
        pass

    for bad in ("", "has space", "x" * 129, ".dot", "dot.", "a/b", "é", 42):
        with pytest.raises(ValueError, match="task_id must be 1 to 128"):
            await queue.enqueue("charge", 1, task_id=bad)  # type: ignore[arg-type]
    assert await queue.counts() == {"default": {"succeeded": 1}}


async def test_timeout_counts_as_failure(backend: QueueBackend) -> None:
    """A task over its timeout fails with TimeoutError and is retried like any failure."""
    queue = Queue(backend)

    @queue.task("slow", timeout=0.05, max_attempts=1)
    async def slow(ctx: Context, payload: None) -> None:
        await anyio.sleep(5)

    task = await queue.enqueue("slow")
    async with Running(queue):
        await until(lambda: finished(queue, task.id))
    info = await queue.get(task.id)
    assert info is not None
    assert info.state is TaskState.DEAD
    assert info.error is not None
    assert info.error.startswith("TimeoutError")


async def test_chain_passes_results(backend: QueueBackend) -> None:
    """Each step of a chain receives the previous step's result."""
    queue = Queue(backend)
    seen: list[Any] = []

    @queue.task("double")
    async def double(ctx: Context, payload: int) -> int:
        seen.append(payload)
        return payload * 2

    @queue.task("store")
    async def store(ctx: Context, payload: int) -> str:
        seen.append(payload)
        return f"stored {payload}"

    await queue.enqueue_chain(queue.step("double", 3), queue.step("double"), queue.step("store"))
    async with Running(queue):
        await until(lambda: _true(len(seen) == 3))
    assert seen == [3, 6, 12]


async def test_group_callback_gets_all_results(backend: QueueBackend) -> None:
    """A group's callback runs once, after every member, with their results in order."""
    queue = Queue(backend)
    callbacks: list[Any] = []

    @queue.task("square")
    async def square(ctx: Context, payload: int) -> int:
        if payload == 3:
            raise ValueError("three is unlucky")
        await anyio.sleep(0.01 * (5 - payload))
        return payload * payload

    @queue.task("collect")
    async def collect(ctx: Context, payload: list[int | None]) -> None:
        callbacks.append(payload)

    queue.register("square1", square, max_attempts=1)
    members = await queue.enqueue_group(
        [
            queue.step("square", 1),
            queue.step("square", 2),
            queue.step("square1", 3),
            queue.step("square", 4),
        ],
        then=queue.step("collect"),
    )
    assert len(members) == 4
    async with Running(queue, concurrency=4):
        await until(lambda: _true(bool(callbacks)))
        await anyio.sleep(0.1)
    assert callbacks == [[1, 4, None, 16]]


async def test_manual_dispatch(backend: QueueBackend) -> None:
    """Held tasks wait for dispatch(); limit and name select which are released."""
    queue = Queue(backend)
    ran: list[str] = []

    @queue.task("a")
    async def a(ctx: Context, payload: str) -> None:
        ran.append(payload)

    for i in range(3):
        await queue.enqueue("a", f"a{i}", held=True)
    async with Running(queue):
        await anyio.sleep(0.15)
        assert ran == []
        assert await queue.dispatch("default", limit=1) == 1
        await until(lambda: _true(len(ran) == 1))
        assert await queue.dispatch("default", name="a") == 2
        await until(lambda: _true(len(ran) == 3))


async def test_long_queue_hook_fires_once_per_crossing(backend: QueueBackend) -> None:
    """The long-queue hook fires when depth reaches the threshold, once until it drops."""
    calls: list[tuple[str, int]] = []
    queue = Queue(
        backend,
        long_queue_threshold=3,
        on_long_queue=lambda stats: calls.append((stats.queue, stats.depth)),
    )

    @queue.task("x")
    async def x(ctx: Context, payload: None) -> None:
        pass

    for _ in range(5):
        await queue.enqueue("x")
    assert calls == [("default", 3)]


async def test_shutdown_drains_running_tasks(backend: QueueBackend) -> None:
    """On shutdown running tasks finish within the grace and nothing is left claimed."""
    queue = Queue(backend)
    done: list[int] = []

    @queue.task("work")
    async def work(ctx: Context, payload: int) -> None:
        await anyio.sleep(0.1)
        done.append(payload)

    ids = [(await queue.enqueue("work", i)).id for i in range(3)]
    async with Running(queue, concurrency=3):
        await until(lambda: _true(len(done) >= 1), timeout=5)
    states = [(await queue.get(i)).state for i in ids]  # type: ignore[union-attr]
    assert states == [TaskState.SUCCEEDED] * 3


async def test_hard_stop_hands_tasks_back_uncounted(
    backend: QueueBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """A task cut off at the end of the grace period returns to the queue, uncounted, with
    a history row saying it was interrupted and a log line naming it.

    The hand-back has the worker's margin (a fifth of the grace, at most a second): with a
    grace of 0.5 s, 100 ms, of which the hand-back may use 75 ms, ample for one write even
    on a loaded machine (a grace of 0.05 s left it 7.5 ms, which a busy CI run missed)."""
    queue = Queue(backend)
    started = anyio.Event()

    @queue.task("stuck", max_attempts=1)
    async def stuck(ctx: Context, payload: None) -> None:
        started.set()
        await anyio.sleep_forever()

    task = await queue.enqueue("stuck")
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: tasker.run(queue.worker(poll=0.05), shutdown_trigger=stop.wait, grace=0.5)
        )
        await started.wait()
        stop.set()
    info = await queue.get(task.id)
    assert info is not None
    assert (info.state, info.attempts) == (TaskState.QUEUED, 0)
    (entry,) = await queue.history(task_id=task.id)
    assert (entry.outcome, entry.attempt) == ("interrupted", 1)
    assert entry.error is not None
    assert entry.error.startswith("interrupted: cut off by the shutdown after ")
    assert f"task stuck {task.id} (attempt 1) was cut off by the shutdown" in caplog.text


async def test_bad_input_fails_early(backend: QueueBackend) -> None:
    """Unknown names, bad payloads, negative delays and zero concurrency are clear errors."""
    queue = Queue(backend)

    @queue.task("t")
    async def t(ctx: Context, payload: Any) -> None:
        pass

    with pytest.raises(UnknownTaskError, match="'nope'"):
        await queue.enqueue("nope")
    with pytest.raises(KeyError):
        await queue.enqueue("nope")
    with pytest.raises(PayloadError, match="not JSON serializable"):
        await queue.enqueue("t", {"when": object()})
    with pytest.raises(PayloadError):
        await queue.enqueue("t", float("nan"))
    with pytest.raises(ValueError, match="delay"):
        await queue.enqueue("t", delay=-1)
    with pytest.raises(ValueError, match="aware"):
        await queue.enqueue("t", at=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="concurrency"):
        queue.worker(concurrency=0)
    with pytest.raises(ValueError, match="already registered"):
        queue.register("t", t)
    with pytest.raises(TypeError, match="must be an async callable"):
        queue.register("sync", 42)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="max_attempts"):
        queue.register("u", t, max_attempts=0)
    with pytest.raises(ValueError, match="previous result"):
        await queue.enqueue_chain(queue.step("t", 1), queue.step("t", 2))
    assert await queue.counts() == {}


async def test_backend_outage_pauses_claims(
    backend: QueueBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """Claim failures are logged once, retried, and the worker resumes afterwards."""
    queue = Queue(backend)
    ran: list[int] = []

    @queue.task("t")
    async def t(ctx: Context, payload: int) -> None:
        ran.append(payload)

    real_claim = backend.claim
    failing = {"left": 5}

    async def flaky_claim(*args: Any, **kwargs: Any) -> Any:
        if failing["left"]:
            failing["left"] -= 1
            raise ConnectionError("database restarting")
        return await real_claim(*args, **kwargs)

    backend.claim = flaky_claim  # type: ignore[method-assign]
    await queue.enqueue("t", 1)
    with caplog.at_level(logging.WARNING, logger="tasker.queue"):
        async with Running(queue):
            await until(lambda: _true(ran == [1]))
    assert caplog.text.count("backend unavailable") == 1
    assert "backend reachable again" in caplog.text


async def test_default_backend_is_sqlite_in_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queue() with no backend uses SQLite under $TASKER_STATE_DIR."""
    monkeypatch.setenv("TASKER_STATE_DIR", str(tmp_path))
    queue = Queue()
    assert isinstance(queue.backend, SQLiteQueueBackend)
    assert queue.backend.path == tmp_path / "queue.sqlite3"


async def iterate(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def test_an_immediate_retry_is_one_attempt_at_a_time(backend: QueueBackend) -> None:
    """A task that fails while another finishes, retried at once, is claimed again before its
    first runner has resumed: the new attempt keeps its lease (it is heartbeated), and the
    task never runs twice at the same time."""
    queue = Queue(backend)
    live = peak = 0
    calls: list[int] = []
    go = anyio.Event()

    @queue.task("a", backoff=Backoff.fixed(0), max_attempts=5)
    async def a(ctx: Context, payload: Any) -> None:
        nonlocal live, peak
        calls.append(len(calls) + 1)
        if len(calls) == 1:
            await go.wait()
            raise RuntimeError("first attempt fails")
        live += 1
        peak = max(peak, live)
        try:
            await anyio.sleep(1.5)  # three lease lengths: only heartbeats keep it
        finally:
            live -= 1

    @queue.task("b")
    async def b(ctx: Context, payload: Any) -> None:
        await anyio.sleep(0.05)
        go.set()

    a_id = (await queue.enqueue("a")).id
    await queue.enqueue("b")
    async with Running(queue, concurrency=3, lease=0.5):
        await until(lambda: finished(queue, a_id))
    assert calls == [1, 2]
    assert peak == 1
    history = [(h.attempt, h.outcome) for h in reversed(await queue.history(task_id=a_id))]
    assert history == [(1, "retry"), (2, "succeeded")]


async def test_a_handler_knows_the_task_it_runs(backend: QueueBackend) -> None:
    """current_task() gives the id, attempt number, limits and queue; None elsewhere."""
    from tasker.queue import current_task

    queue = Queue(backend)
    seen: list[tuple[str, int, int, str, bool, bool]] = []

    @queue.task("flaky", max_attempts=2, backoff=0.01)
    async def flaky(ctx: Context, payload: None) -> None:
        task = current_task()
        assert task is not None
        seen.append(
            (
                task.id,
                task.attempt,
                task.max_attempts,
                task.queue,
                task.last_attempt,
                task.lease_lost,
            )
        )
        if task.attempt == 1:
            raise RuntimeError("first attempt fails")

    assert current_task() is None
    enqueued = await queue.enqueue("flaky")
    async with Running(queue):
        await until(lambda: finished(queue, enqueued.id))
    assert seen == [
        (enqueued.id, 1, 2, "default", False, False),
        (enqueued.id, 2, 2, "default", True, False),
    ]
    info = await queue.get(enqueued.id)
    assert info is not None
    assert info.created_at > 0


async def check_dispatch_order(backend: QueueBackend) -> None:
    """dispatch(limit=) releases the highest priorities first, then the oldest."""
    queue = Queue(backend)

    @queue.task("p")
    async def p(ctx: Context, n: int) -> None: ...

    ids = [(await queue.enqueue("p", n, priority=n, held=True)).id for n in (0, 3, 1, 3)]

    async def states() -> list[TaskState]:
        infos = [await queue.get(task_id) for task_id in ids]
        return [info.state for info in infos if info is not None]

    held, queued = TaskState.HELD, TaskState.QUEUED
    assert await queue.dispatch("default", limit=1) == 1
    assert await states() == [held, queued, held, held]  # priority 3, the older one
    assert await queue.dispatch("default", limit=2) == 2
    assert await states() == [held, queued, queued, queued]  # then 3, then 1


async def test_dispatch_releases_the_highest_priorities_first(backend: QueueBackend) -> None:
    """check_dispatch_order on the memory and SQLite backends."""
    await check_dispatch_order(backend)
