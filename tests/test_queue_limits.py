"""Rate limits and concurrency keys: their validation, the Queue's checks of the backend's
capabilities, and the memory and SQLite backends' claims and wake-ups (on asyncio and trio).
The contract machine (``tasker.testing``) checks the claims against its model; the process
tests (``test_queue_limits_processes``) the limits across workers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

import tasker
from tasker.abc import QueueCapability
from tasker.queue import (
    MemoryQueueBackend,
    MissingCapabilityError,
    NewTask,
    Queue,
    RateLimit,
    SQLiteQueueBackend,
)
from tasker.testing import FakeClock
from tasker_amqp._stored import store_capabilities
from tasker_nats import NatsQueueBackend
from tasker_redis import RedisQueueBackend

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("text", "count", "per"),
    [("100/m", 100, 60.0), ("5/s", 5, 1.0), ("1000/h", 1000, 3600.0), ("10/30s", 10, 30.0)],
)
def test_a_rate_limit_is_read_from_its_text(text: str, count: int, per: float) -> None:
    """The text form gives a count per window in seconds."""
    assert RateLimit.parse(text) == RateLimit(count=count, per=per)


def test_a_rate_limit_takes_a_timedelta() -> None:
    """``per`` may be a timedelta, stored as float seconds."""
    limit = RateLimit(count=3, per=timedelta(minutes=2))
    assert (limit.per, limit.seconds, str(limit)) == (120.0, 120.0, "3/120s")


@pytest.mark.parametrize("text", ["", "100", "100/x", "a/s", "1.5/s", "0/s", "5/0s", "-1/s"])
def test_a_bad_rate_limit_text_is_a_value_error_naming_it(text: str) -> None:
    """A text that is not a rate limit names ``rate_limit`` and shows the text."""
    queue = Queue(MemoryQueueBackend())

    async def handler(ctx: tasker.Context) -> None: ...

    with pytest.raises(ValueError, match="rate_limit") as info:
        queue.register("t", handler, rate_limit=text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize(("count", "per"), [(0, 1.0), (1, 0.0), (1, -1.0), (1, float("inf"))])
def test_a_bad_rate_limit_fails_at_construction(count: int, per: float) -> None:
    """A count below 1 or a window that is not positive is refused, shown."""
    with pytest.raises(ValueError, match="RateLimit"):
        RateLimit(count=count, per=per)


def test_a_bad_concurrency_limit_or_key_function_is_refused() -> None:
    """``concurrency_limit`` below 1 is a ValueError; a key that is not a function a
    TypeError (a fixed key goes with each enqueue)."""
    queue = Queue(MemoryQueueBackend())

    async def handler(ctx: tasker.Context, payload: Any) -> None: ...

    with pytest.raises(ValueError, match="concurrency_limit must be an int of at least 1, got 0"):
        queue.register("a", handler, concurrency_key=lambda p: "k", concurrency_limit=0)
    with pytest.raises(TypeError, match="concurrency_key must be a function"):
        queue.register("b", handler, concurrency_key="k")  # type: ignore[call-overload]


class _Unlimited(MemoryQueueBackend):
    capabilities = MemoryQueueBackend.capabilities - {
        QueueCapability.RATE_LIMITS,
        QueueCapability.CONCURRENCY_KEYS,
    }


def test_redis_nats_and_amqp_declare_neither() -> None:
    """The brokers' backends do not declare the limits (yet)."""
    for backend in (RedisQueueBackend, NatsQueueBackend):
        assert QueueCapability.RATE_LIMITS not in backend.capabilities
        assert QueueCapability.CONCURRENCY_KEYS not in backend.capabilities
    caps = store_capabilities(MemoryQueueBackend())
    assert QueueCapability.RATE_LIMITS not in caps
    assert QueueCapability.CONCURRENCY_KEYS not in caps


async def test_a_backend_without_the_capabilities_is_refused_at_registration() -> None:
    """A rate limit or a key function fails when registered, a key when enqueued, each
    naming the capability."""
    queue = Queue(_Unlimited(), retention=None)

    async def handler(ctx: tasker.Context, payload: Any) -> None: ...

    with pytest.raises(MissingCapabilityError, match="RATE_LIMITS"):
        queue.register("a", handler, rate_limit="5/s")
    with pytest.raises(MissingCapabilityError, match="CONCURRENCY_KEYS"):
        queue.register("b", handler, concurrency_key=lambda p: "k")
    queue.register("c", handler)
    with pytest.raises(MissingCapabilityError, match="CONCURRENCY_KEYS"):
        await queue.enqueue("c", {}, concurrency_key="k")


