"""with_shutdown and serve_asgi: graceful server stops with real servers and a real client."""

from __future__ import annotations

import logging
import socket
from datetime import timedelta
from typing import Any

import anyio
import httpx
import pytest

from tasker import (
    Context,
    Job,
    ServerStartError,
    concurrence,
    run,
    sequence,
    serve_asgi,
    with_repeat,
    with_shutdown,
)
from tasker.schedule import Interval

from .helpers import free_port

pytestmark = pytest.mark.anyio


class FakeServer:
    """A server whose serve() blocks until shutdown() is called (or never, if stuck)."""

    def __init__(self, *, stuck: bool = False, fail: Exception | None = None) -> None:
        self.events: list[str] = []
        self.stop = anyio.Event()
        self.stuck = stuck
        self.fail = fail
        self.shutdown_deadline: float | None = None

    async def serve(self) -> None:
        self.events.append("serve")
        try:
            if self.fail is not None:
                raise self.fail
            await self.stop.wait()
            if self.stuck:
                await anyio.sleep_forever()
            self.events.append("served")
        finally:
            self.events.append("serve exit")

    async def shutdown(self, ctx: Context) -> None:
        self.shutdown_deadline = ctx.deadline
        self.events.append("shutdown")
        self.stop.set()


async def test_shutdown_called_when_context_done() -> None:
    """On shutdown, shutdown() runs with a deadline and serve() returns by itself."""
    server = FakeServer()
    before = anyio.current_time()
    await run(
        with_shutdown(server.serve, server.shutdown, timeout=7),
        shutdown_trigger=lambda: anyio.sleep(0.02),
    )
    assert server.events == ["serve", "shutdown", "served", "serve exit"]
    assert server.shutdown_deadline is not None
    assert before + 7 <= server.shutdown_deadline < anyio.current_time() + 7


async def test_stuck_server_is_cancelled_at_deadline(caplog: pytest.LogCaptureFixture) -> None:
    """A serve() still running at the shutdown deadline is cancelled, with a warning."""
    server = FakeServer(stuck=True)
    started = anyio.current_time()
    with caplog.at_level(logging.WARNING, logger="tasker"):
        await run(
            with_shutdown(server.serve, server.shutdown, timeout=0.1),
            shutdown_trigger=anyio.lowlevel.checkpoint,
            grace=30,
        )
    assert server.events == ["serve", "shutdown", "serve exit"]
    assert 0.1 <= anyio.current_time() - started < 5
    assert "did not stop within 0.1s of shutdown" in caplog.text


async def test_the_default_drain_is_the_grace_less_its_margin() -> None:
    """timeout=None: shutdown()'s deadline is the grace less a fifth (at most 1 s) away."""
    server = FakeServer()
    before = anyio.current_time()
    await run(
        with_shutdown(server.serve, server.shutdown),
        shutdown_trigger=lambda: anyio.sleep(0.02),
        grace=2,
    )
    assert server.shutdown_deadline is not None
    assert before + 1.6 <= server.shutdown_deadline < anyio.current_time() + 1.6
    server = FakeServer()
    before = anyio.current_time()
    await run(
        with_shutdown(server.serve, server.shutdown),
        shutdown_trigger=lambda: anyio.sleep(0.02),
        grace=30,
    )
    assert server.shutdown_deadline is not None
    assert before + 29 <= server.shutdown_deadline < anyio.current_time() + 29


async def test_a_timeout_beyond_the_grace_is_rejected_by_run_at_construction() -> None:
    """The budget travels up through tasker's combinators; run() names both values."""
    server = FakeServer()
    job = with_repeat(Interval(1), with_shutdown(server.serve, server.shutdown, timeout=40))
    with pytest.raises(
        ValueError, match=r"with_shutdown\(FakeServer\.serve\) drains for up to 40s.*grace is 5s"
    ):
        await run(sequence(concurrence(job)), grace=5)
    assert server.events == []


async def test_a_hidden_timeout_beyond_the_grace_is_cut_to_fit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Inside a job of the user's own, the budget is unseen: cut to fit, with a warning."""
    server = FakeServer(stuck=True)
    inner = with_shutdown(server.serve, server.shutdown, timeout=40)

    async def own(ctx: Context) -> None:
        await inner(ctx)

    started = anyio.current_time()
    with caplog.at_level(logging.WARNING, logger="tasker"):
        await run(own, shutdown_trigger=anyio.lowlevel.checkpoint, grace=1)
    assert 0.8 <= anyio.current_time() - started < 5
    assert "its shutdown timeout (40s) exceeds the grace of its context (1s)" in caplog.text
    assert "did not stop within 0.8s of shutdown" in caplog.text


