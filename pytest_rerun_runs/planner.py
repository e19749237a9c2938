"""Retry planning: pure functions from a source run and options to a retry plan.

No pytest and no I/O here: the plugin hands in a :class:`~pytest_rerun_runs.store.Run`
and applies the plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import compress
from operator import itemgetter
from typing import Any, Literal, NamedTuple

from pytest_rerun_runs.store import (
    OPEN_STATUSES,
    RETRY_OUTCOMES,
    InputsNotRetained,
    NothingToRetry,
    RetryMode,
    Run,
    RunInProgress,
    SelectedTest,
)

RetryOrder = Literal["recorded", "collected"]
RETRY_ORDERS: tuple[RetryOrder, ...] = ("recorded", "collected")


class RetryPlan(NamedTuple):
    """What a retry runs; the same object on the controller and, through
    :meth:`to_dict`/:meth:`from_dict`, on every xdist worker."""

    #: ``None`` for a ``failing`` retry: a new root made of many runs' failures.
    source_run_id: int | None
    root_run_id: int | None
    attempt: int
    mode: RetryMode
    reason: str | None
    order: RetryOrder
    #: Node ids to run, in the source's order.
    tests: tuple[SelectedTest, ...]
    #: Collectors that failed to collect in the source: everything they collect now
    #: is selected, at their position.
    collectors: tuple[SelectedTest, ...]
    #: Number of tests in the source's selection.
    source_size: int
    #: The runs whose failures a ``failing`` retry runs again.
    contributors: tuple[int, ...] = ()

    @property
    def files(self) -> list[str]:
        """Files (relative to the rootdir) holding planned tests, in plan order."""
        return list(dict.fromkeys(t.file for t in (*self.tests, *self.collectors)))

    @property
    def size(self) -> int:
        return len(self.tests) + len(self.collectors)

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain data (xdist's workerinput, a queued run)."""
        return {
            "source_run_id": self.source_run_id,
            "root_run_id": self.root_run_id,
            "attempt": self.attempt,
            "mode": self.mode,
            "reason": self.reason,
            "order": self.order,
            "tests": [list(t) for t in self.tests],
            "collectors": [list(c) for c in self.collectors],
            "source_size": self.source_size,
            "contributors": list(self.contributors),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetryPlan:
        return cls(
            source_run_id=_optional_int(data["source_run_id"]),
            root_run_id=_optional_int(data["root_run_id"]),
            attempt=int(data["attempt"]),
            mode=data["mode"],
            reason=data["reason"],
            order=data["order"],
            tests=tuple(SelectedTest(str(n), str(f)) for n, f in data["tests"]),
            collectors=tuple(SelectedTest(str(n), str(f)) for n, f in data["collectors"]),
            source_size=int(data["source_size"]),
            contributors=tuple(int(i) for i in data.get("contributors", ())),
        )


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def plan_retry(
    source: Run,
    *,
    failed_only: bool,
    reason: str | None = None,
    order: RetryOrder = "recorded",
) -> RetryPlan:
    """The retry of ``source``: its whole selection, or with ``failed_only`` the
    tests that failed, errored or never ran, plus its collection errors."""
    summary = source.summary
    if summary.pruned_at is not None:
        raise InputsNotRetained(summary.id)
    if failed_only and summary.status in OPEN_STATUSES:
        inv = summary.invocation
        raise RunInProgress(
            f"run {summary.id} is still running (host {inv.host}, pid {inv.pid}); wait for it"
            " to finish, or retry its whole selection",
            run_id=summary.id,
            host=inv.host,
            pid=inv.pid,
        )
    errors = [r for r in source.results if r.when == "collect" and r.outcome == "error"]
    # The passes over the whole selection run in C: a failed-only retry of a large
    # run should cost what its few failures cost.
    selected = set(map(itemgetter(0), source.selection)) if errors else set()
    collectors = tuple(
        SelectedTest(r.nodeid, r.file or r.nodeid.split("::")[0])
        for r in errors
        if r.nodeid not in selected
    )
    if failed_only:
        failing = {r.nodeid for r in source.results if r.outcome in RETRY_OUTCOMES}
        wanted = map(failing.__contains__, map(itemgetter(0), source.selection))
        tests = tuple(compress(source.selection, wanted))
        if not tests and not collectors:
            raise NothingToRetry(
                f"run {summary.id} has no failed tests to retry", run_id=summary.id
            )
    else:
        tests = tuple(source.selection)
        if not tests and not collectors:
            raise NothingToRetry(f"run {summary.id} has no tests to retry", run_id=summary.id)
    return RetryPlan(
        source_run_id=summary.id,
        root_run_id=summary.root_run_id,
        attempt=summary.attempt + 1,
        mode="failed_only" if failed_only else "full",
        reason=reason,
        order=order,
        tests=tests,
        collectors=collectors,
        source_size=len(source.selection),
    )


class PlanMatcher:
    """Decides, item by item, what of a collection belongs to a plan, and in which order."""

    def __init__(self, tests: Iterable[Sequence[str]], collectors: Iterable[Sequence[str]]) -> None:
        self.position: dict[str, int] = {}
        for test in tests:
            self.position.setdefault(test[0], len(self.position))
        self.collector_prefixes: list[tuple[str, int]] = []
        for collector in collectors:
            self.collector_prefixes.append((collector[0], len(self.position)))
            self.position.setdefault(f"\0collector:{collector[0]}", len(self.position))

    def rank(self, nodeid: str) -> int | None:
        """The position of ``nodeid`` in the plan, or ``None`` if it is not planned."""
        found = self.position.get(nodeid)
        if found is not None:
            return found
        for prefix, position in self.collector_prefixes:
            if is_below(nodeid, prefix):
                return position
        return None


def is_below(nodeid: str, collector: str) -> bool:
    """Whether ``nodeid`` is collected by the collector with node id ``collector``."""
    if not collector:
        return True
    return nodeid.startswith((collector + "::", collector + "/"))


def retry_mode(plan: RetryPlan, selected: set[str], missing: Sequence[str]) -> RetryMode:
    """``subset`` when narrowing (paths, node ids, ``-k``, ``-m``) removed planned
    tests that still exist; otherwise the plan's own mode."""
    gone = set(missing)
    narrowed = any(t.nodeid not in selected and t.nodeid not in gone for t in plan.tests)
    return "subset" if narrowed else plan.mode


#: How many of the newest runs ``failing`` reads: a test that has not run for
#: that long is not "failing" any more, it is gone.
FAILING_HISTORY = 200


def plan_failing(history: Sequence[Run], order: RetryOrder = "recorded") -> RetryPlan:
    """A new root run of every test whose most recent outcome in ``history``
    (finished runs, newest first) is ``failed`` or ``error``: what ``--lf``
    means, built from every recorded session instead of the last one.
    ``not_run`` decides nothing; collection errors count as failing files."""
    latest: dict[str, str] = {}
    where: dict[str, tuple[SelectedTest, int, bool]] = {}
    for run in history:
        selected = {test.nodeid: test for test in run.selection}
        for result in run.results:
            if result.outcome == "not_run" or result.nodeid in latest:
                continue
            latest[result.nodeid] = result.outcome
            test = selected.get(result.nodeid)
            collector = test is None
            if test is None:
                test = SelectedTest(result.nodeid, result.file or result.nodeid.split("::")[0])
            where[result.nodeid] = (test, run.id, collector and result.when == "collect")
    failing = [n for n, outcome in latest.items() if outcome in ("failed", "error")]
    if not failing:
        raise NothingToRetry("no test is failing in the recorded history of this rootdir")
    newest_first = {run.id: index for index, run in enumerate(history)}
    # Oldest contributing run first, each run's tests in its recorded order.
    failing.sort(key=lambda n: -newest_first[where[n][1]])
    tests = tuple(where[n][0] for n in failing if not where[n][2])
    collectors = tuple(where[n][0] for n in failing if where[n][2])
    contributors = tuple(sorted({where[n][1] for n in failing}))
    return RetryPlan(
        source_run_id=None,
        root_run_id=None,
        attempt=1,
        mode="failing",
        reason=None,
        order=order,
        tests=tests,
        collectors=collectors,
        source_size=len(latest),
        contributors=contributors,
    )


def planned_children(tests: Iterable[SelectedTest]) -> dict[str, set[str]]:
    """For each collector on the way to a planned test (its module, its classes),
    the names of the children the plan needs: ``{"t.py": {"TestA", "test_b"},
    "t.py::TestA": {"test_c"}}``. A parametrized test is planned by its
    function's name (as a node id argument builds every parameter)."""
    children: dict[str, set[str]] = {}
    for test in tests:
        head = test.nodeid.partition("[")[0]
        parts = head.split("::")
        for depth in range(1, len(parts)):
            children.setdefault("::".join(parts[:depth]), set()).add(parts[depth])
    return children
