"""The Scheduler's protocols on NATS JetStream KV: the contract suite, fencing, lost locks,
forward-only state, the server's clock, hostile names, server restarts, and trio refused.

nats-py is asyncio only: every test here runs on asyncio (``conftest.py``), except those of
:class:`TestTrioIsRefused`, which run on trio and check that each entry point says so.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import nats
import nats.js
import nats.js.errors
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.js.kv import KeyValue

import tasker
import tasker_nats
from tasker import BackendConfigurationError, ScheduleState, StopReason, TaskerError
from tasker.abc import Locker, LockerFactory, StateRepository
from tasker.backends import MAX_NAME_LENGTH, permanent_fault
from tasker.schedule import Interval
from tasker.testing import SchedulerBackendContract
from tasker_nats import NatsLockerFactory, NatsSource, NatsStateRepository

from ..helpers import ROOT, python_process
from ..test_api import isort_key
from .servers import PrivateNats

pytestmark = pytest.mark.anyio

Backend = tuple[NatsLockerFactory, NatsStateRepository]

#: Names shaped like subjects, wildcards, KV keys and the key encoding itself: all data.
INJECTION_NAMES = [
    "*",
    ">",
    "a.b",
    "$KV.x",
    "$KV.x.>",
    "$JS.API.STREAM.DELETE.x",
    "..",
    ".",
    " spaces ",
    "é",
    "a=b",
    "=",
    "==",
    "=YQ",  # what the encoding would make of "a" if it encoded every name
    "a",
    "s.a",  # the state key of "a" is "s.a"
    "clock",  # the state bucket's clock keys are "clock.<n>"
    "KV-Operation: PURGE",
    "x" * MAX_NAME_LENGTH,
    "é" * MAX_NAME_LENGTH,
    "😀" * MAX_NAME_LENGTH,
]


@pytest.fixture
async def nats_backend(nats_url: str, namespace: str) -> AsyncIterator[Backend]:
    """A locker factory (quick renewals) and a state repository in the test's namespace."""
    lockers = NatsLockerFactory(nats_url, namespace=namespace, ttl=5, renew_every=0.05)
    repository = NatsStateRepository(nats_url, namespace=namespace)
    yield lockers, repository
    await lockers.aclose()
    await repository.aclose()


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[nats.js.JetStreamContext]:
    """A plain JetStream context on the test server, for looking at (and meddling with)
    the buckets as an operator would."""
    client = await nats.connect(nats_url)
    try:
        yield client.jetstream(timeout=5.0)
    finally:
        await client.close()


class TestNatsContract(SchedulerBackendContract):
    """The same contract as every other backend, on NATS (asyncio: nats-py)."""

    @pytest.fixture
    def backend(self, nats_backend: Backend) -> Backend:
        return nats_backend


class TestNatsSchedulerContract(SchedulerBackendContract):
    """The contract on the pair ``tasker_nats.scheduler()`` builds (one shared source)."""

    @pytest.fixture
    async def backend(
        self, nats_url: str, namespace: str
    ) -> AsyncIterator[tuple[LockerFactory, StateRepository]]:
        scheduler = tasker_nats.scheduler(nats_url, namespace=namespace)
        yield scheduler.locker_factory, scheduler.repository
        await scheduler.aclose()


async def locks_kv(js: nats.js.JetStreamContext, namespace: str) -> KeyValue:
    """The namespace's lock bucket (it exists once a lock was taken)."""
    return await js.key_value(f"{namespace}_locks")


async def server_time(js: nats.js.JetStreamContext, namespace: str) -> datetime:
    """When the server stored a message this test published: its clock, read by hand."""
    stream, subject = f"{namespace}_probe", f"{namespace}.probe"
    try:
        await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        await js.add_stream(name=stream, subjects=[subject])
    ack = await js.publish(subject, b"")
    stored = await js.get_msg(stream, seq=ack.seq)
    assert stored.time is not None
    return stored.time


async def subjects(js: nats.js.JetStreamContext, stream: str) -> set[str]:
    """The subjects that hold a message in ``stream``."""
    info = await js.stream_info(stream, subjects_filter=">")
    return set(info.state.subjects or {})


def _number(locker: Any) -> int | None:
    """A locker's fencing number, read through a function (so mypy does not narrow it)."""
    number: int | None = locker.fencing_token
    return number


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the members of its groups and its causes and contexts."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        error = todo.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        if isinstance(error, BaseExceptionGroup):
            todo.extend(error.exceptions)
        todo.extend(e for e in (error.__cause__, error.__context__) if e is not None)


# -- locks ---------------------------------------------------------------------------------


async def test_fencing_numbers_increase(
    nats_backend: Backend, js: nats.js.JetStreamContext, namespace: str
) -> None:
    """Every lock taken gets a larger fencing number than the one before, across names; it
    is the key's revision, the key holds the owner, and ``fencing_token()`` tells it while
    the lock is held; an unlock leaves a delete marker that the next take takes over."""
    lockers, _ = nats_backend
    seen: list[int] = []
    for name in ["f1", "f2", "f1", "f1", "f3"]:
        locker = lockers.locker(name)
        assert await locker.try_lock()
        assert locker.fencing_token is not None
        assert tasker_nats.fencing_token() == locker.fencing_token
        kv = await locks_kv(js, namespace)
        entry = await kv.get(name)
        assert entry.revision == locker.fencing_token
        assert entry.value is not None
        assert f":{os.getpid()}:".encode() in entry.value
        seen.append(locker.fencing_token)
        await locker.unlock()
        assert _number(locker) is None
        assert tasker_nats.fencing_token() is None
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await kv.get(name)
        marker = await js.get_msg(f"KV_{namespace}_locks", subject=f"$KV.{namespace}_locks.{name}")
        assert (marker.headers or {}).get("KV-Operation") == "DEL"
    assert seen == sorted(set(seen))
    busy = lockers.locker("f1")
    holder = lockers.locker("f1")
    assert await holder.try_lock()
    try:
        before = (await js.stream_info(f"KV_{namespace}_locks")).state.last_seq
        assert not await busy.try_lock()
        # A busy lock spends no number (and stores nothing).
        assert (await js.stream_info(f"KV_{namespace}_locks")).state.last_seq == before
        assert _number(busy) is None
    finally:
        await holder.unlock()


