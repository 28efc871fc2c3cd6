"""The fault run of issue 10 on Postgres, with real worker processes and a real server.

Beside the faults of the SQLite run, every connection of one worker is ended with
``pg_terminate_backend`` while it works.
"""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest

from tasker_pg import PostgresQueueBackend

from ..queue_faults import check, run_chains_under_kills, run_faults

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_pg_workers_survive_kill_term_skew_stop_and_terminated_connections(
    pg_dsn: str, schema: str, tmp_path: Path
) -> None:
    """Every task succeeds once; tasks done twice only by the killed or the stopped worker."""
    separator = "&" if "?" in pg_dsn else "?"
    # Names unique to the run: another session may run this test on the shared server.
    names = {name: f"tasker-{schema}-{name}" for name in ("w0", "w1", "w2", "w3", "w4")}

    async def terminate(name: str) -> int:
        admin = await asyncpg.connect(pg_dsn)
        try:
            ended: int = await admin.fetchval(
                "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity"
                " where application_name = $1) t",
                names[name],
            )
        finally:
            await admin.close()
        return ended

    backend = PostgresQueueBackend(pg_dsn, schema=schema)
    await backend.migrate()
    await backend.aclose()
    fault = await run_faults(
        backend=lambda: PostgresQueueBackend(pg_dsn, schema=schema),
        spec=lambda name: [
            "--backend",
            f"pg:{pg_dsn}{separator}application_name={names[name]}",
            "--schema",
            schema,
        ],
        out=tmp_path,
        terminate=terminate,
    )
    figures = check(fault)
    print(json.dumps(figures))  # the figures for the closing note (pytest -s)


async def test_pg_chains_and_groups_under_random_kills(
    pg_dsn: str, schema: str, tmp_path: Path
) -> None:
    """Workers SIGKILLed at random points: each chain's next step is enqueued exactly once,
    each group's callback exactly once, and every task succeeds once."""
    backend = PostgresQueueBackend(pg_dsn, schema=schema)
    await backend.migrate()
    await backend.aclose()
    figures = await run_chains_under_kills(
        backend=lambda: PostgresQueueBackend(pg_dsn, schema=schema),
        spec=lambda name: ["--backend", f"pg:{pg_dsn}", "--schema", schema],
        out=tmp_path,
    )
    print(json.dumps(figures))  # the figures for the closing note (pytest -s)
