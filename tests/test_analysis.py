"""Unit tests of the pure functions in ``pytest_rerun_runs.analysis``."""

from __future__ import annotations

import pytest

from pytest_rerun_runs import analysis
from pytest_rerun_runs.analysis import FlakyTest
from pytest_rerun_runs.store import (
    GitInfo,
    Outcome,
    Phase,
    Result,
    RetryMode,
    Run,
    RunStatus,
    RunSummary,
    SelectedTest,
    count_outcomes,
)
from tests.conftest import make_invocation

CREATED_AT = 1_700_000_000.0
PHASE_OF: dict[str, Phase] = {"error": "setup", "not_run": "none"}


def make_run(
    run_id: int,
    outcomes: dict[str, Outcome],
    *,
    source_run_id: int | None = None,
    root_run_id: int | None = None,
    attempt: int = 1,
    commit: str | None = None,
    status: RunStatus = "passed",
    mode: RetryMode = "full",
    reason: str | None = None,
    created_at: float = CREATED_AT,
    finished: bool = True,
    pruned_at: float | None = None,
) -> Run:
    """The only place these tests build a Run (and, through ``.summary``, a RunSummary)."""
    results = [
        Result(nodeid, outcome, PHASE_OF.get(outcome, "call"))
        for nodeid, outcome in outcomes.items()
    ]
    summary = RunSummary(
        id=run_id,
        status=status,
        exit_status=None if not finished else 0 if status == "passed" else 1,
        created_at=created_at,
        started_at=created_at,
        finished_at=created_at + 1.0 if finished else None,
        label=None,
        meta={},
        source_run_id=source_run_id,
        root_run_id=root_run_id if root_run_id is not None else run_id,
        attempt=attempt,
        mode=mode,
        reason=reason,
        counts=count_outcomes(results),
        invocation=make_invocation()._replace(
            git=GitInfo(commit=commit),
            tree=None if commit is None else f"git:{commit}",
        ),
        deselected=0,
        missing=[],
        pruned_at=pruned_at,
    )
    selection = [SelectedTest(nodeid, nodeid.partition("::")[0]) for nodeid in outcomes]
    return Run(summary=summary, selection=selection, results=results)


# replayable_args


def test_replayable_args_drops_retry_options_given_with_equals() -> None:
    args = [
        "-x",
        "--retry-run=3",
        "--failed-only",
        "--retry-reason=flaky network",
        "--retry-order=failed-first",
        "--runs-store=/tmp/runs.db",
        "tests/",
    ]

    assert analysis.replayable_args(args) == ["-x", "tests/"]


def test_replayable_args_drops_retry_options_and_their_separate_values() -> None:
    args = [
        "--retry-run",
        "3",
        "-k",
        "slow",
        "--retry-reason",
        "why",
        "--retry-order",
        "failed-first",
        "--runs-store",
        "runs.db",
        "tests/test_a.py",
    ]

    assert analysis.replayable_args(args) == ["-k", "slow", "tests/test_a.py"]


def test_replayable_args_failed_only_does_not_swallow_the_next_argument() -> None:
    assert analysis.replayable_args(["--failed-only", "tests/test_a.py", "-q"]) == [
        "tests/test_a.py",
        "-q",
    ]


def test_replayable_args_keeps_other_arguments_in_order() -> None:
    args = ["-p", "no:randomly", "--retry-runner=x", "-k", "a and b", "--lf", "tests/"]

    assert analysis.replayable_args(args) == args


# lineage_tree


def test_lineage_tree_nests_retries_under_their_source() -> None:
    summaries = [
        make_run(4, {}, source_run_id=1, root_run_id=1, attempt=2).summary,
        make_run(3, {}, source_run_id=2, root_run_id=1, attempt=3).summary,
        make_run(1, {}).summary,
        make_run(2, {}, source_run_id=1, root_run_id=1, attempt=2).summary,
    ]

    root = analysis.lineage_tree(summaries)

    assert root.summary.id == 1
    assert [child.summary.id for child in root.children] == [2, 4]
    assert [child.summary.id for child in root.children[0].children] == [3]
    assert root.children[1].children == []


