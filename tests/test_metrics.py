"""Prometheus metrics (``tasker.metrics``): a known workload, then a real scrape over HTTP."""

from __future__ import annotations

import math
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import tasker
import tasker.metrics
from tasker import Context, MemoryLockerFactory, MemoryStateRepository, Scheduler
from tasker.queue import MemoryQueueBackend, Queue, QueueBackend
from tasker.schedule import Interval

from .helpers import free_port
from .test_queue import Running, _true, finished, until

pytestmark = pytest.mark.anyio


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and sorted labels."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def task(name: str, queue: str = "default") -> tuple[tuple[str, str], ...]:
    return (("queue", queue), ("task", name))


async def scrape(app: Any) -> str:
    """GET /metrics from ``app`` served by a real HTTP server on a free port."""
    port = free_port()
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: tasker.run(
                tasker.serve_health(port=port, host="127.0.0.1", metrics=app),
                shutdown_trigger=stop.wait,
            )
        )
        async with httpx.AsyncClient() as client:
            with anyio.fail_after(10):
                while True:
                    try:
                        response = await client.get(f"http://127.0.0.1:{port}/metrics")
                        break
                    except httpx.TransportError:
                        await anyio.sleep(0.02)
            ready = await client.get(f"http://127.0.0.1:{port}/livez")
        stop.set()
    assert ready.status_code == 200  # the probes still answer beside /metrics
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def test_a_known_workload_is_counted(backend: QueueBackend) -> None:
    """Five successes, one task failing twice then dead, one duplicate enqueue: the scrape
    says exactly that, by queue and task, with histograms that count every attempt."""
    registry = CollectorRegistry()
    queue = Queue(backend)
    metrics = tasker.metrics.instrument(queue=queue, registry=registry)

    @queue.task("ok")
    async def ok(ctx: Context, n: int) -> None: ...

    @queue.task("flaky", max_attempts=3, backoff=0)
    async def flaky(ctx: Context) -> None:
        raise RuntimeError("down")

    ids = [(await ok.enqueue(n, unique_key=f"ok-{n}")).id for n in range(5)]
    again = await ok.enqueue(0, unique_key="ok-0")
    assert again.deduplicated
    ids.append((await flaky.enqueue(queue="slow")).id)
    async with Running(queue, queues=["default", "slow"]):
        for task_id in ids:
            await until(lambda task_id=task_id: finished(queue, task_id))
        await metrics.refresh()
        found = samples(await scrape(metrics.asgi_app()))
    assert found["tasker_tasks_enqueued_total", task("ok")] == 5
    assert found["tasker_tasks_deduplicated_total", task("ok")] == 1
    assert found["tasker_tasks_started_total", task("ok")] == 5
    assert found["tasker_tasks_succeeded_total", task("ok")] == 5
    assert found["tasker_tasks_failed_total", task("ok")] == 0
    assert found["tasker_tasks_enqueued_total", task("flaky", "slow")] == 1
    assert found["tasker_tasks_started_total", task("flaky", "slow")] == 3
    assert found["tasker_tasks_failed_total", task("flaky", "slow")] == 3
    assert found["tasker_tasks_retried_total", task("flaky", "slow")] == 2
    assert found["tasker_tasks_dead_total", task("flaky", "slow")] == 1
    assert found["tasker_task_duration_seconds_count", task("ok")] == 5
    assert found["tasker_task_wait_seconds_count", task("flaky", "slow")] == 3
    infinite = (("le", "+Inf"), ("queue", "default"), ("task", "ok"))
    assert found["tasker_task_duration_seconds_bucket", infinite] == 5
    assert found["tasker_queue_depth", (("queue", "default"), ("state", "succeeded"))] == 5
    assert found["tasker_queue_depth", (("queue", "slow"), ("state", "dead"))] == 1
    assert found["tasker_queue_depth_age_seconds", ()] < 60
    # The worker was running at the scrape: its slots are there, by its queues.
    assert found["tasker_worker_slots", (("queues", "default,slow"),)] == 10
    assert found["tasker_worker_slots_used", (("queues", "default,slow"),)] == 0
    # No label is an id.
    assert not any(value in ids for _, labels in found for _, value in labels)


