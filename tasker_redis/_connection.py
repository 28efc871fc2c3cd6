"""One Redis client per backend object: built from a URL, hosted by a task of its own.

Design notes:

- coredis (the driver) runs on anyio, so on asyncio and trio alike. Its client is an async
  context manager whose pool runs tasks of its own; a backend object, though, is used from
  whatever task calls it (a request handler enqueues, a worker claims). So the client is
  entered and exited by one host task that the source starts on first use, outside any
  caller's task group: an asyncio task, or a trio system task. ``aclose()`` stops it; if
  the event loop ends first, the loop's own shutdown cancels it. Used from another event
  loop later (a program that runs several, one after the other), the source starts a new
  client in that one.
- Commands are not retried by the driver (``NoRetryPolicy``): a script that claims or
  finishes is not idempotent, and a repeat after a lost reply would claim twice. The
  callers (the worker, the Scheduler) retry outages themselves.
- The first connection checks the server: its version (:data:`MIN_VERSION`), and that the
  login and the user's permissions work (an ``AUTH`` or ``NOPERM`` error is permanent: see
  ``_errors``). The URL's password never appears in a repr, a log line or an exception.
- Keys: every key of one namespace shares the hash tag ``{namespace}``, so the scripts'
  multi-key changes stay on one slot. Names (queues, ids, unique keys, schedules) are passed
  to the scripts as arguments and joined to a fixed prefix there, never put into Lua source.
"""

from __future__ import annotations

import logging
import re
import ssl as _ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import coredis
import coredis.exceptions
import sniffio
from coredis.retry import NoRetryPolicy

from tasker import BackendConfigurationError, RedactingFilter, redact_dsn

__all__ = [
    "MIN_VERSION",
    "RedisSource",
    "ServerClock",
    "check_namespace",
    "check_url",
    "running_loop",
]

logger = logging.getLogger("tasker_redis")
logger.addFilter(RedactingFilter())  # a driver error that quotes a URL is cleaned too

#: The oldest Redis the scripts run on (``ZRANGE ... BYSCORE LIMIT``, ``XADD ... MINID``,
#: ``SET ... GET``; script effects replication, the default since 5.0).
MIN_VERSION = (6, 2, 0)

_NAMESPACE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_SCHEMES = ("redis://", "rediss://", "unix://")


def _close_streams_after_a_failed_connect() -> None:
    """coredis 6.9 creates a connection's six memory streams when the connection is made and
    closes them only once it connected: a failed connect (a server down, a refused TLS
    certificate) leaves them to the garbage collector, which warns (``ResourceWarning:
    Unclosed <MemoryObject...>``) for every attempt. A connection is never run twice, so
    closing them when ``run`` returns, whichever way, is what coredis means to do."""
    try:
        from coredis.connection._base import BaseConnection
    except ImportError:  # pragma: no cover - a coredis that moved it: nothing to mend
        return
    original = BaseConnection.run
    if getattr(original, "_tasker_closes_streams", False):
        return

    async def run(self: Any, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            await original(self, task_status=task_status)
        finally:
            for name in _CONNECTION_STREAMS:
                stream = getattr(self, name, None)
                if stream is not None:
                    stream.close()

    run._tasker_closes_streams = True  # type: ignore[attr-defined]
    BaseConnection.run = run  # type: ignore[method-assign]


_CONNECTION_STREAMS = (
    "_write_buffer_in",
    "_write_buffer_out",
    "_push_message_buffer_in",
    "_push_message_buffer_out",
    "_streamed_message_buffer_in",
    "_streamed_message_buffer_out",
)
_close_streams_after_a_failed_connect()


def check_url(url: object) -> str:
    """``url`` if it is a Redis URL tasker_redis can use, else a ``ValueError`` naming it
    (its password hidden)."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a redis:// URL string, got {type(url).__name__}")
    if not url.startswith(_SCHEMES):
        raise ValueError(
            f"url must start with redis://, rediss:// (TLS) or unix://, got {redact_dsn(url)!r}"
        )
    return url


def check_namespace(namespace: object) -> str:
    """A namespace is 1 to 64 letters, digits, ``_``, ``.`` or ``-`` (it becomes the keys'
    hash tag ``{namespace}``, so no braces and no colons)."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise ValueError(
            "namespace must be 1 to 64 letters, digits, '_', '.' or '-'"
            f" (it is the keys' hash tag), got {namespace!r}"
        )
    return namespace


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split(".")[:3]:
        digits = re.match(r"\d+", part)
        parts.append(int(digits.group()) if digits else 0)
    return tuple(parts)


