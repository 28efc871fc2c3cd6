"""tasker_pg against APScheduler 4 on the same Postgres, same workload, same run.

Run: ``python benchmarks/bench_pg_scheduler.py [--dsn DSN] [--seconds 15] [--interval 1]
[--json PATH]`` (``--json PATH`` also writes the figures in ``benchmarks/_report.py``'s shape,
with APScheduler's latency and transactions per slot as ratios to tasker_pg's).
APScheduler runs from a separate virtualenv (``--peer-python``, default
``/tmp/peer-venv/bin/python``), never from tasker's; if it is missing the benchmark creates
it (``pip install --pre apscheduler asyncpg sqlalchemy 'anyio<4.14' sniffio greenlet``:
APScheduler 4.0.0a6's asyncpg event broker calls ``start_soon`` from a plain asyncpg
callback, which anyio >= 4.14 refuses, so with a newer anyio it falls back to polling and
misses most slots; its SQLAlchemy store imports sniffio and greenlet without declaring them).
``--no-peer`` measures tasker only.

Workload: 5 replicas (5 schedulers with their own pools and connections, in one process per
tool), one schedule every ``--interval`` seconds, a no-op job that records its slot and start
time. Each tool gets a fresh database. Measured: executions per slot and duplicates,
slot-to-start latency p50/p99, database transactions per slot
(``pg_stat_database.xact_commit + xact_rollback`` of the tool's own database: each autocommit
statement is one, the same counter for both tools), statements per due slot per replica
(tasker, counted in asyncpg), and transactions per minute while nothing is due (a schedule
six hours away).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
import warnings
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import _report
import anyio
import anyio.streams.text
import asyncpg
import asyncpg.connection

import tasker
import tasker_pg
from tasker.schedule import Interval

HERE = Path(__file__).resolve().parent


class _QueryCounter(Counter[str]):
    """Counts every statement asyncpg sends from this process."""

    def install(self) -> None:
        original = asyncpg.connection.Connection._execute  # type: ignore[attr-defined]

        async def counting(conn: Any, query: str, *args: Any, **kwargs: Any) -> Any:
            if not MEASURING.get():
                self[query[:80]] += 1
            return await original(conn, query, *args, **kwargs)

        asyncpg.connection.Connection._execute = counting  # type: ignore[attr-defined]


QUERIES = _QueryCounter()
#: Set while the benchmark reads the server's counters (not counted as the tool's queries).
MEASURING: ContextVar[bool] = ContextVar("measuring", default=False)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@dataclass(frozen=True, slots=True)
class Counts:
    """Server-side counters of one database."""

    transactions: int
    statements: int | None  # from pg_stat_statements, when the server loads it

    def __sub__(self, other: Counts) -> Counts:
        statements = (
            None
            if self.statements is None or other.statements is None
            else self.statements - other.statements
        )
        # Each reading's own transaction on the admin database is not counted here.
        return Counts(self.transactions - other.transactions, statements)


async def counts(admin_dsn: str, database: str) -> Counts:
    """The database's counters. Backends flush their transaction counts up to 10 s late when
    idle, so ``statements`` (pg_stat_statements, shared memory) is the exact figure."""
    token = MEASURING.set(True)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await asyncio.sleep(1.2)  # let backends flush their statistics (at most every 1 s)
        await conn.execute("select pg_stat_clear_snapshot()")
        xacts: int = await conn.fetchval(
            "select xact_commit + xact_rollback from pg_stat_database where datname = $1", database
        )
        statements: int | None = None
        if await conn.fetchval("select to_regclass('pg_stat_statements') is not null"):
            statements = await conn.fetchval(
                "select coalesce(sum(calls), 0)::bigint from pg_stat_statements s"
                " join pg_database d on d.oid = s.dbid where d.datname = $1",
                database,
            )
        return Counts(xacts, statements)
    finally:
        await conn.close()
        MEASURING.reset(token)


class PrivatePostgres:
    """A private server for the benchmark: nothing else runs on it, autovacuum is off (its
    transactions would count), and pg_stat_statements is loaded when the binaries have it."""

    def __init__(self) -> None:
        installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if installed:
            self.bin = installed[-1].parent
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from pgserver._commands import POSTGRES_BIN_PATH
            self.bin = Path(POSTGRES_BIN_PATH)
        self.user: str | None = None
        if os.geteuid() == 0:  # Postgres refuses to run as root
            self.user = next(u for u in ("postgres", "pgserver") if _user_exists(u))
        self.dir = Path(tempfile.mkdtemp(prefix="tasker-bench-pg-"))
        self.port = _free_port()
        if self.user is not None:
            os.chown(self.dir, pwd.getpwnam(self.user).pw_uid, pwd.getpwnam(self.user).pw_gid)
        self._run("initdb", "-D", str(self.dir / "data"), "--auth=trust", "-U", "postgres")
        libdir = subprocess.run(
            [str(self.bin / "pg_config"), "--pkglibdir"], capture_output=True, text=True
        ).stdout.strip()
        preload = (
            "-c shared_preload_libraries=pg_stat_statements"
            if (Path(libdir) / "pg_stat_statements.so").exists()
            else ""
        )
        options = f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c autovacuum=off {preload}"
        self._run(
            "pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-o", options,
            "-w", "start",
        )  # fmt: skip
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.statements = bool(preload)

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [str(self.bin / program), *args],
            user=self.user,
            cwd=self.dir,
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def fresh_database(admin_dsn: str) -> tuple[str, str]:
    name = f"bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'create database "{name}"')
    finally:
        await conn.close()
    base, _, _ = admin_dsn.rpartition("/")
    return name, f"{base}/{name}"


async def drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class Busy:
    """One tool's figures while its schedule is due, as :func:`report` prints them."""

    p50_ms: float
    p99_ms: float
    transactions_per_slot: float
    duplicates: int


