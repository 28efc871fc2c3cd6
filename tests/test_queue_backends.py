"""The stateful queue contract on the memory and SQLite backends."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tasker.queue import MemoryQueueBackend, SQLiteQueueBackend
from tasker.testing import queue_backend_machine


def _sqlite() -> SQLiteQueueBackend:
    return SQLiteQueueBackend(Path(tempfile.mkdtemp(prefix="tasker-contract-")) / "q.sqlite3")


TestMemoryQueueBackend = queue_backend_machine(MemoryQueueBackend).TestCase
TestMemoryQueueBackendOnTrio = queue_backend_machine(
    MemoryQueueBackend, anyio_backend="trio"
).TestCase
TestSQLiteQueueBackend = queue_backend_machine(_sqlite).TestCase
TestSQLiteQueueBackendOnTrio = queue_backend_machine(_sqlite, anyio_backend="trio").TestCase