def test_lineage_node_to_dict_describes_the_whole_tree() -> None:
    root = analysis.lineage_tree(
        [
            make_run(1, {"t.py::a": "failed"}, status="failed").summary,
            make_run(
                2,
                {"t.py::a": "passed"},
                source_run_id=1,
                root_run_id=1,
                attempt=2,
                mode="failed_only",
                reason="flaky",
            ).summary,
        ]
    )
    zero = dict.fromkeys(["passed", "failed", "error", "skipped", "xfailed", "xpassed"], 0)

    assert root.to_dict() == {
        "id": 1,
        "status": "failed",
        "attempt": 1,
        "mode": "full",
        "reason": None,
        "counts": {**zero, "failed": 1, "not_run": 0},
        "children": [
            {
                "id": 2,
                "status": "passed",
                "attempt": 2,
                "mode": "failed_only",
                "reason": "flaky",
                "counts": {**zero, "passed": 1, "not_run": 0},
                "children": [],
            }
        ],
    }


# diff_runs


def no_changes() -> dict[str, list[str]]:
    return {
        "broke": [],
        "fixed": [],
        "still_failing": [],
        "changed": [],
        "appeared": [],
        "disappeared": [],
    }


@pytest.mark.parametrize(
    ("before", "after", "category"),
    [
        ("passed", "failed", "broke"),
        ("passed", "error", "broke"),
        ("failed", "passed", "fixed"),
        ("error", "passed", "fixed"),
        ("failed", "failed", "still_failing"),
        ("error", "failed", "still_failing"),
    ],
)
def test_diff_runs_puts_an_outcome_change_in_its_category(
    before: Outcome, after: Outcome, category: str
) -> None:
    diff = analysis.diff_runs(make_run(1, {"t.py::a": before}), make_run(2, {"t.py::a": after}))

    assert diff == {**no_changes(), category: ["t.py::a"]}


def test_diff_runs_lists_appeared_and_disappeared_tests() -> None:
    before = make_run(1, {"t.py::kept": "passed", "t.py::gone": "failed"})
    after = make_run(2, {"t.py::kept": "passed", "t.py::new1": "failed", "t.py::new2": "passed"})

    assert analysis.diff_runs(before, after) == {
        **no_changes(),
        "appeared": ["t.py::new1", "t.py::new2"],
        "disappeared": ["t.py::gone"],
    }


def test_diff_runs_reports_nothing_for_unchanged_outcomes() -> None:
    outcomes: dict[str, Outcome] = {"t.py::a": "passed", "t.py::b": "skipped"}

    assert analysis.diff_runs(make_run(1, outcomes), make_run(2, outcomes)) == no_changes()


# find_flaky


def test_find_flaky_reports_a_test_that_failed_and_passed_at_one_commit() -> None:
    runs = [
        make_run(1, {"t.py::a": "failed", "t.py::b": "passed"}, commit="abc"),
        make_run(2, {"t.py::a": "passed", "t.py::b": "passed"}, commit="abc"),
    ]

    assert analysis.find_flaky(runs) == [
        FlakyTest(
            "t.py::a", "abc", failed_in=[1], passed_in=[2], passed_on_retry=[], tree="git:abc"
        )
    ]


def test_find_flaky_ignores_outcome_changes_across_commits() -> None:
    runs = [
        make_run(1, {"t.py::a": "failed"}, commit="abc"),
        make_run(2, {"t.py::a": "passed"}, commit="def"),
    ]

    assert analysis.find_flaky(runs) == []


def test_find_flaky_records_a_retry_that_passed_a_failure() -> None:
    runs = [
        make_run(1, {"t.py::a": "error"}, commit="abc"),
        make_run(2, {"t.py::a": "passed"}, commit="abc", source_run_id=1, root_run_id=1),
    ]

    assert analysis.find_flaky(runs) == [
        FlakyTest(
            "t.py::a", "abc", failed_in=[1], passed_in=[2], passed_on_retry=[(1, 2)], tree="git:abc"
        )
    ]


def test_find_flaky_looks_up_retry_sources_outside_the_given_runs() -> None:
    source = make_run(1, {"t.py::a": "failed"}, commit="abc")
    retry = make_run(2, {"t.py::a": "passed"}, commit="abc", source_run_id=1, root_run_id=1)

    flaky = analysis.find_flaky([retry], sources={1: source})

    assert [(f.nodeid, f.commit, f.passed_on_retry) for f in flaky] == [
        ("t.py::a", "abc", [(1, 2)])
    ]


