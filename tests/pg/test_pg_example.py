"""examples/pg_scheduler.py as two real processes on one database."""

from __future__ import annotations

import re
from collections import Counter

import asyncpg
import pytest

from ..helpers import python_process

pytestmark = pytest.mark.anyio


@pytest.mark.slow
async def test_two_processes_share_the_slots(pg_dsn: str, schema: str) -> None:
    """Two copies of the example run each heartbeat slot once, then print the status."""
    args = ["examples/pg_scheduler.py", "--dsn", pg_dsn, "--schema", schema, "--for", "3"]
    first, second = python_process(args), python_process(args)
    (out1, err1), (out2, err2) = first.communicate(timeout=60), second.communicate(timeout=60)
    assert (first.returncode, second.returncode) == (0, 0), err1 + err2
    slots = Counter(re.findall(r"ran heartbeat for (\S+) in pid", out1 + out2))
    assert len(slots) >= 2
    assert max(slots.values()) == 1
    assert "heartbeat" in out1.splitlines()[-2] + out1.splitlines()[-1]
    conn = await asyncpg.connect(pg_dsn)
    try:
        runs = await conn.fetchval(
            f'select run_count from "{schema}".schedule_state where name = $1', "heartbeat"
        )
    finally:
        await conn.close()
    assert runs == sum(slots.values())