def running_loop() -> object:
    """What identifies the running event loop: asyncio's loop, or trio's token."""
    if sniffio.current_async_library() == "trio":
        import trio

        return trio.lowlevel.current_trio_token()
    import asyncio

    return asyncio.get_running_loop()


class RedisSource:
    """The client of one backend object, started on first use (see the module notes).

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for TLS, or
            ``unix:///path/to/socket``.
        ssl_context: a TLS context for ``rediss://`` (certificates, client keys); the
            default verifies the server with the system's CA store.
        client_name: the ``CLIENT SETNAME`` of its connections (as ``CLIENT LIST`` shows).
        connect_timeout: seconds to wait for a connection.
    """

    def __init__(
        self,
        url: str,
        *,
        ssl_context: _ssl.SSLContext | None = None,
        client_name: str = "tasker",
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = check_url(url)
        self._ssl_context = ssl_context
        self._client_name = client_name
        self._connect_timeout = connect_timeout
        self._client: coredis.Redis[bytes] | None = None
        self._ready: anyio.Event | None = None
        self._stop: anyio.Event | None = None
        self._stopped: anyio.Event | None = None
        self._failure: BaseException | None = None
        self._checked = False
        self._host: Any = None  # the asyncio task, kept referenced
        self._lock = anyio.Lock()
        self._loop: object = None  # the event loop (asyncio) or trio token of the client
        self.server_version = ""

    def __repr__(self) -> str:
        return f"RedisSource({redact_dsn(self.url)!r})"

    async def client(self) -> coredis.Redis[bytes]:
        """The running client (started, and the server checked, on first use).

        Raises:
            tasker.BackendConfigurationError: the server is too old, or refuses the login
                or a command the scripts need.
            coredis.exceptions.ConnectionError, OSError: the server cannot be reached now.
        """
        client = self._client
        loop = running_loop()
        if (
            client is not None
            and self._checked
            and self._failure is None
            and self._loop is loop
            and not (self._stopped is not None and self._stopped.is_set())
        ):
            return client
        if self._loop is not loop:
            # First use, or another event loop than the one the client runs in (a loop that
            # ended without cancelling its tasks, or a program that runs several loops one
            # after the other): start afresh in this one; the old client is left to its loop.
            self._loop, self._lock = loop, anyio.Lock()
            self._client, self._checked, self._stop, self._stopped = None, False, None, None
        async with self._lock:
            stopped = self._stopped is not None and self._stopped.is_set()
            if self._client is None or self._failure is not None or stopped:
                await self._start()
            client = self._client
            if client is None:
                raise coredis.exceptions.ConnectionError(f"{self!r} was closed while it connected")
            if not self._checked:
                await self._check(client)
                self._checked = True
            return client

    async def _start(self) -> None:
        kwargs: dict[str, Any] = {
            "retry_policy": NoRetryPolicy(),
            "client_name": self._client_name,
            "connect_timeout": self._connect_timeout,
            # The scripts check the version themselves; coredis' own check sends a HELLO
            # and INFO on every new connection otherwise.
            "verify_version": False,
        }
        if self.url.startswith("rediss://") and self._ssl_context is not None:
            kwargs["ssl_context"] = self._ssl_context
        try:
            client: coredis.Redis[bytes] = coredis.Redis.from_url(self.url, **kwargs)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"cannot use the Redis URL {redact_dsn(self.url)!r}: {exc}") from None
        ready, stop, stopped = anyio.Event(), anyio.Event(), anyio.Event()
        self._failure = None
        failures: list[BaseException] = []

        async def host() -> None:
            try:
                async with client:
                    ready.set()
                    await stop.wait()
            except BaseException as exc:
                self._failure = exc
                failures.append(exc)
                ready.set()
                if not isinstance(exc, Exception):
                    raise
                logger.debug("the Redis client of %r stopped: %r", self, exc)
            finally:
                stopped.set()

        self._client, self._ready, self._stop, self._stopped = client, ready, stop, stopped
        if sniffio.current_async_library() == "trio":
            import trio

            trio.lowlevel.spawn_system_task(host, name=f"tasker_redis client {self!r}")
        else:
            import asyncio

            self._host = asyncio.get_running_loop().create_task(host())
        await ready.wait()
        if failures:
            self._client = None
            raise failures[0]

    async def _check(self, client: coredis.Redis[bytes]) -> None:
        with anyio.fail_after(self._connect_timeout + 5):
            info = await client.info("server")
        version = str(info.get("redis_version", "0"))
        self.server_version = version
        if _version(version) < MIN_VERSION:
            minimum = ".".join(map(str, MIN_VERSION)).removesuffix(".0")
            raise BackendConfigurationError(
                "tasker_redis",
                f"the Redis server at {redact_dsn(self.url)} is version {version}, older"
                f" than {minimum}, the oldest whose commands tasker_redis' scripts use",
                f"upgrade the server to Redis {minimum} or newer",
            )

    async def aclose(self) -> None:
        """Stop the host task and close the connections; calling it again does nothing."""
        stop, stopped = self._stop, self._stopped
        self._client = None
        self._checked = False
        if stop is None or stopped is None:
            return
        self._stop = self._stopped = None
        stop.set()
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await stopped.wait()


