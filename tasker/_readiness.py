"""Readiness and liveness: is the program up, and should a load balancer route to it?

:func:`tasker.main` and :func:`tasker.run` give each program one :class:`Readiness`. The
parts that take traffic or work register a probe when they start: a server once its socket
accepts, a queue worker once it claims, a Scheduler once its backends answered. The program
is *ready* when at least one probe is registered, every probe says ready, and no shutdown has
started: the first signal makes it unready at once, before any listener closes (give a
server a ``shutdown_delay`` to keep serving while load balancers notice).

The same state is served over HTTP by :data:`health_app` (mount it in your ASGI app) and by
:func:`serve_health` (on a port of its own): ``/livez`` answers 200 while the event loop
runs, ``/readyz`` 200 when ready and 503 otherwise, each with a small JSON body.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar, Token
from typing import Any

import anyio

from ._context import Context

__all__ = [
    "Probe",
    "Readiness",
    "current_readiness",
    "health_app",
    "optional_probe",
    "reset_readiness",
    "use_readiness",
    "watch_shutdown",
]

logger = logging.getLogger("tasker")

_CURRENT: ContextVar[Readiness | None] = ContextVar("tasker_readiness", default=None)


class Probe:
    """One part's say in the program's readiness; from :meth:`Readiness.probe`."""

    __slots__ = ("_owner", "name", "ready", "reason")

    def __init__(self, owner: Readiness, name: str) -> None:
        self._owner = owner
        self.name = name
        self.ready = False
        self.reason = "starting"

    def set(self, ready: bool, reason: str = "") -> None:
        """Say whether this part is ready, and if not, why (shown by ``/readyz``)."""
        changed = ready != self.ready
        self.ready = ready
        self.reason = "" if ready else (reason or "not ready")
        if changed:
            self._owner._changed()

    def close(self) -> None:
        """This part stopped: it no longer has a say (the program does not wait for it)."""
        self._owner._remove(self)

    def __repr__(self) -> str:
        state = "ready" if self.ready else f"not ready ({self.reason})"
        return f"<tasker.Probe {self.name!r} {state}>"


class Readiness:
    """The readiness of one program: its probes and whether a shutdown has started."""

    __slots__ = ("_announced", "_event", "_probes", "_watched")

    def __init__(self, ctx: Context) -> None:
        self._watched = [ctx]
        self._probes: list[Probe] = []
        self._event: anyio.Event | None = None
        self._announced = False

    @property
    def ready(self) -> bool:
        """True when some probe is registered, all are ready, and no shutdown has started."""
        return not self.shutting_down and bool(self._probes) and all(p.ready for p in self._probes)

    @property
    def shutting_down(self) -> bool:
        """True once the program's shutdown started (its first signal, or its trigger)."""
        return any(ctx.done for ctx in self._watched)

    def _watch(self, ctx: Context) -> None:
        """Count ``ctx`` being done as the program shutting down (the signal handler's)."""
        self._watched.append(ctx)

    def report(self) -> dict[str, Any]:
        """What ``/readyz`` shows: the verdict and each probe's state."""
        return {
            "ready": self.ready,
            "shutting_down": self.shutting_down,
            "probes": {p.name: p.reason or "ready" for p in self._probes},
        }

    def probe(self, name: str) -> Probe:
        """Register a part of the program, not ready until it says so."""
        probe = Probe(self, name)
        self._probes.append(probe)
        self._changed()
        return probe

    async def wait(self) -> None:
        """Return once the program is ready (at once if it is)."""
        while not self.ready:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()

    async def wait_for_probes_closed(self) -> None:
        """Return once no probe is registered (every part that had one has stopped)."""
        while self._probes:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()

    def _changed(self) -> None:
        if not self._announced and self.ready:
            self._announced = True
            logger.info("ready: %s", ", ".join(p.name for p in self._probes))
        if self._event is not None:
            self._event.set()
            self._event = None

    def _remove(self, probe: Probe) -> None:
        if probe in self._probes:
            self._probes.remove(probe)
            self._changed()

    def __repr__(self) -> str:
        state = "ready" if self.ready else "not ready"
        return f"<tasker.Readiness {state} probes={[p.name for p in self._probes]}>"


def use_readiness(ctx: Context) -> Token[Readiness | None]:
    """Give the program rooted at ``ctx`` its readiness (main() and run() call this);
    the token resets it when the program ends."""
    return _CURRENT.set(Readiness(ctx))


def reset_readiness(token: Token[Readiness | None]) -> None:
    """Undo :func:`use_readiness` when the program ends (the caller's context goes on)."""
    try:
        _CURRENT.reset(token)
    except ValueError:  # reset from another context (a run() ended in a different task)
        _CURRENT.set(None)


def watch_shutdown(ctx: Context) -> None:
    """Count ``ctx`` being done as the running program shutting down (signal handling)."""
    readiness = _CURRENT.get()
    if readiness is not None:
        readiness._watch(ctx)


def current_readiness() -> Readiness:
    """The running program's :class:`Readiness`.

    Raises:
        RuntimeError: outside a program started by :func:`tasker.main` or :func:`tasker.run`.
    """
    readiness = _CURRENT.get()
    if readiness is None:
        raise RuntimeError(
            "tasker.current_readiness(): no program is running here; call it from code that"
            " tasker.main() or tasker.run() runs"
        )
    return readiness


def optional_probe(name: str) -> Probe | None:
    """A probe for ``name`` in the running program, or None outside one."""
    readiness = _CURRENT.get()
    return None if readiness is None else readiness.probe(name)


async def health_app(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app: ``GET .../livez`` and ``GET .../readyz`` (mountable under any prefix).

    ``/livez`` answers 200 while the event loop runs. ``/readyz`` answers 200 when the
    program is ready and 503 when not (starting, a part not ready, or shutting down), with
    ``{"ready": ..., "shutting_down": ..., "probes": {...}}``. Anything else is a 404.
    """
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope.get("path", "")
    readiness = _CURRENT.get()
    body: dict[str, Any]
    if path.endswith("/livez"):
        status, body = 200, {"live": True}
    elif path.endswith("/readyz"):
        if readiness is None:
            status, body = 503, {"ready": False, "reason": "not run by tasker.main()"}
        else:
            body = readiness.report()
            status = 200 if body["ready"] else 503
    else:
        status, body = 404, {"error": "not found: try /livez or /readyz"}
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
