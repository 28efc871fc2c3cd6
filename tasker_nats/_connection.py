"""One NATS connection per source, checked once, reconnecting for ever after.

Design notes:

- nats-py (the driver) is asyncio only. Every entry point checks the running library first
  and raises :class:`tasker_nats.AsyncioRequiredError` under trio, before any I/O. A
  connection belongs to the event loop it was made on: used from another loop later (a
  program that runs several, one after the other), the source connects again in that one.
- **The first connect fails fast.** It tries each server a few times (about a second);
  then a refused login (``Authorization Violation``) is permanent (the Scheduler and the
  workers stop the program with the fix), anything else is an outage they retry. Once
  connected, nats-py reconnects for ever (``max_reconnect_attempts`` is set to ``-1``
  then), and resubscribes.
- The connection is then checked: the server's version (:data:`MIN_VERSION`: per-message
  TTLs), and that JetStream answers for this account (``account_info``). Both are
  permanent when they fail.
- Pings every 10 s, two outstanding at most: a connection that silently died (a dropped
  network path) is noticed within about 30 s, not nats-py's default 4 minutes.
- Secrets (a URL's password or token, the token option; the ``.creds`` file and the nkey
  seed are paths, never read here) appear in no repr, log line or exception:
  :func:`tasker.redact_dsn` cleans every text that quotes a URL, and the ``tasker_nats``
  logger carries a :class:`tasker.RedactingFilter`.
- Names: bucket and stream names are built from a validated namespace; keys from names of
  any text go through :func:`encode_key`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import secrets
import ssl as _ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import nats
import nats.errors
import nats.js
import nats.js.errors
import sniffio
from nats.aio.client import Client

from tasker import RedactingFilter, redact_dsn

from ._errors import AsyncioRequiredError, NatsSetupError, login_refused

__all__ = [
    "MIN_VERSION",
    "NatsSource",
    "ServerClock",
    "check_asyncio",
    "check_namespace",
    "decode_key",
    "encode_key",
]

logger = logging.getLogger("tasker_nats")
logger.addFilter(RedactingFilter())

#: The oldest NATS server tasker_nats runs on: per-message TTLs (``Nats-TTL``) came in 2.11.
MIN_VERSION = (2, 11, 0)

_NAMESPACE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SCHEMES = ("nats://", "tls://", "ws://", "wss://")
#: Names made only of these are keys as they are; any other is ``=`` + base64url (no
#: padding), which a plain name never starts with, so no two names share a key.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,200}")
#: Attempts per server at the first connect, before it counts as failed.
_FIRST_ATTEMPTS = 3


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


def check_namespace(namespace: object) -> str:
    """A namespace is 1 to 64 letters, digits, ``_`` or ``-`` (it names streams and buckets)."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise ValueError(
            "namespace must be 1 to 64 letters, digits, '_' or '-' (it names the NATS"
            f" streams and buckets), got {namespace!r}"
        )
    return namespace


def encode_key(name: str) -> str:
    """The KV key (or subject token) of ``name``: itself if it is plain, else ``=`` and its
    UTF-8 in base64url without padding. Injective, and valid in a key and a subject."""
    if _PLAIN_KEY.fullmatch(name):
        return name
    raw = name.encode("utf-8", "surrogatepass")
    return "=" + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_key(key: str) -> str:
    """The name :func:`encode_key` made ``key`` from."""
    if not key.startswith("="):
        return key
    body = key[1:]
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    return raw.decode("utf-8", "surrogatepass")


def _servers(url: object) -> tuple[list[str], tuple[str, str] | None, str | None]:
    """The servers of ``url`` without their userinfo, and the user and password or the token
    it carried (percent-decoded: a password may hold any character, encoded)."""
    if isinstance(url, str):
        servers = [part.strip() for part in url.split(",")]
    elif isinstance(url, Sequence) and all(isinstance(u, str) for u in url):
        servers = [u.strip() for u in url]
    else:
        raise TypeError(
            f"url must be a nats:// URL (or several, comma-separated), got {type(url).__name__}"
        )
    if not servers or any(not s for s in servers):
        raise ValueError(f"url names no server: {redact_dsn(str(url))!r}")
    plain: list[str] = []
    userinfos: set[str] = set()
    for server in servers:
        scheme, _, rest = server.partition("://")
        userinfo, at, hostport = rest.rpartition("@")
        hostport = hostport.rstrip("/")
        if f"{scheme}://" not in _SCHEMES or not hostport or any(c in hostport for c in "/?#@ "):
            raise ValueError(
                "each server must be a nats://, tls://, ws:// or wss:// URL with a host"
                f" (and a port), got {redact_dsn(server)!r}"
            )
        if at:
            userinfos.add(userinfo)
        plain.append(f"{scheme}://{hostport}")
    if len(userinfos) > 1:
        raise ValueError(
            f"the servers of url carry different credentials: {redact_dsn(str(url))!r};"
            " give them once"
        )
    if not userinfos:
        return plain, None, None
    user, colon, password = userinfos.pop().partition(":")
    if colon:
        return plain, (unquote(user), unquote(password)), None
    return plain, None, unquote(user)


