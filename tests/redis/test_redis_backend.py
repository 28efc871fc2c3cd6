"""The Redis queue backend's own behaviour: options, wake-ups, idle cost, namespaces, a
whole queue on asyncio and trio, and its checks of the server."""

from __future__ import annotations

import gc
import time
from typing import Any

import anyio
import coredis
import pytest

import tasker
from tasker import BackendConfigurationError
from tasker.queue import GroupSpec, NewTask, Outcome, OutcomeKind, Queue, TaskState
from tasker_redis import RedisQueueBackend

from .servers import PrivateRedis

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _task(task_id: str, *, queue: str = "default", run_at: float, priority: int = 0) -> NewTask:
    return NewTask(
        id=task_id,
        name="t",
        queue=queue,
        payload=b"null",
        priority=priority,
        run_at=run_at,
        max_attempts=3,
        created_at=run_at,
    )


def test_options_are_checked_at_construction() -> None:
    with pytest.raises(ValueError, match="redis://"):
        RedisQueueBackend("postgresql://u:secret@h/db")
    with pytest.raises(ValueError, match="namespace"):
        RedisQueueBackend("redis://h", namespace="a{b}")
    with pytest.raises(ValueError, match="namespace"):
        RedisQueueBackend("redis://h", namespace="")
    with pytest.raises(ValueError, match="batch_size"):
        RedisQueueBackend("redis://h", batch_size=0)
    with pytest.raises(ValueError, match="history_limit"):
        RedisQueueBackend("redis://h", history_limit=-1)
    with pytest.raises(TypeError, match="clock_resync"):
        RedisQueueBackend("redis://h", clock_resync="soon")  # type: ignore[arg-type]


def test_the_password_is_never_shown() -> None:
    backend = RedisQueueBackend("redis://user:s3cr3t-pw@127.0.0.1:1/0")
    assert "s3cr3t-pw" not in repr(backend)
    with pytest.raises(ValueError, match="redis://") as caught:
        RedisQueueBackend("http://user:s3cr3t-pw@host/")
    assert "s3cr3t-pw" not in str(caught.value)


async def test_a_whole_queue_runs_on_redis(redis_url: str, namespace: str) -> None:
    """Enqueue, a worker, results, history and counts, end to end (asyncio and trio)."""
    queue = Queue(RedisQueueBackend(redis_url, namespace=namespace))
    seen: list[int] = []

    @queue.task("double", max_attempts=2, backoff=0.01)
    async def double(ctx: tasker.Context, n: int) -> int:
        if n == 3 and not seen.count(3):
            seen.append(n)
            raise ValueError("once")
        seen.append(n)
        return n * 2

    async with queue:
        handles = [await double.enqueue(n) for n in range(5)]
        done = anyio.Event()

        async def until_done() -> None:
            while (await queue.counts()).get("default", {}).get("succeeded", 0) < 5:  # noqa: ASYNC110
                await anyio.sleep(0.02)
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(until_done)
            tg.start_soon(
                lambda: tasker.run(queue.worker(concurrency=3), shutdown_trigger=done.wait)
            )
        results = [await double.get(handle.id) for handle in handles]
        assert [r.result if r else None for r in results] == [0, 2, 4, 6, 8]
        history = await queue.history(task_id=handles[3].id)
        assert [h.outcome for h in history] == ["succeeded", "retry"]
        assert sorted(seen) == [0, 1, 2, 3, 3, 4]


