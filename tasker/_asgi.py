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
from datetime import timedelta
from typing import Any, Literal, TypeAlias

import anyio

from ._backend import current_backend
from ._context import Context, to_seconds
from ._errors import ServerStartError
from ._job import Job
from ._shutdown import DEFAULT_SHUTDOWN_TIMEOUT, with_shutdown

__all__ = ["ASGIApp", "resolve_port", "serve_asgi"]

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
    timeout: float | timedelta = DEFAULT_SHUTDOWN_TIMEOUT,
    log_level: str = "info",
) -> Job:
    """Return a job that serves the ASGI ``app`` until shutdown, then stops it gracefully.

    The server is uvicorn on asyncio and hypercorn on trio (``server="auto"``), or the one
    named. On shutdown it stops accepting connections, lets in-flight requests finish for up
    to ``timeout`` seconds, then cuts the rest off. The program's signals stay tasker's.

    Args:
        app: the ASGI application.
        port: the TCP port; by default the ``PORT`` environment variable.
        host: the address to listen on.
        server: ``"auto"``, ``"uvicorn"`` (asyncio only) or ``"hypercorn"``.
        timeout: the graceful shutdown deadline, in seconds or as a ``timedelta``.
        log_level: the server's log level.

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
    timeout_s = to_seconds(timeout, "serve_asgi(): timeout")

    async def asgi_job(ctx: Context) -> None:
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
            await _uvicorn_job(app, host, bound_port, timeout_s, log_level)(ctx)
        else:
            await _hypercorn_job(app, host, bound_port, timeout_s, log_level, backend)(ctx)

    asgi_job.__name__ = asgi_job.__qualname__ = f"serve_asgi({host}:{bound_port})"
    return asgi_job


def _uvicorn_job(app: ASGIApp, host: str, port: int, timeout: float, log_level: str) -> Job:
    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # tasker owns the process's signals; see the module docstring.
            yield

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="auto")
    instance = _Server(config)
    finished = anyio.Event()

    async def serve() -> None:
        sock = _bind(host, port)
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
        instance.should_exit = True
        # In the last moments before the deadline, ask uvicorn to drop what is left itself,
        # which closes connections more politely than cancelling serve().
        if ctx.deadline is not None:
            with anyio.move_on_after(max(0.0, ctx.deadline - anyio.current_time() - 0.5)):
                await finished.wait()
            instance.force_exit = True

    return with_shutdown(serve, shutdown, timeout=timeout)


def _hypercorn_job(
    app: ASGIApp,
    host: str,
    port: int,
    timeout: float,
    log_level: str,
    backend: str,
) -> Job:
    from hypercorn.config import Config

    config = Config()
    config.graceful_timeout = timeout
    config.loglevel = log_level.upper()
    config.accesslog = None
    stop = anyio.Event()

    async def trigger() -> None:
        await stop.wait()

    async def serve() -> None:
        # Bind here so "address in use" is a bare OSError, not one nested in hypercorn's
        # task groups; hypercorn adopts the descriptor through its fd:// binding.
        sock = _bind(host, port)
        try:
            config.bind = [f"fd://{os.dup(sock.fileno())}"]
        finally:
            sock.close()
        hypercorn_serve: Callable[..., Awaitable[None]]
        if backend == "trio":
            from hypercorn.trio import serve as trio_serve

            hypercorn_serve = trio_serve
        else:
            from hypercorn.asyncio import serve as asyncio_serve

            hypercorn_serve = asyncio_serve
        await hypercorn_serve(app, config, shutdown_trigger=trigger)

    async def shutdown() -> None:
        stop.set()

    return with_shutdown(serve, shutdown, timeout=timeout)
