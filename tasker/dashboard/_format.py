"""How the dashboard writes times, durations and stored bytes.

Times on the queue are POSIX seconds on the backend's clock; the page writes them in UTC
with their distance from the backend's ``now`` ("3m 10s ago"), so a browser in another
zone, or a server whose wall clock is off, reads the same thing. Payloads and results are
bytes as the serialiser wrote them: shown as text (pretty JSON when they parse), cut at
the app's ``payload_limit``, never interpreted as markup (the templates escape them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["Shown", "duration", "moment", "relative", "show_bytes", "slot", "stamp"]

#: A unit, in seconds, and the smaller one written after it: "3d 4h", "2h 5m", "3m 10s".
_UNITS = ((86400, "d", 3600, "h"), (3600, "h", 60, "m"), (60, "m", 1, "s"))


def duration(seconds: float) -> str:
    """``seconds`` (their absolute value) in short words: ``"850ms"``, ``"42s"``, ``"3m 10s"``,
    ``"2h 5m"``, ``"3d 4h"``."""
    seconds = abs(seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    whole = int(seconds)
    size, unit, small, small_unit = next(row for row in _UNITS if whole >= row[0] or row[0] == 60)
    rest = (whole % size) // small
    return f"{whole // size}{unit} {rest}{small_unit}" if rest else f"{whole // size}{unit}"


def relative(at: float, now: float) -> str:
    """``"in 5s"`` or ``"5s ago"``: ``at`` seen from ``now``."""
    delta = at - now
    return f"in {duration(delta)}" if delta > 0.5 else f"{duration(delta)} ago"


def stamp(at: float) -> str:
    """A backend timestamp in UTC."""
    return f"{datetime.fromtimestamp(at, UTC):%Y-%m-%d %H:%M:%S} UTC"


def moment(at: float | None, now: float) -> str:
    """A backend timestamp in UTC with its distance from ``now``, or ``"-"``."""
    if at is None:
        return "-"
    return f"{stamp(at)} ({relative(at, now)})"


def slot(at: datetime | None, now: datetime) -> str:
    """A schedule's slot in its own zone with its distance from ``now``, or ``"-"``."""
    if at is None:
        return "-"
    return f"{at:%Y-%m-%d %H:%M:%S %Z} ({relative(at.timestamp(), now.timestamp())})"


@dataclass(frozen=True, slots=True, kw_only=True)
class Shown:
    """Stored bytes ready to print: the text, how many bytes were stored, whether it was cut."""

    text: str
    size: int
    truncated: bool
    kind: str


def show_bytes(data: bytes, limit: int) -> Shown:
    """``data`` as text of at most ``limit`` characters: indented JSON if it parses, UTF-8
    text otherwise, else a hex dump (binary from a custom serialiser)."""
    kind = "text"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text, kind = data[: limit // 2].hex(" "), "binary (hex)"
        return Shown(text=text, size=len(data), truncated=len(data) > limit // 2, kind=kind)
    # Parsing is bounded by the cut: a payload of megabytes is not parsed to show 8 KiB.
    if len(text) <= 4 * limit:
        try:
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False, sort_keys=True)
            kind = "JSON"
        except ValueError:
            pass
    truncated = len(text) > limit
    return Shown(text=text[:limit], size=len(data), truncated=truncated, kind=kind)
