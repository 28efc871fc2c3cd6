"""tasker_pg's public surface: a sorted ``__all__``, public module paths, docstrings."""

from __future__ import annotations

import inspect

import tasker
import tasker_pg


def test_all_is_sorted_documented_and_public() -> None:
    """Every export is listed once in order, shows ``tasker_pg`` as its module (or is a
    re-export of tasker's, shown under ``tasker``), and has a docstring."""
    assert list(tasker_pg.__all__) == sorted(set(tasker_pg.__all__))
    public = {
        name
        for name, obj in vars(tasker_pg).items()
        if not name.startswith("_") and not inspect.ismodule(obj) and name != "annotations"
    }
    assert public == set(tasker_pg.__all__)
    for name in tasker_pg.__all__:
        obj = getattr(tasker_pg, name)
        assert obj.__module__ == "tasker_pg" or getattr(tasker, name, None) is obj, name
        assert inspect.getdoc(obj), name


def test_reprs_never_show_the_password() -> None:
    """The scheduler, its lock factory and its repository show a redacted DSN."""
    scheduler = tasker_pg.scheduler("postgresql://app:hunter2@db.internal:5432/prod")
    text = repr(scheduler) + repr(scheduler.locker_factory) + repr(scheduler.repository)
    assert "hunter2" not in text
    assert "app:***@db.internal" in text
