"""RabbitMQ's ``consumer_timeout`` against a long task: the broker closes the channel of a
delivery left unacknowledged too long. The running task sees ``LEASE_LOST``, the backend
says once, at ERROR, what happened and how to raise the limit, and the task runs again
with the attempt counted.

The broker's limit is global in 3.10 (``x-consumer-timeout`` per queue needs 3.12): the
test lowers it to 2 s and puts the value it found back. RabbitMQ checks it once a minute,
so the test takes one to two minutes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import anyio
import pytest

import tasker
from tasker import StopReason
from tasker.queue import Queue, current_task
from tasker_amqp import AmqpQueueBackend

from .broker import amqp_url, delete_queues, rabbitmqctl

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def short_consumer_timeout() -> Iterator[None]:
    found = rabbitmqctl("eval", "application:get_env(rabbit, consumer_timeout).").strip()
    match = re.fullmatch(r"\{ok,(\d+)\}", found)
    rabbitmqctl("eval", "application:set_env(rabbit, consumer_timeout, 2000).")
    try:
        yield
    finally:
        if match:
            rabbitmqctl("eval", f"application:set_env(rabbit, consumer_timeout, {match[1]}).")
        else:
            rabbitmqctl("eval", "application:unset_env(rabbit, consumer_timeout).")


@pytest.mark.timeout(300)
async def test_a_task_longer_than_consumer_timeout_loses_its_lease_and_runs_again(
    names: str, short_consumer_timeout: None, caplog: pytest.LogCaptureFixture
) -> None:
    backend = AmqpQueueBackend(
        amqp_url(), exchange=names, namespace=names, dead_queue=f"{names}.dead"
    )
    queue = Queue(backend)
    runs: list[tuple[int, StopReason | None]] = []

    @queue.task("long", max_attempts=3)
    async def long(ctx: tasker.Context) -> None:
        task = current_task()
        assert task is not None
        if task.attempt == 1:
            await ctx.wait()  # far longer than 2 s: until the lease is lost
            runs.append((task.attempt, ctx.reason))
            return
        runs.append((task.attempt, None))

    caplog.set_level(logging.WARNING, logger="tasker_amqp")
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: tasker.run(queue.worker(lease=30, poll=5), shutdown_trigger=stop.wait)
            )
            await long.enqueue()
            with anyio.fail_after(250):
                while len(runs) < 2:  # noqa: ASYNC110 - the worker's side effect
                    await anyio.sleep(0.05)
            stop.set()
    finally:
        await backend.aclose()
        await delete_queues(amqp_url(), f"{names}.default", f"{names}.dead")
    assert runs == [(1, StopReason.LEASE_LOST), (2, None)]
    told = [r for r in caplog.records if "consumer_timeout" in r.getMessage()]
    assert len(told) == 1
    assert told[0].levelno == logging.ERROR
    assert "x-consumer-timeout" in told[0].getMessage()