def report(tool: str, runs: list[tuple[datetime, datetime]], used: Counts, replicas: int) -> Busy:
    slots = Counter(slot for slot, _ in runs)
    duplicates = sum(n - 1 for n in slots.values())
    latency = [(start - slot).total_seconds() * 1e3 for slot, start in runs]
    n = max(len(slots), 1)
    statements = (
        ""
        if used.statements is None
        else f"; {used.statements / n / replicas:5.1f} statements per slot per replica"
    )
    print(
        f"{tool:12} {len(slots):3} slots, {len(runs):3} runs, {duplicates} duplicates;"
        f" latency p50 {percentile(latency, 0.5):6.1f} ms, p99 {percentile(latency, 0.99):6.1f} ms;"
        f" {used.transactions / n / replicas:5.1f} transactions per slot per replica{statements}"
    )
    return Busy(
        p50_ms=percentile(latency, 0.5),
        p99_ms=percentile(latency, 0.99),
        transactions_per_slot=used.transactions / n / replicas,
        duplicates=duplicates,
    )


def report_idle(tool: str, used: Counts, seconds: float, replicas: int) -> str:
    statements = (
        "" if used.statements is None else f", {used.statements * 60 / seconds:6.0f} statements"
    )
    print(
        f"{tool:12} idle: {used.transactions * 60 / seconds:6.0f} transactions{statements}"
        f" per minute for {replicas} replicas while nothing is due (over {seconds:g} s)"
    )
    counted = ""
    if used.statements is not None:
        counted = f", {used.statements * 60 / seconds:.0f} statements"
    return (
        f"{tool} idle: {used.transactions * 60 / seconds:.0f} transactions{counted} per minute"
        f" for {replicas} replicas while nothing is due"
    )


