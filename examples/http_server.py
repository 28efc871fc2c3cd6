"""An HTTP server and a repeating job in one program, stopped gracefully by SIGTERM/SIGINT.

Shows: a uvicorn server wrapped with ``tasker.with_shutdown`` (its ``serve()`` and its
``should_exit`` flag) next to a ``with_repeat`` heartbeat, both run by ``tasker.main``.
On the first SIGTERM or Ctrl-C the server stops accepting connections, in-flight requests
finish, the heartbeat stops, and the process exits 0. A second signal stops it at once.

Needs: the ``asgi`` extra (uvicorn). ``tasker.serve_asgi(app)`` is the one-liner for the same
thing; this example spells it out to show ``with_shutdown``.

Run: ``PORT=8000 python examples/http_server.py``, then ``curl localhost:8000/`` or
``curl 'localhost:8000/slow?seconds=3'`` and press Ctrl-C while the slow request runs.

Prints: ``listening on http://127.0.0.1:8000`` once the server accepts connections (a client
may connect as soon as it reads that line), a ``heartbeat`` line per second, and ``bye`` after
a clean shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

import anyio
import uvicorn

import tasker
from tasker.schedule import Interval


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A tiny ASGI app: ``/`` answers at once, ``/slow?seconds=N`` after N seconds."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b"hello\n"
    if scope["path"] == "/slow":
        query = dict(
            part.split("=", 1) for part in scope["query_string"].decode().split("&") if "=" in part
        )
        await anyio.sleep(float(query.get("seconds", "1")))
        body = b"slow hello\n"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


class IgnoreCancelledRequests(logging.Filter):
    """A second Ctrl-C cancels requests still in flight; uvicorn would log each with a
    CancelledError traceback. tasker already logs the forced stop, so drop those."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, asyncio.CancelledError)


class Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the program's signals belong to tasker.

    It announces its address only once its socket is listening, not when ``serve()`` is called:
    uvicorn binds during startup, after the app's lifespan startup has run.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:  # not when startup gave up (a lifespan error)
            print(f"listening on http://{self.config.host}:{self.config.port}", flush=True)


def http_job(port: int) -> tasker.Job:
    """The server as a job: serve until shutdown, then let in-flight requests finish."""
    server = Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    logging.getLogger("uvicorn.error").addFilter(IgnoreCancelledRequests())

    async def serve() -> None:
        await server.serve()

    async def shutdown() -> None:
        server.should_exit = True

    return tasker.with_shutdown(serve, shutdown, timeout=10)


async def heartbeat(ctx: tasker.Context) -> None:
    """A short job repeated every second."""
    print("heartbeat", flush=True)


def main() -> None:
    """Run the server and the heartbeat until a signal arrives."""
    port = int(os.environ.get("PORT", "8000"))
    tasker.main(http_job(port), tasker.with_repeat(Interval(1), heartbeat), grace=15)
    print("bye", flush=True)


if __name__ == "__main__":
    main()
