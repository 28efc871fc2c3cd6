"""How long a queue keeps what is finished: the retention its workers apply."""

from __future__ import annotations

from datetime import timedelta

from .._context import to_seconds

__all__ = ["Retention"]

_DAY = 86400.0


class Retention:
    """What a queue keeps once tasks are finished, and how often its workers clean up.

    A succeeded task is kept as long as its result (``Queue(result_ttl=)``, a day by
    default), and then deleted, unless its unique window or its group is still open. This
    policy adds the rest:

    Args:
        dead: dead and cancelled tasks are deleted this long after they died or were
            cancelled (None keeps them: dead ones until requeued); 7 days by default.
        history: history entries are deleted this long after their attempt finished (None
            keeps them); 7 days by default.
        every: how often each worker purges (spread by up to half of it, so that replicas
            do not purge together); 5 minutes by default.

    Raises:
        ValueError, TypeError: for a duration that is not one, or ``every`` not positive.
    """

    __slots__ = ("dead", "every", "history")

    dead: float | None
    history: float | None
    every: float

    def __init__(
        self,
        *,
        dead: float | timedelta | None = 7 * _DAY,
        history: float | timedelta | None = 7 * _DAY,
        every: float | timedelta = 300.0,
    ) -> None:
        self.dead = None if dead is None else to_seconds(dead, "Retention(dead=)")
        self.history = None if history is None else to_seconds(history, "Retention(history=)")
        self.every = to_seconds(every, "Retention(every=)", allow_zero=False)

    def __repr__(self) -> str:
        return f"Retention(dead={self.dead!r}, history={self.history!r}, every={self.every!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Retention):
            return NotImplemented
        return (self.dead, self.history, self.every) == (other.dead, other.history, other.every)

    def __hash__(self) -> int:
        return hash((self.dead, self.history, self.every))