async def tasker_side(
    admin_dsn: str, seconds: float, replicas: int, interval: float, out: _report.Report
) -> Busy:
    name, dsn = await fresh_database(admin_dsn)
    try:
        runs: list[tuple[datetime, datetime]] = []
        schedulers = [tasker_pg.scheduler(dsn) for _ in range(replicas)]
        await schedulers[0].migrate()

        async def job(ctx: tasker.Context) -> None:
            slot = tasker.scheduled_slot()
            assert slot is not None
            runs.append((slot, tasker.SystemClock().now()))

        async def window(results: dict[str, Any]) -> None:
            """Measure ``seconds`` after a warm-up (pools connect, keys register)."""
            await anyio.sleep(3)
            start = await counts(admin_dsn, name)
            sent, since = Counter(QUERIES), len(runs)
            await anyio.sleep(seconds)
            results["used"] = await counts(admin_dsn, name) - start
            results["sent"], results["runs"] = Counter(QUERIES) - sent, runs[since:]

        jobs = [s.with_schedule("bench", Interval(interval), job) for s in schedulers]
        busy: dict[str, Any] = {}
        await tasker.run(tasker.concurrence(*jobs), shutdown_trigger=lambda: window(busy))
        for s in schedulers:
            await s.aclose()
        figures = report("tasker_pg", busy["runs"], busy["used"], replicas)
        slots = len({slot for slot, _ in busy["runs"]})
        print(
            f"{'':12} {busy['sent'].total() / max(slots, 1) / replicas:.2f} statements per due slot"
            " per replica counted in asyncpg (the lock holder's and the others' together)"
        )

        # Idle: a schedule six hours away.
        idle = [tasker_pg.scheduler(dsn) for _ in range(replicas)]

        async def never(ctx: tasker.Context) -> None:
            raise AssertionError("not due")

        far = Interval(timedelta(hours=6), anchor=datetime.now(UTC) + timedelta(hours=3))
        quiet: dict[str, Any] = {}
        idle_jobs = [s.with_schedule("idle", far, never) for s in idle]
        await tasker.run(tasker.concurrence(*idle_jobs), shutdown_trigger=lambda: window(quiet))
        for s in idle:
            await s.aclose()
        out.note(report_idle("tasker_pg", quiet["used"], seconds, replicas))
        print(
            f"{'':12} {quiet['sent'].total()} statements sent while idle (counted in asyncpg):"
            f" {dict(quiet['sent'])}"
        )
    finally:
        await drop_database(admin_dsn, name)
    return figures


def ensure_peer(python: str) -> bool:
    """Create the peer virtualenv if it is missing (never touches tasker's own venv)."""
    if Path(python).exists():
        return True
    venv = Path(python).parent.parent
    print(f"creating the APScheduler virtualenv in {venv} ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            # sniffio and greenlet: APScheduler's SQLAlchemy store imports them without
            # declaring them.
            [python, "-m", "pip", "install", "-q", "--pre", "apscheduler", "asyncpg",
             "sqlalchemy", "anyio<4.14", "sniffio", "greenlet"],
            check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"apscheduler: skipped, cannot create {venv}: {exc}")
        return False
    return True


