"""The ``tasker`` command: run jobs, run a queue worker, serve the dashboard, show the
status, migrate.

Built on click (small, stable, and what celery, flask and uvicorn users already know):
help that reads like prose, typed options with their errors, and ``--json`` output that
scripts can parse. Every command that runs something runs it as :func:`tasker.main` would:
signals, the grace, the default logging.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import click

from ._context import DEFAULT_GRACE
from ._job import Job
from ._main import main as run_main
from ._redact import redact_dsn

if TYPE_CHECKING:
    from ._status import StatusReport

__all__ = ["cli", "format_report", "load"]

_BACKENDS = click.Choice(["asyncio", "trio"])


def load(spec: str, what: str, *, module_ok: bool = False) -> Any:
    """The object ``module:attr`` (attr may be dotted) names, importable from the cwd; with
    ``module_ok``, a bare ``module`` names the module."""
    module_name, colon, attr = spec.partition(":")
    if module_ok and not colon:
        attr = ""
    elif not colon or not module_name or not attr:
        raise click.BadParameter(f"expected module:attribute, got {spec!r}", param_hint=what)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}", param_hint=what) from exc
    for part in attr.split(".") if attr else []:
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise click.BadParameter(
                f"{module_name!r} has no attribute {attr!r}", param_hint=what
            ) from None
    return obj


def _common(func: Any) -> Any:
    for option in reversed(
        [
            click.option("--backend", type=_BACKENDS, default="asyncio", show_default=True),
            click.option(
                "--grace",
                type=click.FloatRange(min=0),
                default=DEFAULT_GRACE,
                show_default=True,
                help="Seconds the jobs have to stop after the first SIGTERM or Ctrl-C.",
            ),
            click.option(
                "--log-level",
                type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
                default=None,
                help="Default: $TASKER_LOG_LEVEL, else INFO.",
            ),
            click.option(
                "--health-port",
                type=click.IntRange(0, 65535),
                default=None,
                help="Also serve /livez and /readyz on this port.",
            ),
        ]
    ):
        func = option(func)
    return func


def _with_health(jobs: list[Job], health_port: int | None) -> list[Job]:
    if health_port is None:
        return jobs
    from ._asgi import serve_health

    return [*jobs, serve_health(port=health_port)]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tasker-jobs", prog_name="tasker")
def cli() -> None:
    """Start, compose, schedule and stop the long-lived parts of a service."""


@cli.command()
@click.argument("target")
@_common
def run(
    target: str, backend: str, grace: float, log_level: str | None, health_port: int | None
) -> None:
    """Run the job (or list of jobs) TARGET, given as module:attribute, until a signal.

    Example: tasker run myservice.app:jobs
    """
    obj = load(target, "TARGET")
    jobs = list(obj) if isinstance(obj, list | tuple) else [obj]
    _main(_with_health(jobs, health_port), backend, grace, log_level)


@cli.command()
@click.argument("target")
@click.option(
    "--queue",
    "queues",
    multiple=True,
    default=("default",),
    show_default=True,
    help="A queue to take tasks from (repeat for several).",
)
@click.option("--concurrency", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--lease", type=click.FloatRange(min=0, min_open=True), default=30.0)
@_common
def worker(
    target: str,
    queues: Sequence[str],
    concurrency: int,
    lease: float,
    backend: str,
    grace: float,
    log_level: str | None,
    health_port: int | None,
) -> None:
    """Run a worker for the tasker.queue.Queue TARGET (module:attribute) until a signal.

    On SIGTERM it stops claiming, lets running tasks finish within the grace, and hands the
    rest back to the queue. Example: tasker worker myservice.tasks:queue --queue emails
    """
    from .queue import Queue

    queue = load(target, "TARGET")
    if not isinstance(queue, Queue):
        raise click.BadParameter(
            f"{target!r} is a {type(queue).__name__}, not a tasker.queue.Queue", param_hint="TARGET"
        )
    try:
        job = queue.worker(list(queues), concurrency=concurrency, lease=lease)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    _main(_with_health([job], health_port), backend, grace, log_level)


@cli.command()
@click.argument("target")
@click.option(
    "--scheduler",
    "scheduler_spec",
    default=None,
    help="module:attribute of a tasker.Scheduler whose schedules to show too.",
)
@click.option(
    "--authorize",
    "authorize_spec",
    default=None,
    help="module:attribute of a callable(request) -> bool that allows actions (requeue,"
    " dispatch, cancel) when it returns True. Without it the dashboard is read-only.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), envvar="PORT", default=8000, show_default=True
)
@_common
def dashboard(
    target: str,
    scheduler_spec: str | None,
    authorize_spec: str | None,
    host: str,
    port: int,
    backend: str,
    grace: float,
    log_level: str | None,
    health_port: int | None,
) -> None:
    """Serve the web dashboard of the tasker.queue.Queue TARGET (module:attribute), or of a
    tasker.Scheduler, until a signal.

    Read-only unless --authorize is given. Its forms are signed with $TASKER_DASHBOARD_SECRET
    (give every replica behind one address the same), else with a random key. Needs the
    dashboard extra. Example: tasker dashboard myservice.tasks:queue --scheduler
    myservice.app:scheduler --port 8000
    """
    from ._asgi import serve_asgi
    from .queue import Queue
    from .scheduler import Scheduler

    try:
        from .dashboard import app as dashboard_app
    except ImportError as exc:
        raise click.ClickException(str(exc)) from None
    shown = load(target, "TARGET")
    if not isinstance(shown, Queue | Scheduler):
        raise click.BadParameter(
            f"{target!r} is a {type(shown).__name__}, not a tasker.queue.Queue or a"
            " tasker.Scheduler",
            param_hint="TARGET",
        )
    scheduler = shown if isinstance(shown, Scheduler) else None
    if scheduler_spec is not None:
        scheduler = load(scheduler_spec, "--scheduler")
        if not isinstance(scheduler, Scheduler):
            raise click.BadParameter(
                f"{scheduler_spec!r} is a {type(scheduler).__name__}, not a tasker.Scheduler",
                param_hint="--scheduler",
            )
    authorize = None if authorize_spec is None else load(authorize_spec, "--authorize")
    try:
        asgi = dashboard_app(
            queue=shown if isinstance(shown, Queue) else None,
            scheduler=scheduler,
            authorize=authorize,
            secret=os.environ.get("TASKER_DASHBOARD_SECRET") or None,
        )
        job = serve_asgi(asgi, host=host, port=port)
    except (TypeError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    _main(_with_health([job], health_port), backend, grace, log_level)


def _main(jobs: list[Job], backend: str, grace: float, log_level: str | None) -> None:
    try:
        run_main(*jobs, backend=backend, grace=grace, log_level=log_level)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None


@cli.command()
@click.option("--dsn", envvar="TASKER_PG_DSN", help="A postgresql:// DSN (or $TASKER_PG_DSN).")
@click.option("--schema", default="tasker", show_default=True)
def migrate(dsn: str | None, schema: str) -> None:
    """Create or update tasker_pg's tables (schedules, lock keys, queue); idempotent.

    The embedded default (SQLite in the state directory) creates its tables itself.
    """
    if not dsn:
        click.echo("the embedded default creates its tables itself: nothing to migrate")
        return
    import tasker_pg

    try:
        anyio.run(functools.partial(tasker_pg.migrate, dsn, schema=schema))
    except Exception as exc:
        raise click.ClickException(redact_dsn(f"{type(exc).__name__}: {exc}")) from None
    click.echo(f"migrated schema {schema} on {redact_dsn(dsn)}")


@cli.command()
@click.option(
    "--app",
    "apps",
    multiple=True,
    help="module:attr of a Scheduler or Queue, or a module to search for them (repeatable).",
)
@click.option("--dsn", envvar="TASKER_PG_DSN", help="Postgres instead of the embedded default.")
@click.option("--schema", default="tasker", show_default=True, help="The Postgres schema.")
@click.option(
    "--redis",
    "redis_url",
    envvar="TASKER_REDIS_URL",
    help="A redis:// URL: Redis instead of the embedded default (or $TASKER_REDIS_URL).",
)
@click.option(
    "--nats",
    "nats_url",
    envvar="TASKER_NATS_URL",
    help="A nats:// URL: NATS JetStream instead of the embedded default (or $TASKER_NATS_URL).",
)
@click.option(
    "--nats-creds",
    "nats_credentials",
    envvar="TASKER_NATS_CREDS",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A NATS .creds file (or $TASKER_NATS_CREDS).",
)
@click.option(
    "--amqp",
    "amqp_url",
    envvar="TASKER_AMQP_URL",
    help="An amqp:// URL: RabbitMQ's queues (or $TASKER_AMQP_URL).",
)
@click.option(
    "--amqp-queue",
    "amqp_queues",
    multiple=True,
    help="A queue to show, by its name on the broker (repeatable; with --amqp).",
)
@click.option(
    "--amqp-management",
    envvar="TASKER_AMQP_MANAGEMENT_URL",
    help="The management API, http://user:password@host:15672: unacked counts, and every"
    " queue of the virtual host (with --amqp).",
)
@click.option(
    "--namespace", default="tasker", show_default=True, help="The Redis or NATS namespace."
)
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(
    apps: Sequence[str],
    dsn: str | None,
    schema: str,
    redis_url: str | None,
    nats_url: str | None,
    nats_credentials: Path | None,
    amqp_url: str | None,
    amqp_queues: tuple[str, ...],
    amqp_management: str | None,
    namespace: str,
    state_dir: Path | None,
    as_json: bool,
) -> None:
    """Schedules (with their next slot, also those never run), queues, leases.

    With --app, every schedule the application registers is shown, and the queue of each
    Queue it names; without, what the embedded default (or --dsn's Postgres, --redis's
    Redis, --nats's NATS) has stored, or --amqp's RabbitMQ queues: ready messages and
    consumers of each --amqp-queue, unacknowledged ones too with --amqp-management.
    """
    from ._status import Source, collect

    if sum(1 for given in (dsn, redis_url, nats_url, amqp_url) if given) > 1:
        raise click.UsageError("give one of --dsn, --redis, --nats and --amqp")
    if (amqp_queues or amqp_management) and not amqp_url:
        raise click.UsageError("--amqp-queue and --amqp-management need --amqp")
    if amqp_url and not amqp_queues and not amqp_management:
        raise click.UsageError(
            "--amqp needs the queues to show (--amqp-queue NAME, repeatable) or the management"
            " API (--amqp-management URL): AMQP cannot list a virtual host's queues"
        )
    if nats_credentials is not None and not nats_url:
        raise click.UsageError("--nats-creds needs --nats")
    loaded = [load(spec, "--app", module_ok=True) for spec in apps]
    source = Source(
        dsn=dsn,
        schema=schema,
        redis_url=redis_url,
        nats_url=nats_url,
        nats_credentials=nats_credentials,
        amqp_url=amqp_url,
        amqp_queues=tuple(amqp_queues),
        amqp_management=amqp_management,
        namespace=namespace,
        state_dir=state_dir,
    )
    try:
        report = anyio.run(collect, loaded, source)
    except Exception as exc:
        raise click.ClickException(redact_dsn(f"{type(exc).__name__}: {exc}")) from None
    if as_json:
        click.echo(json.dumps(asdict(report), indent=2, default=str))
        return
    click.echo(format_report(report))


def format_report(report: StatusReport) -> str:
    """The human-readable tables of a status report."""
    broker = _broker_lines(report)
    if broker and not (report.schedules or report.queues or report.workers):
        return "\n".join(broker)  # --amqp: the broker's queues only
    now = datetime.now(UTC)
    lines = [f"{'schedule':30} {'next slot':34} {'last run':34} {'runs':>5} {'fails':>5}  lock"]
    lines.extend(
        f"{row['name'][:30]:30} {_when(row['next_slot'], now):34}"
        f" {_when(row['last_started'], now):34} {row['runs']:5} {row['failures']:5}"
        f"  {row['lock_holder'] or '-'}"
        for row in report.schedules
    )
    if not report.schedules:
        lines.append("(no schedules)")
    lines += ["", f"{'queue':20} {'state':10} {'tasks':>7}"]
    for queue in sorted(report.queues):
        for state, count in sorted(report.queues[queue].items()):
            lines.append(f"{queue[:20]:20} {state:10} {count:7}")
    if not report.queues:
        lines.append("(no tasks)")
    for queue, age in sorted(report.oldest_waiting.items()):
        lines.append(f"oldest waiting in {queue}: {age:.1f}s")
    lines += ["", f"{'worker':36} {'queues':20} {'busy':>9} {'seen':>8} {'leases':>6}  ends in"]
    for row in report.workers:
        busy = "-" if row["running"] is None else f"{row['running']}/{row['concurrency']}"
        seen = "-" if row["last_seen_ago"] is None else f"{row['last_seen_ago']:.0f}s ago"
        ends = "-" if row["lease_ends_in"] is None else f"{row['lease_ends_in']:.1f}s"
        queues = ",".join(row["queues"] or []) or "-"
        lines.append(
            f"{row['worker'][:36]:36} {queues[:20]:20} {busy:>9} {seen:>8} {row['tasks']:6}  {ends}"
        )
    if not report.workers:
        lines.append("(no worker running)")
    if report.progress:
        lines += ["", f"{'running task':36} {'name':20} {'progress':>8}  text"]
        lines.extend(
            f"{row['id'][:36]:36} {row['name'][:20]:20} {row['value']:8.0%}  {row['text']}"
            for row in sorted(report.progress, key=lambda row: (row["queue"], row["id"]))
        )
    if broker:
        lines += ["", *broker]
    return "\n".join(lines)


def _broker_lines(report: StatusReport) -> list[str]:
    if not report.broker:
        return []
    lines = [f"{'broker queue':40} {'ready':>8} {'unacked':>8} {'consumers':>9}"]
    for row in report.broker:
        unacked = "-" if row["unacked"] is None else str(row["unacked"])
        lines.append(f"{row['name'][:40]:40} {row['ready']:8} {unacked:>8} {row['consumers']:9}")
    if any(row["unacked"] is None for row in report.broker):
        lines.append("(unacked: only the management API knows; give --amqp-management)")
    return lines


def _when(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    delta = (moment - now).total_seconds()
    when = f"in {delta:.0f}s" if delta >= 0 else f"{-delta:.0f}s ago"
    return f"{moment:%Y-%m-%d %H:%M:%S} ({when})"
