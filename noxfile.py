"""Developer sessions: ``nox -s lint typecheck tests coverage examples docs bench``.

``tests`` runs on every Python that pyproject's classifiers claim. nox skips an interpreter
it cannot find (and says so) unless ``--error-on-missing-interpreters`` is given, which is the
default when ``CI`` is set: there a claimed version that is missing fails the run. With
pyenv, whose shims answer only for the active versions, make them all active first:
``PYENV_VERSION=3.11:3.12:3.13 nox -s tests``.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

#: The oldest supported Python: the one the single-interpreter sessions use.
PYTHON = ["3.11"]
#: Every Python the classifiers in pyproject.toml claim.
SUPPORTED = ["3.11", "3.12", "3.13"]


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the packages, tests, examples and benchmarks."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session(python=SUPPORTED)
def tests(session: nox.Session) -> None:
    """The whole test suite, asyncio and trio (Postgres tests find or start a server)."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PYTHON)
def coverage(session: nox.Session) -> None:
    """The whole suite under branch coverage; fails below the floor in pyproject.toml.

    Settings (branch, sources, ``fail_under``) live in ``[tool.coverage.*]``.
    """
    session.install("-e", ".[dev]")
    session.run("coverage", "erase")
    session.run("coverage", "run", "-m", "pytest", *session.posargs)
    session.run("coverage", "report")


@nox.session(python=PYTHON)
def examples(session: nox.Session) -> None:
    """Only the tests that run every example as a real process."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", "-k", "example", *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The documentation site, as CI builds it: ``mkdocs build --strict`` (a warning is an
    error), into the session's temporary directory, so no ``site/`` is left in the tree.

    ``nox -s docs -- serve`` runs ``mkdocs serve`` instead, rebuilding on every save.
    """
    session.install("-e", ".[docs]", "ruff")  # mkdocstrings formats signatures with ruff
    session.env["NO_MKDOCS_2_WARNING"] = "1"  # mkdocs-material's banner, not a finding
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", *session.posargs[1:])
        return
    site = Path(session.create_tmp()) / "site"
    session.run("mkdocs", "build", "--strict", "--site-dir", str(site), *session.posargs)


