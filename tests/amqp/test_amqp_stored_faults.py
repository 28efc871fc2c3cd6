"""tasker_amqp with a store beside it, through the Queue: what the store lends (results,
unique keys, held tasks, chains, groups), and each way the two systems can disagree.

- a publish lost after the store's write: the sweep publishes the task again;
- a store write that fails at finish: nothing is acknowledged, the worker reports again;
- an acknowledgement lost after the store's write: the redelivered copy is dropped;
- a connection dropped while a task runs: the lease stays in the store, the task runs
  once, and its redelivered copy waits for the lease, then is dropped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

import tasker
from tasker.queue import Queue, SQLiteQueueBackend, TaskState
from tasker_amqp import AmqpQueueBackend

from .broker import amqp_url

pytestmark = pytest.mark.anyio


def _backend(names: str, path: Path, **options: Any) -> AmqpQueueBackend:
    return AmqpQueueBackend(
        amqp_url(),
        exchange=names,
        namespace=names,
        dead_queue=f"{names}.dead",
        store=SQLiteQueueBackend(path),
        **options,
    )


@asynccontextmanager
async def _working(queue: Queue, *queues: str, **options: Any) -> AsyncIterator[None]:
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: tasker.run(
                queue.worker(list(queues) or "default", poll=5, **options),
                shutdown_trigger=stop.wait,
            )
        )
        try:
            yield
        finally:
            stop.set()


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    """Poll ``check`` (what it reads, the store and the broker, notifies nobody here)."""
    with anyio.fail_after(timeout):
        while not await check():  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def _state(queue: Queue, task_id: str) -> TaskState | None:
    info = await queue.get(task_id)
    return None if info is None else info.state


async def test_results_unique_keys_held_tasks_chains_and_groups(
    names: str, cleanup: list[str], tmp_path: Path
) -> None:
    cleanup += ["default"]
    queue = Queue(_backend(names, tmp_path / "q.db"))
    ran: list[str] = []

    @queue.task("double")
    async def double(ctx: tasker.Context, n: int) -> int:
        ran.append(f"double {n}")
        return n * 2

    @queue.task("total")
    async def total(ctx: tasker.Context, results: list[int | None]) -> int:
        ran.append(f"total {results}")
        return sum(r or 0 for r in results)

    @queue.task("flaky", max_attempts=2, backoff=0.05)
    async def flaky(ctx: tasker.Context) -> str:
        ran.append("flaky")
        if ran.count("flaky") == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    async with _working(queue):
        first = await queue.enqueue("double", 1, unique_key="once")
        again = await queue.enqueue("double", 1, unique_key="once")
        assert again.deduplicated
        assert again.id == first.id
        held = await queue.enqueue("double", 5, held=True)
        chain = await queue.enqueue_chain(queue.step("double", 10), queue.step("double"))
        members = await queue.enqueue_group(
            [queue.step("double", 100), queue.step("double", 200)], then=queue.step("total")
        )
        retried = await queue.enqueue("flaky")
        chosen = await queue.enqueue("double", 3, task_id="order-3")
        assert (await queue.enqueue("double", 4, task_id="order-3")).deduplicated
        await _until(
            lambda: _done(
                queue, [first.id, chain.id, retried.id, chosen.id, *(m.id for m in members)]
            )
        )
        assert await _state(queue, held.id) is TaskState.HELD
        assert await queue.dispatch("default") == 1
        await _until(lambda: _done(queue, [held.id]))
        await _until(lambda: _has(ran, "total [200, 400]"))
        await _until(lambda: _has(ran, "double 20"))
    info = await queue.get(first.id)
    assert info is not None
    assert info.result == 2
    assert (await queue.get(retried.id)).attempts == 2  # type: ignore[union-attr]
    assert Counter(ran) == Counter(
        [
            "double 1",
            "double 3",
            "double 5",
            "double 10",
            "double 20",
            "double 100",
            "double 200",
            "total [200, 400]",
            "flaky",
            "flaky",
        ]
    )
    entries = await queue.history(task_id=retried.id)
    assert sorted(e.outcome for e in entries) == ["retry", "succeeded"]
    await queue.aclose()


async def _done(queue: Queue, ids: list[str]) -> bool:
    states = [await _state(queue, task_id) for task_id in ids]
    return all(state is TaskState.SUCCEEDED for state in states)


async def _has(items: list[str], item: str) -> bool:
    return item in items


async def test_a_publish_lost_after_the_store_write_is_published_again_by_the_sweep(
    names: str, cleanup: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The enqueue returns (the task is stored: the store is the source of truth), says
    the publish failed, and the sweep publishes the task once it is overdue."""
    cleanup += ["default"]
    backend = _backend(names, tmp_path / "q.db", republish_after=0.3)
    queue = Queue(backend)
    ran: list[int] = []

    @queue.task("job")
    async def job(ctx: tasker.Context, n: int) -> None:
        ran.append(n)

    real_send = backend._send
    lost: list[str] = []

    async def losing(link: Any, meta: Any, *args: Any, **kwargs: Any) -> None:
        if meta.name == "job" and not lost:
            lost.append(meta.id)
            raise ConnectionError("the publish was lost")
        await real_send(link, meta, *args, **kwargs)

    backend._send = losing  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="tasker_amqp"):
        enqueued = await queue.enqueue("job", 1)
        assert lost == [enqueued.id]
        assert "could not be published to RabbitMQ" in caplog.text
        assert await _state(queue, enqueued.id) is TaskState.QUEUED
        async with _working(queue):
            await _until(lambda: _done(queue, [enqueued.id]))
        assert "published 1 overdue tasks again" in caplog.text
    assert ran == [1]
    await queue.aclose()


