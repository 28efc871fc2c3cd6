"""What bench_nats_queue.py and its NATS peer scripts share: the server's message counts.

Standard library only, so the same code runs in tasker's virtualenv and in the peers' one,
and it never shares a connection (or a client library) with the tool it measures.

- :func:`server_info`: the ``INFO`` line a NATS server greets a client with (its version,
  whether JetStream is on), read over a plain socket.
- :class:`Meter`: the monitoring endpoint's ``/varz`` before and after a window: the
  messages clients sent the server (``in_msgs``: publishes, JetStream API requests, acks,
  fetch requests) and the messages it sent them (``out_msgs``: deliveries, replies, acks of
  publishes). Server-wide: on a shared server they include other clients' messages (the
  window notes how many other connections were open), so ``--private-server`` is the
  reliable count. Without a monitoring URL nothing is counted.
- :func:`peer_args` and :func:`emit`: the peers' command line and their one line of JSON.

A peer script runs as ``python PEER.py URL throughput TASKS CONCURRENCY IDLE MONITOR
[VARIANT]`` (enqueue TASKS no-op tasks, then drain them with one worker of CONCURRENCY) or
``python PEER.py URL latency SAMPLES CONCURRENCY IDLE MONITOR [VARIANT]`` (an idle worker:
IDLE seconds of idle messages, then SAMPLES enqueue-to-start latencies). MONITOR is the
server's ``http://host:port`` monitoring address, or ``-`` for none; VARIANT is a
peer-specific setting (the raw loop's fetch batch). Every stream a peer makes is named
``bench_*``: the harness deletes those (and only those) before each run.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

#: Every stream the benchmark makes starts with this; the harness deletes only these.
STREAM_PREFIX = "bench_"


def host_port(url: str) -> tuple[str, int]:
    """The first server of a ``nats://`` URL (credentials, if any, are not kept)."""
    parts = urlsplit(url.split(",")[0])
    if parts.scheme not in ("nats", ""):
        raise ValueError(f"url: only nats:// is supported here, not {parts.scheme!r}://")
    return parts.hostname or "127.0.0.1", parts.port or 4222


def public_url(url: str) -> str:
    """``url`` without credentials, for reports."""
    host, port = host_port(url)
    return f"nats://{host}:{port}"


def server_info(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """The JSON of the server's ``INFO`` greeting.

    Raises:
        OSError: nothing answers there, or what answers is not a NATS server.
    """
    with socket.create_connection(host_port(url), timeout=timeout) as sock:
        greeting = b""
        while b"\r\n" not in greeting and len(greeting) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                break
            greeting += chunk
    line = greeting.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        raise OSError(f"{public_url(url)} did not greet like a NATS server: {line[:40]!r}")
    info: dict[str, Any] = json.loads(line[5:])
    return info


def monitor_json(monitor: str, path: str) -> dict[str, Any]:
    """The JSON the monitoring endpoint at ``monitor`` (``http://host:port``) answers."""
    parts = urlsplit(monitor)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 8222)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise OSError(f"GET {path} on the NATS monitor answered {response.status}")
    answer: dict[str, Any] = json.loads(body)
    return answer


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """The messages the server received (``sent``) and delivered (``received``) in a window."""

    sent: int
    received: int
    seconds: float
    #: Connections open at the end besides the measured ones' (on a shared server: others).
    connections: int

    def as_json(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "received": self.received,
            "seconds": self.seconds,
            "connections": self.connections,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Window | None:
        if data is None:
            return None
        return cls(
            sent=int(data["sent"]),
            received=int(data["received"]),
            seconds=float(data["seconds"]),
            connections=int(data["connections"]),
        )


class Meter:
    """``/varz`` message counters over a window; does nothing without a monitor URL."""

    def __init__(self, monitor: str | None) -> None:
        self.monitor = monitor
        self._before: dict[str, Any] = {}
        self._started = 0.0

    def start(self) -> None:
        if self.monitor is not None:
            self._before = monitor_json(self.monitor, "/varz")
        self._started = time.perf_counter()

    def stop(self) -> Window | None:
        if self.monitor is None:
            return None
        seconds = time.perf_counter() - self._started
        after = monitor_json(self.monitor, "/varz")
        return Window(
            sent=int(after["in_msgs"]) - int(self._before["in_msgs"]),
            received=int(after["out_msgs"]) - int(self._before["out_msgs"]),
            seconds=seconds,
            connections=int(after["connections"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerArgs:
    """A peer script's command line (see the module docstring)."""

    url: str
    mode: str
    count: int
    concurrency: int
    idle: float
    monitor: str | None
    variant: str | None


def peer_args(argv: list[str] | None = None) -> PeerArgs:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 6 or args[1] not in ("throughput", "latency"):
        raise SystemExit(
            "usage: PEER.py URL throughput|latency COUNT CONCURRENCY IDLE MONITOR|- [VARIANT]"
        )
    return PeerArgs(
        url=args[0],
        mode=args[1],
        count=int(args[2]),
        concurrency=int(args[3]),
        idle=float(args[4]),
        monitor=None if args[5] == "-" else args[5],
        variant=args[6] if len(args) > 6 else None,
    )


def emit(result: dict[str, Any]) -> None:
    """Print the peer's result: one line of JSON, the last line of its output."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
