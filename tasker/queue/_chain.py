"""Steps of chains and groups, and the rest of a chain as it is stored with a task."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Step", "decode_chain", "encode_chain"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One task of a chain or a group, made by :meth:`Queue.step`."""

    name: str
    payload: Any = None
    queue: str | None = None
    priority: int | None = None
    max_attempts: int | None = None
    timeout: float | None = None


def encode_chain(steps: Sequence[Step]) -> bytes | None:
    """The rest of a chain, as stored with a task (None when nothing follows)."""
    if not steps:
        return None
    return json.dumps(
        [
            {
                "name": s.name,
                "queue": s.queue,
                "priority": s.priority,
                "max_attempts": s.max_attempts,
                "timeout": s.timeout,
            }
            for s in steps
        ]
    ).encode()


def decode_chain(data: bytes) -> list[Step]:
    """The rest of a chain, as stored with a task."""
    return [Step(**item) for item in json.loads(data)]
