"""redact_dsn and RedactingFilter: no password of a DSN or broker URL survives, in any form.

Every generated password holds ``MARKER``, a character that no non-secret part of the texts
holds, so "the password is absent" cannot pass or fail by coincidence ("a" is in "host"), and
"the marker is absent" also catches a password that leaked only in part.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tasker
import tasker_pg
from tasker import (
    Context,
    MemoryLockerFactory,
    MemoryStateRepository,
    RedactingFilter,
    Scheduler,
    redact_dsn,
)
from tasker.schedule import Daily
from tasker.testing import FakeClock
from tasker_pg import (
    PostgresLockerFactory,
    PostgresQueueBackend,
    PostgresStateRepository,
)
from tasker_pg._connection import PoolSource

from .helpers import ROOT
from .test_scheduler import drive

MARKER = "§"
LOGGERS = ("tasker", "tasker.scheduler", "tasker.queue", "tasker_pg")

#: A DSN, the same DSN as redact_dsn must show it, and its password.
Form = tuple[str, str, str]

_SPECIAL = st.sampled_from(list(" \t'\"\\@:/?#&=%+,;[]()*$!~é€😀\u00a0\u3000"))
_ANY = st.characters(exclude_categories=["Cs"])


def _passwords(chars: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[str]:
    side = st.text(st.one_of(_SPECIAL, _ANY) if chars is None else chars, max_size=10)
    return st.builds(lambda left, right: f"{left}{MARKER}{right}", side, side)


def _libpq_quoted(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _libpq_escaped(value: str) -> str:
    return "".join(f"\\{c}" if c.isspace() or c in "\\'\"" else c for c in value)


_SCHEMES = st.sampled_from(["postgresql", "postgres", "redis", "rediss", "amqp", "amqps", "nats"])
_USERS = st.sampled_from(["", "app", "app%40corp", "u_1"])
_HOSTS = st.sampled_from(["db.internal:5432", "h1:5432,h2:5433", "[::1]:5432", "localhost"])
_TAILS = st.sampled_from(["", "/db", "/db?sslmode=require", "/vhost", "/0?ssl_cert_reqs=none"])
_SPACES = st.sampled_from(["", " ", "  ", "\t"])


@st.composite
def url_userinfo(draw: st.DrawFn) -> Form:
    """``scheme://user:password@host/path``, the password percent-encoded or raw (no spaces)."""
    scheme, user, host, tail = draw(_SCHEMES), draw(_USERS), draw(_HOSTS), draw(_TAILS)
    if draw(st.booleans()):
        password = draw(_passwords())
        secret = quote(password, safe="")
    else:  # raw @ : / ? # and the rest: asyncpg misreads them, redaction must not
        password = draw(_passwords(st.one_of(_SPECIAL, _ANY).filter(lambda c: not c.isspace())))
        secret = password
    return (
        f"{scheme}://{user}:{secret}@{host}{tail}",
        f"{scheme}://{user}:***@{host}{tail}",
        password,
    )


@st.composite
def nats_token(draw: st.DrawFn) -> Form:
    """``nats://token@host``: the whole userinfo is the secret."""
    password = draw(_passwords())
    return f"nats://{quote(password, safe='')}@host:4222", "nats://***@host:4222", password


@st.composite
def url_query(draw: st.DrawFn) -> Form:
    """A ``password``/``sslpassword`` query parameter (percent-encoded name or value)."""
    password = draw(_passwords())
    key = draw(st.sampled_from(["password", "sslpassword", "PASSWORD", "pass%77ord"]))
    before, after = draw(st.sampled_from([("?", "&sslmode=require"), ("?sslmode=require&", "")]))
    base = f"postgresql://app@db:5432/test{before}{key}="
    return (
        f"{base}{quote(password, safe='')}{after}",
        f"{base}***{after}",
        password,
    )


@st.composite
def key_value_quoted(draw: st.DrawFn) -> Form:
    """libpq's ``password = 'a \\' b\\\\ c'``: spaces around ``=``, escaped quotes, backslashes."""
    password = draw(_passwords())
    key = draw(st.sampled_from(["password", "sslpassword"]))
    left, right = draw(_SPACES), draw(_SPACES)
    head = f"host=db port=5432 {key}{left}={right}"
    return f"{head}{_libpq_quoted(password)} dbname=test", f"{head}'***' dbname=test", password


