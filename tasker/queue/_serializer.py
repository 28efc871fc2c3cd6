"""Payload serialisers: JSON by default, pluggable, never pickle."""

from __future__ import annotations

import json
from typing import Any, Protocol, runtime_checkable

__all__ = ["JSONSerializer", "Serializer"]


@runtime_checkable
class Serializer(Protocol):
    """Turns payloads and results into bytes and back.

    ``dumps`` must raise ``TypeError`` or ``ValueError`` for a value it cannot represent;
    the queue reports that at enqueue time.
    """

    def dumps(self, value: Any, /) -> bytes:
        """Serialise ``value``."""
        ...

    def loads(self, data: bytes, /) -> Any:
        """Deserialise ``data``."""
        ...


class JSONSerializer:
    """Strict JSON (no NaN or infinity): what every other language can read too."""

    __slots__ = ()

    def dumps(self, value: Any, /) -> bytes:
        """Serialise to compact UTF-8 JSON."""
        if value is None:  # the payload of most tasks: no encoder for it
            return b"null"
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()

    def loads(self, data: bytes, /) -> Any:
        """Parse UTF-8 JSON."""
        if data == b"null":  # the payload of most tasks: no decoder for it
            return None
        return json.loads(data)

    def __repr__(self) -> str:
        return "JSONSerializer()"
