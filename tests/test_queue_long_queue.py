"""The long-queue hook by depth and by estimated drain time (taskrunner's LongQueueThreshold)."""

from __future__ import annotations

import math

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasker import Context
from tasker.abc import QueueCapability
from tasker.queue import (
    LongQueue,
    MemoryQueueBackend,
    MissingCapabilityError,
    Queue,
    QueueBackend,
)
from tasker.queue._long_queue import drain_estimate

from .test_queue import Running, finished, until

pytestmark = pytest.mark.anyio


async def has_workers(queue: Queue) -> bool:
    return bool(await queue.workers())


async def test_drain_time_crossing_fires_once_with_measured_stats(backend: QueueBackend) -> None:
    """With a live worker of concurrency 2 and attempts of about 0.1 s, the hook fires at
    the first enqueue whose estimate reaches 1 s, once, with the measured terms."""
    calls: list[LongQueue] = []
    queue = Queue(backend, long_queue_drain_time=1.0, on_long_queue=calls.append)

    @queue.task("work")
    async def work(ctx: Context) -> None:
        await anyio.sleep(0.1)

    async with Running(queue, concurrency=2):
        await until(lambda: has_workers(queue))  # so that the first enqueues see capacity
        measured = [(await work.enqueue()).id for _ in range(4)]
        for task_id in measured:
            await until(lambda task_id=task_id: finished(queue, task_id))
        await anyio.sleep(1.1)  # the first enqueues' measure (no history yet) goes stale
        for _ in range(60):
            await work.enqueue(delay=3600)  # queued, but not due: the depth grows
    assert len(calls) == 1
    (stats,) = calls
    assert stats.queue == "default"
    assert stats.capacity == 2
    assert stats.mean_duration is not None
    assert 0.1 <= stats.mean_duration < 1.0
    assert stats.drain_time is not None
    assert stats.drain_time == pytest.approx(stats.mean_duration * stats.depth / 2)
    assert stats.drain_time >= 1.0
    # The enqueue before did not cross: the hook fired at the first that did.
    assert stats.mean_duration * (stats.depth - 1) / 2 < 1.0


async def test_queued_tasks_without_a_live_worker_never_drain(backend: QueueBackend) -> None:
    """No worker takes from the queue: the first queued task makes the estimate infinite."""
    calls: list[LongQueue] = []

    async def hook(stats: LongQueue) -> None:  # an async hook is awaited
        calls.append(stats)

    queue = Queue(backend, long_queue_drain_time=3600, on_long_queue=hook)

    @queue.task("work")
    async def work(ctx: Context) -> None: ...

    await work.enqueue(queue="reports")
    await work.enqueue(queue="reports")
    assert calls == [
        LongQueue(queue="reports", depth=1, mean_duration=None, capacity=0, drain_time=math.inf)
    ]


async def test_depth_and_drain_thresholds_combine(backend: QueueBackend) -> None:
    """The depth threshold alone still fires (no drain terms measured); with both, either
    crossing makes the queue long, and the hook fires once per crossing."""
    depth_only: list[LongQueue] = []
    queue = Queue(backend, long_queue_threshold=2, on_long_queue=depth_only.append)

    @queue.task("t")
    async def t(ctx: Context) -> None: ...

    for _ in range(3):
        await t.enqueue()
    assert depth_only == [LongQueue(queue="default", depth=2)]

    both: list[LongQueue] = []
    other = Queue(
        MemoryQueueBackend(),
        long_queue_threshold=100,
        long_queue_drain_time=3600,
        on_long_queue=both.append,
    )
    other.register("t", t)
    await other.enqueue("t")
    assert [(s.depth, s.drain_time) for s in both] == [(1, math.inf)]


async def test_a_failing_hook_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def hook(stats: LongQueue) -> None:
        raise RuntimeError("pager down")

    queue = Queue(MemoryQueueBackend(), long_queue_threshold=1, on_long_queue=hook)

    @queue.task("t")
    async def t(ctx: Context) -> None: ...

    assert not (await t.enqueue()).deduplicated
    assert "queue hook" in caplog.text
    assert "pager down" in caplog.text


def test_long_queue_options_are_checked_at_construction() -> None:
    class NoRegistry(MemoryQueueBackend):
        capabilities = MemoryQueueBackend.capabilities - {QueueCapability.WORKERS}

    with pytest.raises(MissingCapabilityError, match=r"long_queue_drain_time=\.\.\.\) needs"):
        Queue(NoRegistry(), long_queue_drain_time=30, on_long_queue=print)
    with pytest.raises(ValueError, match="give on_long_queue with"):
        Queue(MemoryQueueBackend(), on_long_queue=print)
    with pytest.raises(ValueError, match="give on_long_queue with"):
        Queue(MemoryQueueBackend(), long_queue_drain_time=30)
    with pytest.raises(ValueError, match="long_queue_drain_time"):
        Queue(MemoryQueueBackend(), long_queue_drain_time=0, on_long_queue=print)
    with pytest.raises(TypeError, match="on_long_queue must be callable"):
        Queue(MemoryQueueBackend(), long_queue_threshold=1, on_long_queue=42)  # type: ignore[arg-type]


@given(
    depth=st.integers(0, 10**6),
    mean=st.none() | st.floats(0, 1e4, allow_nan=False),
    capacity=st.integers(0, 10**4),
    more=st.integers(1, 1000),
)
def test_drain_estimate_is_the_seed_formula(
    depth: int, mean: float | None, capacity: int, more: int
) -> None:
    """``mean * depth / capacity``; empty drains at once, no capacity never; more depth or
    less capacity never shortens the estimate."""
    estimate = drain_estimate(depth, mean, capacity)
    if depth == 0:
        assert estimate == 0.0
    elif capacity == 0:
        assert estimate == math.inf
    elif mean is None:
        assert estimate is None
    else:
        assert estimate is not None
        assert estimate == pytest.approx(mean * depth / capacity)
        deeper = drain_estimate(depth + more, mean, capacity)
        assert deeper is not None
        assert deeper >= estimate
        wider = drain_estimate(depth, mean, capacity + more)
        assert wider is not None
        assert wider <= estimate
