"""hypothesis: random trees of sequence/concurrence checked against a reference model."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasker import Context, Job, concurrence, run, sequence

pytestmark = pytest.mark.anyio

# A tree is a leaf kind ("ok", "fail", "wait") or ("seq" | "con", [children]).
Tree = Any

leaves = st.sampled_from(["ok", "fail", "wait"])
trees = st.recursive(
    leaves,
    lambda children: st.tuples(st.sampled_from(["seq", "con"]), st.lists(children, max_size=4)),
    max_leaves=12,
)


class LeafError(Exception):
    """Raised by a failing leaf; carries the leaf's id."""

    def __init__(self, leaf: int) -> None:
        super().__init__(leaf)
        self.leaf = leaf


@dataclass
class Built:
    job: Job
    events: list[tuple[str, int]] = field(default_factory=list)
    kinds: dict[int, str] = field(default_factory=dict)


def build(tree: Tree) -> Built:
    built = Built(job=None)  # type: ignore[arg-type]

    def make(node: Tree) -> tuple[Job, Any]:
        if isinstance(node, str):
            leaf = len(built.kinds)
            built.kinds[leaf] = node

            async def job(ctx: Context) -> None:
                built.events.append(("start", leaf))
                if node == "fail":
                    raise LeafError(leaf)
                if node == "wait":
                    await ctx.wait()
                built.events.append(("end", leaf))

            return job, leaf
        kind, children = node
        made = [make(child) for child in children]
        combinator = sequence if kind == "seq" else concurrence
        return combinator(*(job for job, _ in made)), (kind, [shape for _, shape in made])

    built.job, shape = make(tree)
    built.shape = shape  # type: ignore[attr-defined]
    return built


def leaf_ids(shape: Any) -> list[int]:
    if isinstance(shape, int):
        return [shape]
    _, children = shape
    return [leaf for child in children for leaf in leaf_ids(child)]


def expected_without_failures(shape: Any, kinds: dict[int, str]) -> tuple[set[int], bool]:
    """The leaves that start when nothing fails and the root shuts down at quiescence."""
    if isinstance(shape, int):
        return {shape}, kinds[shape] == "wait"
    kind, children = shape
    started: set[int] = set()
    if kind == "seq":
        for child in children:
            child_started, blocks = expected_without_failures(child, kinds)
            started |= child_started
            if blocks:  # the shutdown comes while it waits: later steps never start
                return started, True
        return started, False
    blocks = False
    for child in children:
        child_started, child_blocks = expected_without_failures(child, kinds)
        started |= child_started
        blocks |= child_blocks
    return started, blocks


def flatten(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in flatten(sub)]
    return [exc]


def check_sequences(shape: Any, started: set[int], ended: set[int], failed: set[int]) -> None:
    """In a sequence, a step starts only after every earlier step succeeded."""
    if isinstance(shape, int):
        return
    kind, children = shape
    for child in children:
        check_sequences(child, started, ended, failed)
    if kind != "seq":
        return
    for k, child in enumerate(children):
        if started & set(leaf_ids(child)):
            for earlier in children[:k]:
                ids = set(leaf_ids(earlier))
                assert not ids & failed, "a step started after an earlier step failed"
                assert (ids & started) <= ended, "a step started before the previous one ended"


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(tree=trees)
async def test_trees_match_the_reference_model(tree: Tree) -> None:
    """What ran, in which order, and what was raised match the model, for any tree."""
    built = build(tree)
    tasks_before = len(anyio.get_running_tasks())
    raised: BaseException | None = None

    async def quiescent() -> None:
        # Shut down once nothing has happened for two rounds of "all tasks blocked" plus a
        # short sleep: asyncio's check can report "blocked" for a task whose wake-up is
        # already scheduled, so a single round would race with the tree.
        stable = 0
        while stable < 2:
            seen = len(built.events)
            await anyio.wait_all_tasks_blocked()
            await anyio.sleep(0.005)
            stable = stable + 1 if len(built.events) == seen else 0

    with anyio.fail_after(10):
        try:
            await run(built.job, shutdown_trigger=quiescent, grace=5)
        except Exception as exc:
            raised = exc
    assert len(anyio.get_running_tasks()) == tasks_before

    started = {leaf for event, leaf in built.events if event == "start"}
    ended = {leaf for event, leaf in built.events if event == "end"}
    failed = {leaf for leaf in started if built.kinds[leaf] == "fail"}
    # Every started leaf that does not fail ends (waiters included: they were stopped).
    assert started - failed == ended
    # Each leaf starts at most once.
    assert all(n == 1 for n in Counter(e for e in built.events if e[0] == "start").values())

    if not failed:
        assert raised is None
        assert started == expected_without_failures(built.shape, built.kinds)[0]  # type: ignore[attr-defined]
    else:
        assert raised is not None
        leaves_raised = flatten(raised)
        assert all(isinstance(e, LeafError) for e in leaves_raised)
        assert Counter(e.leaf for e in leaves_raised) == Counter(failed)  # type: ignore[attr-defined]
        if len(failed) == 1:
            assert isinstance(raised, LeafError), "a single failure propagates bare"
    check_sequences(built.shape, started, ended, failed)  # type: ignore[attr-defined]
