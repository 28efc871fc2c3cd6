"""The default logging setup of :func:`tasker.main` (and the ``tasker`` command).

A program that configured logging itself keeps its configuration: tasker adds a handler
only when the root logger has none. The level comes from ``log_level=``, else from the
``TASKER_LOG_LEVEL`` environment variable, else INFO.
"""

from __future__ import annotations

import logging
import os

__all__ = ["LOG_FORMAT", "configure_logging", "resolve_log_level"]

#: Timestamp, level and logger name, then the message.
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


def resolve_log_level(level: str | int | None, where: str) -> int | None:
    """``level`` (a name or a number), else ``$TASKER_LOG_LEVEL``, as a logging level.

    Returns None when neither is given. Raises ValueError naming the source of a bad one.
    """
    source = "log_level"
    if level is None:
        raw = os.environ.get("TASKER_LOG_LEVEL", "").strip()
        if not raw:
            return None
        level, source = raw, "the TASKER_LOG_LEVEL environment variable"
    if isinstance(level, bool):
        raise TypeError(f"{where}: {source} must be a level name or number, got {level!r}")
    if isinstance(level, int):
        return level
    if isinstance(level, str) and level.strip().upper() in _LEVELS:
        return logging.getLevelNamesMapping()[level.strip().upper()]
    raise ValueError(
        f"{where}: {source} must be one of {', '.join(_LEVELS)} (any case), got {level!r}"
    )


def configure_logging(level: int | None) -> None:
    """Add the default handler if logging is not configured; apply ``level`` if given.

    With logging configured by the application, only a level asked for (``log_level`` or
    ``$TASKER_LOG_LEVEL``) is applied, to the ``tasker`` loggers alone.
    """
    root = logging.getLogger()
    if root.handlers:
        if level is not None:
            logging.getLogger("tasker").setLevel(level)
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO if level is None else level)
