"""Pure functions over recorded runs: lineage trees, diffs, flaky tests, pruning
policy, retry argument replay. No pytest and no I/O."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_rerun_runs.planner import is_below
from pytest_rerun_runs.store import FAILING_OUTCOMES, OPEN_STATUSES, Run, RunSummary

#: Options of ours that a replayed retry sets itself: (option, takes a value).
RETRY_OWNED_OPTIONS = {
    "--retry-run": True,
    "--failed-only": False,
    "--retry-reason": True,
    "--retry-order": True,
    "--runs-store": True,
}


def replayable_args(args: Sequence[str]) -> list[str]:
    """A source's recorded arguments without the options a retry sets anew."""
    kept: list[str] = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
            continue
        name, has_value, _ = arg.partition("=")
        if name in RETRY_OWNED_OPTIONS:
            skip_value = RETRY_OWNED_OPTIONS[name] and not has_value
            continue
        kept.append(arg)
    return kept


@dataclass
class LineageNode:
    summary: RunSummary
    children: list[LineageNode] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        s = self.summary
        return {
            "id": s.id,
            "status": s.status,
            "attempt": s.attempt,
            "mode": s.mode,
            "reason": s.reason,
            "counts": dict(s.counts),
            "children": [child.to_dict() for child in self.children],
        }


def lineage_tree(summaries: Sequence[RunSummary]) -> LineageNode:
    """The tree of a root run and its retries (``summaries`` share one root)."""
    nodes = {s.id: LineageNode(s) for s in summaries}
    root: LineageNode | None = None
    for summary in sorted(summaries, key=lambda s: s.id):
        node = nodes[summary.id]
        parent = nodes.get(summary.source_run_id) if summary.source_run_id is not None else None
        if parent is None or parent is node:
            root = root or node
        else:
            parent.children.append(node)
    return root or nodes[min(nodes)]


def final_outcomes(run: Run) -> dict[str, str]:
    return {result.nodeid: result.outcome for result in run.results}


def diff_runs(before: Run, after: Run) -> dict[str, list[str]]:
    """What changed from ``before`` to ``after``, by node id.

    When ``after`` retried part of ``before``'s lineage (failed-only, narrowed,
    or a ``failing`` run ``before`` contributed to), only what it ran is
    compared; the tests it did not retry are listed as ``not_retried``, not as
    ``disappeared``. Tests collected now from a file that failed to collect in
    ``before`` are compared with that collection error.
    """
    old, new = final_outcomes(before), final_outcomes(after)
    summary = after.summary
    related = summary.root_run_id == before.summary.root_run_id or before.id in (
        summary.contributors
    )
    partial_retry = related and after.id != before.id and summary.mode != "full"
    broken = [r.nodeid for r in before.results if r.when == "collect" and r.outcome == "error"]
    recollected: set[str] = set()
    for nodeid in new:
        if nodeid in old:
            continue
        collector = next((c for c in broken if is_below(nodeid, c)), None)
        if collector is not None:
            old[nodeid] = "error"
            recollected.add(collector)
    gone = [n for n in old if n not in new and n not in recollected]
    diff: dict[str, list[str]] = {
        "broke": [],
        "fixed": [],
        "still_failing": [],
        "changed": [],
        "appeared": [n for n in new if n not in old],
        "disappeared": [] if partial_retry else gone,
    }
    if partial_retry:
        diff["not_retried"] = gone
    for nodeid, outcome in new.items():
        previous = old.get(nodeid)
        if previous is None or previous == outcome:
            continue
        was_bad, is_bad = previous in FAILING_OUTCOMES, outcome in FAILING_OUTCOMES
        if is_bad and was_bad:
            diff["still_failing"].append(nodeid)
        elif is_bad:
            diff["broke"].append(nodeid)
        elif was_bad and outcome == "passed":
            diff["fixed"].append(nodeid)
        else:
            diff["changed"].append(nodeid)
    for nodeid, outcome in new.items():
        if old.get(nodeid) == outcome and outcome in FAILING_OUTCOMES:
            diff["still_failing"].append(nodeid)
    return diff