@st.composite
def key_value_unquoted(draw: st.DrawFn) -> Form:
    """libpq's unquoted ``password=a\\ b``, the value's spaces and quotes escaped."""
    password = draw(_passwords())
    head = f"host=db dbname=test password{draw(_SPACES)}={draw(_SPACES)}"
    return f"{head}{_libpq_escaped(password)}", f"{head}***", password


FORMS = st.one_of(
    url_userinfo(), nats_token(), url_query(), key_value_quoted(), key_value_unquoted()
)


def assert_hidden(password: str, text: str) -> None:
    """Neither the password, nor its encoded form, nor any piece holding the marker shows."""
    assert password not in text
    assert MARKER not in text, text
    assert quote(MARKER) not in text, text


@given(FORMS)
def test_every_form_is_redacted_and_the_rest_kept(form: Form) -> None:
    """Each DSN form loses exactly its password: the rest reads as before."""
    dsn, expected, password = form
    redacted = redact_dsn(dsn)
    assert_hidden(password, redacted)
    assert redacted == expected


@given(st.lists(FORMS, min_size=1, max_size=3), st.sampled_from(["plain", "repr", "lines"]))
def test_dsns_quoted_in_a_message_are_redacted(forms: list[Form], style: str) -> None:
    """A message quoting one or more DSNs (as they are, repr()'d, on lines) shows no password."""
    if style == "plain":
        message = " and ".join(f"cannot connect to {dsn}: refused" for dsn, _, _ in forms)
    elif style == "repr":
        message = ", ".join(f"invalid DSN {dsn!r}." for dsn, _, _ in forms)
    else:
        message = "\n".join(f"{dsn}\n  retrying" for dsn, _, _ in forms)
    redacted = redact_dsn(message)
    for _, _, password in forms:
        assert_hidden(password, redacted)


@given(st.text())
def test_never_raises(text: str) -> None:
    """Any text gives a string; text with no ``@`` and no ``=`` is returned unchanged."""
    redacted = redact_dsn(text)
    assert isinstance(redacted, str)
    if "@" not in text and "=" not in text:
        assert redacted == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host=db password = S3cr3t", "host=db password = ***"),
        ("host=db password='S3 cr3t' user=u", "host=db password='***' user=u"),
        (r"password='a \' b\\ c' host=x", "password='***' host=x"),
        ("PGPASSWORD=S3cr3t psql", "PGPASSWORD=*** psql"),
        ("postgresql://u:p@ss/w:rd@h1,h2/db", "postgresql://u:***@h1,h2/db"),
        ("postgresql://u:pass word@h/db failed", "postgresql://u:***@h/db failed"),
        ("password='unterminated and the rest", "password='***"),
        # Not secrets: kept as they are.
        ('password authentication failed for user "app"', None),
        ("postgresql://app@db:5432/test?sslmode=require", None),
        ("connect to postgresql://db:5432/test failed, mail ops@example.com", None),
    ],
)
def test_named_cases(text: str, expected: str | None) -> None:
    """The forms of issue 10, one by one, and texts that must not change."""
    assert redact_dsn(text) == (text if expected is None else expected)


def test_tasker_pg_keeps_its_alias() -> None:
    """``tasker_pg.redact_dsn`` is tasker's function, not a second implementation."""
    assert tasker_pg.redact_dsn is tasker.redact_dsn
    assert tasker.redact_dsn.__module__ == "tasker"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def captured_logs() -> Iterator[list[logging.LogRecord]]:
    """Every record of tasker's and tasker_pg's loggers at DEBUG (hypothesis-safe caplog)."""
    handler = _Records()
    saved = []
    for name in ("tasker", "tasker_pg"):
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        for logger, level in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)


def _shown(record: logging.LogRecord) -> str:
    """What a handler would write for ``record``, traceback included."""
    return logging.Formatter("%(message)s").format(record)


