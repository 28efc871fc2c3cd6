"""Validation of the names and numbers a queue accepts, shared by the queue and its worker."""

from __future__ import annotations

__all__ = ["PRIORITY_MAX", "PRIORITY_MIN", "check_int", "check_name", "check_priority"]

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
