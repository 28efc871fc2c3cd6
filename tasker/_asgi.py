"""``serve_asgi``: an ASGI application as a job, with graceful shutdown.

uvicorn's ``Server.serve()`` installs its own SIGINT/SIGTERM handlers and re-raises the
signal it captured when it returns (FIELD_NOTES: a SIGTERM'd ``uvicorn.run`` dies with -15),
which would take the program's shutdown order away from tasker. We therefore run a
``Server`` subclass whose signal capture is a no-op and stop it through ``should_exit``,
which lets in-flight requests finish. The listening socket is bound by us before the server
starts, so "port in use" fails the job at once with a plain ``OSError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, TypeAlias

import anyio

from ._backend import current_backend
from ._budget import declare_budget
from ._context import Context, to_seconds
from ._errors import ServerStartError
from ._job import Job
from ._readiness import Probe, optional_probe
from ._shutdown import with_shutdown

__all__ = ["ASGIApp", "resolve_port", "serve_asgi", "serve_health"]

logger = logging.getLogger("tasker")

#: An ASGI 3 application.
# Loose on purpose: frameworks type scope/receive/send each their own way.
ASGIApp: TypeAlias = Callable[[Any, Any, Any], Awaitable[None]]

Server = Literal["auto", "uvicorn", "hypercorn"]


def resolve_port(port: int | None, where: str = "serve_asgi()") -> int:
    """Return ``port``, or the ``PORT`` environment variable, validated (0 to 65535)."""
    if port is None:
        raw = os.environ.get("PORT")
        if raw is None or not raw.strip():
            raise ValueError(f"{where}: no port given and the PORT environment variable is not set")
        try:
            port = int(raw.strip(), 10)
        except ValueError:
            raise ValueError(
                f"{where}: the PORT environment variable is not a port number: {raw!r}"
            ) from None
        source = "PORT environment variable"
    else:
        source = "port"
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"{where}: {source} must be an integer from 0 to 65535, got {port!r}")
    return port


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


class _InFlight:
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


def serve_asgi(
    app: ASGIApp,
    *,
    port: int | None = None,
    host: str = "0.0.0.0",  # noqa: S104 - a service listens on all interfaces by default
    server: Server = "auto",
    timeout: float | timedelta | None = None,
    log_level: str = "info",
    shutdown_delay: float | timedelta = 0.0,
) -> Job:
    """Return a job that serves the ASGI ``app`` until shutdown, then stops it gracefully.

    The server is uvicorn on asyncio and hypercorn on trio (``server="auto"``), or the one
    named. On shutdown it stops accepting connections, lets in-flight requests finish for up
    to ``timeout`` seconds, then cuts the rest off (and logs each by method and path). The
    program's signals stay tasker's. Once the socket accepts connections it logs
    ``listening on http://host:port`` (INFO, logger ``tasker``).

    Args:
        app: the ASGI application.
        port: the TCP port; by default the ``PORT`` environment variable.
        host: the address to listen on.
        server: ``"auto"``, ``"uvicorn"`` (asyncio only) or ``"hypercorn"``.
        timeout: the graceful shutdown deadline, in seconds or as a ``timedelta``; by
            default the grace of the program less a margin (see :func:`tasker.with_shutdown`:
            :func:`tasker.main` rejects a timeout longer than its grace).
        log_level: the server's log level.
        shutdown_delay: seconds the server goes on serving, listener open, once a shutdown
            starts, while the program's readiness already says "not ready" (``/readyz``
            answers 503): the time a load balancer needs to stop routing here before the
            listener closes (Kubernetes: a few seconds, instead of a ``preStop`` sleep). It
            is taken from the drain; with ``timeout`` it must fit the grace too.

    Readiness: the server's probe (see :func:`tasker.current_readiness`) is ready once its
    socket accepts connections.

    - **On error**: a port that cannot be bound, or an app whose lifespan startup fails,
      fails the job at once.
    - **On cancellation**: the server is cancelled at once.
    - **On shutdown**: as above (see :func:`tasker.with_shutdown`).

    Raises:
        ValueError: at construction, for a missing or malformed port, an unknown server, or a
            ``timeout`` that is negative or not finite.
        TypeError: at construction, if ``app`` is not callable or ``timeout`` is not a number
            of seconds or a ``timedelta``.
        tasker.ServerStartError: when the job runs, if uvicorn is asked for on trio, or the
            server gave up during startup (e.g. the app's lifespan startup failed).
        OSError: when the job runs, if the port cannot be bound.
    """
    if not callable(app):
        raise TypeError(f"serve_asgi(): app must be an ASGI application, got {app!r}")
    bound_port = resolve_port(port)
    if server not in ("auto", "uvicorn", "hypercorn"):
        raise ValueError(
            f"serve_asgi(): server must be 'auto', 'uvicorn' or 'hypercorn', got {server!r}"
        )
    timeout_s = None if timeout is None else to_seconds(timeout, "serve_asgi(): timeout")
    delay = to_seconds(shutdown_delay, "serve_asgi(): shutdown_delay")
    name = f"serve_asgi({host}:{bound_port})"

    async def hold() -> None:
        await anyio.sleep(delay)

    job = _serve(app, host, bound_port, server, timeout_s, log_level, name, hold, probe=True)
    budget = delay + (timeout_s or 0.0)
    if timeout_s is not None or delay:
        declare_budget(job, budget, name)
    return job


def serve_health(
    *,
    port: int | None = None,
    host: str = "0.0.0.0",  # noqa: S104 - probes come from outside the pod
    server: Server = "auto",
) -> Job:
    """Return a job that serves ``/livez`` and ``/readyz`` (:data:`tasker.health_app`) on a
    port of its own, for Kubernetes' probes.

    It is the last part of the program to stop: on shutdown, ``/readyz`` answers 503 at once
    and keeps answering until every other part that registered a probe (servers, workers,
    schedulers) has stopped, or the grace is nearly over.

    Args:
        port: the TCP port; by default the ``HEALTH_PORT`` environment variable.
        host: the address to listen on.
        server: as in :func:`serve_asgi`.

    Raises:
        ValueError: at construction, for a missing or malformed port or an unknown server.
    """
    if port is None:
        raw = os.environ.get("HEALTH_PORT")
        if raw is None or not raw.strip():
            raise ValueError(
                "serve_health(): no port given and the HEALTH_PORT environment variable is not set"
            )
        try:
            port = int(raw.strip(), 10)
        except ValueError:
            raise ValueError(
                f"serve_health(): the HEALTH_PORT environment variable is not a port: {raw!r}"
            ) from None
    bound_port = resolve_port(port, "serve_health()")
    if server not in ("auto", "uvicorn", "hypercorn"):
        raise ValueError(
            f"serve_health(): server must be 'auto', 'uvicorn' or 'hypercorn', got {server!r}"
        )
    from ._readiness import _CURRENT, health_app

    async def hold() -> None:
        readiness = _CURRENT.get()
        if readiness is not None:
            await readiness.wait_for_probes_closed()

    name = f"serve_health({host}:{bound_port})"
    return _serve(health_app, host, bound_port, server, None, "warning", name, hold, probe=False)


def _serve(
    app: ASGIApp,
    host: str,
    bound_port: int,
    server: Server,
    timeout_s: float | None,
    log_level: str,
    name: str,
    hold: Callable[[], Awaitable[None]],
    *,
    probe: bool,
) -> Job:

    async def asgi_job(ctx: Context) -> None:
        plan = _Plan(name, _InFlight(app), hold, optional_probe(name) if probe else None)
        try:
            await _run_server(ctx, plan)
        finally:
            if plan.probe is not None:
                plan.probe.close()

    async def _run_server(ctx: Context, plan: _Plan) -> None:
        backend = current_backend()
        chosen = server
        if chosen == "auto":
            chosen = "uvicorn" if backend == "asyncio" else "hypercorn"
        if chosen == "uvicorn":
            if backend != "asyncio":
                raise ServerStartError(
                    "uvicorn",
                    f"{host}:{bound_port}",
                    f"uvicorn runs on asyncio only, not {backend}; use server='hypercorn'",
                )
            await _uvicorn_job(plan, host, bound_port, timeout_s, log_level)(ctx)
        else:
            await _hypercorn_job(plan, host, bound_port, timeout_s, log_level, backend)(ctx)

    asgi_job.__name__ = asgi_job.__qualname__ = name
    return asgi_job


@dataclass(slots=True)
class _Plan:
    """What a server job shares with its serve and shutdown halves."""

    name: str
    app: _InFlight
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


def _uvicorn_job(plan: _Plan, host: str, port: int, timeout: float | None, log_level: str) -> Job:
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


def _hypercorn_job(
    plan: _Plan,
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
