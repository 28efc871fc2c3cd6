"""with_shutdown and serve_asgi: graceful server stops with real servers and a real client."""

from __future__ import annotations

import logging
import socket
from typing import Any

import anyio
import httpx
import pytest

from tasker import Context, run, serve_asgi, with_shutdown

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
