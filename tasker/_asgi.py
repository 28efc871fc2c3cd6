"""``serve_asgi``: an ASGI application as a job, with graceful shutdown.

uvicorn's ``Server.serve()`` installs its own SIGINT/SIGTERM handlers and re-raises the
signal it captured when it returns (FIELD_NOTES: a SIGTERM'd ``uvicorn.run`` dies with -15),
which would take the program's shutdown order away from tasker. We therefore run a
``Server`` subclass whose signal capture is a no-op and stop it through ``should_exit``,
which lets in-flight requests finish. The listening socket is bound by us before the server
starts, so "port in use" fails the job at once with a plain ``OSError``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Literal

import anyio

from ._backend import current_backend
from ._budget import declare_budget
from ._context import Context, to_seconds
from ._errors import ServerStartError
from ._job import Job
from ._readiness import optional_probe
from ._servers import ASGIApp, InFlight, Plan, hypercorn_job, uvicorn_job

__all__ = ["ASGIApp", "resolve_port", "serve_asgi", "serve_health"]

logger = logging.getLogger("tasker")

Server = Literal["auto", "uvicorn", "hypercorn"]


def resolve_port(port: int | None, where: str = "serve_asgi()", env: str = "PORT") -> int:
    """Return ``port``, or the ``env`` environment variable, validated (0 to 65535)."""
    if port is None:
        raw = os.environ.get(env)
        if raw is None or not raw.strip():
            raise ValueError(
                f"{where}: no port given and the {env} environment variable is not set"
            )
        try:
            port = int(raw.strip(), 10)
        except ValueError:
            raise ValueError(
                f"{where}: the {env} environment variable is not a port number: {raw!r}"
            ) from None
        source = f"{env} environment variable"
    else:
        source = "port"
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"{where}: {source} must be an integer from 0 to 65535, got {port!r}")
    return port


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
    metrics: ASGIApp | None = None,
) -> Job:
    """Return a job that serves ``/livez`` and ``/readyz`` (:data:`tasker.health_app`) on a
    port of its own, for Kubernetes' probes, and ``/metrics`` when given ``metrics`` (an
    ASGI app such as ``tasker.metrics.instrument(...).asgi_app()``).

    It is the last part of the program to stop: on shutdown, ``/readyz`` answers 503 at once
    and keeps answering until every other part that registered a probe (servers, workers,
    schedulers) has stopped, or the grace is nearly over.

    Args:
        port: the TCP port; by default the ``HEALTH_PORT`` environment variable.
        host: the address to listen on.
        server: as in :func:`serve_asgi`.
        metrics: the app that answers ``GET /metrics`` (Prometheus' scrape), beside the
            probes.

    Raises:
        ValueError: at construction, for a missing or malformed port or an unknown server.
        TypeError: at construction, for a ``metrics`` that is not callable.
    """
    bound_port = resolve_port(port, "serve_health()", env="HEALTH_PORT")
    if metrics is not None and not callable(metrics):
        raise TypeError(f"serve_health(): metrics must be an ASGI app, got {metrics!r}")
    if server not in ("auto", "uvicorn", "hypercorn"):
        raise ValueError(
            f"serve_health(): server must be 'auto', 'uvicorn' or 'hypercorn', got {server!r}"
        )
    from ._readiness import _CURRENT, health_app

    async def hold() -> None:
        readiness = _CURRENT.get()
        if readiness is not None:
            await readiness.wait_for_probes_closed()

    app: ASGIApp = health_app
    if metrics is not None:
        scrape = metrics

        async def health_and_metrics(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope.get("path", "").endswith("/metrics"):
                await scrape(scope, receive, send)
            else:
                await health_app(scope, receive, send)

        app = health_and_metrics
    name = f"serve_health({host}:{bound_port})"
    return _serve(app, host, bound_port, server, None, "warning", name, hold, probe=False)


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
        plan = Plan(name, InFlight(app), hold, optional_probe(name) if probe else None)
        try:
            await _run_server(ctx, plan)
        finally:
            if plan.probe is not None:
                plan.probe.close()

    async def _run_server(ctx: Context, plan: Plan) -> None:
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
            await uvicorn_job(plan, host, bound_port, timeout_s, log_level)(ctx)
        else:
            await hypercorn_job(plan, host, bound_port, timeout_s, log_level, backend)(ctx)

    asgi_job.__name__ = asgi_job.__qualname__ = name
    return asgi_job
