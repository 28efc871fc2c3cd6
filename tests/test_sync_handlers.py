"""Plain ``def`` code: sync task handlers (a thread per attempt) and ``tasker.in_thread`` jobs."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

import anyio
import pytest

import tasker
from tasker import Context, StopReason
from tasker.queue import (
    MemoryQueueBackend,
    Queue,
    QueueBackend,
    RunningTask,
    TaskState,
    current_task,
)
from tasker.testing import FakeClock

from .helpers import python_process
from .test_queue import Running, finished, until

pytestmark = pytest.mark.anyio


def _running() -> RunningTask:
    task = current_task()
    assert task is not None
    return task


async def test_sync_handler_runs_in_a_thread_with_its_payload(backend: QueueBackend) -> None:
    """A ``def`` handler runs in a thread that is not the event loop's; its result is kept,
    and ``current_task()`` works inside it (the caller's context variables are copied)."""
    queue = Queue(backend)
    loop_thread = threading.get_ident()
    seen: list[tuple[int, str, int]] = []

    @queue.task("add")
    def add(ctx: Context, payload: dict[str, int]) -> int:
        seen.append((threading.get_ident(), _running().name, _running().attempt))
        return payload["a"] + payload["b"]

    @queue.task("ping")
    def ping(ctx: Context) -> str:
        return "pong"

    one = await add.enqueue({"a": 2, "b": 3})
    two = await ping.enqueue()
    async with Running(queue):
        await until(lambda: finished(queue, two.id))
        await until(lambda: finished(queue, one.id))
    info = await add.get(one)
    assert info is not None
    assert (info.state, info.result) == (TaskState.SUCCEEDED, 5)
    assert (await queue.get(two.id)).result == "pong"  # type: ignore[union-attr]
    ((thread, name, attempt),) = seen
    assert thread != loop_thread
    assert (name, attempt) == ("add", 1)
    # Called directly, as a unit test would, it runs in a thread too.
    direct: list[str] = []

    async def call(ctx: Context) -> None:
        direct.append(await ping(ctx))

    await tasker.run(call)
    assert direct == ["pong"]


async def test_sync_handlers_do_not_block_each_other(backend: QueueBackend) -> None:
    """Two blocking handlers run at once: each waits at a barrier the other must reach."""
    queue = Queue(backend)
    barrier = threading.Barrier(2, timeout=10)

    @queue.task("meet")
    def meet(ctx: Context, payload: int) -> int:
        return barrier.wait()

    ids = [(await meet.enqueue(n)).id for n in range(2)]
    async with Running(queue, concurrency=2):
        for task_id in ids:
            await until(lambda task_id=task_id: finished(queue, task_id))
    results = sorted([(await queue.get(i)).result for i in ids])  # type: ignore[union-attr]
    assert results == [0, 1]


async def test_sync_handler_failure_is_retried_then_dead(backend: QueueBackend) -> None:
    """An exception from a thread is the attempt's failure, as from an async handler."""
    queue = Queue(backend)
    calls: list[int] = []

    @queue.task("boom", max_attempts=2, backoff=0)
    def boom(ctx: Context) -> None:
        calls.append(_running().attempt)
        raise RuntimeError("disk is full")

    task = await boom.enqueue()
    async with Running(queue):
        await until(lambda: finished(queue, task.id))
    info = await queue.get(task.id)
    assert info is not None
    assert (info.state, info.attempts, calls) == (TaskState.DEAD, 2, [1, 2])
    assert info.error is not None
    assert "disk is full" in info.error


async def test_sync_handler_timeout_abandons_the_thread(
    backend: QueueBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """A timeout ends the attempt at once while the thread still blocks; the thread's
    later exception is logged, never lost, and its result never recorded."""
    queue = Queue(backend)
    release = threading.Event()
    ended = threading.Event()
    calls: list[int] = []

    @queue.task("slow", max_attempts=2, backoff=0, timeout=0.2)
    def slow(ctx: Context) -> str:
        calls.append(_running().attempt)
        if _running().attempt == 1:
            release.wait(10)
            ended.set()
            raise ValueError("late failure of the first attempt")
        return "second"

    task = await slow.enqueue()
    started = time.monotonic()
    async with Running(queue):
        await until(lambda: finished(queue, task.id))
        elapsed = time.monotonic() - started
        assert not ended.is_set()  # the first thread still blocks
    info = await queue.get(task.id)
    assert info is not None
    assert (info.state, info.result, info.attempts) == (TaskState.SUCCEEDED, "second", 2)
    assert elapsed < 5
    history = await queue.history(task_id=task.id)
    assert [h.outcome for h in reversed(history)] == ["retry", "succeeded"]
    with caplog.at_level(logging.WARNING, logger="tasker"):
        release.set()
        await anyio.to_thread.run_sync(ended.wait, 10)
        with anyio.fail_after(5):
            while "late failure" not in caplog.text:  # noqa: ASYNC110 - a log line, no event
                await anyio.sleep(0.01)
    assert "raised in its thread after the call was abandoned" in caplog.text
    assert calls == [1, 2]


async def test_sync_handler_sees_the_shutdown_through_ctx_done(backend: QueueBackend) -> None:
    """A blocking handler polling ``ctx.done`` from its thread sees the shutdown and
    raises: as for an async handler, the task goes back to the queue for its retry."""
    queue = Queue(backend)
    started = threading.Event()
    reasons: list[StopReason | None] = []

    @queue.task("poller")
    def poller(ctx: Context) -> None:
        started.set()
        while not ctx.done:
            time.sleep(0.005)
        reasons.append(ctx.reason)
        raise RuntimeError("stopped early")

    task = await poller.enqueue()
    async with Running(queue):
        await anyio.to_thread.run_sync(started.wait, 10)
    assert reasons == [StopReason.SHUTDOWN]
    info = await queue.get(task.id)
    assert info is not None
    assert (info.state, info.attempts) == (TaskState.QUEUED, 1)
    assert info.error is not None
    assert "stopped early" in info.error


async def test_register_refuses_bad_sync_handlers() -> None:
    """A plain handler with the wrong arity is refused at registration, as an async one."""
    queue = Queue(MemoryQueueBackend())

    def nothing() -> None: ...

    def three(ctx: Context, a: int, b: int) -> None: ...

    with pytest.raises(TypeError, match=r"must take \(ctx, payload\) or \(ctx\)"):
        queue.register("nothing", nothing)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"must take \(ctx, payload\) or \(ctx\)"):
        queue.register("three", three)  # type: ignore[arg-type]
    assert queue.task_names == []


# -- unique keys from the payload --------------------------------------------------------


async def test_unique_key_function_deduplicates_by_payload() -> None:
    """``@queue.task(unique_key=f)``: an enqueue without a key takes ``f(payload)``; one
    that names a key keeps it; ``f`` returning None means no key; ``unique_for`` is the
    registration's unless the enqueue gives one."""
    queue = Queue(MemoryQueueBackend())

    @queue.task(
        "sync-user",
        unique_key=lambda user: None if user["id"] == 0 else f"user-{user['id']}",
        unique_for=60,
    )
    async def sync_user(ctx: Context, user: dict[str, int]) -> None: ...

    first = await sync_user.enqueue({"id": 7})
    again = await sync_user.enqueue({"id": 7, "extra": 1})
    other = await sync_user.enqueue({"id": 8})
    explicit = await sync_user.enqueue({"id": 7}, unique_key="manual")
    no_key = [await sync_user.enqueue({"id": 0}) for _ in range(2)]
    assert (again.deduplicated, again.id) == (True, first.id)
    assert (other.deduplicated, explicit.deduplicated) == (False, False)
    assert not any(e.deduplicated for e in no_key)
    backend = queue.backend
    assert isinstance(backend, MemoryQueueBackend)
    keys = [(await backend.get(e.id)).unique_key for e in (first, explicit, *no_key)]  # type: ignore[union-attr]
    assert keys == ["user-7", "manual", None, None]
    assert await queue.counts() == {"default": {"queued": 5}}


async def test_unique_for_of_the_registration_is_the_window() -> None:
    """After a keyed task succeeded, its key deduplicates for the registration's
    ``unique_for``, and no longer after it."""
    clock = FakeClock()
    queue = Queue(MemoryQueueBackend(clock=clock))

    @queue.task("report", unique_key=lambda day: f"report-{day}", unique_for=60)
    async def report(ctx: Context, day: str) -> None: ...

    first = await report.enqueue("2026-12-03")
    async with Running(queue):
        await until(lambda: finished(queue, first.id))
    clock.advance(59)
    assert (await report.enqueue("2026-12-03")).id == first.id
    clock.advance(2)
    later = await report.enqueue("2026-12-03")
    assert not later.deduplicated
    assert later.id != first.id


async def test_unique_key_function_is_checked() -> None:
    """A key function's bad result fails the enqueue with its type; a key function on a
    backend without unique keys fails at registration."""
    queue = Queue(MemoryQueueBackend())

    @queue.task("t", unique_key=lambda payload: payload)
    async def t(ctx: Context, payload: Any) -> None: ...

    with pytest.raises(TypeError, match="unique_key function of task 't' returned a int"):
        await t.enqueue(5)
    with pytest.raises(ValueError, match="unique_key"):
        await t.enqueue("")
    with pytest.raises(TypeError, match="unique_key must be a function"):
        queue.register("u", t, unique_key="fixed")  # type: ignore[call-overload]
    assert "u" not in queue.task_names


# -- in_thread ---------------------------------------------------------------------------


async def test_in_thread_runs_a_plain_function_as_a_job() -> None:
    """``in_thread(f)`` runs ``f(ctx)`` or ``f()`` in another thread; ``f``'s exception is
    the job's."""
    loop_thread = threading.get_ident()
    seen: list[object] = []

    def with_ctx(ctx: Context) -> None:
        seen.append((threading.get_ident() != loop_thread, ctx.done))

    def without() -> int:
        seen.append("plain")
        return 42

    def failing() -> None:
        raise KeyError("missing")

    await tasker.run(tasker.sequence(tasker.in_thread(with_ctx), tasker.in_thread(without)))
    assert seen == [(True, False), "plain"]
    with pytest.raises(KeyError, match="missing"):
        await tasker.run(tasker.in_thread(failing))
    assert tasker.in_thread(without).__name__.startswith("in_thread(")


async def test_in_thread_sees_the_shutdown_and_is_abandoned_after_the_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The function sees ``ctx.done`` from its thread; one that ignores it is abandoned at
    the hard stop, and what it raises later is logged."""
    observed: list[StopReason | None] = []
    release = threading.Event()

    def polite(ctx: Context) -> None:
        while not ctx.done:
            time.sleep(0.005)
        observed.append(ctx.reason)

    def stubborn() -> None:
        release.wait(10)
        raise OSError("finished too late")

    trigger = anyio.Event()

    async def stop_soon() -> None:
        await anyio.sleep(0.1)
        trigger.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_soon)
        await tasker.run(tasker.in_thread(polite), shutdown_trigger=trigger.wait, grace=5)
    assert observed == [StopReason.SHUTDOWN]

    started = time.monotonic()
    with anyio.move_on_after(0.2):
        await tasker.run(tasker.in_thread(stubborn))
    assert time.monotonic() - started < 2
    with caplog.at_level(logging.WARNING, logger="tasker"):
        release.set()
        with anyio.fail_after(5):
            while "finished too late" not in caplog.text:  # noqa: ASYNC110 - a log line
                await anyio.sleep(0.01)
    assert "in_thread(" in caplog.text


async def test_in_thread_refuses_async_functions_and_coroutines() -> None:
    async def job(ctx: Context) -> None: ...

    with pytest.raises(TypeError, match="is an async function, which is a job already"):
        tasker.in_thread(job)
    coroutine = job(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="coroutine object"):
        tasker.in_thread(coroutine)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="plain function"):
        tasker.in_thread(42)  # type: ignore[arg-type]


_STUCK_PROGRAM = """
import sys, threading, time
import tasker

def stuck(ctx):
    print("ready", flush=True)
    threading.Event().wait()  # ignores ctx: only the hard stop ends the job

tasker.main(tasker.in_thread(stuck), grace=0.3, backend=sys.argv[1])
"""


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_a_stuck_thread_does_not_keep_the_process_alive(loop: str) -> None:
    """SIGTERM to a program whose in_thread job blocks forever: it exits once the grace
    has passed (the abandoned thread is a daemon thread), with the signal's status."""
    proc = python_process(["-c", _STUCK_PROGRAM, loop])
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert 0.3 <= time.monotonic() - sent < 10
