"""A task as an AMQP message: the payload is the body, the rest travels in headers.

The body is the payload's bytes as the queue's serialiser made them, untouched (no pickle,
nothing to decode on the way). The properties carry the task id (``message_id``), its name
(``type``) and persistence (``delivery_mode=2``); one header, ``tasker``, the fields a worker
needs, with the attempts made before this message was published. A redelivery (a worker
whose connection closed) is counted from the quorum queue's ``x-delivery-count``, so a crash
counts its attempt. The task's own headers travel beside it, as themselves, for a headers
exchange to route by.

The fields are one string, ``1<US>queue<US>priority<US>run_at<US>attempts<US>max_attempts
<US>created_at<US>timeout<US>callback`` (``<US>`` the ASCII unit separator, which no
printable queue name holds; times in integer microseconds; an absent timeout or callback
empty; the leading ``1`` the format's version), rather than a header each: AMQP decodes a
table field by field, and one field instead of seven is a quarter of the cost on every
delivery and every publish.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pamqp.commands import Basic

from tasker.queue import HeaderValue

__all__ = ["Meta", "NotATaskError", "clip", "decode", "encode", "is_reserved", "micros"]

#: The header of tasker's fields, their separator, and the version of their format.
_FIELDS = "tasker"
_SEPARATOR = "\x1f"
#: The header of tasker.tracing's carrier (reserved: never one of the task's own headers).
_TRACE = "tasker-trace"
_VERSION = "1"

#: The longest error text and traceback a dead message carries in its headers (a header
#: frame must fit the connection's frame size, 128 KiB by default).
_TEXT_LIMIT = 8192


class NotATaskError(ValueError):
    """A message in a work queue that tasker_amqp did not write (or cannot read)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Meta:
    """The fields of a task message, as published."""

    id: str
    name: str
    queue: str
    priority: int
    run_at: float
    attempts: int
    max_attempts: int
    timeout: float | None
    created_at: float
    #: The task's own headers (``enqueue(headers=...)`` and the backend's per task name).
    headers: Mapping[str, HeaderValue] = field(default_factory=dict)
    #: With a store: the id of the callback of the group the task belongs to (published
    #: once the store has enqueued it, when the group's last member finished).
    callback: str | None = None
    #: tasker.tracing's carrier (``NewTask.trace``), in the ``tasker-trace`` header.
    trace: str | None = None


def is_reserved(key: str) -> bool:
    """Whether a header name is tasker_amqp's or the broker's (``tasker``, ``tasker-*``,
    ``x-*``, and the delay ladder's ``d<level>``)."""
    return (
        key == _FIELDS
        or key.startswith(("tasker-", "x-"))
        or (key[:1] == "d" and key[1:].isdigit())
    )


def encode(meta: Meta, *, extra: Mapping[str, Any] | None = None) -> Basic.Properties:
    """The properties of a message that carries ``meta`` (the body is the payload)."""
    fields = _SEPARATOR.join(
        (
            _VERSION,
            meta.queue,
            str(meta.priority),
            # Rounded down: a task never looks due later than it is (a claim at its run_at
            # exactly must find it due).
            str(math.floor(meta.run_at * 1_000_000)),
            str(meta.attempts),
            str(meta.max_attempts),
            str(_micros(meta.created_at)),
            "" if meta.timeout is None else str(_micros(meta.timeout)),
            meta.callback or "",
        )
    )
    headers: dict[str, Any] = {**meta.headers, _FIELDS: fields}
    if meta.trace is not None:
        headers[_TRACE] = meta.trace
    if extra:
        headers.update(extra)
    return Basic.Properties(
        message_id=meta.id,
        message_type=meta.name,
        delivery_mode=2,
        content_type="application/octet-stream",
        headers=headers,
    )


def clip(text: str | None) -> str | None:
    """An error text or traceback cut to what a header can carry."""
    if text is None or len(text) <= _TEXT_LIMIT:
        return text
    return text[: _TEXT_LIMIT - 15] + "... (truncated)"


def decode(properties: Basic.Properties) -> tuple[Meta, int]:
    """The task a message carries, and how many times the broker redelivered it.

    Raises:
        NotATaskError: the message lacks tasker's fields.
    """
    headers = properties.headers or {}
    try:
        version, queue, priority, run_at, attempts, most, created, timeout, callback = _text(
            headers[_FIELDS]
        ).split(_SEPARATOR)
        if version != _VERSION:
            raise ValueError(f"format {version!r}, not {_VERSION!r}")
        meta = Meta(
            id=_text(properties.message_id),
            name=_text(properties.message_type),
            queue=_text(queue),
            priority=int(priority),
            run_at=int(run_at) / 1_000_000,
            attempts=int(attempts),
            max_attempts=int(most),
            timeout=int(timeout) / 1_000_000 if timeout else None,
            created_at=int(created) / 1_000_000,
            headers={key: _header(value) for key, value in headers.items() if not is_reserved(key)}
            if len(headers) > 1
            else {},
            callback=callback or None,
            trace=_text(headers[_TRACE]) if _TRACE in headers else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise NotATaskError(f"not a tasker_amqp task message ({exc!r})") from None
    redelivered = headers.get("x-delivery-count", 0)
    return meta, int(redelivered) if isinstance(redelivered, int) else 0


def micros(seconds: float) -> int:
    """A time as whole microseconds: AMQP tables keep a float in 32 bits (pamqp), which
    would move a timestamp by a minute; a 64-bit integer keeps it exact to the microsecond."""
    return round(seconds * 1_000_000)


_micros = micros


def _header(value: object) -> HeaderValue:
    if isinstance(value, str | int):  # bool is an int
        return value
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)  # a type tasker does not publish (a header another client added)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode()
    if not isinstance(value, str) or not value:
        raise TypeError(f"expected a non-empty string, got {value!r}")
    return value