async def test_serve_failure_fails_at_once() -> None:
    """A server that fails to start fails the job with its own exception, immediately."""
    server = FakeServer(fail=OSError(98, "Address already in use"))
    with anyio.fail_after(2), pytest.raises(OSError, match="already in use"):
        await run(
            with_shutdown(server.serve, server.shutdown), shutdown_trigger=anyio.sleep_forever
        )
    assert "shutdown" not in server.events


async def test_shutdown_failure_propagates_after_cancelling_serve() -> None:
    """If shutdown() fails, serve() is cancelled and the shutdown error propagates."""
    server = FakeServer()

    async def bad_shutdown() -> None:
        raise RuntimeError("cannot stop")

    with pytest.raises(RuntimeError, match="cannot stop"):
        await run(
            with_shutdown(server.serve, bad_shutdown), shutdown_trigger=anyio.lowlevel.checkpoint
        )
    assert server.events == ["serve", "serve exit"]


async def test_server_returning_by_itself_ends_job() -> None:
    """A serve() that returns before any shutdown ends the job normally."""
    calls: list[str] = []

    async def serve() -> None:
        calls.append("serve")

    async def shutdown() -> None:
        calls.append("shutdown")

    await run(with_shutdown(serve, shutdown))
    assert calls == ["serve"]


def test_with_shutdown_validates() -> None:
    """Non-callables and bad timeouts fail at construction."""

    async def noop() -> None:
        pass

    with pytest.raises(TypeError, match="serve"):
        with_shutdown(42, noop)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        with_shutdown(noop, noop, timeout=-1)


def on_done_context(job: Job) -> Job:
    """A job that waits until its context is done, then hands that done context to ``job``."""

    async def later(ctx: Context) -> None:
        await ctx.wait()
        await job(ctx)

    return later


async def test_shutdown_runs_when_serve_returns_on_context_done() -> None:
    """A serve() that returns because the context is done still gets its shutdown, every time."""
    calls: list[int] = []

    async def serve(ctx: Context) -> None:
        await ctx.wait()

    async def shutdown() -> None:
        calls.append(attempt)

    for attempt in range(20):  # the order of wake-ups varied from run to run: repeat
        await run(with_shutdown(serve, shutdown), shutdown_trigger=anyio.lowlevel.checkpoint)
        assert calls == list(range(attempt + 1)), f"attempt {attempt}"


async def test_context_done_before_start_calls_shutdown_and_raises_its_error() -> None:
    """With a context already done at the start, shutdown() runs and its failure propagates."""

    async def serve(ctx: Context) -> None:
        await ctx.wait()

    async def bad_shutdown() -> None:
        raise RuntimeError("cannot stop")

    job = on_done_context(with_shutdown(serve, bad_shutdown))
    with anyio.fail_after(5), pytest.raises(RuntimeError, match="cannot stop"):
        await run(job, shutdown_trigger=anyio.lowlevel.checkpoint)


async def test_server_that_stops_only_when_asked_does_not_hang_on_done_context() -> None:
    """A serve() that ignores its context is asked to stop once, even if ctx was done first."""
    server = FakeServer()
    job = on_done_context(with_shutdown(server.serve, server.shutdown, timeout=30))
    with anyio.fail_after(5):  # the grace period's hard stop must not be what ends it
        await run(job, shutdown_trigger=anyio.lowlevel.checkpoint, grace=60)
    assert sorted(server.events) == ["serve", "serve exit", "served", "shutdown"]


async def test_serve_returning_by_itself_before_shutdown_skips_it() -> None:
    """A serve() that returned while the context ran gets no shutdown, even once ctx is done."""
    calls: list[str] = []
    stop = anyio.Event()

    async def serve() -> None:
        calls.append("serve")
        stop.set()  # the context becomes done only after serve() has returned

    async def shutdown() -> None:
        calls.append("shutdown")

    await run(with_shutdown(serve, shutdown), shutdown_trigger=stop.wait)
    assert calls == ["serve"]


async def test_serve_and_shutdown_failures_are_raised_together() -> None:
    """When serve() and shutdown() both fail, neither error is lost: both come in a group."""

    async def serve(ctx: Context) -> None:
        await ctx.wait()
        raise OSError("serve broke while stopping")

    async def shutdown() -> None:
        raise RuntimeError("shutdown broke")

    with pytest.raises(ExceptionGroup) as info:
        await run(with_shutdown(serve, shutdown), shutdown_trigger=anyio.lowlevel.checkpoint)
    assert [type(exc) for exc in info.value.exceptions] == [OSError, RuntimeError]


# -- real servers -------------------------------------------------------------------------


