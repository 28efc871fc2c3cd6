"""Building blocks for writing a backend: what tasker's own backends share.

``tasker_pg`` is written on tasker's public API alone, and so can a backend of your own (SQL or
message broker): the protocols are in :mod:`tasker.abc`, the records in :mod:`tasker.queue`,
and the helpers they share here.

- **Names**: :func:`check_schedule_name` (schedule names, as every state store must accept).
- **Schedule state**: :func:`schedule_state_to_json` / :func:`schedule_state_from_json`, a
  :class:`tasker.ScheduleState` as JSON for a key-value store (``tasker_redis``,
  ``tasker_nats``).
- **SQL rows**: :data:`TASK_COLUMNS` and :func:`task_record_from_row` map a task row to a
  :class:`tasker.queue.TaskRecord`, :data:`TASK_INSERT_COLUMNS` and
  :func:`task_insert_values` a new task to an insert, :data:`HISTORY_COLUMNS` and
  :func:`history_from_row` a history row to a :class:`tasker.queue.HistoryEntry`;
  :func:`record_from_new` is the record of a new task for a store without rows, and
  :func:`settled_record` (:func:`dead_record`, :func:`replace_record`) what an outcome
  leaves of it; :data:`LEASE_EXPIRED` is the error of a task whose last lease expired;
  :data:`LIVE_STATES` are the states that hold a unique key, :data:`WAITING_STATES` those
  that count towards a queue's depth (``max_depth``); :data:`PROGRESS_CLEARED` is the
  assignment a claim makes to start an attempt without the last one's progress;
  :func:`callback_to_json` / :func:`callback_from_json` store a group's callback until the
  group completes, and :func:`group_payload` builds its payload from the members' results.
- **Chains**: :func:`encode_chain` / :func:`decode_chain`, the rest of a chain as stored with a
  task.
- **Durations**: :func:`to_seconds`, an option given as seconds or a ``timedelta`` checked and
  normalised once, at construction, with the messages tasker's own options give.
- **Errors**: :func:`format_error` and :func:`storable`, the storable ``"Type: message"`` and
  traceback of a failure; :func:`redact_dsn`, a DSN's or URL's password hidden in any text.
- **Permanent faults**: :func:`permanent_fault` tells an outage (retried) from an error that
  retrying cannot fix (the program stops with :class:`tasker.BackendConfigurationError`, the
  fix in its message, which :func:`raise_if_permanent` raises); a backend teaches it its
  driver's errors with :func:`register_fault_classifier`, returning a :class:`PermanentFault`.
"""

from __future__ import annotations

from datetime import timedelta

from . import _context
from ._faults import (
    PermanentFault,
    permanent_fault,
    raise_if_permanent,
    register_fault_classifier,
)
from ._redact import redact_dsn
from .queue._chain import decode_chain, encode_chain
from .queue._failures import format_error, storable
from .queue._rows import COLUMNS as TASK_COLUMNS
from .queue._rows import (
    HISTORY_COLUMNS,
    LEASE_EXPIRED,
    LIVE_STATES,
    PROGRESS_CLEARED,
    TASK_INSERT_COLUMNS,
    WAITING_STATES,
    callback_from_json,
    callback_to_json,
    dead_record,
    group_payload,
    history_from_row,
    record_from_new,
    replace_record,
    settled_record,
    task_insert_values,
)
from .queue._rows import record_from_row as task_record_from_row
from .scheduler._state import MAX_NAME_LENGTH
from .scheduler._state import check_name as check_schedule_name
from .scheduler._state import state_from_json as schedule_state_from_json
from .scheduler._state import state_to_json as schedule_state_to_json

__all__ = [
    "HISTORY_COLUMNS",
    "LEASE_EXPIRED",
    "LIVE_STATES",
    "MAX_NAME_LENGTH",
    "PROGRESS_CLEARED",
    "TASK_COLUMNS",
    "TASK_INSERT_COLUMNS",
    "WAITING_STATES",
    "PermanentFault",
    "callback_from_json",
    "callback_to_json",
    "check_schedule_name",
    "dead_record",
    "decode_chain",
    "encode_chain",
    "format_error",
    "group_payload",
    "history_from_row",
    "permanent_fault",
    "raise_if_permanent",
    "record_from_new",
    "redact_dsn",
    "register_fault_classifier",
    "replace_record",
    "schedule_state_from_json",
    "schedule_state_to_json",
    "settled_record",
    "storable",
    "task_insert_values",
    "task_record_from_row",
    "to_seconds",
]


def to_seconds(value: float | timedelta, name: str, *, allow_zero: bool = True) -> float:
    """A duration option in seconds: checked and normalised once, when the object is built.

    The same check, with the same messages, as every duration option of tasker itself
    (``Scheduler(lock_retry=...)``, ``Queue.step(timeout=...)``), so a backend's options fail
    the way tasker's do and each message names the option and shows the value.

    Args:
        value: seconds (an ``int`` or a ``float``, never a ``bool``) or a ``timedelta``.
        name: the option's name, for the message.
        allow_zero: whether zero is accepted (``False`` for an interval, which must be
            positive; ``True`` for, say, "re-read the clock every time").

    Returns:
        The duration in seconds, as a float.

    Raises:
        TypeError: for a value that is neither a number nor a ``timedelta`` (a ``str``, a
            ``bool``).
        ValueError: for a negative, NaN or infinite duration, or zero when not
            ``allow_zero``.
    """
    return _context.to_seconds(value, name, allow_zero=allow_zero)


# Shown under this module in reprs and tracebacks (those tasker itself exports keep "tasker").
for _name in __all__:
    _obj = globals()[_name]
    if callable(_obj) and any(part.startswith("_") for part in _obj.__module__.split(".")):
        _obj.__module__ = __name__
del _name, _obj
