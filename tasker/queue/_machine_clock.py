"""The embedded queue's clock: the machine's wall clock, kept immune to steps.

Worker processes on one machine compare leases against one clock. Reading ``time.time()``
in each would let an NTP step (or a clock set by hand) expire every lease at once, and a
worker would take the tasks another is running. So the queue's clock is the wall clock
read once, stored in the database with the id of the current boot, and advanced by the
boot-time clock (``CLOCK_BOOTTIME``: monotonic, counting suspend, the same in every
process). Every process of a boot reads the same anchor, so they all agree to the
microsecond, and no step of the wall clock moves them.

The clock follows the wall clock again (a new anchor) on a new boot, and when the two
differ by more than :data:`REANCHOR_AFTER` while no task is running, so no lease can be cut
short: a machine that booted with a wrong clock and was corrected later catches up at the
first idle moment. A process still holding the old anchor has its readings translated by
the backend inside each claim and heartbeat.

Without a boot id (platforms other than Linux), each process anchors when it first reads
the clock; processes started after a step then disagree by that step.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

__all__ = [
    "REANCHOR_AFTER",
    "boot_id",
    "boot_seconds",
    "read_anchor",
    "shift",
    "stalled",
    "translate",
]

#: Seconds between the wall clock and the queue's clock that make an idle queue re-anchor.
REANCHOR_AFTER = 1.0

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)


def boot_id() -> str | None:
    """This boot's id (Linux), or None where the platform has none."""
    try:
        return _BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def boot_seconds() -> float:
    """Seconds on a clock no wall-clock step moves, shared by every process of a boot."""
    if _BOOTTIME is not None:
        return time.clock_gettime(_BOOTTIME)
    return time.monotonic()


def read_anchor(db: sqlite3.Connection, current_boot: str | None) -> float:
    """The anchor (wall time at boot-time zero) stored for this boot, set or renewed here.

    Runs inside a write transaction of the embedded queue.
    """
    wall_anchor = time.time() - boot_seconds()
    if current_boot is None:
        return wall_anchor
    row = db.execute("select boot_id, anchor from queue_clock").fetchone()
    if row is None or row[0] != current_boot:
        db.execute("delete from queue_clock")
        db.execute(
            "insert into queue_clock (boot_id, anchor) values (?, ?)", (current_boot, wall_anchor)
        )
        return wall_anchor
    anchor = float(row[1])
    if abs(wall_anchor - anchor) > REANCHOR_AFTER:
        running = db.execute("select 1 from tasks where state = 'running' limit 1").fetchone()
        if running is None:
            db.execute("update queue_clock set anchor = ?", (wall_anchor,))
            return wall_anchor
    return anchor


#: Seconds this thread's current batch waited for the write lock, when that was a stall.
_stall = threading.local()


def stalled(seconds: float) -> None:
    """Note that the current batch (in this thread) waited ``seconds`` for the write lock."""
    _stall.seconds = seconds


def shift(db: sqlite3.Connection, anchor: float | None) -> float:
    """How far a reading made with ``anchor`` is behind the clock as the database holds it.

    A reading made before another process re-anchored the clock is moved by the change, and
    one made before a stall of the write lock by the stall (it was taken before the wait),
    so a lease is never set, nor compared, on a stale timeline.
    """
    delta = float(getattr(_stall, "seconds", 0.0))
    if anchor is not None:
        row = db.execute("select anchor from queue_clock").fetchone()
        if row is not None:
            delta += float(row[0]) - anchor
    return delta


def translate(db: sqlite3.Connection, now: float, anchor: float | None) -> float:
    """``now``, read with ``anchor``, on the clock as the database holds it (see :func:`shift`)."""
    return now + shift(db, anchor)
