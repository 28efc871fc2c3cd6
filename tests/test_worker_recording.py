"""The worker's recording (``tasker.queue._recording``): the first reporter flushes, and the
reporters that arrive meanwhile join the next batch, all recorded once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import pytest

import tasker
from tasker import Context
from tasker.queue import MemoryQueueBackend, Outcome, Queue, TaskState

pytestmark = pytest.mark.anyio


class SlowFlush(MemoryQueueBackend):
    """Each combined call takes a while, so reporters pile up behind the flush in progress."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    async def finish_and_claim(self, outcomes: Sequence[Outcome], **kwargs: Any) -> Any:
        self.batches.append(len(outcomes))
        await anyio.sleep(0.01)
        return await super().finish_and_claim(outcomes, **kwargs)


async def test_reporters_that_wait_for_a_flush_are_each_recorded_once() -> None:
    """Outcomes reported while a flush runs wait for the next one; every reporter returns
    once its own batch is recorded, and each task succeeds exactly once."""
    backend = SlowFlush()
    queue = Queue(backend)
    ran: list[int] = []

    @queue.task("t")
    async def t(ctx: Context, n: int) -> int:
        await anyio.sleep(0.001 * (n % 7))
        ran.append(n)
        return n

    ids = [(await queue.enqueue("t", n)).id for n in range(60)]
    worker = queue.worker(concurrency=10, poll=30)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: tasker.run(worker, shutdown_trigger=stop.wait, grace=2))
        with anyio.fail_after(10):
            while worker.statistics().completed < 60:  # noqa: ASYNC110 - the worker's count
                await anyio.sleep(0.01)
        stop.set()
    assert sorted(ran) == list(range(60))
    assert max(backend.batches) > 1  # reporters did join a flush in progress
    assert sum(backend.batches) == 60
    for n, task_id in enumerate(ids):
        info = await queue.get(task_id)
        assert info is not None
        assert (info.state, info.result, info.attempts) == (TaskState.SUCCEEDED, n, 1)
    history = await queue.history(limit=100)
    assert sorted(h.task_id for h in history) == sorted(ids)
