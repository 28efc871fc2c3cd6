"""on_error, ignore_error, with_timeout, with_retry and with_restart."""

from __future__ import annotations

import logging

import anyio
import pytest

from tasker import (
    Backoff,
    Context,
    JobTimeoutError,
    RestartLimitError,
    StopReason,
    concurrence,
    ignore_error,
    on_error,
    run,
    with_restart,
    with_retry,
    with_timeout,
)

from .helpers import Recorder

pytestmark = pytest.mark.anyio


class Boom(Exception):
    """A test failure."""


class Other(Exception):
    """Another test failure."""


async def test_on_error_handler_gets_exception_and_context() -> None:
    """The handler receives the exception and the context; returning None swallows it."""
    seen: list[object] = []
    error = Boom()

    def handler(exc: Exception, ctx: Context) -> None:
        seen.extend([exc, isinstance(ctx, Context)])

    await run(on_error(Recorder().job("x", fail=error), handler))
    assert seen == [error, True]


async def test_on_error_replacement_is_raised_chained() -> None:
    """An exception returned by an async handler replaces the failure, chained to it."""
    original = Boom()

    async def handler(exc: Exception) -> Exception:
        return Other("replaced")

    with pytest.raises(Other) as info:
        await run(on_error(Recorder().job("x", fail=original), handler))
    assert info.value.__cause__ is original


async def test_on_error_handler_raising_propagates() -> None:
    """What the handler raises propagates."""

    def handler(exc: Exception) -> None:
        raise Other("from handler")

    with pytest.raises(Other, match="from handler"):
        await run(on_error(Recorder().job("x", fail=Boom()), handler))


async def test_on_error_not_called_for_cancellation_or_success() -> None:
    """Neither a hard stop nor a normal return reaches the handler."""
    calls: list[Exception] = []
    rec = Recorder()
    job = on_error(rec.stubborn("s"), calls.append)
    with anyio.move_on_after(0.02):
        await run(job)
    await run(on_error(rec.waiter("w"), calls.append), shutdown_trigger=anyio.lowlevel.checkpoint)
    assert calls == []
    assert "cancelled s" in rec.events


def test_on_error_rejects_bad_handler() -> None:
    """A handler that is not callable, or takes no argument, fails at construction."""
    job = Recorder().job("x")
    with pytest.raises(TypeError, match="handler"):
        on_error(job, 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must accept the exception"):
        on_error(job, lambda: None)  # type: ignore[arg-type]


async def test_on_error_handler_returning_garbage_is_an_error() -> None:
    """A handler returning something that is not an exception is a TypeError."""
    with pytest.raises(TypeError, match="expected None or an exception"):
        await run(on_error(Recorder().job("x", fail=Boom()), lambda exc: 42))  # type: ignore[arg-type]


async def test_ignore_error_all_and_by_type() -> None:
    """No types: all failures ignored; with types: only those, others propagate."""
    await run(ignore_error(Recorder().job("x", fail=Boom())))
    await run(ignore_error(Recorder().job("x", fail=Boom()), Boom))
    with pytest.raises(Other):
        await run(ignore_error(Recorder().job("x", fail=Other()), Boom))


async def test_ignore_error_splits_exception_groups() -> None:
    """Inside a group, matching members are dropped and the rest is re-raised."""

    async def both_fail(ctx: Context) -> None:
        raise ExceptionGroup("two", [Boom(), Other()])

    with pytest.raises(ExceptionGroup) as info:
        await run(ignore_error(both_fail, Boom))
    assert [type(e) for e in info.value.exceptions] == [Other]
    await run(ignore_error(both_fail, Boom, Other))


async def test_ignore_error_group_from_concurrence() -> None:
    """ignore_error composes with concurrence's group of several failures."""

    async def fail_on_stop(ctx: Context) -> None:
        await ctx.wait()
        raise Boom()

    async def fail_now(ctx: Context) -> None:
        await anyio.sleep(0.01)
        raise Boom()

    await run(ignore_error(concurrence(fail_on_stop, fail_now), Boom))


def test_ignore_error_rejects_non_exception_types() -> None:
    """Only Exception subclasses can be ignored; cancellation never can."""
    with pytest.raises(TypeError, match="not an Exception subclass"):
        ignore_error(Recorder().job("x"), BaseException)  # type: ignore[arg-type]


async def test_with_timeout_soft_stops_then_raises() -> None:
    """At the limit the job sees TIMEOUT; once it returns, JobTimeoutError is raised."""
    reasons: list[StopReason | None] = []

    async def slow(ctx: Context) -> None:
        await ctx.wait()
        reasons.append(ctx.reason)

    started = anyio.current_time()
    with pytest.raises(JobTimeoutError) as info:
        await run(with_timeout(slow, 0.05))
    assert isinstance(info.value, TimeoutError)
    assert reasons == [StopReason.TIMEOUT]
    assert 0.05 <= anyio.current_time() - started < 2


async def test_with_timeout_hard_cancels_stubborn_job() -> None:
    """A job that ignores the timeout is cancelled after the grace period."""
    rec = Recorder()
    with pytest.raises(JobTimeoutError):
        await run(with_timeout(rec.stubborn("s"), 0.02), grace=0.05)
    assert rec.events == ["start s", "cancelled s"]


async def test_with_timeout_fast_job_succeeds_and_own_error_wins() -> None:
    """A job within its limit succeeds; its own failure propagates as it is."""
    await run(with_timeout(Recorder().job("fast"), 5))
    with pytest.raises(Boom):
        await run(with_timeout(Recorder().job("bad", fail=Boom()), 5))


async def test_with_retry_until_success() -> None:
    """Failures are retried; the attempt that succeeds ends the job."""
    attempts: list[int] = []

    async def flaky(ctx: Context) -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) < 3:
            raise Boom()

    await run(with_retry(flaky, attempts=5, backoff=Backoff.fixed(0.001)))
    assert attempts == [1, 2, 3]