#: Each benchmark's peers, installed into a virtualenv of its own (``.nox/peers/<name>``)
#: that the script runs them from with ``--peer-python``: the packages its docstring names.
#: Peers never go into tasker's environment.
BENCH_PEERS: dict[str, tuple[str, ...]] = {
    "bench_pg_queue": ("pgqueuer", "procrastinate", "asyncpg", "psycopg[binary,pool]"),
    # APScheduler 4.0.0a6's asyncpg event broker fails on anyio >= 4.14; its SQLAlchemy store
    # imports sniffio and greenlet without declaring them (the script's docstring says more).
    "bench_pg_scheduler": (
        "--pre", "apscheduler", "asyncpg", "sqlalchemy", "anyio<4.14", "sniffio", "greenlet",
    ),
    # taskiq-redis 1.1 and later need redis-py 8; arq needs redis-py below 6.
    "bench_redis_queue": (
        "arq", "saq", "taskiq<0.13", "taskiq-redis<1.1", "streaq", "dramatiq[redis]", "redis",
        "coredis",
    ),
    "bench_nats_queue": ("taskiq-nats",),
    "bench_amqp_queue": (
        "celery", "dramatiq[rabbitmq]", "taskiq", "taskiq-aio-pika", "aio-pika",
    ),
    "bench_sqlite_huey": ("huey",),
}  # fmt: skip
#: ``nox -s bench -- quick``: small sizes, for a pass in minutes that still measures everything.
BENCH_QUICK: dict[str, tuple[str, ...]] = {
    "bench_core": ("--repeat", "3", "--shutdown-runs", "5"),
    "bench_scheduler": ("--seconds", "5", "--idle-seconds", "3"),
    "bench_queue": ("--tasks", "2000", "--samples", "50", "--rounds", "1"),
    "bench_backlog": ("--sizes", "5000,50000"),  # the drain is 5,000 tasks: no smaller backlog
    "bench_pg_queue": ("--tasks", "2000", "--samples", "50"),
    "bench_pg_scheduler": ("--seconds", "6"),
    "bench_redis_queue": ("--tasks", "2000", "--samples", "50", "--idle", "1"),
    "bench_nats_queue": ("--tasks", "2000", "--samples", "50", "--idle", "1"),
    "bench_amqp_queue": ("--tasks", "2000", "--samples", "50"),
    "bench_sqlite_huey": ("--tasks", "2000", "--samples", "50", "--rounds", "1"),
}
#: Where a full ``bench`` run leaves the report that docs/guide/benchmarks.md shows.
BENCH_MARKDOWN = Path("docs/guide/benchmarks-report.md")
BENCH_PNG = Path("docs/images/benchmarks.png")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Every benchmark in benchmarks/, its peers from their own virtualenvs, then one report.

    Each ``benchmarks/bench_*.py`` prints its tables as usual and writes its figures with
    ``--json``; ``benchmarks/report.py`` turns them into one Markdown table of every ratio
    (``docs/guide/benchmarks-report.md``) and one throughput plot
    (``docs/images/benchmarks.png``). The peers' virtualenvs are made once, under
    ``.nox/peers/``, and remade only when their package list changes. A benchmark that fails
    is reported as failed; the others still run, and the session fails at the end.

    ``nox -s bench -- quick`` runs every benchmark with small sizes; ``--only redis,core``
    runs those whose name contains one of the words (its report goes to the session's
    temporary directory, not the docs); any other argument goes to every benchmark run,
    e.g. ``nox -s bench -- --only redis --rounds 3``.
    """
    quick, only, extra = False, [], []
    args = list(session.posargs)
    while args:
        arg = args.pop(0)
        if arg == "quick":
            quick = True
        elif arg == "--only" and args:
            only += args.pop(0).split(",")
        elif arg.startswith("--only="):
            only += arg.removeprefix("--only=").split(",")
        else:
            extra.append(arg)
    scripts = sorted(Path("benchmarks").glob("bench_*.py"))
    if only:
        scripts = [s for s in scripts if any(word and word in s.stem for word in only)]
        if not scripts:
            session.error(f"--only {','.join(only)}: no benchmark's name contains these")
    session.install("-e", ".[dev]", "matplotlib")
    # Every peer virtualenv first: installing while a benchmark runs would slow it down.
    peers = Path(".nox") / "peers"
    pythons = {
        script.stem: _peer_python(session, peers / script.stem.removeprefix("bench_"), packages)
        for script in scripts
        if (packages := BENCH_PEERS.get(script.stem))
    }
    # A partial run has a directory of its own: it leaves the last full run's results alone.
    results = Path(session.create_tmp()) / ("bench-only" if only else "bench")
    for stale in results.glob("*.json"):
        stale.unlink()
    statuses: dict[str, str] = {}
    for script in scripts:
        command = ["python", str(script), "--json", str(results / f"{script.stem}.json")]
        if script.stem in pythons:
            command += ["--peer-python", str(pythons[script.stem])]
        if quick:
            command += BENCH_QUICK.get(script.stem, ())
        try:
            session.run(*command, *extra)
        except nox.command.CommandFailed as exc:
            statuses[script.stem] = f"failed: exit {exc.return_code}"
            session.warn(f"{script.stem} failed; going on with the others")
        else:
            statuses[script.stem] = "ok"
    markdown, png = BENCH_MARKDOWN, BENCH_PNG
    if only:
        markdown, png = results / "benchmarks-report.md", results / "benchmarks.png"
    title = (
        f"Generated by `nox -s bench{' -- quick' if quick else ''}` on"
        f" {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, {os.cpu_count()} CPUs"
        + (f", with {' '.join(extra)}" if extra else "")
        + "."
    )
    session.run(
        "python", "benchmarks/report.py", str(results), "--markdown", str(markdown),
        "--png", str(png), "--title", title,
        *(f"--status={stem}={status}" for stem, status in statuses.items()),
    )  # fmt: skip
    session.log(f"report: {markdown}, plot: {png}")
    if failed := [stem for stem, status in statuses.items() if status != "ok"]:
        session.error(f"failed: {', '.join(failed)} (the report says so)")


def _peer_python(session: nox.Session, venv: Path, packages: tuple[str, ...]) -> Path:
    """The interpreter of the peer virtualenv ``venv``, made with ``packages`` unless it
    already has exactly those (a stamp file records what was installed)."""
    python, stamp = venv / "bin" / "python", venv / "tasker-bench-packages.txt"
    wanted = "\n".join(packages) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python.absolute()
    session.log(f"creating the peer virtualenv {venv}")
    session.run("python", "-m", "venv", "--clear", str(venv))
    session.run(str(python), "-m", "pip", "install", "-q", *packages, external=True)
    stamp.write_text(wanted)
    return python.absolute()
