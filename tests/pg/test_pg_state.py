"""tasker_pg state: the shared contract suite, migration, identifiers, status and CLI."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
import pytest

import tasker_pg
from tasker import ScheduleState
from tasker.testing import SchedulerBackendContract
from tasker_pg import PostgresLockerFactory, PostgresStateRepository

pytestmark = pytest.mark.anyio


class TestPostgresContract(SchedulerBackendContract):
    """The same contract as every other backend, on Postgres."""

    @pytest.fixture
    def backend(
        self, pg_backend: tuple[PostgresLockerFactory, PostgresStateRepository]
    ) -> tuple[PostgresLockerFactory, PostgresStateRepository]:
        return pg_backend


async def test_migrate_is_idempotent_and_concurrent(pg_dsn: str, schema: str) -> None:
    """Several concurrent migrations leave one set of tables and no error (the repository's
    ``migrate`` wraps ``tasker_pg.migrate``: the queue's tables come with it)."""
    repository = PostgresStateRepository(pg_dsn, schema=schema)
    try:
        await asyncio.gather(*(repository.migrate() for _ in range(4)))
        await repository.migrate()
    finally:
        await repository.aclose()
    conn = await asyncpg.connect(pg_dsn)
    try:
        tables = await conn.fetch(
            "select table_name from information_schema.tables where table_schema = $1 order by 1",
            schema,
        )
    finally:
        await conn.close()
    assert [r[0] for r in tables] == [
        "lock_keys",
        "queue_groups",
        "queue_history",
        "queue_rate_log",
        "queue_tasks",
        "queue_workers",
        "schedule_state",
    ]


@pytest.mark.parametrize(
    "bad", ['x"; drop table y; --', "Upper", "1starts_with_digit", "a" * 64, "with space", ""]
)
def test_identifiers_are_validated(pg_dsn: str, bad: str) -> None:
    """Schema and table names that are not plain identifiers are rejected at construction."""
    with pytest.raises(ValueError, match="identifier"):
        PostgresStateRepository(pg_dsn, schema=bad)
    with pytest.raises(ValueError, match="identifier"):
        PostgresStateRepository(pg_dsn, table=bad)


async def test_hostile_schedule_names_are_data(
    pg_backend: tuple[PostgresLockerFactory, PostgresStateRepository], pg_dsn: str, schema: str
) -> None:
    """An SQL injection attempt as a schedule name is stored verbatim; tables stay intact."""
    _, repository = pg_backend
    name = "x'); drop table lock_keys; --"
    await repository.save(ScheduleState(name=name, last_slot=datetime(2026, 1, 1, tzinfo=UTC)))
    stored = await repository.get(name)
    assert stored is not None
    assert stored.name == name
    rows = await tasker_pg.status(repository, namespace=schema)
    assert [r.name for r in rows] == [name]


async def test_status_shows_state_and_lock_holder(
    pg_backend: tuple[PostgresLockerFactory, PostgresStateRepository], schema: str
) -> None:
    """status() reports the last run, its duration, the next due slot and the lock's pid."""
    lockers, repository = pg_backend
    start = datetime(2026, 1, 1, tzinfo=UTC)
    await repository.save(
        ScheduleState(
            name="report",
            last_slot=start,
            last_started=start,
            last_finished=start + timedelta(seconds=2),
            run_count=3,
            next_due=start + timedelta(days=1),
        )
    )
    locker = lockers.locker("report")
    assert await locker.try_lock()
    pid = locker.connection_pid
    try:
        (row,) = await tasker_pg.status(repository, namespace=schema)
    finally:
        await locker.unlock()
    assert row.duration == timedelta(seconds=2)
    assert row.next_due == start + timedelta(days=1)
    assert row.lock_holder is not None
    assert row.lock_holder.pid == pid
    assert row.lock_holder.application_name.startswith("tasker_pg ")
    text = tasker_pg.format_status([row])
    assert "report" in text
    assert "2.000s" in text
    assert f"pid {pid} tasker_pg" in text


async def test_cli_migrate_and_status_never_print_the_password(pg_dsn: str, schema: str) -> None:
    """The CLI creates the tables and prints a status table; a password stays hidden."""
    env_dsn = pg_dsn.replace("postgresql://postgres@", "postgresql://postgres:s3cret@", 1)
    outputs = []
    for command in ("migrate", "status"):
        proc = await anyio.run_process(
            [sys.executable, "-m", "tasker_pg", command, "--schema", schema, "--dsn", env_dsn],
            check=False,
        )
        out, err = proc.stdout.decode(), proc.stderr.decode()
        assert proc.returncode == 0, err
        assert "s3cret" not in out + err
        outputs.append(out)
    assert "migrated" in outputs[0]
    assert outputs[1].startswith("name")
    assert tasker_pg.redact_dsn("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"


async def test_late_save_never_moves_a_schedule_back(
    pg_backend: tuple[PostgresLockerFactory, PostgresStateRepository],
) -> None:
    """A save for an older slot (a replica that lost its lock, saving late) is ignored."""
    _, repository = pg_backend
    start = datetime(2026, 1, 1, tzinfo=UTC)
    newer = ScheduleState(name="fenced", last_slot=start + timedelta(minutes=2), run_count=2)
    await repository.save(newer)
    await repository.save(ScheduleState(name="fenced", last_slot=start, run_count=1))
    assert await repository.get("fenced") == newer
    failed = ScheduleState(
        name="fenced", last_slot=newer.last_slot, run_count=2, failure_count=1, last_error="E: x"
    )
    await repository.save(failed)  # the same slot (a failed run) is still recorded
    assert await repository.get("fenced") == failed


async def test_now_is_the_database_clock(pg_dsn: str, schema: str) -> None:
    """now() reads the server's clock (clock_resync=0: on every call)."""
    repository = PostgresStateRepository(pg_dsn, schema=schema, clock_resync=0)
    conn = await asyncpg.connect(pg_dsn)
    try:
        before = await conn.fetchval("select clock_timestamp()")
        now = await repository.now()
        after = await conn.fetchval("select clock_timestamp()")
    finally:
        await conn.close()
        await repository.aclose()
    assert now is not None
    assert before <= now <= after


async def test_now_between_readings_costs_no_query(
    pg_dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between clock readings now() advances with the monotonic clock and sends nothing."""
    repository = PostgresStateRepository(pg_dsn, schema=schema, clock_resync=60)
    source = repository._source
    sent: list[str] = []

    class NoServer:
        async def pool(self) -> object:
            sent.append("pool")
            raise AssertionError("now() went to the server")

    try:
        first = await repository.now()
        monkeypatch.setattr(repository, "_source", NoServer())
        await anyio.sleep(0.2)
        second = await repository.now()
        monkeypatch.setattr(repository, "_source", source)
        server = await (await source.pool()).fetchval("select clock_timestamp()")
    finally:
        await source.close()
    assert first is not None
    assert second is not None
    assert sent == []
    assert timedelta(seconds=0.15) < second - first < timedelta(seconds=1)
    assert abs(server - second) < timedelta(milliseconds=50)
    with pytest.raises(ValueError, match="clock_resync must be non-negative, got -1"):
        PostgresStateRepository(pg_dsn, clock_resync=-1)


async def test_hostile_table_names_are_rejected_before_any_sql(pg_dsn: str, schema: str) -> None:
    """Injection through schema/table names fails validation; the CLI refuses it too."""
    hostile = 'schedule_state"; drop schema public cascade; --'
    with pytest.raises(ValueError, match="table must be a lower-case SQL identifier"):
        tasker_pg.scheduler(pg_dsn, table=hostile)
    proc = await anyio.run_process(
        [sys.executable, "-m", "tasker_pg", "migrate", "--dsn", pg_dsn, "--table", hostile],
        check=False,
    )
    assert proc.returncode != 0
    assert "identifier" in proc.stderr.decode()
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("select count(*) from pg_namespace where nspname = 'public'")
    finally:
        await conn.close()


def test_bad_options_name_the_parameter(pg_dsn: str) -> None:
    """Bad constructor arguments raise at once and name the parameter and value."""
    with pytest.raises(ValueError, match="check_interval must be positive, got 0"):
        PostgresLockerFactory(pg_dsn, check_interval=0)
    with pytest.raises(ValueError, match="namespace"):
        PostgresLockerFactory(pg_dsn, namespace="")
    with pytest.raises(TypeError, match="DSN string or an asyncpg pool"):
        PostgresStateRepository(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="postgresql:// DSN") as info:
        PostgresStateRepository("mysql://u:hunter2@h/db")
    assert "hunter2" not in str(info.value)
    assert "mysql://u:***@h/db" in str(info.value)


async def test_cli_takes_the_dsn_from_the_environment(pg_dsn: str, schema: str) -> None:
    """TASKER_PG_DSN stands in for --dsn; with neither the CLI exits 2 and says why."""
    env = {**os.environ, "TASKER_PG_DSN": pg_dsn}
    command = [sys.executable, "-m", "tasker_pg", "migrate", "--schema", schema]
    proc = await anyio.run_process(command, env=env, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert f"migrated {schema}.schedule_state" in proc.stdout.decode()
    env.pop("TASKER_PG_DSN")
    proc = await anyio.run_process(command, env=env, check=False)
    assert proc.returncode == 2
    assert "TASKER_PG_DSN" in proc.stderr.decode()