async def slow_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app: /slow answers after 0.5 s, everything else at once."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/slow":
        await anyio.sleep(0.5)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _wait_until_listening(port: int) -> None:
    with anyio.fail_after(10):
        while True:
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.02)
            else:
                await stream.aclose()
                return


@pytest.mark.parametrize("server", ["auto", "hypercorn"])
async def test_in_flight_request_completes_on_shutdown(server: str, anyio_backend: str) -> None:
    """A request in flight when shutdown starts still gets its 200; then the job returns."""
    port = free_port()
    stop = anyio.Event()
    results: list[int] = []

    async def client() -> None:
        await _wait_until_listening(port)
        async with httpx.AsyncClient() as http:

            async def trigger_soon() -> None:
                await anyio.sleep(0.15)
                stop.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(trigger_soon)
                response = await http.get(f"http://127.0.0.1:{port}/slow", timeout=10)
                results.append(response.status_code)

    job = serve_asgi(slow_app, port=port, host="127.0.0.1", server=server, timeout=5)  # type: ignore[arg-type]
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(client)
            await run(job, shutdown_trigger=stop.wait)
    assert results == [200]
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", port), timeout=1),
    ):
        pass


async def test_port_in_use_fails_at_once(anyio_backend: str) -> None:
    """A port that cannot be bound fails the job with OSError, without waiting."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        job = serve_asgi(slow_app, port=port, host="127.0.0.1")
        with anyio.fail_after(10), pytest.raises(OSError, match="in use"):
            await run(job, shutdown_trigger=anyio.sleep_forever)


def test_port_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The port comes from PORT when not given; missing or malformed is a clear ValueError."""
    monkeypatch.setenv("PORT", "8123")
    assert serve_asgi(slow_app).__name__ == "serve_asgi(0.0.0.0:8123)"
    monkeypatch.setenv("PORT", "http")
    with pytest.raises(ValueError, match="PORT environment variable is not a port number"):
        serve_asgi(slow_app)
    monkeypatch.setenv("PORT", "70000")
    with pytest.raises(ValueError, match="0 to 65535"):
        serve_asgi(slow_app)
    monkeypatch.delenv("PORT")
    with pytest.raises(ValueError, match="PORT environment variable is not set"):
        serve_asgi(slow_app)
    with pytest.raises(ValueError, match="server"):
        serve_asgi(slow_app, port=1, server="gunicorn")  # type: ignore[arg-type]


@pytest.mark.parametrize("server", ["auto", "hypercorn"])
async def test_serve_asgi_on_done_context_returns(server: str, anyio_backend: str) -> None:
    """serve_asgi handed a context that is already done starts, stops and returns."""
    port = free_port()
    job = serve_asgi(slow_app, port=port, host="127.0.0.1", server=server, timeout=5)  # type: ignore[arg-type]
    with anyio.fail_after(15):  # the grace period's hard stop must not be what ends it
        await run(on_done_context(job), shutdown_trigger=anyio.lowlevel.checkpoint, grace=60)


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(-1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError), ("abc", TypeError)],
)
def test_serve_asgi_validates_timeout(timeout: object, error: type[Exception]) -> None:
    """A bad timeout fails at construction, naming the parameter and showing the value."""
    with pytest.raises(error, match=r"serve_asgi\(\): timeout .*got"):
        serve_asgi(slow_app, port=1, timeout=timeout)  # type: ignore[arg-type]


def test_serve_asgi_accepts_a_timedelta_timeout() -> None:
    """Durations are seconds or a timedelta, as everywhere in tasker."""
    assert serve_asgi(slow_app, port=1, timeout=timedelta(seconds=3)).__name__ == (
        "serve_asgi(0.0.0.0:1)"
    )


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_uvicorn_on_trio_is_a_server_start_error(anyio_backend: str) -> None:
    """Asking for uvicorn on trio fails with tasker's error, which is also a RuntimeError."""
    port = free_port()
    job = serve_asgi(slow_app, port=port, host="127.0.0.1", server="uvicorn")
    with pytest.raises(ServerStartError, match="uvicorn runs on asyncio only") as info:
        await run(job)
    assert isinstance(info.value, RuntimeError)
    assert (info.value.server, info.value.address) == ("uvicorn", f"127.0.0.1:{port}")


async def failing_lifespan_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app whose lifespan startup fails."""
    assert scope["type"] == "lifespan"
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "no database"})


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_uvicorn_startup_failure_is_a_server_start_error(anyio_backend: str) -> None:
    """An app whose lifespan startup fails makes the job fail with ServerStartError."""
    job = serve_asgi(failing_lifespan_app, port=free_port(), host="127.0.0.1", server="uvicorn")
    with anyio.fail_after(10), pytest.raises(ServerStartError, match="during startup"):
        await run(job, shutdown_trigger=anyio.sleep_forever)