@pytest.mark.parametrize("how", ["kv delete", "kv purge", "stream purge"])
async def test_deleted_key_is_reported_lost(
    nats_backend: Backend, js: nats.js.JetStreamContext, namespace: str, how: str
) -> None:
    """A held lock whose key an operator deletes (a KV delete marker, a KV purge, a purge of
    the stream's subject) is reported lost by the next renewal, long before its ttl (5 s);
    the key is then free for another replica, with a larger fencing number."""
    lockers, _ = nats_backend
    locker = lockers.locker("deleted")
    assert await locker.try_lock()
    first = locker.fencing_token
    assert first is not None
    try:
        with anyio.move_on_after(0.3) as healthy:
            await locker.wait_lost()  # renewals (every 0.05 s) keep it
        assert healthy.cancelled_caught
        kv = await locks_kv(js, namespace)
        if how == "kv delete":
            await kv.delete("deleted")
        elif how == "kv purge":
            await kv.purge("deleted")
        else:
            await js.purge_stream(f"KV_{namespace}_locks", subject=f"$KV.{namespace}_locks.deleted")
        started = anyio.current_time()
        with anyio.fail_after(4):
            await locker.wait_lost()
        assert anyio.current_time() - started < 3
    finally:
        await locker.unlock()
    successor = lockers.locker("deleted")
    assert await successor.try_lock()
    assert successor.fencing_token is not None
    assert successor.fencing_token > first
    await successor.unlock()


async def test_taken_over_key_is_lost_and_spared_by_unlock(
    nats_backend: Backend, js: nats.js.JetStreamContext, namespace: str
) -> None:
    """A lock whose key now holds another owner is reported lost, and its unlock leaves
    the other owner's key alone."""
    lockers, _ = nats_backend
    locker = lockers.locker("taken over")
    assert await locker.try_lock()
    kv = await locks_kv(js, namespace)
    key = (await kv.keys())[0]  # the name's encoded key: the only one in the bucket
    try:
        revision = await kv.put(key, b"someone-else")
        with anyio.fail_after(4):
            await locker.wait_lost()
    finally:
        await locker.unlock()
    entry = await kv.get(key)
    assert entry.value == b"someone-else"
    assert entry.revision == revision


async def test_only_the_owner_unlocks(
    nats_url: str, namespace: str, js: nats.js.JetStreamContext
) -> None:
    """A holder whose lock expired (it never renewed) and was taken by another replica
    cannot release the new holder's lock; the new holder's unlock does."""
    lockers = NatsLockerFactory(nats_url, namespace=namespace, ttl=1, renew_every=0.5)
    try:
        stale, fresh = lockers.locker("owned"), lockers.locker("owned")
        assert await stale.try_lock()
        assert not await fresh.try_lock()
        # No wait_lost: nothing renews it, and the server expires the key after 1 s.
        with anyio.fail_after(15):
            while not await fresh.try_lock():  # noqa: ASYNC110 - the server expires the key
                await anyio.sleep(0.05)
        assert fresh.fencing_token is not None
        assert stale.fencing_token is not None
        assert fresh.fencing_token > stale.fencing_token
        await stale.unlock()
        kv = await locks_kv(js, namespace)
        entry = await kv.get("owned")
        assert entry.revision == fresh.fencing_token
        await fresh.unlock()
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await kv.get("owned")
    finally:
        await lockers.aclose()


async def test_scheduled_run_stops_with_lock_lost(
    nats_url: str, namespace: str, js: nats.js.JetStreamContext
) -> None:
    """A scheduled run whose lock's key is deleted sees LOCK_LOST and is not recorded; while
    it runs, ``fencing_token()`` is its lock's number (the key's revision)."""
    scheduler = tasker_nats.scheduler(
        nats_url, namespace=namespace, lock_ttl=5, renew_every=0.05, lock_retry=0.05
    )
    reasons: list[StopReason | None] = []
    fences: list[int | None] = []
    running = anyio.Event()

    async def job(ctx: tasker.Context) -> None:
        fences.append(tasker_nats.fencing_token())
        running.set()
        await ctx.wait()
        reasons.append(ctx.reason)
        raise RuntimeError("stopped")

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: tasker.run(
                    scheduler.with_schedule("lossy", Interval(0.2), job),
                    shutdown_trigger=lambda: anyio.sleep(4),
                    grace=1,
                )
            )
            with anyio.fail_after(15):
                await running.wait()
            kv = await locks_kv(js, namespace)
            entry = await kv.get("lossy")
            assert fences[0] is not None
            assert entry.revision == fences[0]
            await kv.delete("lossy")
    finally:
        state = await scheduler.repository.get("lossy")
        await scheduler.aclose()
    assert reasons[0] is StopReason.LOCK_LOST
    assert scheduler.statistics().runs_interrupted >= 1
    assert state is None or state.run_count == 0