def _path(value: str | os.PathLike[str] | None, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike):
        raise TypeError(f"{what} must be a path, got {type(value).__name__}")
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"{what}: no such file: {str(path)!r}")
    return str(path)


def _version(text: str) -> tuple[int, int, int]:
    numbers = [int(m) for m in re.findall(r"\d+", text)[:3]]
    numbers += [0] * (3 - len(numbers))
    return numbers[0], numbers[1], numbers[2]


class NatsSource:
    """Where a backend connects: the servers, the credentials and the TLS context.

    Several backend objects built on one source share its connection (the Scheduler's locks
    and state do). Build it once; ``await source.aclose()`` closes the connection.

    Args:
        url: ``nats://[user:password@]host[:port]`` (``tls://`` for TLS, ``nats://token@host``
            for a token), or several, comma-separated or as a list: a cluster's seeds.
        credentials: a ``.creds`` file (a user JWT and its nkey seed, decentralised auth).
        nkey_seed: a file holding a user's nkey seed (``SU...``).
        token: a token, instead of one in the URL.
        tls: the TLS context (default for ``tls://``: verify the server with the system's
            CA store).
        name: the connection's name, as the server's monitoring shows it.
        connect_timeout: seconds one attempt to reach a server may take.

    Raises:
        ValueError: for a malformed URL or a file that does not exist.
        TypeError: for options of the wrong type.
    """

    __slots__ = (
        "_client",
        "_connect_timeout",
        "_credentials",
        "_denied",
        "_js",
        "_lock",
        "_loop",
        "_name",
        "_nkey_seed",
        "_reconnect_hooks",
        "_servers",
        "_tls",
        "_token",
        "_user",
        "_version",
    )

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        credentials: str | os.PathLike[str] | None = None,
        nkey_seed: str | os.PathLike[str] | None = None,
        token: str | None = None,
        tls: _ssl.SSLContext | None = None,
        name: str = "tasker",
        connect_timeout: float = 5.0,
    ) -> None:
        self._servers, self._user, url_token = _servers(url)
        self._credentials = _path(credentials, "credentials")
        self._nkey_seed = _path(nkey_seed, "nkey_seed")
        if credentials is not None and nkey_seed is not None:
            raise ValueError("give credentials (a .creds file) or nkey_seed, not both")
        if token is not None and not isinstance(token, str):
            raise TypeError(f"token must be a string, got {type(token).__name__}")
        if token is not None and (url_token is not None or self._user is not None):
            raise ValueError("give the token in the URL or as token=, not both")
        self._token = token if token is not None else url_token
        if tls is not None and not isinstance(tls, _ssl.SSLContext):
            raise TypeError(f"tls must be an ssl.SSLContext, got {type(tls).__name__}")
        self._tls = tls
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self._name = name
        if not isinstance(connect_timeout, int | float) or not connect_timeout > 0:
            raise ValueError(f"connect_timeout must be positive seconds, got {connect_timeout!r}")
        self._connect_timeout = float(connect_timeout)
        self._client: Client | None = None
        self._js: nats.js.JetStreamContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None
        self._version: tuple[int, int, int] | None = None
        self._denied: str | None = None
        self._reconnect_hooks: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        return f"NatsSource({self.url!r})"

    @property
    def url(self) -> str:
        """The servers, without their credentials: for messages and status displays."""
        return ",".join(self._servers)

    @property
    def server_version(self) -> tuple[int, int, int] | None:
        """The version of the server last connected to (None before the first connect)."""
        return self._version

    async def jetstream(self) -> nats.js.JetStreamContext:
        """The JetStream context of the connection, connecting first if needed.

        Raises:
            tasker_nats.AsyncioRequiredError: under trio.
            tasker_nats.NatsSetupError: a refused login, a server older than
                :data:`MIN_VERSION`, no JetStream for the account (permanent).
            ConnectionError: no server could be reached (an outage).
        """
        check_asyncio()
        loop = asyncio.get_running_loop()
        client = self._client
        if self._js is not None and self._loop is loop and client and not client.is_closed:
            return self._js
        if self._lock is None or self._loop is not loop:
            self._lock = asyncio.Lock()
            self._loop = loop
            self._client = None
            self._js = None
        async with self._lock:
            if self._js is None or self._client is None or self._client.is_closed:
                self._client, self._js = await self._connect()
            return self._js

    def on_reconnect(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Call ``hook`` (in the event loop, quickly: it may start a task) after each
        reconnect; return a function that removes it."""
        self._reconnect_hooks.append(hook)

        def remove() -> None:
            if hook in self._reconnect_hooks:
                self._reconnect_hooks.remove(hook)

        return remove

    def raise_if_denied(self) -> None:
        """Raise the permission the server refused since the connection was made, if any.

        A refused subject makes nats-py's request wait out its timeout (an outage, to the
        caller) while the server's reason reaches only the error callback: the backends
        call this before each operation, so the next one fails with the fix instead.

        Raises:
            tasker_nats.NatsSetupError: the user lacks a permission (permanent).
        """
        if self._denied is not None:
            raise NatsSetupError(
                f"the NATS user lacks a permission ({self._denied})",
                "allow the user to publish to `$JS.API.>` and to the namespace's subjects"
                " (`$KV.<namespace>_*.>`), and to subscribe to `_INBOX.>`",
            )

    async def client(self) -> Client:
        """The connection itself (see :meth:`jetstream`)."""
        await self.jetstream()
        assert self._client is not None
        return self._client

    async def _connect(self) -> tuple[Client, nats.js.JetStreamContext]:
        failures: list[BaseException] = []
        state = {"connecting": True, "down": False}
        made: list[Client] = []  # the client, once connected
        fatal = asyncio.Event()  # the first connect met an error retrying cannot fix

        async def on_error(exc: Exception) -> None:
            if "permissions violation" in str(exc).lower():
                # The server refuses a subject: the request waits out its timeout, and only
                # this callback says why. The next call raises it (see raise_if_denied).
                if self._denied is None:
                    logger.error("NATS refused a permission: %s", redact_dsn(str(exc)))
                self._denied = redact_dsn(str(exc))
                return
            if state["connecting"]:
                failures.append(exc)
                if _is_login_refused(exc) or isinstance(exc, _ssl.SSLCertVerificationError):
                    fatal.set()
            elif not state["down"]:
                logger.warning("NATS connection error: %s", redact_dsn(str(exc) or repr(exc)))

        async def on_disconnected() -> None:
            if made and made[0].is_closed:
                return  # closed on purpose
            if not state["connecting"] and not state["down"]:
                state["down"] = True
                logger.warning("lost the connection to NATS at %s; reconnecting", self.url)

        async def on_reconnected() -> None:
            if state["down"]:
                state["down"] = False
                logger.info("reconnected to NATS at %s", self.url)
            for hook in list(self._reconnect_hooks):
                try:
                    hook()
                except Exception:  # pragma: no cover - a hook's own bug
                    logger.exception("a reconnect hook failed")

        options: dict[str, Any] = {
            "name": self._name,
            "connect_timeout": self._connect_timeout,
            "reconnect_time_wait": 0.25,
            "max_reconnect_attempts": _FIRST_ATTEMPTS,
            "ping_interval": 10,
            "max_outstanding_pings": 2,
            "error_cb": on_error,
            "disconnected_cb": on_disconnected,
            "reconnected_cb": on_reconnected,
        }
        if self._credentials is not None:
            options["user_credentials"] = self._credentials
        if self._nkey_seed is not None:
            options["nkeys_seed"] = self._nkey_seed
        if self._token is not None:
            options["token"] = self._token
        if self._user is not None:
            options["user"], options["password"] = self._user
        if self._tls is not None:
            options["tls"] = self._tls
        try:
            client = await self._first_connect(options, fatal)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            refused = [f for f in failures if _is_login_refused(f)]
            if refused or _is_login_refused(exc):
                fault = login_refused(redact_dsn(str(refused[-1] if refused else exc)))
                raise NatsSetupError(fault.problem, fault.fix) from None
            cause = failures[-1] if failures else exc
            if isinstance(cause, _ssl.SSLCertVerificationError):
                raise cause from None  # the core classifies it (permanent)
            detail = redact_dsn(str(cause) or type(cause).__name__)
            raise ConnectionError(f"cannot reach NATS at {self.url}: {detail}") from None
        state["connecting"] = False
        made.append(client)
        client.options["max_reconnect_attempts"] = -1  # from now on, reconnect for ever
        try:
            version = _version(str(client.connected_server_version))
            if version < MIN_VERSION:
                raise NatsSetupError(
                    f"the NATS server at {self.url} is {'.'.join(map(str, version))},"
                    f" older than {'.'.join(map(str, MIN_VERSION))}",
                    "upgrade the server: tasker_nats needs per-message TTLs (NATS 2.11+)",
                )
            js = client.jetstream(timeout=5.0)
            try:
                await js.account_info()
            except nats.errors.TimeoutError:
                self.raise_if_denied()  # a refused subject waits out the timeout
                raise
            except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError):
                raise NatsSetupError(
                    f"JetStream is not enabled on the NATS server at {self.url}",
                    "start the server with JetStream (`nats-server -js -sd <dir>`, or"
                    " `jetstream {}` in its configuration)",
                ) from None
        except BaseException:
            await _close_quietly(client)
            raise
        self._version = version
        return client, js

    async def _first_connect(self, options: dict[str, Any], fatal: asyncio.Event) -> Client:
        """``nats.connect``, given up as soon as ``fatal`` is set (nats-py would go on trying,
        and after a refused TLS certificate its clean-up hangs), or after the attempts'
        time."""
        connect = asyncio.ensure_future(nats.connect(self._servers, **options))
        waiter = asyncio.ensure_future(fatal.wait())
        budget = len(self._servers) * (_FIRST_ATTEMPTS + 1) * (self._connect_timeout + 0.25)
        try:
            await asyncio.wait({connect, waiter}, timeout=budget, return_when="FIRST_COMPLETED")
        finally:
            waiter.cancel()
            if not connect.done():
                connect.cancel()
                await asyncio.wait({connect})
        if connect.cancelled():
            if fatal.is_set():
                raise nats.errors.NoServersError
            raise TimeoutError(f"no NATS server answered within {budget:g}s")
        return connect.result()

    async def aclose(self) -> None:
        """Close the connection (if it was made on the running loop); again does nothing."""
        client, self._client, self._js = self._client, None, None
        if client is None or client.is_closed:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - called outside a loop
            return
        if running is self._loop:
            await _close_quietly(client)


def _is_login_refused(exc: BaseException) -> bool:
    return isinstance(exc, nats.errors.AuthorizationError) or (
        "authorization violation" in str(exc).lower()
    )


async def _close_quietly(client: Client) -> None:
    try:
        await client.close()
    except Exception as exc:  # pragma: no cover - closing a broken connection
        logger.debug("closing a NATS connection failed: %s", exc)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # read: a reading nobody awaits any more logs nothing


class ServerClock:
    """The NATS server's clock, read every ``resync`` seconds and advanced in between by the
    local monotonic clock (never the local wall clock).

    NATS has no ``TIME`` command: a reading publishes two empty messages to subjects of its
    own under ``subject`` of ``stream`` and asks the server when it stored the one whose
    round trip was shorter; the server stored it somewhere in that round trip, so the
    reading is placed at its middle.
    """

    __slots__ = ("_clock", "_reading", "_resync", "_stream", "_subject")

    def __init__(self, stream: str, subject: str, *, resync: float = 30.0) -> None:
        self._stream = stream
        # A subject of this clock's own (readers on one subject would replace each other's
        # message before it is read), whose messages the server drops after a minute.
        self._subject = f"{subject}.{secrets.token_hex(6)}"
        self._resync = resync
        self._clock: tuple[float, float] | None = None  # (reading, monotonic time of it)
        self._reading: asyncio.Future[None] | None = None

    async def read(self, js: nats.js.JetStreamContext) -> float:
        """The server's time, as POSIX seconds.

        Raises:
            nats.errors.Error, OSError: when the clock was never read and cannot be now.
        """
        local = time.monotonic()
        if self._clock is None or local - self._clock[1] >= self._resync:
            reading = self._reading
            loop = asyncio.get_running_loop()
            if reading is None or reading.done() or reading.get_loop() is not loop:
                # One reading at a time, shared by the callers that come meanwhile (they
                # would replace each other's clock messages); it finishes even if they are
                # cancelled, and its error is theirs.
                reading = self._reading = asyncio.ensure_future(self._read(js, local))
                reading.add_done_callback(_retrieve)
            await asyncio.shield(reading)
        assert self._clock is not None
        reading_at, at = self._clock
        return reading_at + (time.monotonic() - at)

    async def _read(self, js: nats.js.JetStreamContext, local: float) -> None:
        try:
            best: tuple[float, int, float] | None = None  # (round trip, seq, middle)
            for turn in range(2):  # two subjects: a stream may keep one message each
                before = time.monotonic()
                ack = await js.publish(f"{self._subject}.{turn}", b"", headers={"Nats-TTL": "60s"})
                after = time.monotonic()
                if best is None or after - before < best[0]:
                    best = (after - before, ack.seq, (before + after) / 2)
            assert best is not None
            stored = await js.get_msg(self._stream, seq=best[1])
            assert stored.time is not None
            self._clock = (stored.time.timestamp(), best[2])
        except Exception as exc:
            if self._clock is None or isinstance(exc, NatsSetupError | AssertionError):
                raise
            reading, at = self._clock
            self._clock = (reading + (local - at), local)
            logger.debug("could not read the NATS server's clock (%s); extrapolating", exc)
