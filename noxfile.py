"""Developer sessions: ``nox -s lint typecheck tests coverage examples docs bench``.

``tests`` runs on every Python that pyproject's classifiers claim. nox skips an interpreter
it cannot find (and says so) unless ``--error-on-missing-interpreters`` is given, which is the
default when ``CI`` is set: there a claimed version that is missing fails the run. With
pyenv, whose shims answer only for the active versions, make them all active first:
``PYENV_VERSION=3.11:3.12:3.13 nox -s tests``.
"""

from __future__ import annotations

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


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Every benchmark in benchmarks/, each printing ratios against its in-run baseline."""
    session.install("-e", ".[dev]")
    for script in sorted(__import__("pathlib").Path("benchmarks").glob("bench_*.py")):
        session.run("python", str(script), *session.posargs)
