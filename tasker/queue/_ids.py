"""The ids tasker gives tasks and groups: UUIDv7 (RFC 9562), as 32 lowercase hex digits.

Time-ordered: the first 48 bits are the Unix time in milliseconds, so ids made later sort
after (within a millisecond their order is random). Every index keyed by a task id (the
stores' primary keys, a history table's task index) then grows at its end instead of at a
random page, so a write dirties fewer pages: what a random UUIDv4 costs every backend that
keeps an index of ids. The other 74 bits come from ``os.urandom``, as a UUIDv4's 122 do: an
id is as hard to guess within its millisecond. Made without building a ``uuid.UUID``.
"""

from __future__ import annotations

import os
import time

__all__ = ["new_id"]

_VERSION = 0x7 << 76  # the version nibble, above rand_a's 12 bits and rand_b's 64
_VARIANT = 0b10 << 62  # RFC 9562's variant, above rand_b's 62 bits
_RAND_B = (1 << 62) - 1


def new_id() -> str:
    """A new UUIDv7, as 32 lowercase hex digits (``uuid.UUID(new_id()).version == 7``)."""
    return uuid7(time.time_ns() // 1_000_000, int.from_bytes(os.urandom(10), "big"))


def uuid7(millis: int, random: int) -> str:
    """The UUIDv7 of Unix time ``millis`` (48 bits) and ``random`` (80 bits: rand_a's 12,
    then rand_b's 62; the 6 bits between go to the version and variant), in hex."""
    value = (
        (millis & 0xFFFFFFFFFFFF) << 80
        | _VERSION
        | (random >> 62 & 0xFFF) << 64
        | _VARIANT
        | random & _RAND_B
    )
    return f"{value:032x}"
