"""A griffe extension that reads tasker's docstrings the way their authors wrote them.

The library's docstrings are Google style with a few Sphinx habits, which mkdocstrings would
otherwise show verbatim or drop:

- ``#:`` comments above an attribute or an enum member are its documentation (Sphinx's
  convention; griffe only reads a string below the assignment). They become its docstring.
- ``:class:`Worker```, ``:func:`tasker.run```, ``:attr:`~tasker.Context.deadline``` and the
  other roles become code, linked to the reference entry when the name resolves (an optional
  cross-reference: a name that is not rendered anywhere stays plain code, never a warning).
- An entry that documents several names at once (``max_attempts, timeout: ...`` in ``Args:``
  or ``Attributes:``) is split into one entry per name with the same text.
- A paragraph ending in ``::`` (a reStructuredText literal block) ends in ``:``; the indented
  block after it is already a Markdown code block.

Loaded by ``mkdocs.yml`` (``extensions:`` of the python handler); nothing in the library
imports it.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|exc|obj|const):`(~?)([^`]+)`")
_MULTI = re.compile(r"^(?P<indent>\s+)(?P<names>\w+(?:, \w+)+): (?P<text>.*)$")
_SECTIONS_WITH_NAMES = ("Args:", "Arguments:", "Attributes:", "Parameters:")


class TaskerDocstrings(griffe.Extension):
    """Rewrites each docstring of the loaded packages once, before mkdocstrings parses it."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Walk the whole package once every module is loaded (names resolve then)."""
        self._walk(pkg, seen=set())

    def _walk(self, obj: griffe.Object, *, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.is_attribute and obj.docstring is None:
            _docstring_from_comment(obj)
        if obj.docstring is not None:
            obj.docstring.value = _rewrite(obj, obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias and isinstance(member, griffe.Object):
                self._walk(member, seen=seen)


def _docstring_from_comment(attr: griffe.Object) -> None:
    """Make the ``#:`` comment lines right above ``attr`` its docstring."""
    if attr.lineno is None or attr.parent is None:
        return
    try:
        lines = attr.lines_collection[attr.filepath]  # type: ignore[index]
    except (KeyError, TypeError):
        return
    comment: list[str] = []
    index = attr.lineno - 2  # lineno is 1-based; the line above the assignment
    while index >= 0 and lines[index].strip().startswith("#:"):
        comment.insert(0, lines[index].strip()[2:].strip())
        index -= 1
    if comment:
        attr.docstring = griffe.Docstring(
            "\n".join(comment), lineno=index + 2, parent=attr, parser="google"
        )


def _rewrite(obj: griffe.Object, text: str) -> str:
    lines = _split_multi_names(text.splitlines())
    rewritten = "\n".join(lines)
    rewritten = re.sub(r"(?<=\S)::\n\n", ":\n\n", rewritten)
    return _ROLE.sub(lambda match: _reference(obj, match[1] == "~", match[2]), rewritten)


def _split_multi_names(lines: list[str]) -> list[str]:
    out: list[str] = []
    in_names = False
    for line in lines:
        stripped = line.strip()
        if stripped in _SECTIONS_WITH_NAMES:
            in_names = True
        elif stripped and not line[:1].isspace():
            in_names = False
        match = _MULTI.match(line) if in_names else None
        if match is None:
            out.append(line)
            continue
        out.extend(
            f"{match['indent']}{name}: {match['text']}" for name in match["names"].split(", ")
        )
    return out


def _reference(obj: griffe.Object, short: bool, target: str) -> str:
    target = target.strip().removesuffix("()")
    shown = target.rsplit(".", 1)[-1] if short else target
    code = f"<code>{html.escape(shown)}</code>"
    path = _resolve(obj, target)
    if path is None:
        return code
    return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'


def _resolve(obj: griffe.Object, target: str) -> str | None:
    """The path of ``target`` as seen from ``obj``, or None if it names nothing known."""
    if target.split(".", 1)[0] in ("tasker", "tasker_pg"):
        return target
    first, _, rest = target.partition(".")
    scope = obj if obj.is_module or obj.is_class else obj.parent
    try:
        path = scope.resolve(first) if scope is not None else None
    except griffe.NameResolutionError:
        return None
    if path is None:
        return None
    return f"{path}.{rest}" if rest else path
