"""``Backoff``: how long to wait before the next attempt."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta

from ._context import to_seconds

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """An exponential backoff with a cap and jitter; ``factor=1`` makes it fixed.

    The delay before retry ``n`` (1 for the first retry) is
    ``min(initial * factor ** (n - 1), maximum)``, then spread by ``jitter``: a fraction in
    ``[0, 1]`` of the delay drawn uniformly and added or removed ("equal jitter"), so replicas
    that failed together do not retry together.

    Args:
        initial: the first delay (seconds or timedelta).
        factor: the growth per retry, at least 1.
        maximum: the largest delay before jitter.
        jitter: the fraction of the delay to randomise, between 0 and 1.

    Raises:
        ValueError: for a negative or non-finite duration, ``factor < 1``, ``jitter``
            outside ``[0, 1]`` or ``maximum < initial``.
    """

    initial: float | timedelta = 0.1
    factor: float = 2.0
    maximum: float | timedelta = 30.0
    jitter: float = 0.1
    _initial: float = field(init=False, repr=False, compare=False)
    _maximum: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        initial = to_seconds(self.initial, "initial")
        maximum = to_seconds(self.maximum, "maximum")
        if not (self.factor >= 1.0) or self.factor == float("inf"):
            raise ValueError(f"Backoff factor must be a finite number >= 1, got {self.factor!r}")
        if not (0.0 <= self.jitter <= 1.0):
            raise ValueError(f"Backoff jitter must be between 0 and 1, got {self.jitter!r}")
        if maximum < initial:
            raise ValueError(
                f"Backoff maximum ({self.maximum!r}) must not be less than initial"
                f" ({self.initial!r})"
            )
        object.__setattr__(self, "_initial", initial)
        object.__setattr__(self, "_maximum", maximum)

    @classmethod
    def fixed(cls, delay: float | timedelta, *, jitter: float = 0.0) -> Backoff:
        """A backoff that waits ``delay`` before every retry."""
        return cls(initial=delay, factor=1.0, maximum=delay, jitter=jitter)

    def delay(self, retry: int, *, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        if retry < 1:
            raise ValueError(f"retry must be >= 1, got {retry!r}")
        try:
            base = min(self._initial * self.factor ** (retry - 1), self._maximum)
        except OverflowError:  # a huge retry count: the cap applies
            base = self._maximum
        if not self.jitter or not base:
            return base
        spread = base * self.jitter
        return max(0.0, base - spread + (rng or random).random() * 2 * spread)
