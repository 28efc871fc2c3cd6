"""The public surface: every export is listed, documented and shown under its public path."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

PUBLIC_MODULES = ["tasker", "tasker.testing", "tasker.schedule"]
OPTIONAL_MODULES = [
    "tasker.abc",
    "tasker.backends",
    "tasker.dashboard",
    "tasker.metrics",
    "tasker.queue",
    "tasker.tracing",
    "tasker_pg",
]


def _modules() -> list[str]:
    names = list(PUBLIC_MODULES)
    for name in OPTIONAL_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        names.append(name)
    return names


def isort_key(name: str) -> tuple[int, list[tuple[int, int | str]]]:
    """ruff RUF022's "isort-style" order: CONSTANTS, then Classes, then the rest, each naturally.

    Natural means runs of digits compare as numbers (``v2`` before ``v10``); letters compare
    case-sensitively, as in ruff.
    """
    if len(name) > 1 and name.upper() == name and name.lower() != name:
        kind = 0
    elif name[:1].isupper():
        kind = 1
    else:
        kind = 2
    parts = [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name)]
    return kind, [part for part in parts if part != (1, "")]


def test_isort_key_orders_like_ruff() -> None:
    """The key reproduces RUF022's order on names of every kind, so the test below can fail."""
    names = ["v10", "DEFAULT_GRACE", "sequence", "SQLiteStateRepository", "v2", "Context", "X2"]
    assert sorted(names, key=isort_key) == [
        "DEFAULT_GRACE",
        "X2",
        "Context",
        "SQLiteStateRepository",
        "sequence",
        "v2",
        "v10",
    ]


@pytest.mark.parametrize("module_name", _modules())
def test_all_is_sorted_and_complete(module_name: str) -> None:
    """__all__ is in RUF022 order, has no duplicates, and names every public attribute."""
    module = importlib.import_module(module_name)
    exported = list(module.__all__)
    assert len(exported) == len(set(exported)), "duplicates in __all__"
    assert exported == sorted(exported, key=isort_key), "__all__ is not in isort-style order"
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__.startswith(module_name.split(".")[0])
    }
    assert public <= set(exported), f"public but not in __all__: {public - set(exported)}"


@pytest.mark.parametrize("module_name", _modules())
def test_every_export_is_documented_under_its_public_path(module_name: str) -> None:
    """Each exported class and function has a docstring and reports the public module."""
    module = importlib.import_module(module_name)
    for name in module.__all__:
        value = getattr(module, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{module_name}.{name} has no docstring"
            # Its own public path, or the public module it is re-exported from.
            shown = value.__module__
            assert not any(part.startswith("_") for part in shown.split(".")), shown
            assert shown == module_name or name in importlib.import_module(shown).__all__