async def test_a_store_write_that_fails_at_finish_is_reported_again(
    names: str, cleanup: list[str], tmp_path: Path
) -> None:
    """The store first: a finish whose store write fails settles nothing on the broker,
    and the worker's next report records the outcome once."""
    cleanup += ["default"]
    backend = _backend(names, tmp_path / "q.db")
    store = backend._stored.store  # type: ignore[union-attr]
    queue = Queue(backend)
    ran: list[int] = []

    @queue.task("job")
    async def job(ctx: tasker.Context, n: int) -> int:
        ran.append(n)
        return n

    real_finish = store.finish
    failed: list[int] = []

    async def failing(outcomes: Any, *, now: float) -> None:
        if not failed:
            failed.append(len(outcomes))
            raise ConnectionError("the store is unreachable")
        await real_finish(outcomes, now=now)

    store.finish = failing
    async with _working(queue):
        enqueued = await queue.enqueue("job", 7)
        await _until(lambda: _done(queue, [enqueued.id]))
    assert failed == [1]
    assert ran == [7]
    info = await queue.get(enqueued.id)
    assert info is not None
    assert (info.result, info.attempts) == (7, 1)
    stats = await backend.queue_stats(["default"])
    assert stats[0].ready == 0
    await queue.aclose()


async def test_an_ack_lost_after_the_store_write_leaves_a_copy_that_is_dropped(
    names: str, cleanup: list[str], tmp_path: Path
) -> None:
    """The store recorded the success, the acknowledgement never reached the broker (its
    channel closed first): RabbitMQ redelivers, the store refuses the copy, and it is
    acknowledged without running again."""
    cleanup += ["default"]
    backend = _backend(names, tmp_path / "q.db")
    queue = Queue(backend)
    ran: list[int] = []

    @queue.task("job")
    async def job(ctx: tasker.Context, n: int) -> None:
        ran.append(n)

    stored = backend._stored
    assert stored is not None
    real_settle = stored._settle
    cut: list[str] = []

    async def cutting(link: Any, outcome: Any, delivery: Any, now: float) -> None:
        if not cut:
            cut.append(outcome.id)
            await delivery.channel.close()  # the ack is lost with the channel
            return
        await real_settle(link, outcome, delivery, now)

    stored._settle = cutting  # type: ignore[method-assign]
    async with _working(queue):
        enqueued = await queue.enqueue("job", 3)
        await _until(lambda: _done(queue, [enqueued.id]))
        # The copy comes back on the new channel, is refused by the store and dropped.
        await _until(lambda: _empty(backend))
        await anyio.sleep(0.3)
    assert cut == [enqueued.id]
    assert ran == [3]
    assert [e.outcome for e in await queue.history(task_id=enqueued.id)] == ["succeeded"]
    await queue.aclose()


async def _empty(backend: AmqpQueueBackend) -> bool:
    stats = await backend.queue_stats(["default"])
    return stats[0].ready == 0 and not backend._buffered and not backend._held


async def test_a_connection_dropped_while_a_task_runs_keeps_its_lease_in_the_store(
    names: str, cleanup: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The channel closes while the task runs: its lease lives in the store, so the task
    runs to its end once; the copy RabbitMQ redelivers waits for the lease (round the
    delay ladder) and is dropped once the store says the task succeeded."""
    cleanup += ["default"]
    backend = _backend(names, tmp_path / "q.db")
    queue = Queue(backend)
    started = anyio.Event()
    runs: list[int] = []

    @queue.task("slow")
    async def slow(ctx: tasker.Context, n: int) -> None:
        runs.append(n)
        started.set()
        await anyio.sleep(1.0)

    caplog.set_level(logging.WARNING, logger="tasker_amqp")
    async with _working(queue, lease=0.6):
        enqueued = await queue.enqueue("slow", 1)
        with anyio.fail_after(10):
            await started.wait()
        link = backend._link
        assert link is not None
        await link.consumer.close()  # the delivery goes back to the queue
        await _until(lambda: _done(queue, [enqueued.id]))
        await _until(lambda: _empty(backend))
        await anyio.sleep(0.5)
    assert runs == [1]
    info = await queue.get(enqueued.id)
    assert info is not None
    assert info.attempts == 1
    assert "1 tasks running here keep their leases in the store" in caplog.text
    await queue.aclose()
