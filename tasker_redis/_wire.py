"""The queue's hot path to Redis: its scripts sent on plain RESP2 connections of its own.

Design notes:

- **Why not the driver.** A worker's claims, finishes, heartbeats and clock readings are
  one script call each, and coredis spends about 180 µs of CPU on a call (a request object,
  its retry and telemetry layers, a writer task, a reader task and an event per reply);
  this module spends about 30 µs. Those calls are most of what a worker sends, so they go
  here; everything else (enqueues, listings, the blocking ``XREAD``, the Scheduler) stays
  on coredis.
- **Where it connects.** To what the source's coredis client connects to: its pool's
  location (host and port, or a unix socket), database, user, password, client name, TLS
  context and connect timeout, so a URL means the same here as there (its query options
  included). The first call goes through :meth:`RedisSource.client`, which checks the
  server's version and the login once.
- **One call per connection at a time.** A call takes an idle connection (or opens one),
  sends, reads the reply and gives the connection back; callers that overlap (a flush and
  a heartbeat) use two connections. A connection that fails, or whose call is cancelled
  between the send and the reply, is closed: what it would read next is unknown.
- **Errors** are coredis' own: a dropped or refused connection is
  ``coredis.exceptions.ConnectionError`` (the enqueue's resend and the worker's backoff
  expect it), an error reply the exception coredis raises for it (``NOSCRIPT`` first loads
  the script and sends the call again: the server ran nothing).
- **Replies** are RESP2 (a Lua ``false`` is a nil). The scripts that return task records
  return them as one JSON string (``cjson``; see ``_scripts.decode_json_record``): one
  bulk string is read without parsing a few hundred nested items in Python.
"""

from __future__ import annotations

import hashlib
import select
import ssl
from collections.abc import Mapping, Sequence
from typing import Any, cast

import anyio
import anyio.abc
import coredis.exceptions
from coredis.parser import Parser

from ._connection import RedisSource, running_loop

__all__ = ["ScriptWire", "encode_command"]

