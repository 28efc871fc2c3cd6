"""gofort's dispatcher's topology on RabbitMQ: an exchange with queues declared at start with
their binding keys (or binding headers), a routing key per task, headers that reach the
handler (and survive a retry), one worker consuming several queues, and retries and dead
letters through the delay ladder with a real worker."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

import tasker
from tasker.queue import Queue, current_task
from tasker_amqp import AmqpQueue, AmqpQueueBackend

from .broker import amqp_url

pytestmark = pytest.mark.anyio


async def _until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - waiting on another task's side effect
            await anyio.sleep(0.005)


async def _ids(backend: AmqpQueueBackend, queue: str) -> list[str]:
    """The ids of what is due on ``queue`` (claimed, so each call takes them)."""
    assert await backend.wait_delivered(10)
    now = await backend.time()
    return sorted(t.id for t in await backend.claim([queue], 100, worker="w", lease=30, now=now))


async def _dead(backend: AmqpQueueBackend) -> int:
    """The messages in the backend's dead-letter queue."""
    [dead] = [s for s in await backend.queue_stats([]) if s.name == backend.dead_queue]
    return dead.ready


def _new(task_id: str, routing_key: str, now: float, **changes: Any) -> Any:
    from tasker.queue import NewTask

    return NewTask(
        id=task_id,
        name="job",
        queue=routing_key,
        payload=b"null",
        run_at=now,
        created_at=now,
        **changes,
    )


async def test_routing_keys_reach_only_the_queues_bound_to_them(
    names: str, cleanup: list[str]
) -> None:
    cleanup += ["emails", "audit", "sms"]
    backend = AmqpQueueBackend(
        amqp_url(),
        exchange=names,
        namespace=names,
        dead_queue=f"{names}.dead",
        prefetch=100,  # each queue's consumer may hold all it is sent
        queues=[
            AmqpQueue("emails", binding_keys=("mail.*",)),
            AmqpQueue("audit", binding_keys=("#",)),
            "sms",  # bound by its own name
        ],
    )
    try:
        now = await backend.time()
        # Consuming all three first, so wait_delivered knows what comes back where.
        for queue in ("emails", "audit", "sms"):
            assert await backend.claim([queue], 1, worker="w", lease=30, now=now) == []
        await backend.enqueue(
            [
                _new("welcome", "mail.welcome", now),
                _new("text", "sms", now),
                _new("login", "auth.login", now),
            ],
            now=now,
        )
        assert await _ids(backend, "emails") == ["welcome"]
        assert await _ids(backend, "sms") == ["text"]
        assert await _ids(backend, "audit") == ["login", "text", "welcome"]
        # "mail.welcome.extra" matches no binding but audit's "#"; with no catch-all it
        # would raise (below).
        stats = {s.name: s for s in await backend.queue_stats()}
        assert set(stats) == {f"{names}.emails", f"{names}.audit", f"{names}.sms", f"{names}.dead"}
        assert all(s.consumers == 1 for n, s in stats.items() if not n.endswith(".dead"))
    finally:
        await backend.aclose()


async def test_a_routing_key_no_queue_is_bound_to_is_refused(
    names: str, cleanup: list[str]
) -> None:
    cleanup += ["emails"]
    backend = AmqpQueueBackend(
        amqp_url(),
        exchange=names,
        namespace=names,
        dead_queue=f"{names}.dead",
        queues=[AmqpQueue("emails", binding_keys=("mail.*",))],
    )
    try:
        now = await backend.time()
        with pytest.raises(ValueError, match=r"no declared queue is bound to routing key 'sms\.x'"):
            await backend.enqueue([_new("lost", "sms.x", now)], now=now)
    finally:
        await backend.aclose()


