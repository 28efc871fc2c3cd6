"""Durations in tasker_pg take ``float | timedelta``, and the scheduler's options are explicit."""

from __future__ import annotations

import inspect
from datetime import timedelta
from typing import Any

import pytest

import tasker
import tasker_pg
from tasker import Backoff
from tasker_pg import (
    PostgresLockerFactory,
    PostgresQueueBackend,
    PostgresScheduler,
    PostgresStateRepository,
)

pytestmark = pytest.mark.anyio


def test_lock_intervals_take_a_timedelta(pg_dsn: str) -> None:
    """``check_interval`` and ``check_timeout`` are normalised to seconds at construction,
    from the factory and from ``tasker_pg.scheduler``."""
    lockers = PostgresLockerFactory(
        pg_dsn, check_interval=timedelta(milliseconds=200), check_timeout=timedelta(seconds=2)
    )
    assert (lockers.check_interval, lockers.check_timeout) == (0.2, 2.0)
    scheduler = tasker_pg.scheduler(
        pg_dsn, check_interval=timedelta(milliseconds=250), lock_retry=timedelta(seconds=3)
    )
    assert isinstance(scheduler.locker_factory, PostgresLockerFactory)
    assert scheduler.locker_factory.check_interval == 0.25


@pytest.mark.parametrize("build", ["queue", "repository"])
@pytest.mark.parametrize(("resync", "reads"), [(timedelta(hours=1), 1), (timedelta(0), 2)])
async def test_clock_resync_takes_a_timedelta(
    pg_dsn: str,
    schema: str,
    monkeypatch: pytest.MonkeyPatch,
    build: str,
    resync: timedelta,
    reads: int,
) -> None:
    """An hour between clock readings reads the server once for two calls; zero reads it
    on every call."""
    backend: Any = (
        PostgresQueueBackend(pg_dsn, schema=schema, clock_resync=resync)
        if build == "queue"
        else PostgresStateRepository(pg_dsn, schema=schema, clock_resync=resync)
    )
    read = backend.time if build == "queue" else backend.now
    source = backend._source
    pools = 0
    real_pool = source.pool

    async def counting_pool() -> object:
        nonlocal pools
        pools += 1
        return await real_pool()

    monkeypatch.setattr(source, "pool", counting_pool)
    try:
        await read()
        await read()
    finally:
        await backend.aclose()
    assert pools == reads


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (
            lambda dsn: PostgresQueueBackend(dsn, clock_resync=timedelta(seconds=-1)),
            ValueError,
            r"clock_resync must be non-negative, got datetime.timedelta\(days=-1",
        ),
        (
            lambda dsn: PostgresStateRepository(dsn, clock_resync="30"),  # type: ignore[arg-type]
            TypeError,
            "clock_resync must be a number of seconds or a timedelta, got '30'",
        ),
        (
            lambda dsn: PostgresLockerFactory(dsn, check_interval=timedelta(0)),
            ValueError,
            r"check_interval must be positive, got datetime.timedelta\(0\)",
        ),
        (
            lambda dsn: PostgresLockerFactory(dsn, check_timeout=float("nan")),
            ValueError,
            "check_timeout must be finite, got nan",
        ),
        (
            lambda dsn: PostgresQueueBackend(dsn, clock_resync=float("inf")),
            ValueError,
            "clock_resync must be finite, got inf",
        ),
        (
            lambda dsn: tasker_pg.scheduler(dsn, check_interval=True),
            TypeError,
            "check_interval must be a number of seconds or a timedelta, got True",
        ),
        (
            lambda dsn: tasker_pg.scheduler(dsn, lock_retry=timedelta(seconds=-2)),
            ValueError,
            "lock_retry",
        ),
    ],
)
def test_bad_durations_name_the_parameter(
    pg_dsn: str, build: Any, error: type[Exception], message: str
) -> None:
    """A negative, zero (for an interval), NaN, infinite or non-duration (bool, str) value
    fails at construction, with tasker's own message naming the option."""
    with pytest.raises(error, match=message):
        build(pg_dsn)


def test_scheduler_options_match_tasker_scheduler() -> None:
    """``PostgresScheduler`` and ``tasker_pg.scheduler`` take tasker.Scheduler's tuning
    options by name, with its defaults, and nothing catch-all (``state_dir`` is only for the
    embedded backend, so it is not among them)."""
    core = inspect.signature(tasker.Scheduler.__init__).parameters
    for function in (PostgresScheduler.__init__, tasker_pg.scheduler):
        params = inspect.signature(function).parameters
        assert all(p.kind is not p.VAR_KEYWORD for p in params.values()), function
        for name in ("lock_retry", "backend_backoff"):
            assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
            assert params[name].default == core[name].default, name
    assert set(inspect.signature(PostgresScheduler.__init__).parameters) == set(core) - {
        "state_dir"
    }
    with pytest.raises(TypeError, match="state_dir"):
        tasker_pg.scheduler("postgresql://u@h/db", state_dir="state")  # type: ignore[call-arg]
    assert isinstance(
        tasker_pg.scheduler("postgresql://u@h/db", backend_backoff=Backoff.fixed(0.1)),
        PostgresScheduler,
    )
