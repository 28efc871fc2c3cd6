"""Validation of the names and numbers a queue accepts, shared by the queue and its worker."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "check_headers",
    "check_int",
    "check_name",
    "check_priority",
    "check_task_id",
]

_NAME_LIMIT = 200

#: The priorities every backend stores (a signed 32-bit integer, Postgres ``integer``).
PRIORITY_MIN = -(2**31)
PRIORITY_MAX = 2**31 - 1


def check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > _NAME_LIMIT or not value.isprintable():
        raise ValueError(f"{what} must be at most {_NAME_LIMIT} printable characters: {value!r}")
    return value


_TASK_ID = re.compile(r"[A-Za-z0-9_=-](?:[A-Za-z0-9._=-]{0,126}[A-Za-z0-9_=-])?")


def check_task_id(value: object) -> str:
    """A caller-chosen task id: 1 to 128 letters, digits, ``_``, ``=``, ``-`` and inner
    dots, what every backend can use as a key (an AMQP message id, a Redis key, a NATS
    key-value key) without escaping."""
    if not isinstance(value, str) or _TASK_ID.fullmatch(value) is None:
        raise ValueError(
            f"task_id must be 1 to 128 letters, digits, '_', '=', '-' and inner '.', got {value!r}"
        )
    return value


def check_int(value: object, what: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        if high is None:
            raise ValueError(f"{what} must be an integer >= {low}, got {value!r}")
        raise ValueError(f"{what} must be an integer from {low} to {high}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{what} must be an integer from {low} to {high}, got {value!r}")
    return value


def check_priority(value: object) -> int:
    return check_int(value, "priority", PRIORITY_MIN, PRIORITY_MAX)


#: The most a task's headers may hold, keys and values as text (they travel in one frame).
HEADERS_LIMIT = 16 * 1024
_HEADER_KEY_LIMIT = 128


def check_headers(headers: object) -> dict[str, Any] | None:
    """A copy of ``headers`` (str keys; str, int or bool values), or None for none."""
    if headers is None:
        return None
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a mapping of str to str, int or bool, got {headers!r}")
    size = 0
    checked: dict[str, Any] = {}
    for key, value in headers.items():
        if not isinstance(key, str) or not key or len(key) > _HEADER_KEY_LIMIT:
            raise ValueError(
                f"a header's name must be a non-empty str of at most {_HEADER_KEY_LIMIT}"
                f" characters, got {key!r}"
            )
        if isinstance(value, bool | str):
            pass
        elif isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                raise ValueError(f"header {key!r} must fit in 64 bits, got {value!r}")
        else:
            raise TypeError(
                f"header {key!r} must be a str, int or bool (floats would lose digits in"
                f" AMQP: send a str), got {type(value).__name__}"
            )
        size += len(key) + len(str(value))
        checked[key] = value
    if size > HEADERS_LIMIT:
        raise ValueError(f"headers hold {size} characters, more than {HEADERS_LIMIT}")
    return checked or None
