"""``ScheduleState``: what a backend remembers about a schedule."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["ScheduleState", "state_from_json", "state_to_json"]

#: The longest schedule name a backend must store.
MAX_NAME_LENGTH = 200


def check_name(name: object, where: str) -> str:
    """Validate a schedule name: a non-empty string of at most 200 printable characters."""
    if not isinstance(name, str):
        raise TypeError(f"{where}: name must be a string, got {name!r}")
    if not name or not name.strip():
        raise ValueError(f"{where}: name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"{where}: name is longer than {MAX_NAME_LENGTH} characters: {name!r}")
    if not name.isprintable():
        raise ValueError(f"{where}: name contains control characters: {name!r}")
    return name


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleState:
    """The record a :class:`~tasker.abc.StateRepository` stores per schedule name.

    Attributes:
        name: the schedule's name.
        last_slot: the latest slot that is done (ran successfully, or was skipped by the
            catch-up policy); slots after it are due. When a name is first seen it is set to
            that moment, so a new schedule waits for its next slot.
        last_started: when the latest run started (backend clock), if any.
        last_finished: when the latest run finished, if any.
        last_error: ``"ExceptionType: message"`` of the latest run if it failed, else None.
        run_count: how many runs succeeded.
        failure_count: how many runs failed.
        next_due: the first slot after ``last_slot`` when the state was saved (for status
            displays; the scheduler recomputes it from the schedule).
    """

    name: str
    last_slot: datetime
    last_started: datetime | None = None
    last_finished: datetime | None = None
    last_error: str | None = None
    run_count: int = 0
    failure_count: int = 0
    next_due: datetime | None = None

    def __post_init__(self) -> None:
        check_name(self.name, "ScheduleState")
        for field_name in ("last_slot", "last_started", "last_finished", "next_due"):
            value = getattr(self, field_name)
            if value is not None and (value.tzinfo is None or value.utcoffset() is None):
                raise ValueError(f"ScheduleState {field_name} must be aware, got {value!r}")
        if self.run_count < 0 or self.failure_count < 0:
            raise ValueError("ScheduleState counts must not be negative")


def _moment(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _parse(text: Any) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def state_to_json(state: ScheduleState) -> str:
    """``state`` as plain-ASCII JSON, without its name (a key-value store keys it by name).

    Datetimes are ISO 8601 with their UTC offset, so a state reads back with the offset it
    was saved with.
    """
    # ensure_ascii (the default): the JSON is plain ASCII whatever the error message holds.
    return json.dumps(
        {
            "last_slot": state.last_slot.isoformat(),
            "last_started": _moment(state.last_started),
            "last_finished": _moment(state.last_finished),
            "last_error": state.last_error,
            "run_count": state.run_count,
            "failure_count": state.failure_count,
            "next_due": _moment(state.next_due),
        },
        separators=(",", ":"),
    )


def state_from_json(name: str, text: str | bytes) -> ScheduleState:
    """The state of ``name`` that :func:`state_to_json` wrote as ``text``."""
    data = json.loads(text)
    return ScheduleState(
        name=name,
        last_slot=datetime.fromisoformat(data["last_slot"]),
        last_started=_parse(data["last_started"]),
        last_finished=_parse(data["last_finished"]),
        last_error=data["last_error"],
        run_count=data["run_count"],
        failure_count=data["failure_count"],
        next_due=_parse(data["next_due"]),
    )
