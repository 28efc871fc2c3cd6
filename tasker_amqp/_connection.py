"""The connection to RabbitMQ: one per source, re-established with backoff when it drops.

Why aiormq and not aio-pika's ``connect_robust``: the robust connection restores channels,
queues and consumers by itself, but holds them by weak reference (aio-pika#536) and has
been seen not to restore consumers (#231); and a delivery taken on a connection that
dropped can no longer be acknowledged, which a task queue has to know about (the task's
lease is lost the moment its delivery goes back to the queue). So the backend owns the
restoring: this module only keeps one connection open and counts them (``generation``),
and the backend re-declares its topology and re-subscribes when the generation moves on.

Reconnection follows gofort's dispatcher: ``reconnect_retries`` attempts (``None``: no
limit) ``reconnect_interval`` apart, doubling up to 30 s; when they run out the call
raises :class:`AmqpUnreachableError`, a permanent fault, so the workers stop and
``tasker.main`` exits non-zero. An outage is logged once when it starts and once when it
ends. A refused login or a missing virtual host fails at once
(:class:`AmqpSetupError`): retrying cannot fix either.

The password never leaves this module: reprs and messages show the URL through
:func:`tasker.redact_dsn`, and the ``tasker_amqp`` logger carries a
:class:`tasker.RedactingFilter`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
from datetime import timedelta
from urllib.parse import unquote, urlsplit

import aiormq
import aiormq.abc
import aiormq.exceptions
import sniffio

from tasker import RedactingFilter, redact_dsn
from tasker.backends import to_seconds

from ._errors import (
    AmqpSetupError,
    AmqpUnreachableError,
    AsyncioRequiredError,
    login_refused,
    vhost_refused,
)

__all__ = ["AmqpSource", "check_asyncio"]

logger = logging.getLogger("tasker_amqp")
logger.addFilter(RedactingFilter())


class _Quieter(logging.Filter):
    """aiormq logs every failed connection attempt and every dropped connection at ERROR,
    with a traceback; tasker_amqp logs an outage once when it starts and once when it ends.
    So those records of aiormq's go down to DEBUG (and are redacted)."""

    _OUTAGE = (
        "error when creating transport",
        "Unexpected connection close",
        "Cancelling cause reader exited abnormally",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(self._OUTAGE):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.exc_info = None
            record.exc_text = None
        return True


logging.getLogger("aiormq.connection").addFilter(_Quieter())
logging.getLogger("aiormq.connection").addFilter(RedactingFilter())

#: The longest wait between two reconnection attempts.
_MAX_INTERVAL = 30.0


def check_asyncio() -> None:
    """Raise AsyncioRequiredError when called under an event loop that is not asyncio."""
    try:
        asyncio.get_running_loop()
        return  # the hot path: an asyncio loop runs (sniffio asks more, for every call)
    except RuntimeError:
        pass
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return  # not in an event loop (construction at import time): fine
    if library != "asyncio":
        raise AsyncioRequiredError(library)


class AmqpSource:
    """Where RabbitMQ is and how to reach it: a URL, TLS and the reconnection policy.

    One source holds one connection, shared by every backend built on it (gofort's "many
    workers from one connection"); each backend opens its own channels on it.

    Args:
        url: ``amqp://user:password@host:port/vhost`` or ``amqps://...``. The user and
            password are percent-decoded; the virtual host is the path (``/`` when empty,
            ``%2F`` for a literal slash). Query options are aiormq's (``heartbeat=30``).
        ssl_context: the TLS context for ``amqps://`` (certificates, client certificate);
            ``amqps://`` without one verifies the server against the system's CAs.
        reconnect_retries: how many times in a row to try to reconnect after the
            connection drops (or to connect at first), ``None`` for no limit. When they
            run out, the call raises :class:`AmqpUnreachableError`.
        reconnect_interval: the wait before the first retry; each next one doubles, up to
            30 s.
        connect_timeout: how long one connection attempt may take.
        name: the connection name RabbitMQ shows (``rabbitmqctl list_connections``).

    Raises:
        ValueError: for a URL that is not ``amqp://`` or ``amqps://``, a TLS context on a
            plain ``amqp://`` URL, or a bad retry count or interval.
    """

    def __init__(
        self,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        reconnect_retries: int | None = None,
        reconnect_interval: float | timedelta = 1.0,
        connect_timeout: float | timedelta = 10.0,
        name: str = "tasker",
    ) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, got {type(url).__name__}")
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps"):
            raise ValueError(f"url must be an amqp:// or amqps:// URL, got {redact_dsn(url)!r}")
        try:
            parts.port  # noqa: B018 - parsing it is the check
        except ValueError:
            raise ValueError(
                "url does not parse: its port is not a number, or its password holds a"
                " character that must be percent-encoded ('#', '/', '?', '@', ':' ...:"
                " urllib.parse.quote(password, safe=''))"
            ) from None
        if ssl_context is not None and parts.scheme != "amqps":
            raise ValueError("ssl_context needs an amqps:// URL")
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError(
                f"ssl_context must be an ssl.SSLContext, got {type(ssl_context).__name__}"
            )
        if reconnect_retries is not None and (
            isinstance(reconnect_retries, bool)
            or not isinstance(reconnect_retries, int)
            or reconnect_retries < 0
        ):
            raise ValueError(
                f"reconnect_retries must be None or an int >= 0, got {reconnect_retries!r}"
            )
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        self._url = url
        self._ssl = ssl_context
        self.reconnect_retries = reconnect_retries
        self.reconnect_interval = to_seconds(
            reconnect_interval, "reconnect_interval", allow_zero=True
        )
        self.connect_timeout = to_seconds(connect_timeout, "connect_timeout", allow_zero=False)
        self.name = name
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        #: The virtual host the URL names.
        self.vhost = unquote(path) if path else "/"
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._lock: asyncio.Lock | None = None
        self._closed = False
        self._down_since_logged = False
        #: How many connections this source has opened: a backend whose channels belong
        #: to an older generation knows they are gone.
        self.generation = 0

    def __repr__(self) -> str:
        return f"AmqpSource({self.url!r})"

    @property
    def url(self) -> str:
        """The URL, its password hidden: for messages and status displays."""
        return redact_dsn(self._url)

    @property
    def server_version(self) -> str | None:
        """The broker's version, as it announced it (None before the first connection)."""
        connection = self._connection
        if connection is None:
            return None
        version = connection.server_properties.get("version")
        return version.decode() if isinstance(version, bytes) else str(version)

    def is_open(self) -> bool:
        """Whether the connection is open now (no I/O)."""
        connection = self._connection
        return connection is not None and not connection.is_closed

    async def connection(self) -> aiormq.abc.AbstractConnection:
        """The open connection, (re)connecting first if there is none.

        Raises:
            AmqpSetupError: the broker refused the login or the virtual host.
            AmqpUnreachableError: ``reconnect_retries`` attempts failed in a row.
        """
        check_asyncio()
        connection = self._connection
        if connection is not None and not connection.is_closed:
            return connection
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            connection = self._connection
            if connection is not None and not connection.is_closed:
                return connection
            self._connection = await self._reconnect()
            self.generation += 1
            return self._connection

    async def _reconnect(self) -> aiormq.abc.AbstractConnection:
        failures = 0
        while True:
            try:
                connection = await self._connect_once()
            except AmqpSetupError:
                raise
            except (OSError, aiormq.exceptions.AMQPError, TimeoutError) as exc:
                failures += 1
                detail = redact_dsn(f"{type(exc).__name__}: {exc}")
                if not self._down_since_logged:
                    self._down_since_logged = True
                    logger.warning(
                        "RabbitMQ at %s is unreachable (%s); reconnecting", self.url, detail
                    )
                retries = self.reconnect_retries
                if retries is not None and failures > retries:
                    raise AmqpUnreachableError(self.url, failures, detail) from None
                await asyncio.sleep(self._interval(failures))
                continue
            if self._down_since_logged:
                self._down_since_logged = False
                logger.warning("RabbitMQ at %s is reachable again", self.url)
            return connection

    def _interval(self, failures: int) -> float:
        if self.reconnect_interval == 0:
            return 0.0
        exponent = min(failures - 1, 16)
        return min(self.reconnect_interval * math.pow(2, exponent), _MAX_INTERVAL)

    async def _connect_once(self) -> aiormq.abc.AbstractConnection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                connection = aiormq.Connection(
                    self._url,
                    context=self._ssl,
                    client_properties={"connection_name": self.name},
                )
                await connection.connect()
        except aiormq.exceptions.ProbableAuthenticationError as exc:
            fault = login_refused(redact_dsn(str(exc)))
            raise AmqpSetupError(fault.problem, fault.fix) from None
        except aiormq.exceptions.InvalidFrameError as exc:
            # A vhost the broker will not open closes the connection during the handshake;
            # aiormq reports the unexpected Connection.Close frame.
            if "Connection.Close" in str(exc):
                fault = vhost_refused(self.vhost)
                raise AmqpSetupError(fault.problem, fault.fix) from None
            raise
        except (ssl.SSLCertVerificationError, aiormq.exceptions.AMQPConnectionError) as exc:
            # aiormq wraps the TLS error in its own (the original is the cause).
            refused = exc if isinstance(exc, ssl.SSLCertVerificationError) else exc.__cause__
            if not isinstance(refused, ssl.SSLCertVerificationError):
                raise
            raise AmqpSetupError(
                f"the TLS certificate of RabbitMQ at {self.url} was refused"
                f" ({refused.verify_message})",
                "give AmqpSource an ssl_context that trusts the broker's CA"
                " (ssl.create_default_context(cafile=...))",
            ) from None
        return connection

    async def aclose(self) -> None:
        """Close the connection; calling it again does nothing."""
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            try:
                async with asyncio.timeout(5.0):
                    await connection.close()
            except (OSError, aiormq.exceptions.AMQPError, TimeoutError, RuntimeError):
                pass