_IDLE_KEPT = 8  # idle connections kept per source; more are closed when given back
_TRANSPORT_ERRORS = (
    OSError,
    TimeoutError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


def encode_command(items: Sequence[str | bytes]) -> bytes:
    """``items`` as one RESP command (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(items)]
    append = out.append
    for item in items:
        data = item.encode() if isinstance(item, str) else item
        append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


class _Incomplete(Exception):
    """The buffer ends inside a reply; ``need`` is the buffer length that may complete it."""

    def __init__(self, need: int) -> None:
        self.need = need


def _parse(buf: bytearray, pos: int) -> tuple[Any, int]:
    """One RESP2 reply from ``buf`` at ``pos``: (value, the position after it).

    Error replies come back as coredis exceptions (not raised: the connection is fine).
    """
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete(len(buf) + 1)
    kind = buf[pos]
    if kind == 36:  # $: a bulk string
        length = int(buf[pos + 1 : end])
        if length < 0:
            return None, end + 2
        stop = end + 2 + length
        if len(buf) < stop + 2:
            raise _Incomplete(stop + 2)
        return bytes(buf[end + 2 : stop]), stop + 2
    if kind == 42:  # *: an array
        count = int(buf[pos + 1 : end])
        if count < 0:
            return None, end + 2
        items = []
        pos = end + 2
        for _ in range(count):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == 58:  # :
        return int(buf[pos + 1 : end]), end + 2
    if kind == 43:  # +
        return bytes(buf[pos + 1 : end]), end + 2
    if kind == 45:  # -
        return _PARSER.parse_error(buf[pos + 1 : end].decode(errors="replace")), end + 2
    raise coredis.exceptions.ProtocolError(f"unexpected reply type {chr(kind)!r} from Redis")


_PARSER = Parser()  # only its mapping of error replies to coredis' exceptions


class _Connection:
    __slots__ = ("buffer", "stream")

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def request(self, command: bytes, replies: int = 1) -> list[Any]:
        """Send ``command`` (``replies`` commands, pipelined) and read their replies."""
        await self.stream.send(command)
        found: list[Any] = []
        buf = self.buffer
        pos = 0
        need = 0
        while len(found) < replies:
            if len(buf) >= need:
                try:
                    value, pos = _parse(buf, pos)
                except _Incomplete as incomplete:
                    need = incomplete.need
                else:
                    found.append(value)
                    need = 0
                    continue
            buf += await self.stream.receive(max(65536, need - len(buf)))
        del buf[:pos]
        return found

    def reusable(self) -> bool:
        """Whether the idle connection is still open: the server has not closed it (a
        ``CLIENT KILL``, a restart) and sent nothing unasked. Asked without waiting, so
        that a call never goes out on a connection that cannot answer it: a call that
        fails after its send may have run, one on a dead connection never did."""
        sock = self.stream.extra(anyio.abc.SocketAttribute.raw_socket, None)  # noqa: S610 - anyio, not Django
        if sock is None:
            return True
        try:
            fd = sock.fileno()
            # (The socket object may be the event loop's wrapper, which cannot recv.)
            readable, _, _ = select.select([fd], [], [], 0) if fd >= 0 else ([fd], [], [])
        except (OSError, ValueError):
            return False
        # Readable: the end of the stream, or bytes no request asked for.
        return not readable

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            await self.stream.aclose()


class ScriptWire:
    """Scripts of ``texts`` run by ``EVALSHA`` on connections to ``source``'s server."""

    __slots__ = ("_generation", "_idle", "_loop", "_scripts", "_source")

    def __init__(self, source: RedisSource, texts: Mapping[str, str]) -> None:
        self._source = source
        self._scripts = {
            name: (hashlib.sha1(text.encode()).hexdigest().encode(), text.encode())  # noqa: S324 - Redis names scripts by SHA-1
            for name, text in texts.items()
        }
        self._idle: list[_Connection] = []
        self._loop: object = None
        self._generation = 0  # one more at each aclose(): connections in use then are closed

    async def run(self, name: str, keys: Sequence[str], args: Sequence[str | bytes]) -> Any:
        """Run script ``name``; its reply (RESP2: bytes, int, None, lists of those).

        Raises:
            tasker.BackendConfigurationError: see :meth:`RedisSource.client`.
            coredis.exceptions.ConnectionError: the server cannot be reached, or the
                connection dropped (whether the script ran is then unknown).
            coredis.exceptions.RedisError: the server refused the call.
        """
        client = await self._source.client()
        loop = running_loop()
        if loop is not self._loop:
            # Connections of another event loop cannot be used (nor closed) from this one.
            self._idle, self._loop = [], loop
        sha, text = self._scripts[name]
        command = encode_command([b"EVALSHA", sha, b"%d" % len(keys), *keys, *args])
        connection = await self._acquire(client)
        generation = self._generation
        healthy = False
        try:
            (reply,) = await connection.request(command)
            if isinstance(reply, coredis.exceptions.NoScriptError):
                # The server lost its script cache (a restart): nothing ran.
                loaded, reply = await connection.request(
                    encode_command([b"SCRIPT", b"LOAD", text]) + command, replies=2
                )
                if isinstance(loaded, coredis.exceptions.RedisError):
                    reply = loaded
            healthy = True
        except _TRANSPORT_ERRORS as exc:
            raise coredis.exceptions.ConnectionError(
                f"the connection to Redis dropped: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            if (
                healthy
                and len(self._idle) < _IDLE_KEPT
                and loop is self._loop
                and generation == self._generation
            ):
                self._idle.append(connection)
            else:
                await connection.aclose()
        if isinstance(reply, coredis.exceptions.RedisError):
            raise reply
        return reply

    async def _acquire(self, client: coredis.Redis[bytes]) -> _Connection:
        """An idle connection still open, else a new one."""
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable():
                return connection
            await connection.aclose()
        return await self._connect(client)

    async def _connect(self, client: coredis.Redis[bytes]) -> _Connection:
        pool = client.connection_pool
        options = cast("dict[str, Any]", pool.connection_kwargs)
        location = pool.location
        path: str | None = getattr(location, "path", None)
        host: str = getattr(location, "host", "127.0.0.1")
        port: int = getattr(location, "port", 6379)
        timeout = options.get("connect_timeout") or 10.0
        context: ssl.SSLContext | None = options.get("ssl_context")
        try:
            with anyio.fail_after(timeout):
                stream: anyio.abc.ByteStream
                if path is not None:
                    stream = await anyio.connect_unix(path)
                elif context is not None:  # rediss://, verified as coredis does
                    stream = await anyio.connect_tcp(
                        host, port, ssl_context=context, tls_standard_compatible=False
                    )
                else:
                    stream = await anyio.connect_tcp(host, port)
        except _TRANSPORT_ERRORS as exc:
            raise coredis.exceptions.ConnectionError(
                f"cannot connect to Redis: {type(exc).__name__}: {exc}"
            ) from exc
        connection = _Connection(stream)
        setup: list[list[str | bytes]] = []
        username, password = options.get("username"), options.get("password")
        if password:
            setup.append(["AUTH", *([username] if username else []), password])
        if options.get("db"):
            setup.append(["SELECT", str(options["db"])])
        if options.get("client_name"):
            setup.append(["CLIENT", "SETNAME", options["client_name"]])
        if not setup:
            return connection
        ok = False
        try:
            replies = await connection.request(
                b"".join(encode_command(c) for c in setup), replies=len(setup)
            )
            for reply in replies:
                if isinstance(reply, coredis.exceptions.RedisError):
                    raise reply
            ok = True
        except _TRANSPORT_ERRORS as exc:
            raise coredis.exceptions.ConnectionError(
                f"the connection to Redis dropped: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            if not ok:
                await connection.aclose()
        return connection

    async def aclose(self) -> None:
        """Close the idle connections (one in use is closed when its call returns)."""
        idle, self._idle = self._idle, []
        self._generation += 1
        if self._loop is not None and running_loop() is self._loop:
            for connection in idle:
                await connection.aclose()