async def test_a_headers_exchange_routes_by_the_task_headers(
    names: str, cleanup: list[str]
) -> None:
    cleanup += ["eu", "us", "any"]
    backend = AmqpQueueBackend(
        amqp_url(),
        exchange=names,
        exchange_type="headers",
        namespace=names,
        dead_queue=f"{names}.dead",
        prefetch=100,
        queues=[
            AmqpQueue("eu", binding_headers={"region": "eu"}),
            AmqpQueue("us", binding_headers={"region": "us"}),
            AmqpQueue("any", binding_headers={"region": "eu", "vip": True}, x_match="any"),
        ],
    )
    try:
        now = await backend.time()
        for queue in ("eu", "us", "any"):
            await backend.claim([queue], 1, worker="w", lease=30, now=now)
        await backend.enqueue(
            [
                _new("a", "ignored", now, headers={"region": "eu"}),
                _new("b", "ignored", now, headers={"region": "us"}),
                _new("c", "ignored", now, headers={"region": "us", "vip": True}),
            ],
            now=now,
        )
        assert await _ids(backend, "eu") == ["a"]
        assert await _ids(backend, "us") == ["b", "c"]
        assert await _ids(backend, "any") == ["a", "c"]
        with pytest.raises(ValueError, match="no declared queue is bound"):
            await backend.enqueue([_new("d", "x", now, headers={"region": "asia"})], now=now)
        with pytest.raises(ValueError, match="reserved"):
            await backend.enqueue([_new("e", "x", now, headers={"x-match": "all"})], now=now)
    finally:
        await backend.aclose()


async def test_headers_reach_the_handler_and_survive_a_retry(
    names: str, cleanup: list[str]
) -> None:
    """Per-task headers, merged over the backend's per-name ones, are what the handler's
    ``current_task().headers`` shows, on the first attempt and on the retry that came back
    through the delay ladder. One worker takes two queues."""
    cleanup += ["jobs", "other"]
    backend = AmqpQueueBackend(
        amqp_url(),
        exchange=names,
        namespace=names,
        dead_queue=f"{names}.dead",
        headers={"flaky": {"team": "ops", "tenant": "default"}},
    )
    queue = Queue(backend)
    seen: list[tuple[int, dict[str, Any], str]] = []

    @queue.task("flaky", queue="jobs", max_attempts=2, backoff=0.05)
    async def flaky(ctx: tasker.Context, payload: int) -> None:
        task = current_task()
        assert task is not None
        seen.append((task.attempt, dict(task.headers), task.queue))
        if task.attempt == 1:
            raise RuntimeError("first attempt fails")

    @queue.task("plain", queue="other")
    async def plain(ctx: tasker.Context) -> None:
        task = current_task()
        assert task is not None
        seen.append((task.attempt, dict(task.headers), task.queue))

    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: tasker.run(queue.worker(["jobs", "other"], poll=5), shutdown_trigger=stop.wait)
        )
        await flaky.enqueue(7, headers={"tenant": "acme", "n": 3, "urgent": True})
        await plain.enqueue()
        await _until(lambda: len(seen) == 3)
        stop.set()
    want = {"team": "ops", "tenant": "acme", "n": 3, "urgent": True}
    assert sorted(seen, key=lambda s: (s[2], s[0])) == [
        (1, want, "jobs"),
        (2, want, "jobs"),
        (1, {}, "other"),
    ]
    await backend.aclose()


async def test_a_task_out_of_attempts_goes_to_the_dead_queue(
    names: str, cleanup: list[str]
) -> None:
    """After the last attempt the task is a dead letter in the dead-letter queue, and the
    queue's ``on_failure`` runs once, with the last error."""
    cleanup += ["default"]
    backend = AmqpQueueBackend(
        amqp_url(), exchange=names, namespace=names, dead_queue=f"{names}.dead"
    )
    failed: list[Any] = []
    queue = Queue(backend, on_failure=failed.append)
    attempts: list[float] = []

    @queue.task("doomed", max_attempts=3, backoff=0.05)
    async def doomed(ctx: tasker.Context) -> None:
        attempts.append(time.monotonic())
        raise ValueError("never works")

    worker = queue.worker(poll=5)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: tasker.run(worker, shutdown_trigger=stop.wait))
        await doomed.enqueue()
        await _until(lambda: len(attempts) == 3 and len(failed) == 1)
        with anyio.fail_after(20):
            while not await _dead(backend):  # noqa: ASYNC110 - the broker's count
                await anyio.sleep(0.02)
        stop.set()
    assert worker.statistics().completed == 3
    [info] = failed
    assert info.name == "doomed"
    assert "never works" in (info.error or "")
    # The retries waited (through the TTL ladder) between attempts.
    assert all(b - a >= 0.04 for a, b in itertools.pairwise(attempts))
    await backend.aclose()
