"""The Scheduler's protocols on Redis: the contract suite, fencing, lost locks, forward-only
state, the server's clock, hostile names and server restarts (asyncio and trio)."""

from __future__ import annotations

import gc
import os
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import anyio
import coredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tasker
import tasker_redis
from tasker import ScheduleState, StopReason
from tasker.abc import LockerFactory, StateRepository
from tasker.schedule import Interval
from tasker.testing import SchedulerBackendContract
from tasker_redis import RedisLockerFactory, RedisStateRepository

from .servers import PrivateRedis

pytestmark = pytest.mark.anyio

Backend = tuple[RedisLockerFactory, RedisStateRepository]

#: Names shaped like attacks on Lua, key patterns and hash tags: all plain data.
INJECTION_NAMES = [
    "*",
    "a*",
    "lock:*",
    "{tasker}:fence",
    "}{",
    "fence",
    "with spaces and 'quotes' and \"doubles\"",
    "') redis.call('FLUSHDB') --",
    "]] .. redis.call('DEL', KEYS[1]) .. [[",
    "\\x00 not a NUL",
    "%d %s %q",
]


@pytest.fixture
async def redis_backend(redis_url: str, namespace: str) -> AsyncIterator[Backend]:
    """A locker factory (quick renewals) and a state repository in the test's namespace."""
    lockers = RedisLockerFactory(redis_url, namespace=namespace, ttl=5, renew_every=0.05)
    repository = RedisStateRepository(redis_url, namespace=namespace)
    yield lockers, repository
    await lockers.aclose()
    await repository.aclose()


class TestRedisContract(SchedulerBackendContract):
    """The same contract as every other backend, on Redis (asyncio and trio)."""

    @pytest.fixture
    def backend(self, redis_backend: Backend) -> Backend:
        return redis_backend


class TestRedisSchedulerContract(SchedulerBackendContract):
    """The contract on the pair ``tasker_redis.scheduler()`` builds (one shared client)."""

    @pytest.fixture
    async def backend(
        self, redis_url: str, namespace: str
    ) -> AsyncIterator[tuple[LockerFactory, StateRepository]]:
        scheduler = tasker_redis.scheduler(redis_url, namespace=namespace)
        yield scheduler.locker_factory, scheduler.repository
        await scheduler.aclose()


async def server_time(client: coredis.Redis[bytes]) -> datetime:
    """The server's TIME, read by a script (coredis' ``time()`` misreads the microseconds)."""
    reply = await client.eval("return redis.call('TIME')", keys=[], args=[])
    seconds, micros = cast("list[bytes]", reply)
    return datetime.fromtimestamp(int(seconds), UTC) + timedelta(microseconds=int(micros))


def _number(locker: Any) -> int | None:
    """A locker's fencing number, read through a function (so mypy does not narrow it)."""
    number: int | None = locker.fencing_token
    return number


# -- locks ---------------------------------------------------------------------------------


async def test_fencing_numbers_increase(
    redis_backend: Backend, redis_client: coredis.Redis[bytes]
) -> None:
    """Every lock taken gets a larger fencing number than the one before, across names;
    the key holds it, and ``fencing_token()`` tells it while the lock is held."""
    lockers, _ = redis_backend
    seen: list[int] = []
    for name in ["f1", "f2", "f1", "f1", "f3"]:
        locker = lockers.locker(name)
        assert await locker.try_lock()
        assert locker.fencing_token is not None
        assert tasker_redis.fencing_token() == locker.fencing_token
        value = await redis_client.get(lockers.key(name))
        assert value is not None
        assert value.split()[0] == str(locker.fencing_token).encode()
        seen.append(locker.fencing_token)
        await locker.unlock()
        assert _number(locker) is None
        assert tasker_redis.fencing_token() is None
        assert await redis_client.exists([lockers.key(name)]) == 0
    assert seen == sorted(set(seen))
    busy = lockers.locker("f1")
    holder = lockers.locker("f1")
    assert await holder.try_lock()
    try:
        before = await redis_client.get(lockers.fence_key)
        assert not await busy.try_lock()
        # A busy lock spends no number (and writes nothing).
        assert await redis_client.get(lockers.fence_key) == before
    finally:
        await holder.unlock()