async def apscheduler_run(
    admin_dsn: str,
    seconds: float,
    replicas: int,
    interval: float,
    python: str,
    out: _report.Report,
    *,
    idle: bool,
) -> Busy | None:
    """One APScheduler run, busy or ``idle``; its figures (None when idle or failed)."""
    name, dsn = await fresh_database(admin_dsn)
    try:
        command = [python, str(HERE / "peers" / "apscheduler_replicas.py"), dsn]
        command += [str(seconds + 4.5), str(replicas), str(interval), *(["idle"] * idle)]
        async with await anyio.open_process(command) as proc:
            assert proc.stdout is not None
            assert proc.stderr is not None
            lines = anyio.streams.text.TextReceiveStream(proc.stdout)
            output = ""
            async for chunk in lines:
                output += chunk
                if "started" in output:
                    break
            await anyio.sleep(3)  # the same warm-up as tasker's
            start, since = await counts(admin_dsn, name), datetime.now(UTC)
            await anyio.sleep(seconds)
            used, until = await counts(admin_dsn, name) - start, datetime.now(UTC)
            async for chunk in lines:
                output += chunk
            errors = b"".join([chunk async for chunk in proc.stderr])
            await proc.wait()
        if proc.returncode != 0 or "started" not in output:
            print(f"apscheduler: failed: {errors.decode()[-2000:]}")
            why = errors.decode().strip().splitlines()[-1:] or ["no output"]
            out.note(f"apscheduler4{' idle' if idle else ''}: failed: {why[0]}")
            return None
        if idle:
            out.note(report_idle("apscheduler4", used, seconds, replicas))
            return None
        runs = [
            (datetime.fromisoformat(a), datetime.fromisoformat(b))
            for a, b in json.loads(output.strip().splitlines()[-1])
        ]
        in_window = [r for r in runs if since <= r[1] <= until]
        figures = report("apscheduler4", in_window, used, replicas)
        slots = Counter(slot for slot, _ in runs)
        print(
            f"{'':12} whole run: {len(runs)} runs, {sum(n - 1 for n in slots.values())} duplicates"
        )
    finally:
        await drop_database(admin_dsn, name)
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--dsn", help="an existing server's admin DSN (default: a private server, see below)"
    )
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--replicas", type=int, default=5)
    parser.add_argument("--peer-python", default="/tmp/peer-venv/bin/python")  # noqa: S108
    parser.add_argument("--no-peer", action="store_true")
    _report.add_json_option(parser)
    args = parser.parse_args()
    out = _report.Report.of(__file__)
    QUERIES.install()
    server = None if args.dsn else PrivatePostgres()
    dsn = args.dsn or server.dsn  # type: ignore[union-attr]
    try:
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute("create extension if not exists pg_stat_statements")
        except asyncpg.PostgresError:
            pass  # not loaded on this server: transactions only
        finally:
            await admin.close()
        print(
            f"{args.replicas} replicas, one schedule every {args.interval:g} s, {args.seconds:g} s"
            f" per measurement after a 3 s warm-up, on {tasker_pg.redact_dsn(dsn)}"
            f"{' (private server, autovacuum off)' if server else ''}"
        )
        ours = await tasker_side(dsn, args.seconds, args.replicas, args.interval, out)
        # The scheduler's slot-to-start latency: no queue's throughput, so no throughput.
        out.latency_ms("postgres", "tasker scheduler", ours.p50_ms, ours.p99_ms)
        out.note(f"tasker_pg: {ours.duplicates} duplicate runs")
        if args.no_peer or not ensure_peer(args.peer_python):
            out.note("apscheduler4: not measured")
            return
        for idle in (False, True):
            theirs = await apscheduler_run(
                dsn, args.seconds, args.replicas, args.interval, args.peer_python, out, idle=idle
            )
            if theirs is None:
                continue
            out.latency_ms("postgres", "apscheduler4", theirs.p50_ms, theirs.p99_ms)
            out.note(f"apscheduler4: {theirs.duplicates} duplicate runs")
            for what, mine, other in (
                ("slot to start p50", ours.p50_ms, theirs.p50_ms),
                ("slot to start p99", ours.p99_ms, theirs.p99_ms),
                (
                    "transactions per slot per replica",
                    ours.transactions_per_slot,
                    theirs.transactions_per_slot,
                ),
            ):
                if mine > 0:
                    out.ratio(f"apscheduler4 / tasker_pg: {what}", other / mine)
                else:  # a slot started before its time (the lead) leaves nothing to divide by
                    out.note(f"apscheduler4 / tasker_pg: {what}: no ratio, tasker_pg's is {mine:g}")
    finally:
        if server is not None:
            server.stop()
        out.write(args.json_path)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
