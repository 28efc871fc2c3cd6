"""Rate limits per task name and concurrency keys: the value object, and the rule a claim
follows (``QueueCapability.RATE_LIMITS``, ``QueueCapability.CONCURRENCY_KEYS``).

Design notes:

- **A sliding log, not a token bucket.** A claim that starts an attempt of a rate-limited
  name writes one entry for it, which holds a slot of the name until ``per`` has passed
  (the entry's expiry, ``start + per``). A claim may start another attempt only while fewer
  than ``count`` entries of the name are unexpired: so at most ``count`` attempts of a name
  start in *any* window of ``per`` seconds, exactly, on the backend's clock, whichever
  workers and processes claim. A token bucket of ``count`` refilled over ``per`` allows up
  to ``2 * count`` in a window (a full bucket spent, then refilled), which would break the
  "at most N per window" that users read ``"100/m"`` as. The log costs ``count`` entries
  per name; they are pruned as they expire.
- **The settings travel with each task** (``NewTask.rate_limit``, ``concurrency_key`` and
  ``concurrency_limit``, stored on its row), so a backend needs no registry and every
  process claims by the same rule, even one that registered no handler of the name. A
  change of a name's limit applies to the tasks enqueued after it; the log is per name, and
  an entry keeps the expiry of the task that wrote it.
- **A concurrency key's slots are its running tasks under a live lease.** A task whose
  lease expired (its worker died) frees its slot at once; claiming it again takes a slot
  like any start.
- **Only claims apply them** (``claim``, ``finish_and_claim``): a claim skips a task its
  limit blocks and takes the next due one instead, atomically with the counting (the
  memory backend's single loop, SQLite's write transaction, a Postgres transaction under a
  lock). ``claim_ids``, a broker's delivery by id, does not: a broker cannot hold a
  message back per key, which is why a broker-fronted backend does not declare them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

__all__ = ["RateLimit", "check_concurrency_limit", "rate_limit_of"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TEXT = re.compile(r"\s*(\d+)\s*/\s*(\d*\.?\d*)\s*([smhd])\s*")


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """At most ``count`` attempts of a task name start in any window of ``per`` seconds,
    across every worker and process that shares the backend.

    Enforced by the backend's claim with a sliding log of start times (see
    ``@queue.task(rate_limit=...)``): an attempt counts when it is claimed (a retry, and a
    task claimed again after its worker died, count again). ``RateLimit.parse("100/m")``
    reads the text form: a count, ``/``, an optional number and a unit of ``s``, ``m``,
    ``h`` or ``d`` (``"5/s"``, ``"1000/h"``, ``"10/30s"``).

    Attributes:
        count: how many attempts may start per window (at least 1).
        per: the window: seconds or a ``timedelta`` (more than 0), stored as float
            seconds.

    Raises:
        ValueError: a count below 1 or a window that is not positive.
        TypeError: a count that is not an int, or a window that is not a number.
    """

    count: int
    per: float | timedelta

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or isinstance(self.count, bool):
            raise TypeError(f"RateLimit: count must be an int, got {self.count!r}")
        if self.count < 1:
            raise ValueError(f"RateLimit: count must be at least 1, got {self.count!r}")
        per: object = self.per
        if isinstance(per, timedelta):
            per = per.total_seconds()
        if not isinstance(per, int | float) or isinstance(per, bool):
            raise TypeError(f"RateLimit: per must be seconds or a timedelta, got {self.per!r}")
        if not per > 0 or per == float("inf"):
            raise ValueError(f"RateLimit: per must be a positive duration, got {self.per!r}")
        object.__setattr__(self, "per", float(per))

    @property
    def seconds(self) -> float:
        """The window in seconds (``per``, normalised at construction)."""
        per = self.per
        return per.total_seconds() if isinstance(per, timedelta) else per

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """The rate limit written as ``text`` (``"100/m"``, ``"5/s"``, ``"10/30s"``).

        Raises:
            ValueError: ``text`` is not of that form (the message shows it).
        """
        match = _TEXT.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(
                f"rate_limit must be a RateLimit or a text such as '100/m', '5/s' or"
                f" '1000/h', got {text!r}"
            )
        count, amount, unit = match.groups()
        try:
            return cls(count=int(count), per=float(amount or 1) * _UNITS[unit])
        except ValueError as exc:
            raise ValueError(f"rate_limit: {exc} (from {text!r})") from None

    def __str__(self) -> str:
        return f"{self.count}/{self.seconds:g}s"


def rate_limit_of(value: object) -> RateLimit | None:
    """``value`` (a :class:`RateLimit`, its text form, or None) as a RateLimit or None.

    Raises:
        ValueError: a text that is not a rate limit, naming ``rate_limit``.
        TypeError: anything else.
    """
    if value is None or isinstance(value, RateLimit):
        return value
    if isinstance(value, str):
        return RateLimit.parse(value)
    raise TypeError(
        f"rate_limit must be a RateLimit, a str such as '100/m', or None, got {value!r}"
    )


def check_concurrency_limit(value: object) -> int:
    """``value`` if it is an int of at least 1; else a ValueError naming the parameter."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"concurrency_limit must be an int of at least 1, got {value!r}")
    return value
