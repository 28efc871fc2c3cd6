"""The RabbitMQ the AMQP tests use: a virtual host of their own, created and deleted.

Order: ``$TASKER_TEST_AMQP_URL`` (used as it is: its virtual host is not deleted); else the
machine's broker on 127.0.0.1:5672 (guest/guest) in a fresh virtual host for the session,
made and removed with ``rabbitmqctl``. With no broker the tests fail, saying how to start one:
they never skip silently.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import uuid
from urllib.parse import quote

import aiormq
import pytest

__all__ = [
    "amqp_url",
    "close_connections",
    "connection_pids",
    "delete_queues",
    "fresh_vhost_url",
    "rabbitmqctl",
]

_BROKER = "amqp://guest:guest@127.0.0.1:5672/"
_START = (
    "start RabbitMQ with `rabbitmq-server -detached` (or set TASKER_TEST_AMQP_URL to an"
    " amqp:// URL)"
)
_URL: list[str] = []


def rabbitmqctl(*args: str, timeout: float = 60.0) -> str:
    """Run ``rabbitmqctl`` on the local node; its output."""
    if shutil.which("rabbitmqctl") is None:
        pytest.fail(f"rabbitmqctl is not installed: {_START}")
    done = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def amqp_url() -> str:
    """The session's URL (see the module docstring)."""
    if _URL:
        return _URL[0]
    explicit = os.environ.get("TASKER_TEST_AMQP_URL")
    if explicit:
        _URL.append(explicit)
        return explicit
    url = fresh_vhost_url()
    _URL.append(url)
    return url


def fresh_vhost_url() -> str:
    """The URL of a new virtual host on the machine's broker (guest/guest), deleted when
    the test process exits (for a documentation block of its own)."""
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=5).close()
    except OSError as exc:
        pytest.fail(f"no RabbitMQ at 127.0.0.1:5672 ({exc!r}): {_START}")
    vhost = f"tasker-test-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    atexit.register(_delete_vhost, vhost)
    return _BROKER + quote(vhost, safe="")


def _delete_vhost(vhost: str) -> None:
    subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, check=False)


async def delete_queues(url: str, *names: str) -> None:
    """Delete queues (and what they hold) if they exist."""
    connection = await aiormq.connect(url)
    try:
        for name in names:
            channel = await connection.channel()
            await channel.queue_delete(name)
            await channel.close()
    finally:
        await connection.close()


def connection_pids(name: str) -> list[str]:
    """The broker's pids of the connections whose client named them ``name``
    (``AmqpSource(name=...)``), in the form ``rabbitmqctl close_connection`` takes."""
    out = rabbitmqctl("list_connections", "pid", "client_properties", "-q", "-s")
    wanted = '{"connection_name",' + json.dumps(name) + "}"
    return [line.split("\t", 1)[0] for line in out.splitlines() if wanted in line]


def close_connections(name: str) -> int:
    """Close (from the broker's side) every connection named ``name``; how many there were."""
    pids = connection_pids(name)
    for pid in pids:
        rabbitmqctl("close_connection", pid, "closed by a tasker test")
    return len(pids)