async def test_an_enqueue_wakes_an_idle_wait_at_once(redis_url: str, namespace: str) -> None:
    waiter = RedisQueueBackend(redis_url, namespace=namespace)
    producer = RedisQueueBackend(redis_url, namespace=namespace)
    try:
        now = await producer.time()
        await waiter.wait_for_work(["default"], 0.01)  # connected, nothing due
        woke: list[float] = []

        async def wait() -> None:
            await waiter.wait_for_work(["default"], 30)
            woke.append(time.monotonic())

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await anyio.sleep(0.3)
            assert not woke, "woke with nothing to do"
            sent = time.monotonic()
            await producer.enqueue([_task("a", run_at=now)], now=now)
            with anyio.fail_after(5):
                while not woke:  # noqa: ASYNC110 - the wait is the code under test
                    await anyio.sleep(0.001)
        assert woke[0] - sent < 0.5
        # Another queue's enqueue does not wake it.
        async with anyio.create_task_group() as tg:
            tg.cancel_scope.deadline = anyio.current_time() + 0.5
            claimed = await waiter.claim(["default"], 1, worker="w", lease=30, now=now)
            assert [t.id for t in claimed] == ["a"]
            tg.start_soon(wait)
            await anyio.sleep(0.1)
            await producer.enqueue([_task("b", queue="other", run_at=now)], now=now)
            await anyio.sleep(0.2)
            assert len(woke) == 1, "an enqueue on another queue woke it"
    finally:
        await waiter.aclose()
        await producer.aclose()


async def test_a_wait_ends_when_a_delayed_task_falls_due(redis_url: str, namespace: str) -> None:
    backend = RedisQueueBackend(redis_url, namespace=namespace)
    try:
        now = await backend.time()
        await backend.enqueue([_task("later", run_at=now + 0.4)], now=now)
        started = time.monotonic()
        await backend.wait_for_work(["default"], 30)
        waited = time.monotonic() - started
        assert 0.25 < waited < 2.0, waited
        assert await backend.next_run_at(["default"]) == pytest.approx(now + 0.4)
    finally:
        await backend.aclose()


async def test_namespaces_never_meet(redis_url: str, namespace: str) -> None:
    one = RedisQueueBackend(redis_url, namespace=namespace)
    other = RedisQueueBackend(redis_url, namespace=namespace + "-2")
    try:
        now = await one.time()
        await one.enqueue([_task("x", run_at=now)], now=now)
        assert await other.claim(["default"], 5, worker="w", lease=30, now=now) == []
        assert await other.get("x") is None
        assert await other.counts() == {}
        assert [t.id for t in await one.claim(["default"], 5, worker="w", lease=30, now=now)] == [
            "x"
        ]
    finally:
        await one.aclose()
        await other.aclose()
        client: coredis.Redis[bytes] = coredis.Redis.from_url(redis_url)
        async with client:
            keys = [k async for k in client.scan_iter(match="{" + namespace + "-2}:*")]
            if keys:
                await client.delete(keys)


async def test_batch_size_caps_a_claim(redis_url: str, namespace: str) -> None:
    backend = RedisQueueBackend(redis_url, namespace=namespace, batch_size=2)
    try:
        now = await backend.time()
        await backend.enqueue([_task(f"t{i}", run_at=now) for i in range(5)], now=now)
        assert len(await backend.claim(["default"], 10, worker="w", lease=30, now=now)) == 2
        taken = await backend.finish_and_claim(
            [], now=now, queues=["default"], limit=10, worker="w", lease=30
        )
        assert len(taken) == 2
    finally:
        await backend.aclose()


async def test_an_idle_worker_sends_nothing_but_its_blocking_read() -> None:
    """On a private server (nobody else's commands): a worker idle for 2 s, with a poll of
    30 s, has sent its one script and one XREAD and nothing since."""
    server = PrivateRedis()
    server.start()
    try:
        queue = Queue(RedisQueueBackend(server.url), retention=None)

        @queue.task("t")
        async def t(ctx: tasker.Context, payload: Any) -> None:
            pass

        admin: coredis.Redis[bytes] = coredis.Redis.from_url(server.url)
        async with admin, queue, anyio.create_task_group() as tg:
            stop = anyio.Event()
            tg.start_soon(
                lambda: tasker.run(queue.worker(poll=30, lease=90), shutdown_trigger=stop.wait)
            )
            await anyio.sleep(1.0)  # started, claimed nothing, announced itself, waiting
            await admin.config_resetstat()
            await anyio.sleep(2.0)
            stats = await admin.info("commandstats")
            stop.set()
        calls = {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in stats.items()
            if name.startswith("cmdstat_") and isinstance(value, dict)
        }
        calls.pop("config|resetstat", None)
        calls.pop("info", None)
        assert sum(calls.values()) == 0, calls
    finally:
        server.cleanup()