async def test_deleted_key_is_reported_lost(
    redis_backend: Backend, redis_client: coredis.Redis[bytes]
) -> None:
    """A held lock whose key is deleted (a restart without persistence, an operator) is
    reported lost by the next renewal, long before its ttl."""
    lockers, _ = redis_backend
    locker = lockers.locker("deleted")
    assert await locker.try_lock()
    try:
        with anyio.move_on_after(0.3) as healthy:
            await locker.wait_lost()  # renewals (every 0.05 s) keep it
        assert healthy.cancelled_caught
        assert await redis_client.delete([lockers.key("deleted")]) == 1
        started = anyio.current_time()
        with anyio.fail_after(2):
            await locker.wait_lost()
        assert anyio.current_time() - started < 0.5
    finally:
        await locker.unlock()


async def test_taken_over_key_is_lost_and_spared_by_unlock(
    redis_backend: Backend, redis_client: coredis.Redis[bytes]
) -> None:
    """A lock whose key now holds another token is reported lost, and its unlock leaves
    the other token's key alone."""
    lockers, _ = redis_backend
    locker = lockers.locker("taken over")
    key = lockers.key("taken over")
    assert await locker.try_lock()
    try:
        await redis_client.set(key, b"999999 someone-else", px=5000)
        with anyio.fail_after(2):
            await locker.wait_lost()
    finally:
        await locker.unlock()
    assert await redis_client.get(key) == b"999999 someone-else"


async def test_only_the_owner_unlocks(
    redis_url: str, namespace: str, redis_client: coredis.Redis[bytes]
) -> None:
    """A holder whose lock expired (it never renewed) and was taken by another replica
    cannot release the new holder's lock; the new holder's unlock does."""
    lockers = RedisLockerFactory(redis_url, namespace=namespace, ttl=0.2, renew_every=0.1)
    try:
        stale, fresh = lockers.locker("owned"), lockers.locker("owned")
        assert await stale.try_lock()
        assert not await fresh.try_lock()
        await anyio.sleep(0.3)  # no wait_lost: nothing renews it, and the key expires
        assert await fresh.try_lock()
        assert fresh.fencing_token is not None
        assert stale.fencing_token is not None
        assert fresh.fencing_token > stale.fencing_token
        await stale.unlock()
        value = await redis_client.get(lockers.key("owned"))
        assert value is not None
        assert value.startswith(f"{fresh.fencing_token} ".encode())
        await fresh.unlock()
        assert await redis_client.exists([lockers.key("owned")]) == 0
    finally:
        await lockers.aclose()


async def test_scheduled_run_stops_with_lock_lost(
    redis_url: str, namespace: str, redis_client: coredis.Redis[bytes]
) -> None:
    """A scheduled run whose lock's key vanishes sees LOCK_LOST and is not recorded; while
    it runs, ``fencing_token()`` is its lock's number."""
    scheduler = tasker_redis.scheduler(
        redis_url, namespace=namespace, lock_ttl=5, renew_every=0.05, lock_retry=0.05
    )
    reasons: list[StopReason | None] = []
    fences: list[int | None] = []
    running = anyio.Event()
    key = "{" + namespace + "}:lock:lossy"

    async def job(ctx: tasker.Context) -> None:
        fences.append(tasker_redis.fencing_token())
        running.set()
        await ctx.wait()
        reasons.append(ctx.reason)
        raise RuntimeError("stopped")

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: tasker.run(
                    scheduler.with_schedule("lossy", Interval(0.2), job),
                    shutdown_trigger=lambda: anyio.sleep(2),
                    grace=1,
                )
            )
            with anyio.fail_after(10):
                await running.wait()
            value = await redis_client.get(key)
            assert value is not None
            assert fences[0] is not None
            assert value.split()[0] == str(fences[0]).encode()
            assert await redis_client.delete([key]) == 1
    finally:
        state = await scheduler.repository.get("lossy")
        await scheduler.aclose()
    assert reasons[0] is StopReason.LOCK_LOST
    assert scheduler.statistics().runs_interrupted >= 1
    assert state is None or state.run_count == 0