class ServerClock:
    """The Redis server's ``TIME``, read every ``resync`` seconds and advanced in between by
    the local monotonic clock (never the local wall clock): every worker compares leases and
    due times on one clock, the server's.

    Two processes' readings must agree to well under a millisecond, or a task enqueued for
    "now" by one looks not yet due to a worker of the other: so a resync takes two readings
    and keeps the one with the shorter round trip, whose midpoint is the better estimate
    (the very first reading, which pays for the connection and the script's loading, is
    always the worse one).
    """

    def __init__(self, resync: float) -> None:
        self._resync = resync
        self._clock: tuple[float, float] | None = None  # (reading, monotonic time of it)

    async def read(self, read_time: Callable[[], Awaitable[Any]]) -> float:
        """The server's time, as POSIX seconds; ``read_time()`` answers ``TIME``.

        Raises:
            coredis.exceptions.RedisError, OSError: when the clock was never read and cannot
                be now.
        """
        local = time.monotonic()
        if self._clock is None or local - self._clock[1] >= self._resync:
            try:
                best: tuple[float, float, float] | None = None  # (round trip, reading, at)
                for _ in range(2):
                    before = time.monotonic()
                    seconds, micros = await read_time()
                    after = time.monotonic()
                    sample = (
                        after - before,
                        int(seconds) + int(micros) / 1e6,
                        (before + after) / 2,
                    )
                    if best is None or sample[0] < best[0]:
                        best = sample
            except Exception as exc:
                if self._clock is None or isinstance(exc, BackendConfigurationError):
                    raise
                reading, at = self._clock
                self._clock = (reading + (local - at), local)
                logger.debug("could not read the server's clock (%s); extrapolating", exc)
            else:
                # The server read its clock somewhere in the round trip: take the middle.
                assert best is not None
                self._clock = (best[1], best[2])
        reading, at = self._clock
        return reading + (time.monotonic() - at)
