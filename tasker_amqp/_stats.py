"""What RabbitMQ reports about queues: ``tasker status --amqp`` and ``queue_stats()``.

AMQP itself tells, per queue, only the messages ready for a consumer and the consumers
attached (a passive declare). The messages delivered and not yet acknowledged (the tasks
workers are running, and what their prefetch holds) are known to the broker's management
API alone, so with a management URL the counts come from there, unacknowledged ones
included, for every queue of the virtual host.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiormq
import aiormq.exceptions

from tasker import redact_dsn

from ._connection import AmqpSource

__all__ = ["QueueStats", "broker_stats"]


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueStats:
    """One queue as the broker reports it.

    Attributes:
        name: the queue's name on the broker.
        ready: messages waiting for a consumer.
        unacked: messages delivered and not yet acknowledged (running tasks and what the
            workers' prefetch holds); None when only AMQP was asked (it does not say:
            give a management URL).
        consumers: consumers attached (one per process whose workers take from it).
    """

    name: str
    ready: int
    unacked: int | None
    consumers: int


async def broker_stats(
    source: AmqpSource | str,
    queues: Sequence[str] | None = None,
    *,
    management_url: str | None = None,
) -> list[QueueStats]:
    """The counts of ``queues`` (names on the broker), in their order.

    Without ``management_url``, from passive declares: ready messages and consumers, for
    the queues named (a queue that does not exist is left out). With it (the management
    plugin's ``http://user:password@host:15672``), from its API, unacknowledged messages
    too, and with ``queues`` None for every queue of the source's virtual host.

    Raises:
        ValueError: no queues and no management URL (AMQP cannot list queues).
        ConnectionError: the management API could not be read (its message says why).
    """
    if isinstance(source, str):
        source = AmqpSource(source, name="tasker-status", reconnect_retries=0)
    if management_url is not None:
        listed = await asyncio.to_thread(_management, management_url, source.vhost)
        if queues is None:
            return listed
        by_name = {stats.name: stats for stats in listed}
        return [by_name[name] for name in queues if name in by_name]
    if queues is None:
        raise ValueError(
            "AMQP cannot list a virtual host's queues: name them, or give the management"
            " API's URL (management_url=, `tasker status --amqp-management`)"
        )
    connection = await source.connection()
    stats = []
    channel: aiormq.abc.AbstractChannel | None = None
    try:
        for name in queues:
            if channel is None or channel.is_closed:
                channel = await connection.channel()  # one for all, until a miss closes it
            try:
                ok = await channel.queue_declare(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                continue  # a passive declare of a missing queue closes its channel
            stats.append(
                QueueStats(
                    name=name,
                    ready=int(ok.message_count or 0),
                    unacked=None,
                    consumers=int(ok.consumer_count or 0),
                )
            )
    finally:
        if channel is not None and not channel.is_closed:
            await channel.close()
    return stats


def _management(url: str, vhost: str) -> list[QueueStats]:
    """Every queue of ``vhost`` from the management API at ``url`` (blocking)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"the management URL must be http(s)://user:password@host:port, got {redact_dsn(url)!r}"
        )
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    endpoint = urllib.parse.urlunsplit(
        (parts.scheme, netloc, f"/api/queues/{urllib.parse.quote(vhost, safe='')}", "", "")
    )
    request = urllib.request.Request(endpoint)  # noqa: S310 - the scheme is checked above
    user = urllib.parse.unquote(parts.username or "guest")
    password = urllib.parse.unquote(parts.password or "guest")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            rows: list[dict[str, Any]] = json.load(response)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response
        raise ConnectionError(
            f"the management API at {redact_dsn(url)} answered {exc.code} {exc.reason}"
            " (a 401 is the user or password; the user needs the 'monitoring' tag)"
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(
            f"the management API at {redact_dsn(url)} could not be read ({reason}): is the"
            " plugin enabled (`rabbitmq-plugins enable rabbitmq_management`)?"
        ) from None
    return [
        QueueStats(
            name=str(row["name"]),
            ready=int(row.get("messages_ready", 0) or 0),
            unacked=int(row.get("messages_unacknowledged", 0) or 0),
            consumers=int(row.get("consumers", 0) or 0),
        )
        for row in sorted(rows, key=lambda row: str(row["name"]))
    ]