async def test_a_server_too_old_stops_with_the_minimum(
    redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def old_info(self: Any, *sections: Any) -> dict[str, Any]:
        return {"redis_version": "6.0.16"}

    monkeypatch.setattr(coredis.Redis, "info", old_info)
    backend = RedisQueueBackend(redis_url, namespace=namespace)
    try:
        with pytest.raises(BackendConfigurationError, match=r"6\.0\.16.*6\.2") as caught:
            await backend.time()
        assert "6.2 or newer" in caught.value.fix
    finally:
        await backend.aclose()


async def test_a_stale_ready_entry_never_leases_a_finished_task(
    redis_url: str, namespace: str, redis_client: coredis.Redis[bytes]
) -> None:
    """A ready-set entry left behind (a script stopped by an error before its deferred set
    changes) is dropped by the next claim, never taken for a queued task."""
    backend = RedisQueueBackend(redis_url, namespace=namespace)
    try:
        now = await backend.time()
        await backend.enqueue([_task("t1", run_at=now)], now=now)
        (claimed,) = await backend.claim(["default"], 1, worker="w", lease=30, now=now)
        outcome = Outcome(
            id="t1",
            worker="w",
            kind=OutcomeKind.SUCCEEDED,
            started_at=now,
            finished_at=now,
            result=b"1",
        )
        await backend.finish([outcome], now=now)
        prefix = "{" + namespace + "}:"
        await redis_client.zadd(prefix + "r:0:default", {"t1": now - 1})
        await redis_client.zadd(prefix + "p:default", {"0": 0})
        assert await backend.claim(["default"], 1, worker="w2", lease=30, now=now) == []
        record = await backend.get("t1")
        assert record is not None
        assert record.state is TaskState.SUCCEEDED
        assert record.attempts == claimed.attempts == 1
        assert await backend.counts() == {"default": {TaskState.SUCCEEDED: 1}}
        assert await redis_client.zcard(prefix + "r:0:default") == 0
    finally:
        await backend.aclose()


async def test_an_enqueue_sent_twice_stores_once(redis_url: str, namespace: str) -> None:
    """The same enqueue again (a retry after a lost reply) changes nothing: no second task,
    no second group, so the callback still runs once."""
    backend = RedisQueueBackend(redis_url, namespace=namespace)
    try:
        now = await backend.time()
        members = [
            NewTask(
                id=f"m{i}",
                name="t",
                queue="default",
                payload=b"1",
                run_at=now,
                created_at=now,
                group_id="g",
                group_index=i,
            )
            for i in range(2)
        ]
        callback = NewTask(
            id="cb", name="t", queue="default", payload=b"", run_at=now, created_at=now
        )
        group = GroupSpec(id="g", size=2, callback=callback)
        first = await backend.enqueue(members, group=group, now=now)
        again = await backend.enqueue(members, group=group, now=now)
        assert first == again
        assert await backend.counts() == {"default": {TaskState.QUEUED: 2}}
        claimed = await backend.claim(["default"], 5, worker="w", lease=30, now=now)
        done = [
            Outcome(
                id=t.id,
                worker="w",
                kind=OutcomeKind.SUCCEEDED,
                started_at=now,
                finished_at=now,
                result=b"1",
            )
            for t in claimed
        ]
        await backend.finish(done, now=now)
        await backend.enqueue(members, group=group, now=now)  # after the group fired, too
        assert await backend.counts() == {"default": {TaskState.SUCCEEDED: 2, TaskState.QUEUED: 1}}
        (fired,) = await backend.claim(["default"], 5, worker="w", lease=30, now=now)
        assert fired.id == "cb"
        assert fired.payload == b"[1,1]"
    finally:
        await backend.aclose()


async def test_an_enqueue_after_a_server_restart_succeeds() -> None:
    """The pooled connection died with the server; the first enqueue after the restart
    goes through (sent again on a new connection) instead of failing."""
    server = PrivateRedis()
    server.start()
    backend = RedisQueueBackend(server.url)
    try:
        now = await backend.time()
        await backend.enqueue([_task("before", run_at=now)], now=now)
        server.restart()
        results = await backend.enqueue([_task("after", run_at=now)], now=now)
        assert [r.id for r in results] == ["after"]
        assert {t.id for t in await backend.tasks()} == {"before", "after"}
    finally:
        await backend.aclose()
        server.cleanup()
        gc.collect()  # a leftover of the driver's would warn here (see tasker_redis/_connection.py)


def test_a_backend_follows_the_program_to_another_event_loop(
    redis_url: str, namespace: str
) -> None:
    """Used in one loop that ends without closing it (nor cancelling its tasks), then in
    another asyncio loop, then under trio: each time it works."""
    import asyncio

    import trio

    backend = RedisQueueBackend(redis_url, namespace=namespace)
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(backend.get("nothing")) is None
    finally:
        loop.close()
    assert asyncio.run(backend.get("nothing")) is None
    assert trio.run(backend.get, "nothing") is None

    async def close() -> None:
        await backend.aclose()

    trio.run(close)


async def test_tasks_due_at_one_moment_are_claimed_in_enqueue_order(
    redis_url: str, namespace: str
) -> None:
    """FIFO among equal run_at (a bulk enqueue, a dispatch, tasks ``at=`` one moment), as
    on the other backends; ids sort otherwise."""
    backend = RedisQueueBackend(redis_url, namespace=namespace)
    try:
        now = await backend.time()
        ids = ["z1", "a2", "m3", "b4"]
        for offset, task_id in enumerate(ids):
            task = NewTask(
                id=task_id,
                name="t",
                queue="default",
                payload=b"1",
                run_at=now,
                created_at=now + offset * 0.001,
            )
            await backend.enqueue([task], now=now)
        claimed = await backend.claim(["default"], 4, worker="w", lease=30, now=now + 1)
        assert [t.id for t in claimed] == ids
    finally:
        await backend.aclose()


async def test_history_of_one_task_is_its_own_timeline(redis_url: str, namespace: str) -> None:
    """``history(task_id=...)`` reads the task's own entries (not a scan of everyone's),
    newest first, and purge's history cut-off applies to them too."""
    backend = RedisQueueBackend(redis_url, namespace=namespace)
    try:
        now = await backend.time()
        await backend.enqueue([_task("mine", run_at=now), _task("other", run_at=now)], now=now)
        for attempt in range(3):
            claimed = await backend.claim(["default"], 2, worker="w", lease=30, now=now)
            kind = OutcomeKind.RETRY if attempt < 2 else OutcomeKind.SUCCEEDED
            await backend.finish(
                [
                    Outcome(
                        id=t.id,
                        worker="w",
                        kind=kind,
                        started_at=now + attempt,
                        finished_at=now + attempt,
                        retry_at=now,
                        error="boom" if kind is OutcomeKind.RETRY else None,
                    )
                    for t in claimed
                ],
                now=now,
            )
        mine = await backend.history(task_id="mine")
        assert [(h.attempt, h.outcome) for h in mine] == [
            (3, "succeeded"),
            (2, "retry"),
            (1, "retry"),
        ]
        assert len(await backend.history(task_id="mine", limit=1)) == 1
        assert len(await backend.history()) == 6
        await backend.purge(now=now, history_before=now + 1.5)
        assert [h.attempt for h in await backend.history(task_id="mine")] == [3]
    finally:
        await backend.aclose()
