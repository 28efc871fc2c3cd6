"""Redaction: the secrets of DSNs and broker URLs, hidden wherever the text goes.

Design notes:

- One conservative scanner rather than a parser per driver. The text to clean is seldom a
  well-formed DSN: it is an exception message or a log line that quotes one, perhaps
  malformed, perhaps repr()'d. Where a boundary is ambiguous, more is hidden, never less.
  A strict parser (``urllib.parse``) gives up on exactly the malformed input that needs
  hiding most, and ends a URL's userinfo at the first ``/``, ``?`` or ``#``: the old
  ``tasker_pg.redact_dsn`` leaked the tail of a password holding one.
- A URL runs from ``scheme://`` to the next whitespace. Its userinfo ends at the *last*
  ``@`` of that run (libpq and asyncpg split at the first, leaving the rest of a password
  with a raw ``@`` in sight); everything after the userinfo's first ``:`` is the password.
  A raw space in a password (``u:pass word@h``) stretches it to the last ``@`` of the line.
  NATS takes a bare ``token@``, so its schemes hide a userinfo without ``:`` too.
- Linear time on any input, because the filter sees every log line: regular expressions
  are anchored on literals (``://``, a key's suffix, ``?``/``&``), never on ``\\w*``.
- Key/value secrets (libpq's ``password = 'a \\' b'``, a URL's ``?sslpassword=``, ``PGPASSWORD=``)
  are found by key name: any key ending in ``password``, ``passwd``, ``pwd``, ``secret`` or
  ``token``. A value is quoted (libpq's backslash escapes) or runs to the next unescaped
  whitespace; in a URL query it runs to the next ``&name=``. A quote or a space that only
  looks escaped because the text was repr()'d (``\\\\'``) does not end the value.
- The filter exists because a driver's exception can quote a DSN, and that exception is
  logged far from the code that knows the DSN. It is installed on tasker's own loggers here;
  a backend package installs it on its own (``tasker_pg`` does).
"""

from __future__ import annotations

import bisect
import logging
import re
import string
from urllib.parse import unquote

__all__ = ["RedactingFilter", "redact_dsn"]

_MASK = "***"
#: A key is a secret's when its name ends with one of these (``sslpassword``, ``PGPASSWORD``).
_SECRET_SUFFIXES = ("password", "passwd", "pwd", "secret", "token")
# Whitespace, or whitespace as repr() writes it (a message quoting "password\t= x" with %r).
_GAP = r"(?:\s|\\[tnrvf]|\\x(?:0b|0c|1[c-f]|85|a0)|\\u(?:1680|200[0-9a]|202[89f]|205f|3000))*"
# Anchored on the suffix, not on the key's start: "\w*password" would backtrack over every
# run of word characters (quadratic on a long base64 blob ending in "=").
_KEY_VALUE = re.compile(rf"(?:{'|'.join(_SECRET_SUFFIXES)}){_GAP}={_GAP}", re.IGNORECASE)
_QUERY_KEY = re.compile(r"[?&]([^?&=\s]*)=")
_NEXT_QUERY_KEY = re.compile(r"&[^&=\s]+=")
_PORT = re.compile(r"\d*(?:[,/?#]|$)")
_WHITESPACE = re.compile(r"\s")
_SCHEME_CHARS = frozenset(string.ascii_letters + string.digits + "+.-")
# After a closing quote, what ends a value in a message ("got 'password=x'.").
_CLOSERS = frozenset("'\"`),;]}>.:")
# Pairs nested in the value of the pair before them handled one by one; past that, the rest is
# hidden (each costs a scan to the end of its value).
_NESTED_PAIRS = 8
# Schemes whose userinfo may be a bare secret (a NATS token: nats://token@host).
_TOKEN_SCHEMES = frozenset({"nats", "tls", "ws", "wss"})


def redact_dsn(text: str) -> str:
    """``text`` with every password or token of a DSN or broker URL in it replaced by ``***``.

    Meant for anything shown to people: reprs, exception messages, log lines, command-line
    output. ``text`` may be a DSN or a longer message that quotes one or several; the rest of
    it is kept as it is. Covered:

    - URL userinfo, any scheme (``postgresql://user:***@h1,h2/db``, ``redis://:***@host``,
      ``amqp://user:***@host/vhost``, ``rediss://``), also when the password holds a raw
      ``@``, ``:``, ``/``, ``?`` or ``#``; a bare ``nats://***@host`` token;
    - URL query parameters (``?password=``, ``&sslpassword=``, percent-encoded names too);
    - libpq key/value form (``host=db password = ***``), single-quoted values with escaped
      quotes and backslashes, and ``PGPASSWORD=``-style assignments.

    A secret is any key whose name ends in ``password``, ``passwd``, ``pwd``, ``secret`` or
    ``token``. When the text is ambiguous (malformed, cut off, repr()'d) more is hidden
    rather than less: an unterminated quoted value is hidden to the end of the text.

    Args:
        text: a DSN, URL or message; anything else is converted with ``str()``.

    Returns:
        The redacted text. Never raises: if ``text`` cannot even be read, ``"***"``.
    """
    try:
        text = str(text)
        if "@" not in text and "=" not in text:  # the fast path of almost every log line
            return text
        secrets: list[tuple[int, int]] = []
        urls = _url_secrets(text, secrets)
        _key_value_secrets(text, urls, secrets)
        return _mask(text, secrets)
    except Exception:  # a bug here must not turn a log line into a leak or a crash
        return _MASK


