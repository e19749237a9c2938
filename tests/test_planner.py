"""Unit tests of retry planning and run references: no pytest session, no store."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_rerun_runs.planner import PlanMatcher, RetryPlan, plan_retry, retry_mode
from pytest_rerun_runs.retry_source import RunReference, parse_run_reference
from pytest_rerun_runs.store import (
    InputsNotRetained,
    InvalidRunReference,
    NothingToRetry,
    Outcome,
    Result,
    Run,
    RunInProgress,
    SelectedTest,
)
from tests.test_analysis import make_run

SOURCE: dict[str, Outcome] = {
    "t.py::a": "passed",
    "t.py::b": "failed",
    "t.py::c": "error",
    "t.py::d": "not_run",
    "t.py::e": "skipped",
}


def with_collection_error(run: Run, nodeid: str) -> Run:
    error = Result(nodeid, "error", "collect", file=nodeid)
    return run._replace(results=[*run.results, error])


def test_a_full_retry_plans_the_whole_selection_in_order() -> None:
    plan = plan_retry(make_run(3, SOURCE, root_run_id=1, attempt=2), failed_only=False)
    assert [t.nodeid for t in plan.tests] == list(SOURCE)
    assert (plan.source_run_id, plan.root_run_id, plan.attempt, plan.mode) == (3, 1, 3, "full")
    assert plan.source_size == 5


def test_failed_only_plans_failures_errors_and_what_never_ran() -> None:
    plan = plan_retry(make_run(1, SOURCE), failed_only=True, reason="flaky")
    assert [t.nodeid for t in plan.tests] == ["t.py::b", "t.py::c", "t.py::d"]
    assert (plan.mode, plan.reason) == ("failed_only", "flaky")


def test_collection_errors_become_collectors() -> None:
    source = with_collection_error(make_run(1, {"t.py::a": "passed"}), "broken.py")
    plan = plan_retry(source, failed_only=True)
    assert plan.tests == ()
    assert plan.collectors == (SelectedTest("broken.py", "broken.py"),)
    assert plan.files == ["broken.py"]


def test_failed_only_plans_every_position_of_a_failing_node_id_selected_twice() -> None:
    source = make_run(1, {"t.py::a": "failed", "t.py::b": "passed"})
    twice = SelectedTest("t.py::a", "t.py")
    source = source._replace(selection=[*source.selection, twice])
    plan = plan_retry(source, failed_only=True)
    assert plan.tests == (twice, twice)
    assert plan.source_size == 3


def test_a_collection_error_of_a_selected_node_id_is_no_collector() -> None:
    source = with_collection_error(make_run(1, {"t.py::a": "failed"}), "t.py::a")
    source = with_collection_error(source, "broken.py")
    plan = plan_retry(source, failed_only=True)
    assert [t.nodeid for t in plan.tests] == ["t.py::a"]
    assert plan.collectors == (SelectedTest("broken.py", "broken.py"),)


def test_nothing_to_retry() -> None:
    with pytest.raises(NothingToRetry, match="run 1 has no failed tests to retry"):
        plan_retry(make_run(1, {"t.py::a": "passed"}), failed_only=True)
    with pytest.raises(NothingToRetry, match="run 2 has no tests to retry"):
        plan_retry(make_run(2, {}), failed_only=False)


def test_a_pruned_run_cannot_be_retried() -> None:
    with pytest.raises(InputsNotRetained) as raised:
        plan_retry(make_run(1, SOURCE, pruned_at=5.0), failed_only=False)
    assert raised.value.code == "inputs_not_retained"


def test_failed_only_of_a_running_run_is_refused() -> None:
    running = make_run(1, SOURCE, status="running", finished=False)
    with pytest.raises(RunInProgress) as raised:
        plan_retry(running, failed_only=True)
    assert "--" not in raised.value.message
    assert plan_retry(running, failed_only=False).size == 5


def test_a_plan_survives_the_trip_to_a_worker() -> None:
    source = with_collection_error(make_run(1, SOURCE), "broken.py")
    plan = plan_retry(source, failed_only=True, order="collected")
    trip = RetryPlan.from_dict(plan.to_dict())
    assert trip == plan
    # Named tuples compare as tuples: the types are checked too.
    assert type(trip) is RetryPlan
    assert {type(test) for test in (*trip.tests, *trip.collectors)} == {SelectedTest}


def test_the_matcher_ranks_planned_tests_and_what_collectors_collect() -> None:
    matcher = PlanMatcher(
        [SelectedTest("t.py::b", "t.py"), SelectedTest("t.py::a", "t.py")],
        [SelectedTest("pkg/broken.py", "pkg/broken.py")],
    )
    assert [matcher.rank(n) for n in ("t.py::a", "t.py::b", "t.py::z")] == [1, 0, None]
    assert matcher.rank("pkg/broken.py::test_x") == 2
    assert matcher.rank("pkg/broken.pyc::x") is None


def test_narrowing_that_removes_planned_tests_is_a_subset() -> None:
    plan = plan_retry(make_run(1, SOURCE), failed_only=True)
    assert retry_mode(plan, {"t.py::b", "t.py::c", "t.py::d"}, []) == "failed_only"
    assert retry_mode(plan, {"t.py::b", "t.py::c"}, ["t.py::d"]) == "failed_only"
    assert retry_mode(plan, {"t.py::b"}, []) == "subset"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("last", RunReference("last")),
        ("7", RunReference("7", run_id=7)),
        ("9223372036854775807", RunReference("9223372036854775807", run_id=2**63 - 1)),
    ],
)
def test_run_references(text: str, expected: RunReference) -> None:
    parsed = parse_run_reference(text)
    assert parsed == expected
    assert type(parsed) is RunReference


@pytest.mark.parametrize(
    "text",
    ["0", "-1", "1_0", "\u0661", "\uff11", "\u00b2", " 1", "9223372036854775808", "9" * 5000, ""],
)
def test_what_is_not_a_run_reference(text: str) -> None:
    with pytest.raises(InvalidRunReference) as raised:
        parse_run_reference(text)
    assert raised.value.code == "invalid_run_reference"
    assert len(raised.value.message) < 150


def test_a_run_file_is_a_reference_only_where_files_are_accepted(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text("{}")
    assert parse_run_reference("run.json", base=tmp_path).file == tmp_path / "run.json"
    with pytest.raises(InvalidRunReference):
        parse_run_reference("run.json")
    with pytest.raises(InvalidRunReference, match="or a run file"):
        parse_run_reference("missing.json", base=tmp_path)
