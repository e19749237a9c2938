"""Narrowing collection to a retry plan, on the controller and on xdist workers.

:class:`NarrowingPlugin` is registered only for a retry. It reads the typed
plan from ``config.stash`` and leaves what it finds (missing tests, whether
collection was refused) in the same :class:`RetryState` for the recorder.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import pytest

from pytest_rerun_runs.planner import PlanMatcher, RetryPlan, planned_children
from pytest_rerun_runs.text import summarize
from pytest_rerun_runs.worker import MISSING_KEY

PLUGIN_NAME = "rerun-runs-narrowing"


class RetryState:
    """A retry as it goes: the plan and what collection found."""

    __slots__ = ("aborted", "missing", "plan")

    def __init__(self, plan: RetryPlan) -> None:
        self.plan = plan
        #: Planned tests that no longer exist.
        self.missing: list[str] = []
        #: Collection was refused (nothing planned exists): nothing is recorded.
        self.aborted = False


retry_state_key = pytest.StashKey[RetryState]()


def retry_finds_anything(state: RetryState, nodeids: list[str]) -> bool:
    """Whether any of ``nodeids`` belongs to the plan."""
    rank = PlanMatcher(state.plan.tests, state.plan.collectors).rank
    return any(rank(nodeid) is not None for nodeid in nodeids)


def nothing_planned_exists(state: RetryState) -> str:
    return (
        f"none of the {len(state.plan.tests)} planned tests exist any more"
        f" (not found: {summarize(state.missing)})"
    )


def user_gave_paths(config: pytest.Config) -> bool:
    """Whether the collection arguments came from the command line (or addopts)."""
    return bool(config.args_source == pytest.Config.ArgsSource.ARGS)


def collection_roots(paths: list[Path]) -> list[Path]:
    """The directories to give pytest for ``paths``: each existing path's directory
    (a directory itself for a directory), without those inside another."""
    directories = sorted({p if p.is_dir() else p.parent for p in paths if p.exists()})
    roots: list[Path] = []
    for directory in directories:
        if not any(root == directory or root in directory.parents for root in roots):
            roots.append(directory)
    return roots


class NarrowingPlugin:
    """Keeps what the plan selects, in the plan's order, and deselects the rest."""

    def __init__(self, config: pytest.Config, state: RetryState) -> None:
        self.config = config
        self.state = state
        plan = state.plan
        self.matcher = PlanMatcher(plan.tests, plan.collectors)
        collector_files = {c.file for c in plan.collectors}
        self.planned_nodeids = {test.nodeid for test in plan.tests}
        self.children = {
            collector: names
            for collector, names in planned_children(plan.tests).items()
            if collector.partition("::")[0] not in collector_files
        }
        rootdir = config.rootpath
        files = [rootdir / file for file in plan.files]
        # Only the files holding planned tests, and the directories on the way
        # to them, are collected; every other path is ignored before pytest
        # walks into it or imports it.
        self.wanted = {*files, *(p for f in files for p in f.parents)}
        self.wanted_trees = [
            rootdir / c.file for c in plan.collectors if (rootdir / c.file).is_dir()
        ]
        if not user_gave_paths(config):
            config.args = [str(d) for d in collection_roots(files)]

    @pytest.hookimpl(tryfirst=True)
    def pytest_ignore_collect(self, collection_path: Path) -> bool | None:
        if collection_path in self.wanted:
            return None
        if any(tree in collection_path.parents for tree in self.wanted_trees):
            return None
        return True

    @pytest.hookimpl(tryfirst=True)
    def pytest_pycollect_makeitem(
        self, collector: pytest.Module | pytest.Class, name: str, obj: object
    ) -> list[pytest.Item | pytest.Collector] | None:
        # A module or class on the way to a planned test builds only the planned
        # functions and classes, as node id arguments do; others build as usual.
        wanted = self.children.get(collector.nodeid)
        if wanted is None or name in wanted:
            return None
        return []

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(
        self, collector: pytest.Collector
    ) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
        report = yield
        # The unplanned parameters of a planned parametrized function are built
        # (pytest parametrizes a function whole) but go no further: they never
        # become session items, so nothing downstream walks or deselects them.
        if collector.nodeid in self.children and report.result:
            planned = self.planned_nodeids
            report.result = [
                node
                for node in report.result
                if not isinstance(node, pytest.Item) or node.nodeid in planned
            ]
        return report

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        rank = self.matcher.rank
        ranked = [(rank(item.nodeid), index, item) for index, item in enumerate(items)]
        kept = [entry for entry in ranked if entry[0] is not None]
        dropped = [item for position, _, item in ranked if position is None]
        state = self.state
        state.missing = self._missing({item.nodeid for item in items})
        if not kept and state.missing and not hasattr(config, "workerinput"):
            state.aborted = True
            raise pytest.UsageError(nothing_planned_exists(state))
        if state.plan.order == "recorded":
            kept.sort(key=lambda entry: (entry[0], entry[1]))
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = [item for _, _, item in kept]

    def _missing(self, collected: set[str]) -> list[str]:
        # A node id a session ran more than once (--dist each) is planned as often.
        planned = dict.fromkeys(self.state.plan.tests)
        rootdir = self.config.rootpath
        if user_gave_paths(self.config):
            # Paths and node ids narrow collection on purpose: only a test whose
            # file is gone is known to be missing.
            return [t.nodeid for t in planned if not (rootdir / t.file).exists()]
        return [t.nodeid for t in planned if t.nodeid not in collected]

    def pytest_sessionfinish(self) -> None:
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:
            workeroutput[MISSING_KEY] = self.state.missing