async def test_unreachable_server_counts_as_lost_when_the_ttl_runs_out(
    private_nats: PrivateNats,
) -> None:
    """A holder that cannot reach the server keeps retrying its renewal, and reports the
    lock lost when its ttl since the last successful renewal has run out: not before."""
    lockers = NatsLockerFactory(private_nats.url, ttl=2, renew_every=0.25)
    locker = lockers.locker("cut off")
    lost_at = 0.0

    async def watch() -> None:
        nonlocal lost_at
        await locker.wait_lost()
        lost_at = anyio.current_time()

    try:
        assert await locker.try_lock()
        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await anyio.sleep(0.6)
                before_stop = anyio.current_time()
                await anyio.to_thread.run_sync(private_nats.stop)
                after_stop = anyio.current_time()
        # The last renewal that succeeded was sent at most renew_every (and some event loop
        # lag) before the server stopped answering, which it did between before_stop and
        # after_stop.
        assert lost_at - before_stop >= 2 - 0.25 - 0.25, lost_at - before_stop
        assert lost_at - after_stop < 2 + 2, lost_at - after_stop
    finally:
        await locker.unlock()  # lost: nothing to send, returns at once
        await lockers.aclose()


async def _watched(locker: Locker, lost: anyio.Event) -> None:
    """Set ``lost`` once ``locker`` reports its lock lost."""
    await locker.wait_lost()
    lost.set()


async def _renewals_resume(url: str, name: str, owner: bytes | None = None) -> bytes:
    """Wait until the lock bucket's ``name`` shows a renewal after now; return its owner."""
    client: Client = await nats.connect(url)
    try:
        kv = await client.jetstream().key_value("tasker_locks")
        first = await kv.get(name)
        with anyio.fail_after(10):
            while (entry := await kv.get(name)).revision == first.revision:  # noqa: ASYNC110 - another connection renews it
                await anyio.sleep(0.05)
        assert entry.value is not None
        assert owner is None or entry.value == owner
        return entry.value
    finally:
        await client.close()


async def test_restart_keeps_the_lock(private_nats: PrivateNats) -> None:
    """JetStream keeps the key on disk with its TTL: after a stop and start well within the
    ttl, the holder's renewals resume, it keeps the lock, nobody else can take it, and
    the next holding's fencing number is still larger (the sequence survives too)."""
    lockers = NatsLockerFactory(private_nats.url, ttl=10, renew_every=0.25)
    locker = lockers.locker("durable")
    lost = anyio.Event()
    try:
        assert await locker.try_lock()
        first = locker.fencing_token
        assert first is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watched, locker, lost)
            await anyio.sleep(0.5)
            await anyio.to_thread.run_sync(private_nats.restart)
            owner = await _renewals_resume(private_nats.url, "durable")
            assert f":{os.getpid()}:".encode() in owner
            assert not lost.is_set()
            assert not await lockers.locker("durable").try_lock()
            await _renewals_resume(private_nats.url, "durable", owner)
            assert not lost.is_set()
            tg.cancel_scope.cancel()
        await locker.unlock()
        again = lockers.locker("durable")
        # Stopping the watch may have cancelled a renewal in flight, which keeps the key
        # for a ttl (see test_unlock_after_a_cancelled_renewal_releases_the_lock).
        with anyio.fail_after(15):
            while not await again.try_lock():  # noqa: ASYNC110 - the server expires the key
                await anyio.sleep(0.05)
        assert again.fencing_token is not None
        assert again.fencing_token > first
        await again.unlock()
    finally:
        await locker.unlock()
        await lockers.aclose()


async def test_restart_longer_than_the_request_timeout_keeps_the_lock(
    private_nats: PrivateNats,
) -> None:
    """A server down for longer than a JetStream request's timeout (5 s) but back within
    the ttl (15 s) still finds the holder's key, and the holder keeps its lock."""
    lockers = NatsLockerFactory(private_nats.url, ttl=15, renew_every=0.25)
    locker = lockers.locker("patient")
    lost = anyio.Event()
    try:
        assert await locker.try_lock()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watched, locker, lost)
            await anyio.sleep(0.5)
            await anyio.to_thread.run_sync(private_nats.stop)
            await anyio.sleep(6.5)
            await anyio.to_thread.run_sync(private_nats.start)
            await _renewals_resume(private_nats.url, "patient")
            await anyio.sleep(1)
            assert not lost.is_set()
            tg.cancel_scope.cancel()
    finally:
        await locker.unlock()
        await lockers.aclose()


async def test_restart_longer_than_the_ttl_reports_it_lost(private_nats: PrivateNats) -> None:
    """A server down for longer than the ttl: the holder reports the lock lost when its ttl
    runs out (while the server is still down), the server expires the key it kept, and
    after the restart another replica takes it with a larger fencing number; the old
    holder's unlock leaves the new lock alone."""
    lockers = NatsLockerFactory(private_nats.url, ttl=2, renew_every=0.25)
    locker = lockers.locker("outlived")
    lost = anyio.Event()
    try:
        assert await locker.try_lock()
        first = locker.fencing_token
        assert first is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watched, locker, lost)
            await anyio.sleep(0.5)
            await anyio.to_thread.run_sync(private_nats.stop)
            with anyio.fail_after(10):
                await lost.wait()
            await anyio.to_thread.run_sync(private_nats.start)
        successor = lockers.locker("outlived")
        with anyio.fail_after(15):
            while not await successor.try_lock():  # noqa: ASYNC110 - the server expires the key
                await anyio.sleep(0.05)
        assert successor.fencing_token is not None
        assert successor.fencing_token > first
        await locker.unlock()
        assert not await lockers.locker("outlived").try_lock()
        await successor.unlock()
    finally:
        await locker.unlock()
        await lockers.aclose()