async def test_unreachable_server_counts_as_lost_when_the_ttl_runs_out(
    private_redis: PrivateRedis,
) -> None:
    """A holder that cannot reach the server keeps retrying its renewal, and reports the
    lock lost when its ttl since the last successful renewal has run out: not before."""
    lockers = RedisLockerFactory(private_redis.url, ttl=1.0, renew_every=0.1)
    locker = lockers.locker("cut off")
    lost_at = 0.0

    async def watch() -> None:
        nonlocal lost_at
        await locker.wait_lost()
        lost_at = anyio.current_time()

    try:
        assert await locker.try_lock()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await anyio.sleep(0.3)
                before_stop = anyio.current_time()
                await anyio.to_thread.run_sync(private_redis.stop)
                after_stop = anyio.current_time()
        # The last renewal that succeeded was sent at most renew_every before the server
        # stopped answering, which it did between before_stop and after_stop.
        assert lost_at - before_stop >= 1.0 - 0.1 - 0.05, lost_at - before_stop
        assert lost_at - after_stop < 1.0 + 0.5, lost_at - after_stop
    finally:
        await locker.unlock()  # lost: nothing to send, returns at once
        await lockers.aclose()
        gc.collect()  # a leftover of the driver's would warn here (see tasker_redis/_connection.py)


async def test_restart_with_aof_keeps_the_lock(private_redis: PrivateRedis) -> None:
    """With AOF (the private server fsyncs every write), a restart keeps the key and its
    expiry, so the holder's renewals resume and it keeps the lock; the fencing counter
    survives too."""
    lockers = RedisLockerFactory(private_redis.url, ttl=5.0, renew_every=0.1)
    locker = lockers.locker("durable")
    lost = anyio.Event()

    async def watch() -> None:
        await locker.wait_lost()
        lost.set()

    try:
        assert await locker.try_lock()
        first = locker.fencing_token
        assert first is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await anyio.sleep(0.3)
            await anyio.to_thread.run_sync(private_redis.restart)
            await anyio.sleep(1.0)  # several renewals after the restart
            assert not lost.is_set()
            assert not await lockers.locker("durable").try_lock()
            tg.cancel_scope.cancel()
        await locker.unlock()
        again = lockers.locker("durable")
        assert await again.try_lock()
        assert again.fencing_token is not None
        assert again.fencing_token > first
        await again.unlock()
    finally:
        await locker.unlock()
        await lockers.aclose()
        gc.collect()  # a leftover of the driver's would warn here (see tasker_redis/_connection.py)


async def test_restart_that_lost_the_lock_reports_it_lost(private_redis: PrivateRedis) -> None:
    """A restart that loses the lock's write (here AOF switched off before it was taken, as
    with no persistence, or ``everysec`` losing its last second) makes the holder's next
    renewal report the lock lost, long before its ttl; the fencing counter lost the write
    too, so the numbers start again (hence: AOF for stores that check them)."""
    admin: coredis.Redis[bytes] = coredis.Redis.from_url(private_redis.url)
    async with admin:
        await admin.config_set({"appendonly": "no"})
    lockers = RedisLockerFactory(private_redis.url, ttl=10.0, renew_every=0.1)
    locker = lockers.locker("volatile")
    try:
        assert await locker.try_lock()
        first = locker.fencing_token
        await anyio.to_thread.run_sync(private_redis.restart)
        restarted = anyio.current_time()
        with anyio.fail_after(5):
            await locker.wait_lost()
        assert anyio.current_time() - restarted < 3
        await locker.unlock()
        again = lockers.locker("volatile")
        assert await again.try_lock()  # the key is gone: free for anyone
        assert again.fencing_token is not None
        assert first is not None
        assert again.fencing_token <= first
        await again.unlock()
    finally:
        await locker.unlock()
        await lockers.aclose()
        gc.collect()  # a leftover of the driver's would warn here (see tasker_redis/_connection.py)


