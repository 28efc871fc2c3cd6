"""What bench_redis_queue.py and its Redis peer scripts share: server-side command counts.

Standard library only, so the same code runs in tasker's virtualenv and in the peers' one,
and it never shares a connection (or a client library) with the tool it measures.

- :class:`Probe`: one plain RESP2 connection of the harness's own (``FLUSHDB``, ``INFO
  commandstats``, ``CLIENT LIST``). Blocking sockets: it is only called between the timed
  parts, never while a worker runs against the clock.
- :class:`Meter`: ``INFO commandstats`` before and after a window, as a
  :class:`collections.Counter` of command names (subcommands as Redis names them,
  ``xgroup|create``). Its own ``INFO`` is subtracted. The counts are the server's, so they
  hold for every tool whatever its client, and they include the commands a Lua script or
  Redis Function runs (under their own names; the ``evalsha``/``fcall`` is one more).
  They are server-wide: a window also notes the other clients that were active on other
  databases, and the other databases whose keys changed (``foreign``): the counts would
  include their commands. Read-only clients that came and went within a window go unseen.
- :func:`peer_args` and :func:`emit`: the peers' command line and their one line of JSON.

A peer script runs as ``python PEER.py URL throughput TASKS CONCURRENCY`` (enqueue TASKS
no-op tasks, then drain them with one worker of CONCURRENCY) or ``python PEER.py URL latency
SAMPLES CONCURRENCY IDLE`` (an idle worker: IDLE seconds of idle commands, then SAMPLES
enqueue-to-start latencies). The harness flushes the database before each.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TypeAlias
from urllib.parse import unquote, urlsplit

Reply: TypeAlias = "bytes | int | list[Reply] | None"

#: Commands that wait on the server for data (a worker idling on one of these is not polling).
BLOCKING_READS = frozenset(
    {
        "blpop",
        "brpop",
        "brpoplpush",
        "blmove",
        "blmpop",
        "bzpopmin",
        "bzpopmax",
        "bzmpop",
        "xread",
        "xreadgroup",
    }
)
#: Commands that run scripts or functions (each also counts the commands it runs).
SCRIPT_CALLS = frozenset({"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"})


class RedisError(Exception):
    """An error reply from the server."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisURL:
    """``redis://[[user]:password@]host[:port][/db]``; the password stays out of ``str()``."""

    host: str
    port: int
    db: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> RedisURL:
        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise ValueError(f"url: only redis:// is supported, not {parts.scheme!r}://")
        path = parts.path.strip("/")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            db=int(path) if path else 0,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def __str__(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"


class Probe:
    """A plain blocking RESP2 connection to the database of ``url``."""

    def __init__(self, url: str) -> None:
        self.url = RedisURL.parse(url)
        self._sock = socket.create_connection((self.url.host, self.url.port), timeout=30)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._file = self._sock.makefile("rb")
        if self.url.password is not None:
            if self.url.username:
                self.command("AUTH", self.url.username, self.url.password)
            else:
                self.command("AUTH", self.url.password)
        self.command("SELECT", str(self.url.db))
        self.command("CLIENT", "SETNAME", "bench-probe")
        reply = self.command("CLIENT", "ID")
        assert isinstance(reply, int)
        self.client_id = reply

    def command(self, *args: str) -> Reply:
        out = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self._sock.sendall(b"".join(out))
        return self._read()

    def _read(self) -> Reply:
        line = self._file.readline()
        if not line:
            raise ConnectionError("the Redis server closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RedisError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            return self._file.read(size + 2)[:-2]
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._read() for _ in range(size)]
        raise ConnectionError(f"unexpected reply from the Redis server: {line[:40]!r}")

    def text(self, *args: str) -> str:
        reply = self.command(*args)
        assert isinstance(reply, bytes)
        return reply.decode()

    def flushdb(self) -> None:
        """Empty this database; database 0 is never flushed (it may hold someone's data)."""
        if self.url.db == 0:
            raise ValueError("refusing to FLUSHDB database 0: give a url with another /db")
        self.command("FLUSHDB")

    def commandstats(self) -> tuple[Counter[str], dict[str, str]]:
        """``INFO commandstats keyspace`` (one command, Redis 7): calls per command name,
        and each database's ``keys=...,expires=...`` line."""
        calls: Counter[str] = Counter()
        keyspace: dict[str, str] = {}
        try:
            text = self.text("INFO", "commandstats", "keyspace")
        except RedisError:  # before Redis 7: one section per INFO
            text = self.text("INFO", "commandstats")
        for line in text.splitlines():
            if line.startswith("cmdstat_"):
                name, _, values = line[len("cmdstat_") :].partition(":")
                fields = dict(item.split("=", 1) for item in values.split(","))
                calls[name] = int(fields["calls"])
            elif line.startswith("db") and ":" in line:
                db, _, values = line.partition(":")
                keyspace[db] = values.rpartition(",avg_ttl=")[0]
        return calls, keyspace

    def clients(self) -> list[dict[str, str]]:
        """``CLIENT LIST``, one dict of fields per connection."""
        return [
            dict(item.split("=", 1) for item in line.split(" ") if "=" in item)
            for line in self.text("CLIENT", "LIST").splitlines()
        ]

    def close(self) -> None:
        self._file.close()
        self._sock.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """The commands the server ran between :meth:`Meter.start` and :meth:`Meter.stop`."""

    commands: Counter[str]
    seconds: float
    #: Other connections (another database's) active during the window: counts may include them.
    foreign: list[str]
    #: The server's counters went backwards (someone ran ``CONFIG RESETSTAT``): no count.
    reset: bool = False

    @property
    def total(self) -> int:
        return sum(self.commands.values())

    @property
    def scripts(self) -> int:
        return sum(n for name, n in self.commands.items() if name in SCRIPT_CALLS)

    def as_json(self) -> dict[str, Any]:
        return {
            "commands": dict(self.commands),
            "seconds": self.seconds,
            "foreign": self.foreign,
            "reset": self.reset,
        }


class Meter:
    """``INFO commandstats`` deltas over windows, on a connection of its own."""

    def __init__(self, url: str) -> None:
        self.probe = Probe(url)
        self._before: Counter[str] = Counter()
        self._keyspace: dict[str, str] = {}
        self._started = 0.0

    def start(self) -> None:
        self._before, self._keyspace = self.probe.commandstats()
        self._started = time.perf_counter()

    def stop(self) -> Window:
        after, keyspace = self.probe.commandstats()
        seconds = time.perf_counter() - self._started
        delta = Counter(after)
        delta.subtract(self._before)
        delta["info"] -= 1  # the INFO that start() sent is in the second reading, not the first
        foreign = [
            f"id={c.get('id')} db={c.get('db')} name={c.get('name', '')} cmd={c.get('cmd')}"
            for c in self.probe.clients()
            if c.get("id") != str(self.probe.client_id)
            and c.get("db") != str(self.probe.url.db)
            and float(c.get("idle", "0")) < seconds
        ]
        # A client that came and went within the window is not in CLIENT LIST; the keys it
        # changed in its own database still show.
        ours = f"db{self.probe.url.db}"
        foreign += [
            f"{db}: {self._keyspace.get(db, 'no keys')} -> {keyspace.get(db, 'no keys')}"
            for db in sorted(set(keyspace) | set(self._keyspace))
            if db != ours and keyspace.get(db) != self._keyspace.get(db)
        ]
        reset = any(n < 0 for n in delta.values())
        if reset:
            foreign.append("INFO commandstats went backwards (CONFIG RESETSTAT?)")
        return Window(commands=+delta, seconds=seconds, foreign=foreign, reset=reset)

    def close(self) -> None:
        self.probe.close()


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerArgs:
    """A peer script's command line (see the module docstring)."""

    url: str
    mode: str
    count: int
    concurrency: int
    idle: float


def peer_args(argv: list[str] | None = None) -> PeerArgs:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 4 or args[1] not in ("throughput", "latency"):
        raise SystemExit(
            "usage: PEER.py URL throughput TASKS CONCURRENCY"
            " | PEER.py URL latency SAMPLES CONCURRENCY IDLE"
        )
    return PeerArgs(
        url=args[0],
        mode=args[1],
        count=int(args[2]),
        concurrency=int(args[3]),
        idle=float(args[4]) if len(args) > 4 else 3.0,
    )


def emit(result: dict[str, Any]) -> None:
    """Print the peer's result: one line of JSON, the last line of its output."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