def _backends(tmp_path: Path) -> dict[str, Any]:
    return {"memory": MemoryQueueBackend(), "sqlite": SQLiteQueueBackend(tmp_path / "q.db")}


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_rate_limited_task_waits_while_others_are_claimed(
    kind: str, tmp_path: Path
) -> None:
    """Two of ``2/s`` start at once; the third stays queued while an unlimited task is
    taken, the next due time is when the window frees a slot, and then it is claimed."""
    backend = _backends(tmp_path)[kind]
    now = await backend.time()
    limit = RateLimit(count=2, per=1.0)
    tasks = [
        NewTask(
            id=f"r{i}",
            name="r",
            queue="q",
            payload=b"{}",
            run_at=now,
            created_at=now + i,
            priority=1,
            rate_limit=limit,
        )
        for i in range(3)
    ]
    tasks.append(NewTask(id="u", name="u", queue="q", payload=b"{}", run_at=now, created_at=now))
    await backend.enqueue(tasks, now=now)
    got = await backend.claim(["q"], 10, worker="w", lease=30, now=now)
    assert [r.id for r in got] == ["r0", "r1", "u"]
    assert await backend.claim(["q"], 10, worker="w", lease=30, now=now + 0.999) == []
    due = backend.next_run_at(["q"])
    due = due if isinstance(due, float) else await due
    assert abs(due - (now + 1.0)) < 1e-6
    got = await backend.claim(["q"], 10, worker="w", lease=30, now=now + 1.0)
    assert [r.id for r in got] == ["r2"]
    await backend.aclose()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_concurrency_key_frees_its_slot_on_finish_or_expiry(
    kind: str, tmp_path: Path
) -> None:
    """One of key ``c`` runs; the next is claimable once it finishes, or once its lease
    expires; another key is claimed meanwhile."""
    backend = _backends(tmp_path)[kind]
    now = await backend.time()
    tasks = [
        NewTask(
            id=f"{key}{i}",
            name="k",
            queue="q",
            payload=b"{}",
            run_at=now,
            created_at=now + i,
            concurrency_key=key,
            max_attempts=3,
        )
        for i in range(3)
        for key in ("c", "d")
    ]
    await backend.enqueue(tasks, now=now)
    got = await backend.claim(["q"], 10, worker="w", lease=5, now=now)
    assert sorted(r.id for r in got) == ["c0", "d0"]
    assert await backend.claim(["q"], 10, worker="w", lease=5, now=now + 1) == []
    from tasker.queue import Outcome, OutcomeKind

    done = Outcome(
        id="c0",
        worker="w",
        kind=OutcomeKind.SUCCEEDED,
        started_at=now,
        finished_at=now + 1,
        result=b"null",
    )
    await backend.finish([done], now=now + 1)
    assert [r.id for r in await backend.claim(["q"], 10, worker="w", lease=5, now=now + 1)] == [
        "c1"
    ]
    # d0's lease expires: it is claimed again (it takes its key's slot), not d1 beside it.
    got = await backend.claim(["q"], 10, worker="v", lease=5, now=now + 5)
    assert [r.id for r in got] == ["d0"]
    await backend.aclose()


async def test_workers_wake_when_the_window_lets_a_task_start() -> None:
    """On a fake clock, a worker runs ``1/10s`` tasks one per window, woken by the clock."""
    clock = FakeClock(datetime(2025, 1, 1, tzinfo=UTC))
    queue = Queue(MemoryQueueBackend(clock=clock), retention=None)
    ran: list[float] = []

    @queue.task(rate_limit=RateLimit(count=1, per=10.0))
    async def tick(ctx: tasker.Context) -> None:
        ran.append(clock.now().timestamp())

    for _ in range(3):
        await tick.enqueue()
    start = clock.now().timestamp()
    async with anyio.create_task_group() as tg:
        tg.start_soon(tasker.run, queue.worker(poll=3600))
        for _ in range(40):
            clock.advance(1.0)
            for _ in range(20):
                await anyio.lowlevel.checkpoint()
        tg.cancel_scope.cancel()
    assert [t - start for t in ran] == [pytest.approx(v, abs=1.01) for v in (0.0, 10.0, 20.0)]
