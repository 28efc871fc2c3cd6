"""The generated ``__init__`` and ``replace`` of the hot path's records (``tasker.queue._quick``)
behave as the dataclass's own: same fields, defaults, errors, equality and frozenness."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasker.backends import replace_record
from tasker.queue import HistoryEntry, NewTask, Outcome, OutcomeKind, TaskRecord, TaskState
from tasker.queue._quick import quick_init, quick_replace

QUICK = (TaskRecord, Outcome, HistoryEntry, NewTask)


def twin(cls: type) -> type:
    """The same fields in a plain frozen dataclass: what ``cls`` was before quick_init."""
    fields = [
        (f.name, f.type, dataclasses.field(default=f.default))
        if f.default is not dataclasses.MISSING
        else (f.name, f.type)
        for f in dataclasses.fields(cls)
    ]
    return dataclasses.make_dataclass(
        f"Plain{cls.__name__}", fields, frozen=True, slots=True, kw_only=True
    )


def values(record: Any) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}


optional_text = st.none() | st.text(max_size=5)
optional_float = st.none() | st.floats(allow_nan=False)
records = st.builds(
    TaskRecord,
    id=st.text(max_size=5),
    name=st.text(max_size=5),
    queue=st.text(max_size=5),
    payload=st.binary(max_size=5),
    priority=st.integers(),
    run_at=st.floats(allow_nan=False),
    state=st.sampled_from(TaskState),
    attempts=st.integers(0, 5),
    max_attempts=st.integers(1, 5),
    timeout=optional_float,
    unique_key=optional_text,
    created_at=st.floats(allow_nan=False),
    lease_owner=optional_text,
    lease_until=optional_float,
    last_error=optional_text,
    cancel_requested=st.booleans(),
)
changes = st.fixed_dictionaries(
    {},
    optional={
        "state": st.sampled_from(TaskState),
        "attempts": st.integers(0, 9),
        "lease_owner": optional_text,
        "lease_until": optional_float,
        "result": st.none() | st.binary(max_size=5),
        "finished_at": optional_float,
        "cancel_requested": st.booleans(),
        "id": st.text(max_size=5),
    },
)


@given(records)
def test_a_record_is_what_the_dataclass_init_builds(record: TaskRecord) -> None:
    plain = twin(TaskRecord)(**values(record))
    assert values(plain) == values(record)
    assert repr(plain).removeprefix("Plain") == repr(record)
    assert TaskRecord(**values(record)) == record


@given(records, changes)
def test_replace_record_is_dataclasses_replace(record: TaskRecord, change: dict[str, Any]) -> None:
    new = replace_record(record, **change)
    assert new == dataclasses.replace(record, **change)
    assert type(new) is TaskRecord
    assert values(record) == values(dataclasses.replace(record))  # the original is untouched


@pytest.mark.parametrize("cls", QUICK)
def test_the_signature_and_defaults_are_the_dataclass_ones(cls: type) -> None:
    import inspect

    ours = inspect.signature(cls)
    theirs = inspect.signature(twin(cls))
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == [
        (p.name, p.kind, p.default) for p in theirs.parameters.values()
    ]


def test_errors_are_the_dataclass_ones() -> None:
    with pytest.raises(TypeError, match="missing 4 required keyword-only arguments"):
        Outcome(id="a")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="positional"):
        Outcome("a", "w", OutcomeKind.SUCCEEDED, 1.0, 2.0)  # type: ignore[call-arg]
    outcome = Outcome(id="a", worker="w", kind=OutcomeKind.SUCCEEDED, started_at=1, finished_at=2)
    assert outcome.follow_ups == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        outcome.id = "b"  # type: ignore[misc]
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        replace_record(
            TaskRecord(
                id="a",
                name="n",
                queue="q",
                payload=b"null",
                priority=0,
                run_at=0.0,
                state=TaskState.QUEUED,
                attempts=0,
                max_attempts=1,
                timeout=None,
                unique_key=None,
                created_at=0.0,
            ),
            nope=1,
        )


def test_classes_that_need_the_dataclass_init_are_refused() -> None:
    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class WithPostInit:
        x: int

        def __post_init__(self) -> None:
            pass

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class WithFactory:
        x: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class NotSlotted:
        x: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Positional:
        x: int

    for cls, why in [
        (WithPostInit, "__post_init__"),
        (WithFactory, "needs the dataclass __init__"),
        (NotSlotted, "not a frozen, slotted dataclass"),
        (Positional, "not keyword-only"),
    ]:
        with pytest.raises(TypeError, match=why):
            quick_init(cls)
        with pytest.raises(TypeError, match=why):
            quick_replace(cls)