def test_find_flaky_lists_retry_evidence_before_mixed_outcomes() -> None:
    runs = [
        make_run(1, {"t.py::a": "failed", "t.py::b": "passed"}, commit="abc"),
        make_run(2, {"t.py::a": "passed", "t.py::b": "failed"}, commit="abc"),
        make_run(3, {"t.py::b": "passed"}, commit="abc", source_run_id=2, root_run_id=2),
    ]

    assert [f.nodeid for f in analysis.find_flaky(runs)] == ["t.py::b", "t.py::a"]


def test_a_retry_that_passes_after_changes_is_fixed_not_flaky() -> None:
    source = analysis.RunOutcomes.of(make_run(1, {"t.py::a": "failed"}, commit="abc"))
    changed = make_run(2, {"t.py::a": "passed"}, commit="abc", source_run_id=1)
    changed = changed._replace(
        summary=changed.summary._replace(
            invocation=changed.summary.invocation._replace(tree="git:dirty"),
        ),
    )
    report = analysis.flaky_report([analysis.RunOutcomes.of(changed), source])
    assert report.flaky == []
    assert report.fixed == [analysis.FixedTest("t.py::a", failed_in=1, passed_in=2)]


def test_without_a_fingerprint_there_is_no_evidence() -> None:
    runs = [
        make_run(1, {"t.py::a": "failed"}),
        make_run(2, {"t.py::a": "passed"}, source_run_id=1),
    ]
    report = analysis.flaky_report([analysis.RunOutcomes.of(run) for run in runs])
    assert report.flaky == []
    assert [(f.failed_in, f.passed_in) for f in report.fixed] == [(1, 2)]


# parse_age


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("45s", 45), ("90m", 5400), ("12h", 43200), ("30d", 2_592_000), ("2w", 1_209_600)],
)
def test_parse_age_converts_each_unit_to_seconds(text: str, seconds: float) -> None:
    assert analysis.parse_age(text) == seconds


@pytest.mark.parametrize("text", ["0d", "99999999999w"])
def test_parse_age_rejects_ages_out_of_range(text: str) -> None:
    with pytest.raises(ValueError, match="expected an age from 1s to 1000 years"):
        analysis.parse_age(text)


@pytest.mark.parametrize("text", ["", "30", "d", "-1d", "1.5h", "30y", "30D", " 3d", "\u0663d"])
def test_parse_age_rejects_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="expected an age such as 30d, 12h or 2w"):
        analysis.parse_age(text)


# runs_to_prune


def test_runs_to_prune_keeps_the_newest_runs() -> None:
    summaries = [make_run(run_id, {}).summary for run_id in (3, 1, 4, 2)]

    pruned = analysis.runs_to_prune(summaries, keep=2)

    assert [s.id for s in pruned] == [2, 1]


def test_runs_to_prune_selects_runs_created_before_the_age_limit() -> None:
    summaries = [
        make_run(1, {}, created_at=800.0).summary,
        make_run(2, {}, created_at=899.0).summary,
        make_run(3, {}, created_at=900.0).summary,
        make_run(4, {}, created_at=950.0).summary,
    ]

    pruned = analysis.runs_to_prune(summaries, older_than=100.0, now=1000.0)

    assert [s.id for s in pruned] == [2, 1]


def test_runs_to_prune_applies_keep_and_age_together() -> None:
    summaries = [
        make_run(1, {}, created_at=100.0).summary,
        make_run(2, {}, created_at=900.0).summary,
        make_run(3, {}, created_at=100.0).summary,
    ]

    pruned = analysis.runs_to_prune(summaries, keep=1, older_than=500.0, now=1000.0)

    assert [s.id for s in pruned] == [1]


def test_runs_to_prune_skips_running_and_already_pruned_runs() -> None:
    summaries = [
        make_run(1, {}, pruned_at=CREATED_AT + 5.0).summary,
        make_run(2, {}).summary,
        make_run(3, {}, status="running", finished=False).summary,
    ]

    assert [s.id for s in analysis.runs_to_prune(summaries)] == [2]
