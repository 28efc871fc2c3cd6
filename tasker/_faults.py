"""Which backend errors are permanent: one classification for every backend.

An outage (a refused connection, a server restarting, a timeout) passes: the Scheduler and
the workers retry it. A permanent fault (missing tables, a refused password, an unknown
database, a missing permission, an unwritable state directory) does not, so retrying it
would only hide it: they stop the program instead, with the fix in the message.

The core recognises the faults of the standard library (permissions on files, SQLite's
read-only or unopenable database, a server's TLS certificate that does not verify). A
backend recognises its driver's own by registering a classifier with
:func:`register_fault_classifier` (``tasker_pg`` does, for asyncpg; ``tasker_redis`` for
coredis).
"""

from __future__ import annotations

import errno
import sqlite3
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ._errors import BackendConfigurationError

__all__ = ["PermanentFault", "permanent_fault", "raise_if_permanent", "register_fault_classifier"]


@dataclass(frozen=True, slots=True)
class PermanentFault:
    """A backend error that retrying cannot fix: what is wrong, and what to do about it."""

    problem: str
    fix: str


#: A function that recognises its driver's permanent errors (None for any other error).
FaultClassifier = Callable[[BaseException], PermanentFault | None]

_CLASSIFIERS: list[FaultClassifier] = []

_PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def register_fault_classifier(classifier: FaultClassifier) -> FaultClassifier:
    """Add ``classifier`` to those :func:`permanent_fault` asks (once; usable as a decorator).

    A classifier must be fast and must not raise: it only looks at the exception.
    """
    if not callable(classifier):
        raise TypeError(f"register_fault_classifier(): {classifier!r} is not callable")
    if classifier not in _CLASSIFIERS:
        _CLASSIFIERS.append(classifier)
    return classifier


def permanent_fault(exc: BaseException) -> PermanentFault | None:
    """The permanent fault ``exc`` reports, or None if it may pass (an outage, a bug).

    Looks at ``exc``, the members of an exception group and the chain of causes.
    """
    for error in _related(exc):
        if isinstance(error, BackendConfigurationError):
            return PermanentFault(error.problem, error.fix)
        for classifier in _CLASSIFIERS:
            fault = classifier(error)
            if fault is not None:
                return fault
        fault = _builtin(error)
        if fault is not None:
            return fault
    return None


def raise_if_permanent(exc: BaseException, component: str) -> None:
    """Raise :class:`tasker.BackendConfigurationError` (chained to ``exc``) for ``component``
    if ``exc`` is a permanent fault (see :func:`permanent_fault`); return for an outage."""
    fault = permanent_fault(exc)
    if fault is not None:
        raise BackendConfigurationError(component, fault.problem, fault.fix) from exc


def _related(exc: BaseException, depth: int = 0) -> Iterator[BaseException]:
    if depth > 8:
        return
    yield exc
    if isinstance(exc, BaseExceptionGroup):
        for member in exc.exceptions:
            yield from _related(member, depth + 1)
    if exc.__cause__ is not None:
        yield from _related(exc.__cause__, depth + 1)


def _builtin(error: BaseException) -> PermanentFault | None:
    if isinstance(error, ssl.SSLCertVerificationError):
        return PermanentFault(
            f"the server's TLS certificate was not accepted ({error.verify_message or error})",
            "give the client the CA that signed it (tasker_redis: ssl_context="
            "ssl.create_default_context(cafile=...); Postgres: sslrootcert= in the DSN), or"
            " give the server a certificate for the host name the URL uses",
        )
    if isinstance(error, ssl.SSLError):
        return None  # other TLS errors: a handshake cut short is an outage like any other
    if isinstance(error, OSError) and error.errno in _PERMISSION_ERRNOS:
        where = f" on {error.filename}" if error.filename else ""
        return PermanentFault(
            f"{error.strerror or 'permission denied'}{where}",
            "give the process write access there, or point the state directory elsewhere"
            " (state_dir=, or the TASKER_STATE_DIR environment variable)",
        )
    if isinstance(error, sqlite3.OperationalError):
        text = str(error)
        if "readonly database" in text or "unable to open database file" in text:
            return PermanentFault(
                f"SQLite cannot write its database ({text})",
                "give the process write access to the state directory and its files, or"
                " point it elsewhere (state_dir=, or the TASKER_STATE_DIR environment variable)",
            )
    return None