async def test_scheduler_runs_and_contention_are_counted() -> None:
    """Two schedulers sharing one lock backend: this one meets the lock held by the other
    (lock contention), one of its runs fails; the scrape says what its statistics say."""
    registry = CollectorRegistry()
    lockers, repository = MemoryLockerFactory(), MemoryStateRepository()
    first = Scheduler(locker_factory=lockers, repository=repository, lock_retry=0.01)
    metrics = tasker.metrics.instrument(scheduler=first, registry=registry)
    runs = 0
    release = anyio.Event()

    async def slow(ctx: Context) -> None:
        nonlocal runs
        runs += 1
        await release.wait()

    async def boom(ctx: Context) -> None:
        raise ValueError("no")

    second = Scheduler(locker_factory=lockers, repository=repository, lock_retry=0.01)
    other = second.with_schedule("slow", Interval(0.2), slow, first_run="immediately")
    mine = [
        first.with_schedule("slow", Interval(0.2), slow, first_run="immediately"),
        first.with_schedule("boom", Interval(60), boom, first_run="immediately", retry_delay=60),
    ]
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        # The other replica takes the lock first and holds it: this one meets it busy.
        tg.start_soon(lambda: tasker.run(other, shutdown_trigger=stop.wait))
        await until(lambda: _true(runs == 1))
        tg.start_soon(lambda: tasker.run(tasker.concurrence(*mine), shutdown_trigger=stop.wait))
        await until(lambda: _true(first.statistics().lock_busy > 0))
        await until(lambda: _true(first.statistics().runs_failed == 1))
        release.set()
        stop.set()
    found = samples(await scrape(metrics.asgi_app()))
    stats = first.statistics()
    assert found["tasker_schedule_runs_total", (("outcome", "failed"),)] == 1
    assert found["tasker_schedule_runs_total", (("outcome", "succeeded"),)] == stats.runs_succeeded
    assert found["tasker_schedule_runs_started_total", ()] == stats.runs_started
    assert found["tasker_schedule_lock_busy_total", ()] == stats.lock_busy > 0
    assert found["tasker_schedules", ()] == 2
    assert "tasker_queue_depth" not in {name for name, _ in found}


def test_instrument_checks_its_arguments() -> None:
    queue = Queue(MemoryQueueBackend())
    registry = CollectorRegistry()
    with pytest.raises(ValueError, match="give a queue, a scheduler, or both"):
        tasker.metrics.instrument(registry=registry)
    with pytest.raises(TypeError, match="queue must be a Queue"):
        tasker.metrics.instrument(queue=object(), registry=registry)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="increasing and distinct"):
        tasker.metrics.instrument(queue=queue, registry=registry, buckets=(1.0, 0.5))
    tasker.metrics.instrument(queue=queue, registry=registry)
    with pytest.raises(ValueError, match="instrumented already"):
        tasker.metrics.instrument(queue=queue, registry=CollectorRegistry())
    with pytest.raises(TypeError, match="metrics must be an ASGI app"):
        tasker.serve_health(port=free_port(), metrics=42)  # type: ignore[arg-type]


async def test_the_depth_job_refreshes_and_survives_an_outage() -> None:
    """``metrics.job()`` reads the counts every interval; a failing read is logged once,
    and the last reading stays with its growing age."""
    registry = CollectorRegistry()
    backend = MemoryQueueBackend()
    queue = Queue(backend)
    metrics = tasker.metrics.instrument(queue=queue, registry=registry)

    @queue.task("t")
    async def t(ctx: Context) -> None: ...

    await t.enqueue()
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: tasker.run(metrics.job(every=0.05), shutdown_trigger=stop.wait))
        await until(lambda: _true(metrics._depth.get("default", {}).get("queued") == 1))
        await t.enqueue()
        await until(lambda: _true(metrics._depth.get("default", {}).get("queued") == 2))
        stop.set()
    found = samples(await scrape(metrics.asgi_app()))
    assert found["tasker_queue_depth", (("queue", "default"), ("state", "queued"))] == 2
    assert not math.isnan(found["tasker_queue_depth_age_seconds", ()])
