"""Building blocks for writing a backend: what tasker's own backends share.

``tasker_pg`` is written on tasker's public API alone, and so can a backend of your own (SQL or
message broker): the protocols are in :mod:`tasker.abc`, the records in :mod:`tasker.queue`,
and the helpers they share here.

- **Names**: :func:`check_schedule_name` (schedule names, as every state store must accept).
- **SQL rows**: :data:`TASK_COLUMNS` and :func:`task_record_from_row` map a task row to a
  :class:`tasker.queue.TaskRecord`, :data:`TASK_INSERT_COLUMNS` and
  :func:`task_insert_values` a new task to an insert, :data:`HISTORY_COLUMNS` and
  :func:`history_from_row` a history row to a :class:`tasker.queue.HistoryEntry`;
  :func:`record_from_new` is the record of a new task for a store without rows;
  :data:`LIVE_STATES` are the states that hold a unique key;
  :func:`callback_to_json` / :func:`callback_from_json` store a group's callback until the
  group completes, and :func:`group_payload` builds its payload from the members' results.
- **Chains**: :func:`encode_chain` / :func:`decode_chain`, the rest of a chain as stored with a
  task.
- **Errors**: :func:`format_error` and :func:`storable`, the storable ``"Type: message"`` and
  traceback of a failure; :func:`redact_dsn`, a DSN's or URL's password hidden in any text.
"""

from __future__ import annotations

from ._redact import redact_dsn
from .queue._chain import decode_chain, encode_chain
from .queue._failures import format_error, storable
from .queue._rows import COLUMNS as TASK_COLUMNS
from .queue._rows import (
    HISTORY_COLUMNS,
    LIVE_STATES,
    TASK_INSERT_COLUMNS,
    callback_from_json,
    callback_to_json,
    group_payload,
    history_from_row,
    record_from_new,
    task_insert_values,
)
from .queue._rows import record_from_row as task_record_from_row
from .scheduler._state import MAX_NAME_LENGTH
from .scheduler._state import check_name as check_schedule_name

__all__ = [
    "HISTORY_COLUMNS",
    "LIVE_STATES",
    "MAX_NAME_LENGTH",
    "TASK_COLUMNS",
    "TASK_INSERT_COLUMNS",
    "callback_from_json",
    "callback_to_json",
    "check_schedule_name",
    "decode_chain",
    "encode_chain",
    "format_error",
    "group_payload",
    "history_from_row",
    "record_from_new",
    "redact_dsn",
    "storable",
    "task_insert_values",
    "task_record_from_row",
]