# -- state ---------------------------------------------------------------------------------


async def test_late_save_never_moves_a_schedule_back(redis_backend: Backend) -> None:
    """A save for an older slot (a replica that lost its lock, saving late) is ignored; a
    save for the same slot (a failed run) is stored."""
    _, repository = redis_backend
    start = datetime(2026, 1, 1, tzinfo=UTC)
    newer = ScheduleState(name="fenced", last_slot=start + timedelta(minutes=2), run_count=2)
    await repository.save(newer)
    await repository.save(ScheduleState(name="fenced", last_slot=start, run_count=1))
    assert await repository.get("fenced") == newer
    failed = ScheduleState(
        name="fenced", last_slot=newer.last_slot, run_count=2, failure_count=1, last_error="E: x"
    )
    await repository.save(failed)
    assert await repository.get("fenced") == failed


_slots = st.lists(
    st.tuples(
        st.integers(min_value=-3, max_value=3),  # minutes around a base slot
        st.integers(min_value=0, max_value=1_000_000),  # microseconds: exact comparisons
        st.integers(min_value=0, max_value=5),  # a run count
    ),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(saves=_slots)
async def test_saves_only_move_forward(redis_backend: Backend, saves: list[Any]) -> None:
    """Whatever order saves arrive in, the stored state is the last one whose slot was not
    older than the stored one's (a model of ``last_slot <= new slot``)."""
    _, repository = redis_backend
    name = f"prop-{uuid.uuid4().hex[:8]}"
    base = datetime(2026, 3, 29, 1, tzinfo=UTC)
    model: ScheduleState | None = None
    for minutes, micros, runs in saves:
        slot = base + timedelta(minutes=minutes, microseconds=micros)
        state = ScheduleState(name=name, last_slot=slot, run_count=runs)
        await repository.save(state)
        if model is None or model.last_slot <= slot:
            model = state
        assert await repository.get(name) == model


async def test_state_keeps_odd_text_and_offsets(redis_backend: Backend) -> None:
    """An error text with a lone surrogate (an undecodable file name) and an offset other
    than UTC are stored and read back, and a later save still works; ``all()`` lists the
    states by name."""
    _, repository = redis_backend
    berlin = timezone(timedelta(hours=1))
    slot = datetime(2026, 3, 1, 12, tzinfo=berlin)
    odd = ScheduleState(name="odd", last_slot=slot, last_error="FileNotFoundError: 'caf\udce9.txt'")
    await repository.save(odd)
    assert await repository.get("odd") == odd
    later = ScheduleState(name="odd", last_slot=slot + timedelta(hours=1), run_count=1)
    await repository.save(later)
    await repository.save(ScheduleState(name="another", last_slot=slot))
    assert [s.name for s in await repository.all()] == ["another", "odd"]
    assert await repository.get("odd") == later


async def test_now_is_the_server_clock(
    redis_url: str, namespace: str, redis_client: coredis.Redis[bytes]
) -> None:
    """now() reads the server's TIME (clock_resync=0: on every call), to the microsecond."""

    repository = RedisStateRepository(redis_url, namespace=namespace, clock_resync=0)
    try:
        before = await server_time(redis_client)
        now = await repository.now()
        after = await server_time(redis_client)
    finally:
        await repository.aclose()
    assert before <= now <= after
    assert now.tzinfo is UTC


async def test_now_between_readings_costs_no_command(
    redis_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between clock readings now() advances with the monotonic clock and sends nothing."""
    repository = RedisStateRepository(redis_url, namespace=namespace, clock_resync=60)
    try:
        first = await repository.now()

        class NoServer:
            async def run(self, *args: object) -> object:
                raise AssertionError("now() went to the server")

        monkeypatch.setattr(repository, "_scripts", NoServer())
        await anyio.sleep(0.2)
        second = await repository.now()
    finally:
        monkeypatch.undo()
        await repository.aclose()
    assert timedelta(seconds=0.15) < second - first < timedelta(seconds=1)
    with pytest.raises(ValueError, match="clock_resync must be non-negative, got -1"):
        RedisStateRepository(redis_url, clock_resync=-1)


class _SkewedClock(tasker.SystemClock):
    """The system clock, an hour ahead."""

    offset = timedelta(hours=1)

    def now(self) -> datetime:
        return super().now() + self.offset

    async def sleep_until(self, moment: datetime, /) -> None:
        await super().sleep_until(moment - self.offset)


async def test_scheduler_runs_on_the_server_clock(
    redis_url: str, namespace: str, redis_client: coredis.Redis[bytes]
) -> None:
    """A replica whose own clock is an hour ahead still runs the slots of the server's
    clock: the recorded slots are the server's, not an hour in the future."""
    scheduler = tasker_redis.scheduler(redis_url, namespace=namespace, lock_retry=0.05)
    slots: list[datetime] = []

    async def job(ctx: tasker.Context) -> None:
        slot = tasker.scheduled_slot()
        assert slot is not None
        slots.append(slot)

    try:
        await tasker.run(
            scheduler.with_schedule("clocked", Interval(0.1), job),
            shutdown_trigger=lambda: anyio.sleep(0.6),
            clock=_SkewedClock(),
        )
        server = await server_time(redis_client)
        state = await scheduler.repository.get("clocked")
    finally:
        await scheduler.aclose()
    assert len(slots) >= 2
    assert all(abs(slot - server) < timedelta(seconds=5) for slot in slots)
    assert state is not None
    assert state.run_count == len(slots)


# -- names, options, reprs -----------------------------------------------------------------


@pytest.mark.parametrize("name", INJECTION_NAMES)
async def test_injection_shaped_names_are_data(
    redis_backend: Backend, redis_client: coredis.Redis[bytes], namespace: str, name: str
) -> None:
    """Names shaped like Lua, key patterns or hash tags lock their own key and store their
    own field, and touch nothing else: not another name's lock, not the fencing counter."""
    lockers, repository = redis_backend
    sentinel = "{" + namespace + "}:sentinel"
    await redis_client.set(sentinel, b"intact")
    bystander = lockers.locker("ab")
    assert await bystander.try_lock()
    locker = lockers.locker(name)
    try:
        assert await locker.try_lock()
        assert not await lockers.locker(name).try_lock()
        value = await redis_client.get(lockers.key(name))
        assert value is not None
        assert value.startswith(f"{locker.fencing_token} ".encode())
        assert lockers.key(name) == "{" + namespace + "}:lock:" + name
    finally:
        await locker.unlock()
        await bystander.unlock()
    state = ScheduleState(name=name, last_slot=datetime(2026, 1, 1, tzinfo=UTC), run_count=1)
    await repository.save(state)
    assert await repository.get(name) == state
    assert await repository.get("ab") is None
    assert await redis_client.get(sentinel) == b"intact"
    fence = await redis_client.get(lockers.fence_key)
    assert fence is not None
    assert int(fence) >= 2
    keys = {key async for key in redis_client.scan_iter(match="{" + namespace + "}:*", count=5000)}
    assert keys == {
        sentinel.encode(),
        lockers.fence_key.encode(),
        repository.states_key.encode(),
        repository.slots_key.encode(),
    }


async def test_scheduler_shares_one_client(redis_url: str, namespace: str) -> None:
    """``tasker_redis.scheduler`` builds a plain tasker.Scheduler whose locks and state share
    one source; closing it twice is fine, and it works again afterwards."""
    scheduler = tasker_redis.scheduler(redis_url, namespace=namespace)
    assert type(scheduler) is tasker.Scheduler
    lockers, repository = scheduler.locker_factory, scheduler.repository
    assert isinstance(lockers, RedisLockerFactory)
    assert isinstance(repository, RedisStateRepository)
    assert lockers._source is repository._source
    locker = lockers.locker("shared")
    assert await locker.try_lock()
    await locker.unlock()
    await scheduler.aclose()
    await scheduler.aclose()
    assert await repository.now() is not None  # the source starts again on use
    await scheduler.aclose()


def test_bad_options_name_the_parameter(redis_url: str) -> None:
    """Bad constructor arguments raise at once and name the parameter and value; a URL's
    password never shows in a repr or a message."""
    with pytest.raises(ValueError, match="ttl must be positive, got 0"):
        RedisLockerFactory(redis_url, ttl=0)
    with pytest.raises(ValueError, match=r"renew_every must be shorter than ttl \(1s\), got 2"):
        RedisLockerFactory(redis_url, ttl=1, renew_every=2)
    with pytest.raises(TypeError, match="renew_every must be a number of seconds"):
        RedisLockerFactory(redis_url, renew_every="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="namespace"):
        RedisStateRepository(redis_url, namespace="{tagged}")
    with pytest.raises(ValueError, match="namespace"):
        tasker_redis.scheduler(redis_url, namespace="")
    with pytest.raises(TypeError, match="URL string"):
        RedisStateRepository(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="renew_every must be shorter than ttl"):
        tasker_redis.scheduler(redis_url, lock_ttl=timedelta(seconds=1), renew_every=1)
    assert RedisLockerFactory(redis_url, ttl=timedelta(seconds=8)).renew_every == 2.0
    with pytest.raises(ValueError, match=r"http://u:\*\*\*@h") as info:
        RedisLockerFactory("http://u:hunter2@h/0")
    assert "hunter2" not in str(info.value)
    secret = "redis://user:hunter2@127.0.0.1:6379/9"  # noqa: S105 - the password to hide
    scheduler = tasker_redis.scheduler(secret)
    for text in (
        repr(scheduler),
        repr(scheduler.locker_factory),
        repr(scheduler.repository),
        repr(scheduler.locker_factory.locker("x")),
    ):
        assert "hunter2" not in text
    assert "user:***@" in repr(scheduler.repository)


def test_exports_are_public_and_documented() -> None:
    """The new names are exported, sorted, documented and shown under tasker_redis."""
    assert tasker_redis.__all__ == sorted(tasker_redis.__all__)
    for name in ("RedisLockerFactory", "RedisStateRepository", "fencing_token", "scheduler"):
        obj = getattr(tasker_redis, name)
        assert name in tasker_redis.__all__
        assert obj.__module__ == "tasker_redis"
        assert obj.__doc__


async def test_status_lists_the_stored_schedules(redis_url: str, namespace: str) -> None:
    """``tasker status --redis`` lists what the repository stored (through ``all()``), and
    never prints the URL's password."""
    repository = RedisStateRepository(redis_url, namespace=namespace)
    lockers = RedisLockerFactory(redis_url, namespace=namespace, ttl=30)
    held = lockers.locker("nightly 'report'")
    try:
        await repository.save(
            ScheduleState(name="nightly 'report'", last_slot=datetime(2026, 1, 1, tzinfo=UTC))
        )
        assert await held.try_lock()
        holders = await repository.lock_holders()
        assert list(holders) == ["nightly 'report'"]
        assert f"fencing number {held.fencing_token}" in holders["nightly 'report'"]
        assert f":{os.getpid()}:" in holders["nightly 'report'"]
    finally:
        await repository.aclose()
    # The tests' server has no password, and its default user takes any: this one shows
    # that the password stays hidden.
    url = redis_url if "@" in redis_url else redis_url.replace("://", "://default:hunter2@", 1)
    proc = await anyio.run_process(
        [sys.executable, "-m", "tasker", "status", "--redis", url, "--namespace", namespace],
        check=False,
    )
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "nightly 'report'" in out
    assert f":{os.getpid()}:" in out, out  # the lock holder
    assert "hunter2" not in out + err
    await held.unlock()
    await lockers.aclose()
