"""The public surface: every export is listed, documented and shown under its public path."""

from __future__ import annotations

import importlib
import inspect

import pytest

PUBLIC_MODULES = ["tasker", "tasker.testing", "tasker.schedule"]
OPTIONAL_MODULES = ["tasker.abc", "tasker.queue", "tasker_pg"]


def _modules() -> list[str]:
    names = list(PUBLIC_MODULES)
    for name in OPTIONAL_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        names.append(name)
    return names


@pytest.mark.parametrize("module_name", _modules())
def test_all_is_sorted_and_complete(module_name: str) -> None:
    """__all__ has no duplicates and names every public (non-underscore) attribute."""
    module = importlib.import_module(module_name)
    exported = list(module.__all__)
    assert len(exported) == len(set(exported)), "duplicates in __all__"  # ruff RUF022 sorts it
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
