"""Realtime tasks (``Worker.spawn``, the dispatcher's ``SpawnRealtimeBg``): run in the
worker's pool, sharing its concurrency, never stored."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import pytest

import tasker
from tasker import Context, StopReason
from tasker.queue import (
    MemoryQueueBackend,
    PayloadError,
    Queue,
    QueueBackend,
    SQLiteQueueBackend,
    UnknownTaskError,
    Worker,
    current_task,
)

from .test_queue import _true, finished, until

pytestmark = pytest.mark.anyio


class Started:
    """Runs a worker in the background; the block waits until it runs."""

    def __init__(self, worker: Worker, *, grace: float = 2.0) -> None:
        self.worker = worker
        self.grace = grace
        self.stop = anyio.Event()

    async def __aenter__(self) -> Worker:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(
            lambda: tasker.run(self.worker, shutdown_trigger=self.stop.wait, grace=self.grace)
        )
        with anyio.fail_after(10):
            while self.worker._send is None:  # noqa: ASYNC110 - the worker's own start
                await anyio.sleep(0.005)
        return self.worker

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await self._tg.__aexit__(None, None, None)


async def test_a_spawned_task_runs_here_and_is_never_stored(backend: QueueBackend) -> None:
    """It runs with its payload (through the serialiser), ``current_task()`` names it, and
    the backend holds nothing of it: no task, no history, no counts."""
    queue = Queue(backend)
    seen: list[tuple[str, str, Any]] = []

    @queue.task("notify")
    async def notify(ctx: Context, payload: dict[str, Any]) -> str:
        task = current_task()
        assert task is not None
        seen.append((task.id, task.name, payload))
        return "ok"

    async with Started(queue.worker(poll=0.05)) as worker:
        task_id = await worker.spawn(notify, {"user": 7, "tags": ("a", "b")})
        await until(lambda: _true(len(seen) == 1))
        await until(lambda: _true(worker.statistics().realtime == 1))
    assert seen == [(task_id, "notify", {"user": 7, "tags": ["a", "b"]})]
    assert await queue.get(task_id) is None
    assert await queue.history() == []
    assert await queue.counts() == {}
    stats = worker.statistics()
    assert (stats.completed, stats.leases_lost, stats.realtime) == (0, 0, 1)


async def test_spawned_tasks_share_the_concurrency(backend: QueueBackend) -> None:
    """With both slots taken by stored tasks, a spawn waits; it starts once one of them
    ends, and never makes three run at once."""
    queue = Queue(backend)
    release = anyio.Event()
    events: list[str] = []
    running = 0
    most = 0

    @queue.task("hold")
    async def hold(ctx: Context, n: int) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        events.append(f"hold {n} start")
        await release.wait()
        running -= 1
        events.append(f"hold {n} end")

    @queue.task("quick")
    async def quick(ctx: Context) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        events.append("quick")
        running -= 1

    ids = [(await hold.enqueue(n)).id for n in range(2)]
    async with Started(queue.worker(concurrency=2, poll=0.05)) as worker:
        await until(lambda: _true(running == 2))
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.spawn, quick)
            await anyio.sleep(0.2)
            assert "quick" not in events  # no free slot: the spawn waits
            release.set()
        await until(lambda: _true("quick" in events))
        for task_id in ids:
            await until(lambda task_id=task_id: finished(queue, task_id))
    assert most == 2
    assert events.index("quick") > min(events.index("hold 0 end"), events.index("hold 1 end"))


async def test_a_failed_spawn_is_logged_and_not_retried(
    backend: QueueBackend, caplog: pytest.LogCaptureFixture
) -> None:
    failures: list[Any] = []
    queue = Queue(backend, on_failure=failures.append)
    calls = 0

    @queue.task("boom", max_attempts=5)
    async def boom(ctx: Context) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("printer on fire")

    with caplog.at_level(logging.ERROR, logger="tasker.queue"):
        async with Started(queue.worker(poll=0.05)) as worker:
            task_id = await worker.spawn("boom")
            await until(lambda: _true(worker.statistics().realtime == 1))
            await anyio.sleep(0.1)
    assert calls == 1
    assert failures == []
    assert f"realtime task boom {task_id} failed" in caplog.text
    assert "printer on fire" in caplog.text
    assert "Traceback" in caplog.text


async def test_a_long_spawn_needs_no_lease(backend: QueueBackend) -> None:
    """Several heartbeats pass while it runs: nothing is lost, nothing asked of the backend."""
    queue = Queue(backend)
    done: list[StopReason | None] = []

    @queue.task("slow")
    async def slow(ctx: Context) -> None:
        await anyio.sleep(0.5)
        done.append(ctx.reason)

    async with Started(queue.worker(lease=0.15, poll=0.05)) as worker:
        await worker.spawn(slow)
        await until(lambda: _true(bool(done)))
    assert done == [None]
    assert worker.statistics().leases_lost == 0
    assert worker.statistics().discarded == 0


async def test_a_running_spawn_sees_the_shutdown(backend: QueueBackend) -> None:
    """A realtime task running at shutdown gets the grace period like any task."""
    queue = Queue(backend)
    started = anyio.Event()
    reasons: list[StopReason | None] = []

    @queue.task("polite")
    async def polite(ctx: Context) -> None:
        started.set()
        await ctx.wait()
        reasons.append(ctx.reason)

    async with Started(queue.worker(poll=0.05), grace=5) as worker:
        await worker.spawn(polite)
        await started.wait()
    assert reasons == [StopReason.SHUTDOWN]
    assert worker.statistics().realtime == 1


async def test_spawn_checks_its_arguments_and_the_worker() -> None:
    queue = Queue(MemoryQueueBackend())

    @queue.task("t")
    async def t(ctx: Context, payload: Any) -> None: ...

    @queue.task("bare")
    async def bare(ctx: Context) -> None: ...

    worker = queue.worker()
    with pytest.raises(RuntimeError, match="is not running"):
        await worker.spawn(t, 1)
    async with Started(queue.worker(poll=0.05)) as running:
        with pytest.raises(UnknownTaskError, match="'nope'"):
            await running.spawn("nope")
        with pytest.raises(PayloadError):
            await running.spawn(t, {1, 2})
        with pytest.raises(TypeError, match="takes no payload"):
            await running.spawn(bare, 5)
    with pytest.raises(RuntimeError, match="is not running"):
        await running.spawn(t, 1)


async def test_a_spawn_waiting_for_a_slot_fails_when_the_worker_stops() -> None:
    queue = Queue(MemoryQueueBackend())
    release = anyio.Event()

    @queue.task("hold")
    async def hold(ctx: Context) -> None:
        await release.wait()

    @queue.task("later")
    async def later(ctx: Context) -> None: ...

    await hold.enqueue()
    outcome: list[BaseException] = []
    started = Started(queue.worker(concurrency=1, poll=0.05), grace=0.5)
    async with started as worker:
        await until(lambda: _true(len(worker.running) == 1))

        async def waiting_spawn() -> None:
            try:
                await worker.spawn(later)
            except RuntimeError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiting_spawn)
            await anyio.sleep(0.1)
            started.stop.set()
    assert len(outcome) == 1
    assert "is not running" in str(outcome[0])


async def test_a_worker_started_after_the_shutdown_returns_at_once(tmp_path: Path) -> None:
    """A worker whose context is done before it starts (a SIGTERM during a slow start) on
    a backend with retention returns at once, instead of waiting out the grace period with
    its retention runs never cancelled."""
    queue = Queue(SQLiteQueueBackend(tmp_path / "queue.sqlite3"))
    worker = queue.worker(poll=0.05)

    async def late(ctx: Context) -> None:
        await ctx.wait()  # the shutdown came first
        await worker(ctx)

    async def at_once() -> None:
        return

    started = anyio.current_time()
    with anyio.fail_after(20):
        await tasker.run(late, shutdown_trigger=at_once, grace=10)
    assert anyio.current_time() - started < 5
    assert worker.statistics().stopping