@dataclass
class FlakyTest:
    nodeid: str
    commit: str | None
    failed_in: list[int] = field(default_factory=list)
    passed_in: list[int] = field(default_factory=list)
    #: Runs whose retry (with the same working tree) passed a test that failed in them.
    passed_on_retry: list[tuple[int, int]] = field(default_factory=list)
    #: The working-tree fingerprint the outcomes share.
    tree: str | None = None

    @property
    def score(self) -> tuple[int, int]:
        return (len(self.passed_on_retry), min(len(self.failed_in), len(self.passed_in)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodeid": self.nodeid,
            "commit": self.commit,
            "tree": self.tree,
            "failed": len(self.failed_in),
            "passed": len(self.passed_in),
            "failed_in": self.failed_in,
            "passed_in": self.passed_in,
            "passed_on_retry": [
                {"failed_in": failed, "passed_in": passed}
                for failed, passed in self.passed_on_retry
            ],
        }


@dataclass(frozen=True)
class FixedTest:
    """A test that passed in a retry after failing in its source, with something
    changed in between (or no way to tell): fixed, not flaky evidence."""

    nodeid: str
    failed_in: int
    passed_in: int


@dataclass(frozen=True)
class RunOutcomes:
    """What flaky detection needs of one run: which tests failed, and which of
    the tests of interest passed."""

    summary: RunSummary
    failed: frozenset[str]
    passed: frozenset[str]

    @classmethod
    def of(cls, run: Run) -> RunOutcomes:
        outcomes = final_outcomes(run)
        return cls(
            run.summary,
            frozenset(n for n, o in outcomes.items() if o in FAILING_OUTCOMES),
            frozenset(n for n, o in outcomes.items() if o == "passed"),
        )


@dataclass
class FlakyReport:
    flaky: list[FlakyTest]
    fixed: list[FixedTest]


def find_flaky(runs: Iterable[Run], sources: dict[int, Run] | None = None) -> list[FlakyTest]:
    """:func:`flaky_report`'s flaky tests, from whole runs."""
    return flaky_report(
        [RunOutcomes.of(run) for run in runs],
        {run_id: RunOutcomes.of(run) for run_id, run in (sources or {}).items()},
    ).flaky


def flaky_report(
    runs: Sequence[RunOutcomes], sources: Mapping[int, RunOutcomes] | None = None
) -> FlakyReport:
    """Tests that failed and passed with nothing changed in between, most evident
    first: passed in a retry of the failing run, or both outcomes with one working
    tree. Evidence needs the same working-tree fingerprint (so the same commit);
    without it a pass after a failure is reported as fixed."""
    by_id = {run.summary.id: run for run in runs} | dict(sources or {})
    found: dict[tuple[str, str], FlakyTest] = {}

    def entry(nodeid: str, tree: str, commit: str | None) -> FlakyTest:
        key = (nodeid, tree)
        if key not in found:
            found[key] = FlakyTest(nodeid, commit, tree=tree)
        return found[key]

    seen: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(
        lambda: {"bad": [], "passed": []}
    )
    fixed: list[FixedTest] = []
    commits: dict[str, str | None] = {}
    for run in runs:
        inv = run.summary.invocation
        tree = inv.tree
        if tree is not None:
            commits[tree] = inv.git.commit
            for nodeid in run.failed:
                seen[(nodeid, tree)]["bad"].append(run.summary.id)
            for nodeid in run.passed:
                seen[(nodeid, tree)]["passed"].append(run.summary.id)
        source = by_id.get(run.summary.source_run_id or -1)
        if source is None:
            continue
        same_tree = tree is not None and source.summary.invocation.tree == tree
        for nodeid in sorted(run.passed & source.failed):
            if same_tree:
                assert tree is not None
                entry(nodeid, tree, inv.git.commit).passed_on_retry.append(
                    (source.summary.id, run.summary.id)
                )
            else:
                fixed.append(FixedTest(nodeid, source.summary.id, run.summary.id))
    for (nodeid, tree), outcomes in seen.items():
        if (outcomes["bad"] and outcomes["passed"]) or (nodeid, tree) in found:
            flaky = entry(nodeid, tree, commits.get(tree))
            flaky.failed_in = sorted(outcomes["bad"])
            flaky.passed_in = sorted(outcomes["passed"])
    for flaky in found.values():
        flaky.passed_on_retry.sort()
        for failed, passed in flaky.passed_on_retry:
            if failed not in flaky.failed_in:
                flaky.failed_in = sorted([*flaky.failed_in, failed])
            if passed not in flaky.passed_in:
                flaky.passed_in = sorted([*flaky.passed_in, passed])
    ordered = sorted(found.values(), key=lambda f: (-f.score[0], -f.score[1], f.nodeid))
    return FlakyReport(ordered, sorted(fixed, key=lambda f: (f.passed_in, f.nodeid)))


def runs_to_prune(
    summaries: Sequence[RunSummary],
    *,
    keep: int | None = None,
    older_than: float | None = None,
    now: float = 0.0,
) -> list[RunSummary]:
    """Finished, not yet pruned runs outside the newest ``keep`` or older than
    ``older_than`` seconds."""
    # Only runs that can change no more count: a running run is neither kept nor pruned.
    settled = [s for s in summaries if s.status not in OPEN_STATUSES]
    newest_first = sorted(settled, key=lambda s: s.id, reverse=True)
    candidates = newest_first[keep:] if keep is not None else newest_first
    return [
        s
        for s in candidates
        if (s.finished_at is not None or s.status == "interrupted")
        and s.pruned_at is None
        and (older_than is None or s.created_at < now - older_than)
    ]


MAX_AGE_SECONDS = 1000 * 366 * 86400


def parse_age(text: str) -> float:
    """Seconds in ``30d``, ``12h``, ``2w``, ``90m``, ``45s``; ``ValueError`` otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    number, unit = text[:-1], text[-1:]
    shown = text if len(text) <= 24 else text[:24] + "..."
    if unit not in units or not (number.isascii() and number.isdigit()) or len(number) > 12:
        raise ValueError(f"expected an age such as 30d, 12h or 2w, got {shown!r}")
    seconds = int(number) * units[unit]
    if not 1 <= seconds <= MAX_AGE_SECONDS:
        raise ValueError(f"expected an age from 1s to 1000 years, got {shown!r}")
    return float(seconds)
