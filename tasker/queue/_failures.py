"""A failure as a queue stores it: ``"Type: message"`` and a traceback, always storable."""

from __future__ import annotations

import traceback

from .._redact import redact_dsn

__all__ = ["ERROR_LIMIT", "TRACEBACK_LIMIT", "format_error", "storable"]

#: Characters of a failure's ``"Type: message"`` and of its traceback that are stored.
ERROR_LIMIT = 2000
TRACEBACK_LIMIT = 20000


def storable(text: str, limit: int, *, tail: bool = False) -> str:
    """``text`` in a form every backend stores, capped at ``limit`` characters.

    Lossless where it can be: a lone surrogate (not UTF-8) becomes its ``\\udXXX`` escape
    and a NUL (refused by Postgres ``text``) becomes ``\\x00``; everything else is kept.
    ``tail`` keeps the end (a traceback's last frames) instead of the start.
    """
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > limit:
        text = text[-limit:] if tail else text[:limit]
    return text


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception as failure:  # an exception whose __str__ raises is still reported
        return f"<str() of the exception failed: {type(failure).__name__}>"


def format_error(exc: BaseException) -> tuple[str, str]:
    """``"Type: message"`` and the formatted traceback of ``exc``, both storable.

    Never raises: an exception whose ``__str__`` fails, or whose text holds lone surrogates,
    NUL bytes or megabytes, still gives a readable, storable pair. A DSN's or URL's password
    quoted in either is replaced by ``***`` (:func:`tasker.redact_dsn`): what a queue stores
    is shown in status output and dashboards.
    """
    # Capped before escaping too: a 10 MB message must not be copied and escaped whole.
    # Redacted before the final cut: a cut-off URL no longer shows where its password ends.
    text = f"{type(exc).__name__}: {_message(exc)[: ERROR_LIMIT * 2]}"
    text = storable(redact_dsn(text), ERROR_LIMIT)
    try:
        trace = "".join(traceback.format_exception(exc))
    except Exception as failure:
        trace = f"<the traceback could not be formatted: {type(failure).__name__}>"
    if len(trace) > TRACEBACK_LIMIT * 2:
        trace = trace[-TRACEBACK_LIMIT * 2 :]
    return text, storable(redact_dsn(trace), TRACEBACK_LIMIT, tail=True)