# -- state ---------------------------------------------------------------------------------


async def test_late_save_never_moves_a_schedule_back(nats_backend: Backend) -> None:
    """A save for an older slot (a replica that lost its lock, saving late) is ignored; a
    save for the same slot (a failed run) is stored."""
    _, repository = nats_backend
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


async def test_concurrent_saves_keep_the_newest(nats_backend: Backend) -> None:
    """Saves of one schedule racing each other (compare-and-set rounds) leave the newest
    slot stored, whatever order the server sees them in."""
    _, repository = nats_backend
    start = datetime(2026, 1, 1, tzinfo=UTC)
    states = [
        ScheduleState(name="raced", last_slot=start + timedelta(minutes=n), run_count=n)
        for n in range(12)
    ]
    async with anyio.create_task_group() as tg:
        for state in reversed(states):
            tg.start_soon(repository.save, state)
    assert await repository.get("raced") == states[-1]


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
async def test_saves_only_move_forward(nats_backend: Backend, saves: list[Any]) -> None:
    """Whatever order saves arrive in, the stored state is the last one whose slot was not
    older than the stored one's (a model of ``last_slot <= new slot``)."""
    _, repository = nats_backend
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


async def test_state_keeps_odd_text_and_offsets(nats_backend: Backend) -> None:
    """An error text with a lone surrogate (an undecodable file name) and an offset other
    than UTC are stored and read back, and a later save still works; ``all()`` lists the
    states by name."""
    _, repository = nats_backend
    berlin = timezone(timedelta(hours=1))
    slot = datetime(2026, 3, 1, 12, tzinfo=berlin)
    odd = ScheduleState(name="odd", last_slot=slot, last_error="FileNotFoundError: 'caf\udce9.txt'")
    await repository.save(odd)
    assert await repository.get("odd") == odd
    stored = await repository.get("odd")
    assert stored is not None
    assert stored.last_slot.utcoffset() == timedelta(hours=1)
    later = ScheduleState(name="odd", last_slot=slot + timedelta(hours=1), run_count=1)
    await repository.save(later)
    await repository.save(ScheduleState(name="another", last_slot=slot))
    assert [s.name for s in await repository.all()] == ["another", "odd"]
    assert await repository.get("odd") == later


async def test_now_is_the_server_clock(
    nats_url: str, namespace: str, js: nats.js.JetStreamContext
) -> None:
    """now() (clock_resync=0: read on every call) lies between the stored times of two
    messages the test publishes around it, within the call's round trip, and it is the
    time the server stored the repository's clock message, advanced by the same."""
    repository = NatsStateRepository(nats_url, namespace=namespace, clock_resync=0)
    try:
        await repository.now()  # connected, and the bucket made
        before = await server_time(js, namespace)
        called = time.monotonic()
        now = await repository.now()
        returned = time.monotonic()
        after = await server_time(js, namespace)
        stream = f"KV_{namespace}_schedules"
        clock = max(
            [await js.get_msg(stream, subject=subject) for subject in await subjects(js, stream)],
            key=lambda message: message.seq or 0,
        )  # the repository's latest clock message: the bucket holds nothing else yet
    finally:
        await repository.aclose()
    round_trip = timedelta(seconds=returned - called)
    slack = round_trip / 2 + timedelta(milliseconds=1)
    assert before - slack <= now <= after + slack, (before, now, after, round_trip)
    assert clock.time is not None
    assert clock.time - slack <= now <= clock.time + round_trip + slack
    assert now.tzinfo is UTC