async def test_with_retry_gives_up_with_last_failure() -> None:
    """When attempts run out, the last failure propagates as it is."""
    errors = [Boom(str(i)) for i in range(3)]
    it = iter(errors)

    async def always(ctx: Context) -> None:
        raise next(it)

    with pytest.raises(Boom) as info:
        await run(with_retry(always, attempts=3, backoff=0.001))
    assert info.value is errors[-1]


async def test_with_retry_only_listed_types() -> None:
    """A failure not in retry_on propagates at once."""
    calls = []

    async def job(ctx: Context) -> None:
        calls.append(1)
        raise Other()

    with pytest.raises(Other):
        await run(with_retry(job, attempts=5, backoff=0.001, retry_on=(Boom,)))
    assert len(calls) == 1


async def test_with_retry_shutdown_during_backoff_keeps_failure() -> None:
    """A shutdown during the backoff wait ends retrying and re-raises the failure."""
    calls = []

    async def job(ctx: Context) -> None:
        calls.append(1)
        raise Boom()

    with pytest.raises(Boom):
        await run(
            with_retry(job, attempts=5, backoff=30),
            shutdown_trigger=lambda: anyio.sleep(0.05),
        )
    assert len(calls) == 1


@pytest.mark.parametrize("attempts", [0, -1, 1.5, True])
def test_with_retry_rejects_bad_attempts(attempts: object) -> None:
    """attempts must be an integer >= 1."""
    with pytest.raises(ValueError, match="attempts"):
        with_retry(Recorder().job("x"), attempts=attempts)  # type: ignore[arg-type]


async def test_with_restart_restarts_then_returns(caplog: pytest.LogCaptureFixture) -> None:
    """A failing job is restarted (logged with its traceback) until it returns normally."""
    runs: list[int] = []

    async def job(ctx: Context) -> None:
        runs.append(1)
        if len(runs) < 3:
            raise Boom(f"run {len(runs)}")

    with caplog.at_level(logging.ERROR, logger="tasker"):
        await run(with_restart(job, max_restarts=5, backoff=Backoff.fixed(0.001)))
    assert len(runs) == 3
    assert caplog.text.count("restarting in") == 2
    assert "Boom: run 1" in caplog.text


async def test_with_restart_gives_up_after_limit() -> None:
    """More than max_restarts failures in the window raise RestartLimitError from the last."""
    errors: list[Boom] = []

    async def job(ctx: Context) -> None:
        errors.append(Boom(str(len(errors))))
        raise errors[-1]

    with pytest.raises(RestartLimitError) as info:
        await run(with_restart(job, max_restarts=2, window=60, backoff=0.001))
    assert len(errors) == 3
    assert info.value.__cause__ is errors[-1]
    assert info.value.restarts == 2


async def test_with_restart_stops_on_shutdown() -> None:
    """A shutdown during the restart backoff ends the supervisor without another run."""
    runs: list[int] = []

    async def job(ctx: Context) -> None:
        runs.append(1)
        raise Boom()

    await run(
        with_restart(job, max_restarts=100, backoff=30),
        shutdown_trigger=lambda: anyio.sleep(0.05),
    )
    assert runs == [1]


def test_backoff_delays() -> None:
    """Delays grow by factor up to the maximum; jitter stays within its fraction."""
    backoff = Backoff(initial=1, factor=2, maximum=5, jitter=0)
    assert [backoff.delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    assert backoff.delay(10_000) == 5
    jittered = Backoff(initial=10, factor=1, maximum=10, jitter=0.5)
    assert all(5 <= jittered.delay(1) <= 15 for _ in range(200))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"initial": -1}, "initial"),
        ({"factor": 0.5}, "factor"),
        ({"jitter": 2}, "jitter"),
        ({"initial": 10, "maximum": 1}, "maximum"),
    ],
)
def test_backoff_validation(kwargs: dict[str, float], field: str) -> None:
    """Bad backoff values fail at construction, naming the field."""
    with pytest.raises(ValueError, match=field):
        Backoff(**kwargs)
