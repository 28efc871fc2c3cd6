"""Quicker ``__init__`` and ``replace`` for the frozen, slotted records of the hot path.

A frozen dataclass's generated ``__init__`` sets each field through
``object.__setattr__`` (a global lookup, an attribute and a call per field), and
``dataclasses.replace`` introspects the fields on every call. A task's claim, outcome and
history row each build a record, on every backend, so both are generated here once per
class instead: one straight line per field, each a call of the slot's own setter.

The generated ``__init__`` has the dataclass's own signature (keyword-only fields, the same
defaults), so construction, equality, ``repr`` and type checking are unchanged. Only classes without
``__post_init__``, ``default_factory`` or ``InitVar`` fields are accepted: those need the
dataclass's own ``__init__``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["quick_init", "quick_replace"]

_T = TypeVar("_T")


def _setters(cls: type) -> tuple[list[dataclasses.Field[Any]], dict[str, Any]]:
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a frozen, slotted dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has __post_init__: it needs the dataclass __init__")
    fields = list(dataclasses.fields(cls))
    names: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    for item in fields:
        if item.default_factory is not dataclasses.MISSING or not item.init:
            raise TypeError(f"{cls.__name__}.{item.name} needs the dataclass __init__")
        if not item.kw_only:
            raise TypeError(f"{cls.__name__}.{item.name} is not keyword-only")
        if not item.name.isidentifier():  # pragma: no cover - a dataclass field always is
            raise TypeError(f"{cls.__name__}.{item.name} is not an identifier")
        names[f"_set_{item.name}"] = cls.__dict__[item.name].__set__
        if item.default is not dataclasses.MISSING:
            names[f"_default_{item.name}"] = item.default
    return fields, names


def quick_init(cls: type[_T]) -> type[_T]:
    """Give the frozen, slotted, keyword-only dataclass ``cls`` a generated ``__init__``
    that sets each slot directly (a class decorator, applied above ``@dataclass``)."""
    fields, names = _setters(cls)
    parameters = ", ".join(
        item.name if item.default is dataclasses.MISSING else f"{item.name}=_default_{item.name}"
        for item in fields
    )
    body = "\n".join(f"    _set_{item.name}(self, {item.name})" for item in fields) or "    pass"
    source = f"def __init__(self, *, {parameters}):\n{body}\n"
    exec(source, names)  # noqa: S102  (built from the dataclass's own field names)
    init = names["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    setattr(cls, "__init__", init)  # noqa: B010  (a class attribute, not a method call)
    return cls


def quick_replace(cls: type[_T]) -> Callable[..., _T]:
    """``dataclasses.replace`` for instances of ``cls`` (see :func:`quick_init`): a copy
    with the given fields changed; an unknown field is a :class:`TypeError`."""
    fields, names = _setters(cls)
    names["_unset"] = object()
    parameters = ", ".join(f"{item.name}=_unset" for item in fields)
    body = "\n".join(
        f"    _set_{item.name}(new, old.{item.name} if {item.name} is _unset else {item.name})"
        for item in fields
    )
    source = (
        f"def replace(old, /, *, {parameters}):\n    new = _new(_cls)\n{body}\n    return new\n"
    )
    exec(source, names)  # noqa: S102  (built from the dataclass's own field names)
    function: Callable[..., _T] = names["replace"]
    function.__qualname__ = f"replace_{cls.__name__}"
    return function