async def test_first_clock_reading_survives_a_faster_first_publish(
    nats_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh repository's first now() works when its first clock publish happens to have
    the shorter round trip (made so here: the second is slowed down), though the bucket
    keeps one message per key (a regression test: it failed with NotFoundError)."""
    repository = NatsStateRepository(nats_url, namespace=namespace, clock_resync=0)
    try:
        js_, _ = await repository.bucket.get()
        real_publish = js_.publish
        clock_publishes = 0

        async def publish(subject: str, *args: Any, **kwargs: Any) -> Any:
            nonlocal clock_publishes
            ack = await real_publish(subject, *args, **kwargs)
            if subject.startswith(f"$KV.{namespace}_schedules.clock"):
                clock_publishes += 1
                if clock_publishes == 2:
                    await anyio.sleep(0.05)
            return ack

        monkeypatch.setattr(js_, "publish", publish)
        now = await repository.now()
    finally:
        monkeypatch.undo()
        await repository.aclose()
    assert clock_publishes == 2
    assert abs(now - datetime.now(UTC)) < timedelta(minutes=1)


async def test_now_between_readings_costs_no_request(
    nats_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between clock readings now() advances with the monotonic clock and sends nothing;
    with ``clock_resync=0`` every call reads the clock (the count works)."""
    lazy = NatsStateRepository(nats_url, namespace=namespace, clock_resync=60)
    eager = NatsStateRepository(nats_url, namespace=namespace, clock_resync=0)
    requests: list[str] = []

    def count(js_: nats.js.JetStreamContext) -> None:
        for method in ("publish", "get_msg"):
            real = getattr(js_, method)

            async def counted(
                *args: Any, _real: Any = real, _method: str = method, **kwargs: Any
            ) -> Any:
                requests.append(_method)
                return await _real(*args, **kwargs)

            monkeypatch.setattr(js_, method, counted)

    try:
        first = await lazy.now()
        count((await lazy.bucket.get())[0])
        await anyio.sleep(0.2)
        second = await lazy.now()
        third = await lazy.now()
        assert requests == []
        await eager.now()
        count((await eager.bucket.get())[0])
        await eager.now()
        assert "publish" in requests  # a reading: the counting sees it
    finally:
        monkeypatch.undo()
        await lazy.aclose()
        await eager.aclose()
    assert timedelta(seconds=0.15) < second - first < timedelta(seconds=10)
    assert second <= third
    with pytest.raises(ValueError, match="clock_resync must be non-negative, got -1"):
        NatsStateRepository(nats_url, clock_resync=-1)


class _SkewedClock(tasker.SystemClock):
    """The system clock, an hour ahead."""

    offset = timedelta(hours=1)

    def now(self) -> datetime:
        return super().now() + self.offset

    async def sleep_until(self, moment: datetime, /) -> None:
        await super().sleep_until(moment - self.offset)


async def test_scheduler_runs_on_the_server_clock(
    nats_url: str, namespace: str, js: nats.js.JetStreamContext
) -> None:
    """A replica whose own clock is an hour ahead still runs the slots of the server's
    clock: the recorded slots are the server's, not an hour in the future."""
    scheduler = tasker_nats.scheduler(nats_url, namespace=namespace, lock_retry=0.05)
    slots: list[datetime] = []

    async def job(ctx: tasker.Context) -> None:
        slot = tasker.scheduled_slot()
        assert slot is not None
        slots.append(slot)

    try:
        await tasker.run(
            scheduler.with_schedule("clocked", Interval(0.1), job),
            shutdown_trigger=lambda: anyio.sleep(2),
            clock=_SkewedClock(),
        )
        server = await server_time(js, namespace)
        state = await scheduler.repository.get("clocked")
    finally:
        await scheduler.aclose()
    assert len(slots) >= 2
    assert all(abs(slot - server) < timedelta(seconds=10) for slot in slots)
    assert slots == sorted(set(slots))
    assert state is not None
    assert state.run_count == len(slots)


# -- names, options, reprs -----------------------------------------------------------------


@pytest.mark.parametrize("name", INJECTION_NAMES, ids=lambda name: repr(name[:20]))
async def test_injection_shaped_names_are_data(
    nats_backend: Backend, js: nats.js.JetStreamContext, namespace: str, name: str
) -> None:
    """Names shaped like subjects, wildcards or keys lock their own key and store their own
    state, each one subject token of its bucket, and touch nothing else."""
    lockers, repository = nats_backend
    bystander = lockers.locker("ab")
    assert await bystander.try_lock()
    locker = lockers.locker(name)
    try:
        assert await locker.try_lock()
        assert not await lockers.locker(name).try_lock()
        assert not await lockers.locker("ab").try_lock()
        holders = await repository.lock_holders()
        assert set(holders) == {name, "ab"}
    finally:
        await locker.unlock()
        await bystander.unlock()
    assert await bystander.try_lock()  # the bystander's key was not touched by the other
    await bystander.unlock()
    state = ScheduleState(name=name, last_slot=datetime(2026, 1, 1, tzinfo=UTC), run_count=1)
    await repository.save(state)
    assert await repository.get(name) == state
    assert await repository.get("ab") is None
    assert await repository.all() == [state]
    lock_prefix = f"$KV.{namespace}_locks."
    lock_subjects = await subjects(js, f"KV_{namespace}_locks")
    assert len(lock_subjects) == 2
    assert f"{lock_prefix}ab" in lock_subjects
    for subject in lock_subjects:
        assert subject.startswith(lock_prefix)
        assert "." not in subject.removeprefix(lock_prefix)
    state_prefix = f"$KV.{namespace}_schedules."
    (state_subject,) = {
        subject
        for subject in await subjects(js, f"KV_{namespace}_schedules")
        if not subject.startswith(f"{state_prefix}clock")  # the clock's, if it was read
    }
    assert state_subject.startswith(f"{state_prefix}s.")
    assert "." not in state_subject.removeprefix(f"{state_prefix}s.")
    assert "*" not in state_subject
    assert ">" not in state_subject


async def test_hostile_names_never_share_a_lock(nats_backend: Backend) -> None:
    """Every injection-shaped name (and names their encodings could collide with) holds its
    own lock at the same time as all the others, and stores its own state."""
    lockers, repository = nats_backend
    held = [lockers.locker(name) for name in INJECTION_NAMES]
    try:
        for locker in held:
            assert await locker.try_lock()
        for name in INJECTION_NAMES:
            assert not await lockers.locker(name).try_lock()
        assert set(await repository.lock_holders()) == set(INJECTION_NAMES)
        fences = [locker.fencing_token for locker in held]
        assert len(set(fences)) == len(fences)
    finally:
        for locker in held:
            await locker.unlock()
    slot = datetime(2026, 1, 1, tzinfo=UTC)
    for count, name in enumerate(INJECTION_NAMES):
        await repository.save(ScheduleState(name=name, last_slot=slot, run_count=count))
    stored = {state.name: state.run_count for state in await repository.all()}
    assert stored == {name: count for count, name in enumerate(INJECTION_NAMES)}
    assert await repository.lock_holders() == {}


async def test_scheduler_shares_one_connection(private_nats: PrivateNats, namespace: str) -> None:
    """``tasker_nats.scheduler`` builds a plain tasker.Scheduler whose locks and state share
    one source and one connection; closing it twice is fine, and it works again after."""
    scheduler = tasker_nats.scheduler(private_nats.url, namespace=namespace)
    assert type(scheduler) is tasker.Scheduler
    lockers, repository = scheduler.locker_factory, scheduler.repository
    assert isinstance(lockers, NatsLockerFactory)
    assert isinstance(repository, NatsStateRepository)
    assert lockers._source is repository._source
    locker = lockers.locker("shared")
    assert await locker.try_lock()
    await repository.save(ScheduleState(name="shared", last_slot=datetime(2026, 1, 1, tzinfo=UTC)))
    assert await repository.lock_holders() != {}
    await locker.unlock()
    connections = private_nats.monitor("/connz")["connections"]
    assert [c.get("name") for c in connections] == ["tasker-scheduler"]
    await scheduler.aclose()
    await scheduler.aclose()
    assert await repository.now() is not None  # the source connects again on use
    assert private_nats.monitor("/connz")["num_connections"] == 1
    await scheduler.aclose()
    with anyio.fail_after(5):
        while private_nats.monitor("/connz")["num_connections"]:  # noqa: ASYNC110 - another process
            await anyio.sleep(0.02)


async def test_closing_logs_no_outage(
    nats_url: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Closing a connection on purpose is no outage: nothing is logged at WARNING."""
    repository = NatsStateRepository(nats_url, namespace=namespace)
    await repository.get("x")
    with caplog.at_level(logging.INFO, logger="tasker_nats"):
        await repository.aclose()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_bad_options_name_the_parameter(nats_url: str, tmp_path: Path) -> None:
    """Bad constructor arguments raise at once and name the parameter and value; a URL's
    password never shows in a repr or a message."""
    with pytest.raises(ValueError, match=r"ttl must be at least 1 second .*got 0\.5"):
        NatsLockerFactory(nats_url, ttl=0.5)
    with pytest.raises(ValueError, match="ttl must be positive, got 0"):
        NatsLockerFactory(nats_url, ttl=0)
    with pytest.raises(ValueError, match="ttl must be at least 1 second"):
        tasker_nats.scheduler(nats_url, lock_ttl=timedelta(milliseconds=500))
    with pytest.raises(ValueError, match=r"renew_every must be shorter than ttl \(2s\), got 2"):
        NatsLockerFactory(nats_url, ttl=2, renew_every=2)
    with pytest.raises(ValueError, match="renew_every must be shorter than ttl"):
        tasker_nats.scheduler(nats_url, lock_ttl=timedelta(seconds=1), renew_every=1)
    with pytest.raises(TypeError, match="renew_every must be a number of seconds"):
        NatsLockerFactory(nats_url, renew_every="1")  # type: ignore[arg-type]
    assert NatsLockerFactory(nats_url, ttl=timedelta(seconds=8)).renew_every == 2.0
    assert NatsLockerFactory(nats_url, ttl=1.5).ttl_header == "2s"  # rounded up
    for bad in ["", "a.b", "x" * 65, "$KV", "a b", "*", ">"]:
        with pytest.raises(ValueError, match="namespace must be 1 to 64") as info:
            NatsStateRepository(nats_url, namespace=bad)
        assert repr(bad) in str(info.value)
    with pytest.raises(ValueError, match="namespace"):
        tasker_nats.scheduler(nats_url, namespace="")
    with pytest.raises(ValueError, match="namespace"):
        NatsLockerFactory(nats_url, namespace="a.b")
    with pytest.raises(TypeError, match="URL"):
        NatsStateRepository(42)  # type: ignore[arg-type]
    for replicas in (0, 6, True, 1.0):
        with pytest.raises(
            ValueError, match=f"replicas must be an int from 1 to 5, got {replicas}"
        ):
            NatsLockerFactory(nats_url, replicas=replicas)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="replicas must be an int from 1 to 5"):
            tasker_nats.scheduler(nats_url, replicas=replicas)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"nats://, tls://.*http://u:\*\*\*@h") as scheme:
        NatsLockerFactory("http://u:hunter2@h:4222")
    assert "hunter2" not in str(scheme.value)
    with pytest.raises(ValueError, match="nats://"):
        tasker_nats.scheduler("redis://127.0.0.1:6379")
    missing = tmp_path / "missing.creds"
    with pytest.raises(ValueError, match="credentials: no such file") as creds:
        tasker_nats.scheduler(nats_url, credentials=missing)
    assert str(missing) in str(creds.value)
    with pytest.raises(ValueError, match="nkey_seed: no such file"):
        NatsSource(nats_url, nkey_seed=tmp_path / "missing.nk")
    with pytest.raises(ValueError, match="give the credentials and TLS context to the NatsSource"):
        tasker_nats.scheduler(NatsSource(nats_url), token="t0ken")  # noqa: S106 - a dummy
    secret = "nats://user:hunter2@127.0.0.1:4222"  # noqa: S105 - the password to hide
    scheduler = tasker_nats.scheduler(secret)
    for text in (
        repr(scheduler),
        repr(scheduler.locker_factory),
        repr(scheduler.repository),
        repr(scheduler.locker_factory.locker("x")),
        repr(NatsSource(secret)),
        NatsSource(secret).url,
    ):
        assert "hunter2" not in text
    assert "127.0.0.1:4222" in repr(scheduler.repository)


def test_exports_are_public_and_documented() -> None:
    """Every public name is exported, sorted, documented and shown under tasker_nats; the
    exceptions also derive from the builtin they refine."""
    assert tasker_nats.__all__ == sorted(tasker_nats.__all__, key=isort_key)
    public = {
        name
        for name, obj in vars(tasker_nats).items()
        if not name.startswith("_") and name != "annotations" and not isinstance(obj, type(os))
    }
    assert public == set(tasker_nats.__all__)
    for name in tasker_nats.__all__:
        obj = getattr(tasker_nats, name)
        if name == "MIN_VERSION":
            assert obj >= (2, 11, 0)
            continue
        assert obj.__module__ == "tasker_nats", name
        assert obj.__doc__, name
    assert issubclass(tasker_nats.AsyncioRequiredError, TaskerError)
    assert issubclass(tasker_nats.AsyncioRequiredError, RuntimeError)
    assert issubclass(tasker_nats.NatsSetupError, TaskerError)
    assert issubclass(tasker_nats.NatsSetupError, RuntimeError)
    assert tasker_nats.__doc__


async def test_lock_holders_show_owner_and_revision(nats_backend: Backend) -> None:
    """``lock_holders()`` shows each holder as ``host:pid:random (revision N)``: N is the
    fencing number when taken, and moves on with each renewal; released locks vanish."""
    lockers, repository = nats_backend
    held = lockers.locker("documented")
    assert await held.try_lock()
    try:
        taken = await repository.lock_holders()
        assert taken["documented"].endswith(f" (revision {held.fencing_token})")
        with anyio.move_on_after(0.3):
            await held.wait_lost()  # renewals every 0.05 s
        renewed = await repository.lock_holders()
    finally:
        # Cancelling wait_lost may leave this lock behind (see the test below): the
        # released lock checked here is another one.
        await held.unlock()
    owner, _, revision = renewed["documented"].rpartition(" (revision ")
    assert f":{os.getpid()}:" in owner
    assert int(revision.rstrip(")")) > int(taken["documented"].rpartition(" ")[2].rstrip(")"))
    released = lockers.locker("released")
    assert await released.try_lock()
    assert "released" in await repository.lock_holders()
    await released.unlock()
    assert "released" not in await repository.lock_holders()


async def test_unlock_after_a_cancelled_renewal_releases_the_lock(
    nats_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock whose watch (``wait_lost``) is cancelled while a renewal waits for its answer
    (as the Scheduler cancels it when a run ends) is still released by ``unlock``."""
    lockers = NatsLockerFactory(nats_url, namespace=namespace, ttl=30, renew_every=0.1)
    locker = lockers.locker("cancelled renewal")
    try:
        assert await locker.try_lock()
        js_, _ = await lockers.bucket.get()
        real_publish = js_.publish
        renewals = anyio.Event()

        async def slow_answer(*args: Any, **kwargs: Any) -> Any:
            ack = await real_publish(*args, **kwargs)  # the server renewed the key
            renewals.set()
            await anyio.sleep(5)  # the answer is slow to come back
            return ack

        monkeypatch.setattr(js_, "publish", slow_answer)
        async with anyio.create_task_group() as tg:
            tg.start_soon(locker.wait_lost)
            with anyio.fail_after(5):
                await renewals.wait()
            tg.cancel_scope.cancel()  # the run ended: the Scheduler stops the watch
        monkeypatch.undo()
        await locker.unlock()
        assert await lockers.locker("cancelled renewal").try_lock()
    finally:
        monkeypatch.undo()
        await lockers.aclose()


async def test_status_lists_the_stored_schedules(
    nats_url: str, namespace: str, tmp_path: Path
) -> None:
    """``all()`` and ``lock_holders()`` say what is stored and who holds what; ``tasker
    status --nats`` lists them (never printing the URL's password), and ``tasker status
    --app`` on an application with a NATS Scheduler shows registered and unregistered
    schedules alike."""
    repository = NatsStateRepository(nats_url, namespace=namespace)
    lockers = NatsLockerFactory(nats_url, namespace=namespace, ttl=30)
    held = lockers.locker("nightly 'report'")
    slot = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        assert await repository.all() == []
        assert await repository.lock_holders() == {}
        report = ScheduleState(name="nightly 'report'", last_slot=slot, run_count=3)
        backup = ScheduleState(name="backup.* >", last_slot=slot, last_error="E: x")
        await repository.save(report)
        await repository.save(backup)
        assert await repository.all() == [backup, report]
        assert await held.try_lock()
        holders = await repository.lock_holders()
        assert list(holders) == ["nightly 'report'"]
        assert str(held.fencing_token) in holders["nightly 'report'"]
        assert f":{os.getpid()}:" in holders["nightly 'report'"]
    finally:
        await repository.aclose()
    (tmp_path / "nats_status_app.py").write_text(
        textwrap.dedent(
            """
            import os

            import tasker
            import tasker_nats
            from tasker.schedule import Interval

            scheduler = tasker_nats.scheduler(
                os.environ["STATUS_NATS_URL"], namespace=os.environ["STATUS_NAMESPACE"]
            )

            async def job(ctx: tasker.Context) -> None:
                pass

            nightly = scheduler.with_schedule("nightly 'report'", Interval(3600), job)
            """
        )
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(tmp_path)])
    env["STATUS_NATS_URL"] = nats_url
    env["STATUS_NAMESPACE"] = namespace
    env.pop("TASKER_NATS_URL", None)
    # The tests' server has no password, and takes any: this one shows that it stays hidden.
    url = nats_url if "@" in nats_url else nats_url.replace("://", "://default:hunter2@", 1)
    status = [sys.executable, "-m", "tasker", "status"]
    try:
        listed = await anyio.run_process(
            [*status, "--nats", url, "--namespace", namespace], check=False, env=env, cwd=ROOT
        )
        app = await anyio.run_process(
            [*status, "--app", "nats_status_app", "--json"], check=False, env=env, cwd=ROOT
        )
    finally:
        await held.unlock()
        await lockers.aclose()
    out, err = listed.stdout.decode(), listed.stderr.decode()
    assert listed.returncode == 0, err
    assert "nightly 'report'" in out
    assert "backup.* >" in out
    assert f":{os.getpid()}:" in out, out  # the lock holder
    assert "hunter2" not in out + err
    assert app.returncode == 0, app.stderr.decode()
    rows = {row["name"]: row for row in json.loads(app.stdout)["schedules"]}
    assert set(rows) == {"nightly 'report'", "backup.* >"}
    assert rows["nightly 'report'"]["registered"] is True
    assert rows["nightly 'report'"]["runs"] == 3
    assert f":{os.getpid()}:" in rows["nightly 'report'"]["lock_holder"]
    assert rows["backup.* >"]["registered"] is False
    assert rows["backup.* >"]["last_error"] == "E: x"
    assert rows["backup.* >"]["lock_holder"] is None


# -- trio ----------------------------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[tuple[str, socket.socket]]:
    """A URL of a socket that listens but never answers: a connection to it would show."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    try:
        yield f"nats://127.0.0.1:{sock.getsockname()[1]}", sock
    finally:
        sock.close()


def _nobody_connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


class TestTrioIsRefused:
    """Under trio every entry point raises AsyncioRequiredError naming trio, before any
    I/O (nats-py is asyncio only), and a Scheduler stops with it instead of retrying."""

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "trio"

    async def test_every_entry_point_names_trio(self, listener: tuple[str, socket.socket]) -> None:
        """try_lock, now, get, save, all, lock_holders and the source itself raise
        AsyncioRequiredError naming trio, without connecting; aclose is harmless."""
        url, sock = listener
        lockers = NatsLockerFactory(url)
        repository = NatsStateRepository(url)
        source = NatsSource(url)
        state = ScheduleState(name="x", last_slot=datetime(2026, 1, 1, tzinfo=UTC))
        calls: list[Callable[[], Any]] = [
            lockers.locker("x").try_lock,
            repository.now,
            lambda: repository.get("x"),
            lambda: repository.save(state),
            repository.all,
            repository.lock_holders,
            source.jetstream,
            source.client,
        ]
        for call in calls:
            with pytest.raises(tasker_nats.AsyncioRequiredError, match="trio") as info:
                await call()
            assert info.value.backend == "trio"
            assert "asyncio" in str(info.value)
            fault = permanent_fault(info.value)
            assert fault is not None
        unheld = lockers.locker("x")
        await unheld.unlock()  # holds nothing: nothing to send
        await lockers.aclose()
        await repository.aclose()
        await source.aclose()
        assert _nobody_connected(sock)

    async def test_scheduled_job_stops_with_the_error(
        self, listener: tuple[str, socket.socket]
    ) -> None:
        """``tasker.run`` of a Scheduler job under trio raises BackendConfigurationError from
        AsyncioRequiredError at once: no retry, no run, no connection."""
        url, sock = listener
        scheduler = tasker_nats.scheduler(url, backend_backoff=0.01, lock_retry=0.01)
        ran: list[datetime | None] = []

        async def job(ctx: tasker.Context) -> None:
            ran.append(tasker.scheduled_slot())

        with anyio.fail_after(30), pytest.raises(BaseException) as info:  # noqa: PT011 - checked below
            await tasker.run(
                scheduler.with_schedule("on trio", Interval(0.1), job),
                shutdown_trigger=lambda: anyio.sleep(60),
            )
        errors = list(_chain(info.value))
        assert any(isinstance(e, BackendConfigurationError) for e in errors), errors
        refused = [e for e in errors if isinstance(e, tasker_nats.AsyncioRequiredError)]
        assert refused, errors
        assert refused[0].backend == "trio"
        assert ran == []
        assert scheduler.statistics().backend_errors == 0
        assert scheduler.statistics().runs_started == 0
        await scheduler.aclose()
        assert _nobody_connected(sock)


def test_main_on_trio_stops_with_the_error(listener: tuple[str, socket.socket]) -> None:
    """``tasker.main(..., backend="trio")`` of a Scheduler job exits with status 1 and the
    error naming trio and the fix, without retrying or connecting."""
    url, sock = listener
    code = textwrap.dedent(
        """
        import sys

        import tasker
        import tasker_nats
        from tasker.schedule import Interval

        scheduler = tasker_nats.scheduler(sys.argv[1], backend_backoff=0.01)

        async def job(ctx):
            print("ran", flush=True)

        tasker.main(scheduler.with_schedule("on trio", Interval(0.1), job), backend="trio")
        """
    )
    proc = python_process(["-c", code, url])
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "AsyncioRequiredError" in err, err
    assert "BackendConfigurationError" in err, err
    assert "runs on trio" in err, err
    assert "retrying with backoff" not in err, err
    assert "ran" not in out
    assert _nobody_connected(sock)