_BUILDERS: list[Callable[[str], Any]] = [
    PoolSource,
    PostgresQueueBackend,
    PostgresStateRepository,
    PostgresLockerFactory,
    tasker_pg.scheduler,
    lambda dsn: Scheduler(
        locker_factory=PostgresLockerFactory(dsn), repository=PostgresStateRepository(dsn)
    ),
]


@given(FORMS)
def test_tasker_pg_objects_never_show_the_password(form: Form) -> None:
    """Reprs of objects built from the DSN, the errors their constructors raise (a DSN
    asyncpg cannot read is rejected) and the log records meanwhile show no password."""
    dsn, _, password = form
    shown: list[str] = []
    with captured_logs() as records:
        for build in _BUILDERS:
            try:
                built = build(dsn)
            except (ValueError, TypeError) as exc:
                shown += [str(exc), repr(exc)]
            else:
                shown.append(repr(built))
    shown += [_shown(record) for record in records]
    for text in shown:
        assert_hidden(password, text)


@given(FORMS)
def test_log_records_are_redacted(form: Form) -> None:
    """A driver error quoting the DSN, logged on any tasker logger with its traceback, and
    the DSN logged as an argument, come out redacted."""
    dsn, _, password = form
    with captured_logs() as records:
        for name in LOGGERS:
            logger = logging.getLogger(name)
            try:
                raise ConnectionError(f"cannot connect to {dsn}")
            except ConnectionError as exc:
                logger.warning("failed (%s)", exc, exc_info=True)
            logger.debug("connecting to %r", dsn)
    assert len(records) == 2 * len(LOGGERS)
    for record in records:
        assert_hidden(password, _shown(record))


def test_filter_keeps_clean_records_untouched() -> None:
    """A record with nothing to redact keeps its message template and arguments."""
    record = logging.LogRecord("tasker", logging.INFO, __file__, 1, "ran %s", ("job",), None)
    assert RedactingFilter().filter(record)
    assert (record.msg, record.args) == ("ran %s", ("job",))


@pytest.mark.anyio
async def test_scheduler_records_a_redacted_last_error(caplog: pytest.LogCaptureFixture) -> None:
    """A job failing with a message that quotes a DSN leaves a redacted ``last_error`` and a
    redacted traceback in the log."""
    clock = FakeClock(datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC))
    repository = MemoryStateRepository()

    async def failing(ctx: Context) -> None:
        raise ConnectionError(f"cannot connect to postgresql://app:hunter{MARKER}2@db/prod")

    scheduler = Scheduler(locker_factory=MemoryLockerFactory(), repository=repository)
    with caplog.at_level(logging.DEBUG, logger="tasker"):
        await drive(
            scheduler.with_schedule("failing", Daily(1), failing, retry_delay=3600),
            clock,
            datetime(2026, 1, 1, 1, 5, tzinfo=UTC),
        )
    state = await repository.get("failing")
    assert state is not None
    assert state.last_error == "ConnectionError: cannot connect to postgresql://app:***@db/prod"
    assert "ConnectionError" in caplog.text
    assert MARKER not in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("via", ["--dsn", "TASKER_PG_DSN"])
@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://app:S3cr{MARKER}3t@127.0.0.1:1/test",  # refused: the driver's error
        f"host=127.0.0.1 port=1 password = 'S3 cr{MARKER}3t'",  # the key/value form: rejected
        f"postgresql://app:S3/cr{MARKER}3t@127.0.0.1:1/test",  # a raw / asyncpg would misread
    ],
)
def test_cli_error_never_shows_the_password(dsn: str, via: str) -> None:
    """``python -m tasker_pg status`` against a closed port or with an unreadable DSN prints
    an error, exits 1, and shows no part of the password."""
    env = {**os.environ, "TASKER_PG_DSN": dsn} if via == "TASKER_PG_DSN" else dict(os.environ)
    args = ["--dsn", dsn] if via == "--dsn" else []
    proc = subprocess.run(
        [sys.executable, "-m", "tasker_pg", "status", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: ")
    for piece in ("S3", MARKER, "3t"):
        assert piece not in proc.stdout + proc.stderr, proc.stderr
