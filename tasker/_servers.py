"""The servers behind ``serve_asgi``: uvicorn and hypercorn, run as tasker jobs.

See :mod:`tasker._asgi` for why the signals stay tasker's. Each server binds its socket
itself (so "port in use" is a plain ``OSError``), logs its URL once it accepts, holds the
shutdown for the hold (a ``shutdown_delay``, or the health server waiting for the rest),
drains in-flight requests, and names those it had to cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeAlias

import anyio

from ._context import Context
from ._errors import ServerStartError
from ._job import Job
from ._readiness import Probe
from ._shutdown import with_shutdown

__all__ = ["ASGIApp", "InFlight", "Plan", "hypercorn_job", "uvicorn_job"]

logger = logging.getLogger("tasker")

#: An ASGI 3 application (the public name is ``tasker.ASGIApp``).
# Loose on purpose: frameworks type scope/receive/send each their own way.
ASGIApp: TypeAlias = Callable[[Any, Any, Any], Awaitable[None]]


class _CancelledRequestFilter(logging.Filter):
    """Drops uvicorn's traceback for a request cancelled by a forced shutdown.

    When the shutdown deadline passes (or a second signal arrives) the requests still in
    flight are cancelled; uvicorn reports each as "Exception in ASGI application" with a
    CancelledError traceback. The cut-off is already logged by tasker as a warning, so the
    traceback would only alarm whoever pressed Ctrl-C twice.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, asyncio.CancelledError)


_CANCELLED_REQUESTS = _CancelledRequestFilter()


class InFlight:
    """The app, wrapped to know which requests are in flight, so that a cut-off names them."""

    __slots__ = ("app", "requests")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.requests: dict[int, tuple[str, float]] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        kind = scope.get("type") if isinstance(scope, dict) else None
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        key = id(scope)
        method = scope.get("method", "WEBSOCKET")
        self.requests[key] = (f"{method} {scope.get('path', '?')}", anyio.current_time())
        try:
            await self.app(scope, receive, send)
        finally:
            self.requests.pop(key, None)

    def log_cut_off(self, name: str, drain: float) -> None:
        """Log, by method and path, each request still in flight when the drain ended."""
        if not self.requests:
            return
        now = anyio.current_time()
        listed = sorted(self.requests.values(), key=lambda request: request[1])
        shown = ", ".join(f"{what} (running {now - since:.1f}s)" for what, since in listed[:20])
        more = f" and {len(listed) - 20} more" if len(listed) > 20 else ""
        logger.warning(
            "%s: cut off %d request(s) still in flight after its %gs drain: %s%s",
            name,
            len(listed),
            drain,
            shown,
            more,
        )


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(slots=True)
class Plan:
    """What a server job shares with its serve and shutdown halves."""

    name: str
    app: InFlight
    #: Awaited when the shutdown starts, before the listener closes (within the drain).
    hold: Callable[[], Awaitable[None]]
    probe: Probe | None
    #: The port the socket was bound to (the one asked for, or the one port 0 gave).
    bound: int = 0

    def listening(self, host: str, port: int) -> None:
        logger.info("%s: listening on %s", self.name, _url(host, self.bound or port))
        if self.probe is not None:
            self.probe.set(True)

    async def holding(self, ctx: Context) -> float:
        """Run the hold within the drain; the seconds of drain left after it."""
        if ctx.deadline is None:
            return 0.0
        with anyio.move_on_after(max(0.0, ctx.deadline - anyio.current_time() - 0.5)):
            await self.hold()
        logger.info("%s: shutting down, in-flight requests drain", self.name)
        return max(0.0, ctx.deadline - anyio.current_time())


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def uvicorn_job(plan: Plan, host: str, port: int, timeout: float | None, log_level: str) -> Job:
    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # tasker owns the process's signals; see the module docstring.
            yield

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:  # not when startup gave up (a lifespan error)
                plan.listening(host, port)

    config = uvicorn.Config(plan.app, host=host, port=port, log_level=log_level, lifespan="auto")
    instance = _Server(config)
    finished = anyio.Event()

    async def serve() -> None:
        sock = _bind(host, port)
        plan.bound = sock.getsockname()[1]
        logging.getLogger("uvicorn.error").addFilter(_CANCELLED_REQUESTS)
        try:
            await instance.serve(sockets=[sock])
        except SystemExit:
            # uvicorn calls sys.exit() when startup fails (lifespan error): report it as a
            # failure of this job instead of letting it end the whole program.
            raise ServerStartError(
                "uvicorn", f"{host}:{port}", "it gave up during startup; see its log"
            ) from None
        finally:
            sock.close()
            finished.set()
        if not instance.started and not instance.should_exit:
            raise ServerStartError(
                "uvicorn", f"{host}:{port}", "it gave up during startup; see its log"
            )

    async def shutdown(ctx: Context) -> None:
        drain = await plan.holding(ctx)
        instance.should_exit = True
        # In the last moments before the deadline, ask uvicorn to drop what is left itself,
        # which closes connections more politely than cancelling serve().
        if ctx.deadline is not None:
            with anyio.move_on_after(max(0.0, drain - 0.5)):
                await finished.wait()
            if not finished.is_set():
                plan.app.log_cut_off(plan.name, drain)
            instance.force_exit = True

    return with_shutdown(serve, shutdown, timeout=timeout)


def hypercorn_job(
    plan: Plan,
    host: str,
    port: int,
    timeout: float | None,
    log_level: str,
    backend: str,
) -> Job:
    from hypercorn.config import Config

    config = Config()
    config.loglevel = log_level.upper()
    config.accesslog = None
    stop = anyio.Event()
    finished = anyio.Event()

    async def trigger() -> None:
        await stop.wait()

    async def serve() -> None:
        # Bind here so "address in use" is a bare OSError, not one nested in hypercorn's
        # task groups; hypercorn adopts the descriptor through its fd:// binding.
        sock = _bind(host, port)
        plan.bound = sock.getsockname()[1]
        try:
            config.bind = [f"fd://{os.dup(sock.fileno())}"]
        finally:
            sock.close()
        try:
            if backend == "trio":
                import trio
                from hypercorn.trio import serve as trio_serve

                async def started(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                    await trio_serve(
                        plan.app, config, shutdown_trigger=trigger, task_status=task_status
                    )

                async with trio.open_nursery() as nursery:
                    # hypercorn reports through task_status once its sockets listen.
                    await nursery.start(started)
                    plan.listening(host, port)
            else:
                from hypercorn.asyncio import serve as asyncio_serve

                # Our socket listens already (connections wait in its backlog).
                plan.listening(host, port)
                await asyncio_serve(plan.app, config, shutdown_trigger=trigger)
        finally:
            finished.set()

    async def shutdown(ctx: Context) -> None:
        # hypercorn reads graceful_timeout when its trigger fires: the drain less the time
        # it needs to close what is left itself, before serve() would be cancelled.
        drain = await plan.holding(ctx)
        config.graceful_timeout = max(0.0, drain - 0.5)
        stop.set()
        with anyio.move_on_after(config.graceful_timeout):
            await finished.wait()
        if not finished.is_set():
            plan.app.log_cut_off(plan.name, drain)

    return with_shutdown(serve, shutdown, timeout=timeout)