def _url_secrets(text: str, secrets: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Add the userinfo and query secrets of every URL in ``text``; return the URLs' spans."""
    spans: list[tuple[int, int]] = []
    lines = _Lines(text)
    position = 0
    while (separator := text.find("://", position)) >= 0:
        begin = separator  # the scheme's start; "://" with no scheme still counts as a URL
        while begin > position and text[begin - 1] in _SCHEME_CHARS:
            begin -= 1
        while begin < separator and text[begin] not in string.ascii_letters:
            begin += 1
        scheme, start = text[begin:separator].lower(), separator + 3
        found = _WHITESPACE.search(text, start)
        end = found.start() if found else len(text)
        at = text.rfind("@", start, end)
        if at < 0:
            at, end = _raw_space_userinfo(text, start, end, lines)
        if at >= 0:
            colon = text.find(":", start, at)
            if colon >= 0:
                secrets.append((colon + 1, at))
            elif scheme in _TOKEN_SCHEMES:
                secrets.append((start, at))
        for query in _QUERY_KEY.finditer(text, start, end):
            if unquote(query.group(1)).lower().endswith(_SECRET_SUFFIXES):
                following = _NEXT_QUERY_KEY.search(text, query.end(), end)
                secrets.append((query.end(), following.start() if following else end))
        spans.append((begin, end))
        position = end  # a "scheme://" inside this URL (a DSN in a query value) is part of it
    return spans


class _Lines:
    """The ``@`` and line ends of a text, indexed on first use (a lookup is a bisection)."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._ats: list[int] | None = None
        self._ends: list[int] = []

    def last_at(self, start: int) -> int:
        """The last ``@`` from ``start`` to the end of its line, or -1."""
        if self._ats is None:
            self._ats = [m.start() for m in re.finditer("@", self._text)]
            self._ends = [m.start() for m in re.finditer("\n", self._text)]
        index = bisect.bisect_left(self._ends, start)
        line_end = self._ends[index] if index < len(self._ends) else len(self._text)
        index = bisect.bisect_left(self._ats, line_end) - 1
        return self._ats[index] if index >= 0 and self._ats[index] >= start else -1


def _raw_space_userinfo(text: str, start: int, end: int, lines: _Lines) -> tuple[int, int]:
    """The ``@`` ending a userinfo whose password holds a raw space, and the URL's new end.

    ``scheme://user:pass word@host`` has no ``@`` before the first space. If what follows
    the first ``:`` is not a port and an ``@`` comes later on the line, the password is taken
    to run to the last such ``@``. Returns ``(-1, end)`` otherwise.
    """
    colon = text.find(":", start, end)
    if colon < 0 or _PORT.match(text, colon + 1, end):
        return -1, end
    at = lines.last_at(end)
    if at < 0:
        return -1, end
    found = _WHITESPACE.search(text, at)
    return at, found.start() if found else len(text)


def _key_value_secrets(
    text: str, urls: list[tuple[int, int]], secrets: list[tuple[int, int]]
) -> None:
    """Add the values of ``name = value`` pairs whose name is a secret's.

    A pair in a URL's query (after ``?`` or ``&``) was handled with the URL. A pair inside
    the value of the one before is handled too, since a heuristic end of that value (a
    repr()'d quote) may fall inside its own value; past a few such pairs the rest of the
    text is hidden instead, which keeps the time linear.
    """
    starts = [start for start, _ in urls]
    position = nested = 0
    for match in _KEY_VALUE.finditer(text):
        name = match.start()
        while name > 0 and (text[name - 1].isalnum() or text[name - 1] in "_%.-"):
            name -= 1
        index = bisect.bisect_right(starts, name) - 1
        if index >= 0 and name < urls[index][1] and text[name - 1 : name] in ("?", "&"):
            continue
        if name < position:
            nested += 1
            if nested > _NESTED_PAIRS:
                secrets.append((name, len(text)))
                return
        value = match.end()
        if value < len(text) and text[value] in "'\"":
            close = _closing_quote(text, value)
            secrets.append((value + 1, close))
            end = close + 1
        elif text.startswith("\\'", value):
            # The repr of password='...' in a '-quoted repr, or libpq's escaped quote opening
            # an unquoted value: hide whichever runs further.
            end = max(_after_repr_quote(text, value + 2), _unquoted_end(text, value))
            secrets.append((value, end))
        else:
            end = _unquoted_end(text, value)
            secrets.append((value, end))
        position = max(position, end)


def _closing_quote(text: str, opening: int) -> int:
    """The index of the quote closing the value opened at ``opening`` (``len(text)`` if none).

    Backslash escapes the next character, as libpq reads it. A candidate quote preceded by
    an escaped backslash, or directly followed by more text, is ambiguous (the text may be
    a repr of a DSN, where ``\\'`` reads as ``\\\\'``): it closes the value only if no
    later quote of the same kind could.
    """
    quote, index, length = text[opening], opening + 1, len(text)
    while index < length:
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == quote:
            after = text[index + 1] if index + 1 < length else " "
            ambiguous = text[index - 1] == "\\" or not (after.isspace() or after in _CLOSERS)
            if not (ambiguous and text.find(quote, index + 1) >= 0):
                return index
        index += 1
    return length


def _after_repr_quote(text: str, start: int) -> int:
    """Just after the ``\\'`` closing a repr()'d quoted value (-1 if there is none).

    In a repr quoted with ``'``, a quote is written ``\\'`` and a backslash ``\\\\``; libpq's
    escaped quote ``\\'`` therefore reads ``\\\\\\'``. Decode the repr's escapes, then find the
    first quote that libpq's own backslash does not escape and that text does not follow.
    """
    index, length, escaped = start, len(text), False
    while index < length:
        if text[index] == "\\" and index + 1 < length:
            char = text[index + 1]  # a repr escape: \\ is a backslash, \' a quote
            index += 2
        else:
            char = text[index]  # a bare ' here is the end of the repr itself
            index += 1
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True  # libpq's escape character
        elif char == "'" and (
            index >= length
            or text[index].isspace()
            or text[index] in _CLOSERS
            or text[index] == "\\"
        ):
            return index  # a quote followed by more of the value is not its end
    return -1


def _unquoted_end(text: str, start: int) -> int:
    """Where an unquoted value ends: the next whitespace not escaped by a backslash.

    A space after an escaped backslash (``a\\\\ b``, a repr of libpq's ``a\\ b``) does not end
    it: the value runs on to the next whitespace.
    """
    index, length = start, len(text)
    while index < length:
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char.isspace() and not (index > start and text[index - 1] == "\\"):
            return index
        index += 1
    return length


def _mask(text: str, secrets: list[tuple[int, int]]) -> str:
    """``text`` with each span of ``secrets`` (merged where they overlap) replaced by ``***``."""
    pieces: list[str] = []
    position = 0  # the end of the last mask
    for start, end in sorted(secrets):
        if text.startswith(_MASK, start) and _CLOSERS.issuperset(text[start + 3 : end]):
            # Already redacted: keep the quote that ends the value, so that redacting a
            # message twice (its maker, then the log filter) changes nothing.
            end = start + 3
        if end <= start:
            continue
        if pieces and start <= position:  # overlaps the last mask: one mask for both
            position = max(position, end)
            continue
        pieces += [text[position:start], _MASK]
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


class RedactingFilter(logging.Filter):
    """A :class:`logging.Filter` that passes each record's text through :func:`redact_dsn`.

    It redacts the formatted message, the traceback of ``exc_info`` and ``stack_info``, and
    never drops a record. tasker installs one on its loggers (``tasker``,
    ``tasker.scheduler``, ``tasker.queue``); backend packages install one on theirs, and you
    may add one to a handler to cover every logger it serves. A record whose text holds no
    ``@`` and no ``=`` costs one formatting of its message.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place; always True (keep the record)."""
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it, with the raw args
            message = None
        if message is not None:
            redacted = redact_dsn(message)
            if redacted != message:
                record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            trace = logging.Formatter().formatException(record.exc_info)
            redacted = redact_dsn(trace)
            if redacted != trace:
                record.exc_text = redacted  # Formatter.format uses exc_text when it is set
        if record.stack_info:
            record.stack_info = redact_dsn(record.stack_info)
        return True


# A logger's filters do not see records propagated from its children: each logger tasker
# logs on gets the filter.
_FILTER = RedactingFilter()
for _name in ("tasker", "tasker.scheduler", "tasker.queue"):
    logging.getLogger(_name).addFilter(_FILTER)
del _name
