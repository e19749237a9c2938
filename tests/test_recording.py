"""What a run records: one final outcome per selected test, as pytest reports it."""

from __future__ import annotations

import sqlite3
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from pytest_rerun_runs.recorder import Recorder
from pytest_rerun_runs.store import NewRun, Result, RunFinish, SelectedTest, Selection
from tests.conftest import RunDict, make_new_run, outcomes

SHAPES = '''
import unittest
import pytest


def test_pass():
    pass


def test_fail():
    assert 1 == 2


@pytest.mark.parametrize(
    "value",
    ["with space", "a/b", "[bracket]", "unicodé", "", "x::y"],
)
def test_ids(value):
    pass


@pytest.mark.parametrize("value", [1, 2], ids=["ok", "bad"])
def test_param_fail(value):
    assert value == 1


class TestOuter:
    class TestInner:
        def test_nested(self):
            pass


@pytest.fixture
def broken_setup():
    raise RuntimeError("setup broke")


@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("teardown broke")


def test_setup_error(broken_setup):
    pass


def test_teardown_error_after_pass(broken_teardown):
    pass


def test_teardown_error_after_fail(broken_teardown):
    assert False


@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False


@pytest.mark.xfail(reason="maybe")
def test_xpass():
    pass


@pytest.mark.xfail(strict=True, reason="must fail")
def test_xpass_strict():
    pass


@pytest.mark.xfail(run=False, reason="not run")
def test_xfail_not_run():
    pass


@pytest.mark.skip(reason="skipped here")
def test_skip():
    pass


def test_skip_inside():
    pytest.skip("inside")


class TestUnit(unittest.TestCase):
    def test_ok(self):
        pass

    @unittest.skip("unittest skip")
    def test_skipped(self):
        pass

    @unittest.expectedFailure
    def test_expected_failure(self):
        assert False

    def test_fails(self):
        self.assertEqual(1, 2)


def doubled(x):
    """
    >>> doubled(2)
    4
    >>> doubled(3)
    7
    """
    return 2 * x


def tripled(x):
    """
    >>> tripled(2)
    6
    """
    return 3 * x
'''

EXPECTED = {
    "test_shapes.py::test_pass": ("passed", "call"),
    "test_shapes.py::test_fail": ("failed", "call"),
    "test_shapes.py::test_ids[with space]": ("passed", "call"),
    "test_shapes.py::test_ids[a/b]": ("passed", "call"),
    "test_shapes.py::test_ids[[bracket]]": ("passed", "call"),
    "test_shapes.py::test_ids[unicod\\xe9]": ("passed", "call"),
    "test_shapes.py::test_ids[]": ("passed", "call"),
    "test_shapes.py::test_ids[x::y]": ("passed", "call"),
    "test_shapes.py::test_param_fail[ok]": ("passed", "call"),
    "test_shapes.py::test_param_fail[bad]": ("failed", "call"),
    "test_shapes.py::TestOuter::TestInner::test_nested": ("passed", "call"),
    "test_shapes.py::test_setup_error": ("error", "setup"),
    "test_shapes.py::test_teardown_error_after_pass": ("error", "teardown"),
    "test_shapes.py::test_teardown_error_after_fail": ("failed", "call"),
    "test_shapes.py::test_xfail": ("xfailed", "call"),
    "test_shapes.py::test_xpass": ("xpassed", "call"),
    "test_shapes.py::test_xpass_strict": ("failed", "call"),
    "test_shapes.py::test_xfail_not_run": ("xfailed", "setup"),
    "test_shapes.py::test_skip": ("skipped", "setup"),
    "test_shapes.py::test_skip_inside": ("skipped", "call"),
    "test_shapes.py::TestUnit::test_ok": ("passed", "call"),
    "test_shapes.py::TestUnit::test_skipped": ("skipped", "call"),
    "test_shapes.py::TestUnit::test_expected_failure": ("xfailed", "call"),
    "test_shapes.py::TestUnit::test_fails": ("failed", "call"),
    "test_shapes.py::test_shapes.doubled": ("failed", "call"),
    "test_shapes.py::test_shapes.tripled": ("passed", "call"),
    "dir with space/test_spaced.py::test_in_spaced_dir": ("passed", "call"),
    "test_broken.py": ("error", "collect"),
}


@pytest.fixture
def shapes(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_shapes=SHAPES)
    spaced = pytester.mkdir("dir with space")
    (spaced / "test_spaced.py").write_text("def test_in_spaced_dir():\n    pass\n")
    pytester.makepyfile(test_broken="import does_not_exist_anywhere\n")
    return pytester


def junit_outcomes(path: Path) -> list[str]:
    """passed/failure/error/skipped for each testcase, as junitxml reports it."""
    found = []
    for case in ET.parse(path).getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        found.append(kinds[0] if kinds else "passed")
    return found


def test_every_outcome_shape_matches_pytest(
    shapes: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    result = shapes.runpytest(
        "--doctest-modules", "--continue-on-collection-errors", "-rA", "--junitxml=junit.xml"
    )
    assert result.ret == 1
    run = show()
    recorded = {r["nodeid"]: (r["outcome"], r["when"]) for r in run["results"]}
    assert recorded == EXPECTED
    # pytest counts a test whose teardown fails twice (a pass or a failure, and an
    # error); the run records one final outcome per test: the error after a
    # pass, the failure after a failure. --doctest-modules collects
    # test_broken.py twice (module and doctests): two collection errors.
    pytest_counts = result.parseoutcomes()
    counts = run["counts"]
    assert counts["passed"] == pytest_counts["passed"] - 1
    assert counts["error"] == pytest_counts["errors"] - 1
    assert counts["failed"] == pytest_counts["failed"]
    assert counts["skipped"] == pytest_counts["skipped"]
    assert counts["xfailed"] == pytest_counts["xfailed"]
    assert counts["xpassed"] == pytest_counts["xpassed"]
    assert counts["not_run"] == 0
    # Everything junitxml calls a failure or an error is failed or error here.
    junit = junit_outcomes(shapes.path / "junit.xml")
    bad_in_junit = sum(1 for kind in junit if kind in ("failure", "error"))
    assert bad_in_junit == counts["failed"] + counts["error"]
    # -rA lists every failed and errored node id with the same word.
    for nodeid, (outcome, _) in EXPECTED.items():
        if outcome == "failed":
            result.stdout.fnmatch_lines([f"FAILED {nodeid.replace('[', '[[]')}*"])
        if outcome == "xpassed":
            result.stdout.fnmatch_lines([f"XPASS {nodeid}*"])


class ReportKeeper:
    """Keeps every test report of an in-process session, as pytest made them."""

    def __init__(self) -> None:
        self.reports: list[pytest.TestReport] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.reports.append(report)


class ResultStore:
    """A store that keeps the results written to it."""

    location = "memory"

    def __init__(self) -> None:
        self.results: list[Result] = []

    def create_run(self, new_run: NewRun, selection: Selection) -> int:
        return 1

    def append_results(self, run_id: int, results: Sequence[Result]) -> None:
        self.results.extend(results)

    def finish_run(self, run_id: int, finish: RunFinish, results: Sequence[Result] = ()) -> None:
        self.results.extend(results)

    def cancel_requested(self, run_id: int) -> bool:
        return False

    def close(self) -> None:
        pass


def test_reports_read_in_batches_give_the_results_read_one_at_a_time(
    shapes: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A batch reads each test of three passing reports as a whole; the result
    # must be the one reading its reports one by one gives, whatever surrounds it.
    shapes.makepyfile(
        test_reruns="""
        import pytest
        attempts = []

        @pytest.mark.flaky(reruns=2)
        def test_flaky():
            attempts.append(1)
            assert len(attempts) > 1

        @pytest.mark.parametrize("n", range(3))
        def test_after_rerun(n):
            pass
        """
    )
    keeper = ReportKeeper()
    shapes.runpytest(
        "-p",
        "no:rerun_runs",
        "-p",
        "rerunfailures",
        "--doctest-modules",
        "--continue-on-collection-errors",
        plugins=[keeper],
    )
    reports = keeper.reports
    nodeids = list(dict.fromkeys(report.nodeid for report in reports))
    selection = Selection([SelectedTest(nodeid, nodeid.split("::")[0]) for nodeid in nodeids])

    def recorded(batched: bool) -> list[Result]:
        store = ResultStore()
        now = [0.0]

        def clock() -> float:
            if not batched:
                now[0] += 1.0  # every report is due for a write, read alone
            return now[0]

        warnings: list[str] = []
        recorder = Recorder(lambda: store, warnings.append, clock=clock)  # type: ignore[arg-type,return-value]
        recorder.start(lambda store: make_new_run(), selection)
        for report in reports:
            recorder.add_test_report(report)
        recorder.finish(RunFinish(exit_status=1, finished_at=1.0))
        assert warnings == []
        return store.results

    read_alone: list[pytest.TestReport] = []
    add_test_report = Recorder._add_test_report

    def counting(recorder: Recorder, report: pytest.TestReport) -> None:
        read_alone.append(report)
        add_test_report(recorder, report)

    monkeypatch.setattr(Recorder, "_add_test_report", counting)
    expected = recorded(batched=False)
    assert len(read_alone) == len(reports)
    read_alone.clear()
    assert recorded(batched=True) == expected
    assert len(expected) == len(nodeids)
    # Each test that passed without a rerun was read as a whole; nothing else was.
    plain = [
        r for r in expected if r.outcome == "passed" and r.rerun_attempts == 0 and not r.longrepr
    ]
    assert len(plain) >= 12
    assert len(read_alone) == len(reports) - 3 * len(plain)


def test_a_report_that_keeps_a_field_on_its_class_is_read_through_its_attributes() -> None:
    class KeptOnTheClass(pytest.TestReport):
        duration = 0.25

    location = ("t.py", 0, "t")  # one tuple for the three reports, as pytest makes them
    setup = pytest.TestReport("t.py::t", location, {}, "passed", None, "setup", duration=0.5)
    call = KeptOnTheClass("t.py::t", location, {}, "passed", None, "call")
    del call.__dict__["duration"]
    teardown = pytest.TestReport("t.py::t", location, {}, "passed", None, "teardown")
    store, warnings = ResultStore(), list[str]()
    recorder = Recorder(lambda: store, warnings.append, clock=lambda: 0.0)  # type: ignore[arg-type,return-value]
    recorder.start(lambda store: make_new_run(), Selection([SelectedTest("t.py::t", "t.py")]))
    for report in (setup, call, teardown):
        recorder.add_test_report(report)
    recorder.finish(RunFinish(exit_status=0, finished_at=1.0))
    assert warnings == []
    assert store.results == [Result("t.py::t", "passed", "call", 0.5, 0.25, 0.0, position=0)]


def test_failure_and_skip_text_is_recorded(
    shapes: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    shapes.runpytest("--doctest-modules", "--continue-on-collection-errors")
    by_id = {r["nodeid"]: r for r in show()["results"]}
    assert "assert 1 == 2" in by_id["test_shapes.py::test_fail"]["longrepr"]
    assert "setup broke" in by_id["test_shapes.py::test_setup_error"]["longrepr"]
    assert "teardown broke" in by_id["test_shapes.py::test_teardown_error_after_pass"]["longrepr"]
    assert by_id["test_shapes.py::test_skip"]["longrepr"].endswith("skipped here")
    assert by_id["test_shapes.py::test_xfail"]["longrepr"] == "known"
    assert "does_not_exist_anywhere" in by_id["test_broken.py"]["longrepr"]
    assert by_id["test_shapes.py::test_pass"]["longrepr"] is None


def test_node_ids_that_are_not_ascii_are_selected_as_pytest_names_them(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makeini(
        "[pytest]\ndisable_test_id_escaping_and_forfeit_all_rights_to_community_support = true\n"
    )
    pytester.makepyfile(
        **{
            "test_ünï": """
import pytest

@pytest.mark.parametrize("value", ["é", "nul\\x00", "plain"], ids=["é", "nul\\x00", "plain"])
def test_ids(value):
    assert value != "plain"
"""
        }
    )
    pytester.runpytest().assert_outcomes(passed=2, failed=1)
    run = show()
    assert run["selection"] == [
        "test_ünï.py::test_ids[é]",
        "test_ünï.py::test_ids[nul\\x00]",
        "test_ünï.py::test_ids[plain]",
    ]
    assert [(r["nodeid"], r["outcome"]) for r in run["results"]] == [
        ("test_ünï.py::test_ids[é]", "passed"),
        ("test_ünï.py::test_ids[nul\\x00]", "passed"),
        ("test_ünï.py::test_ids[plain]", "failed"),
    ]


def test_long_failure_text_is_capped(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile("def test_long():\n    assert False, 'x' * 100_000\n")
    pytester.runpytest()
    (result,) = show()["results"]
    assert 16_000 < len(result["longrepr"]) < 16_200
    assert "characters cut by pytest-rerun-runs" in result["longrepr"]


def test_selection_is_recorded_after_deselection(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(
        test_b="def test_one(): pass\ndef test_two(): pass\ndef test_three(): pass\n",
        test_a="def test_one(): pass\n",
    )
    result = pytester.runpytest("-k", "one")
    result.assert_outcomes(passed=2, deselected=2)
    run = show()
    assert run["selection"] == ["test_a.py::test_one", "test_b.py::test_one"]
    assert run["deselected"] == 2
    assert outcomes(run) == {"test_a.py::test_one": "passed", "test_b.py::test_one": "passed"}
    assert run["status"] == "passed"
    assert run["exit_status"] == 0


def test_durations_are_recorded_per_phase(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile("def test_one(): pass\n")
    pytester.runpytest()
    (result,) = show()["results"]
    assert set(result["durations"]) == {"setup", "call", "teardown"}
    assert result["duration"] == pytest.approx(sum(result["durations"].values()), abs=1e-5)
    assert result["worker"] is None
    assert result["rerun_attempts"] == 0


def test_collection_error_interrupts_and_leaves_tests_not_run(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(test_a="def test_one(): pass\n", test_b="raise ImportError('boom')\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    run = show()
    assert run["status"] == "interrupted"
    assert run["selection"] == ["test_a.py::test_one"]
    assert outcomes(run) == {"test_a.py::test_one": "not_run", "test_b.py": "error"}
    assert [r["when"] for r in run["results"]] == ["none", "collect"]


def test_collection_error_with_exitfirst_records_nothing_selected(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(test_a="raise ImportError('boom')\n", test_b="def test_one(): pass\n")
    result = pytester.runpytest("-x")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    run = show()
    assert run["status"] == "failed"
    assert run["selection"] == []
    assert outcomes(run) == {"test_a.py": "error"}


def test_module_level_skip_is_a_skipped_result(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(
        test_a="import pytest\npytest.skip('not here', allow_module_level=True)\n",
        test_b="def test_one(): pass\n",
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, skipped=1)
    run = show()
    assert outcomes(run) == {"test_b.py::test_one": "passed", "test_a.py": "skipped"}
    assert run["counts"]["skipped"] == 1


@pytest.mark.parametrize("option", ["-x", "--maxfail=1"])
def test_stopping_early_leaves_the_rest_not_run(
    pytester: pytest.Pytester, show: Callable[..., RunDict], option: str
) -> None:
    pytester.makepyfile("def test_a(): pass\ndef test_b(): assert 0\ndef test_c(): pass\n")
    result = pytester.runpytest(option)
    result.assert_outcomes(passed=1, failed=1)
    run = show()
    assert outcomes(run) == {
        "test_stopping_early_leaves_the_rest_not_run.py::test_a": "passed",
        "test_stopping_early_leaves_the_rest_not_run.py::test_b": "failed",
        "test_stopping_early_leaves_the_rest_not_run.py::test_c": "not_run",
    }
    assert run["status"] == "failed"
    assert run["counts"]["not_run"] == 1


def test_keyboard_interrupt_marks_the_run_interrupted(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(
        "def test_a(): pass\ndef test_b(): raise KeyboardInterrupt\ndef test_c(): pass\n"
    )
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    run = show()
    assert run["status"] == "interrupted"
    assert list(outcomes(run).values()) == ["passed", "not_run", "not_run"]


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["plain", "xdist"])
def test_rerunfailures_attempts_are_counted(
    pytester: pytest.Pytester, show: Callable[..., RunDict], xdist: list[str]
) -> None:
    pytester.makepyfile(
        """
        import pytest
        attempts = []

        def test_flaky():
            attempts.append(1)
            assert len(attempts) > 1

        def test_broken():
            assert False

        def test_fine():
            pass
        """
    )
    run = pytester.runpytest_subprocess if xdist else pytester.runpytest
    result = run("--reruns", "2", "-p", "rerunfailures", *xdist)
    assert result.parseoutcomes() == {"passed": 2, "failed": 1, "rerun": 3}
    by_id = {r["nodeid"].split("::")[1]: r for r in show()["results"]}
    workers = {r["worker"] for r in by_id.values()}
    assert workers <= {"gw0", "gw1"} if xdist else workers == {None}
    assert (by_id["test_flaky"]["outcome"], by_id["test_flaky"]["rerun_attempts"]) == ("passed", 1)
    assert (by_id["test_broken"]["outcome"], by_id["test_broken"]["rerun_attempts"]) == (
        "failed",
        2,
    )
    assert (by_id["test_fine"]["outcome"], by_id["test_fine"]["rerun_attempts"]) == ("passed", 0)


def test_label_and_meta_are_stored(pytester: pytest.Pytester, show: Callable[..., RunDict]) -> None:
    pytester.makepyfile("def test_a(): pass\n")
    pytester.runpytest("--run-label=nightly", "--run-meta=shard=2", "--run-meta", "team=core=x")
    run = show()
    assert run["label"] == "nightly"
    assert run["meta"] == {"shard": "2", "team": "core=x"}
    assert run["invocation"]["args"][:4] == [
        "--run-label=nightly",
        "--run-meta=shard=2",
        "--run-meta",
        "team=core=x",
    ]


def test_malformed_meta_is_a_usage_error(pytester: pytest.Pytester, store_path: Path) -> None:
    pytester.makepyfile("def test_a(): pass\n")
    result = pytester.runpytest("--run-meta=novalue")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --run-meta expects KEY=VALUE, got 'novalue'"])
    assert not store_path.exists()


def test_invocation_is_recorded(pytester: pytest.Pytester, show: Callable[..., RunDict]) -> None:
    pytester.makeini("[pytest]\n")
    pytester.makepyfile("def test_a(): pass\n")
    pytester.runpytest("-v")
    invocation = show()["invocation"]
    assert invocation["args"][0] == "-v"
    assert invocation["rootdir"] == str(pytester.path)
    assert invocation["inifile"] == str(pytester.path / "tox.ini")
    assert invocation["invocation_dir"] == str(pytester.path)
    assert invocation["pytest"] == pytest.__version__
    assert invocation["git"] == {"branch": None, "commit": None, "remote": None}
    assert invocation["ci"] == {}
    assert any(p.startswith("pytest-rerun-runs-") for p in invocation["plugins"])


def test_ids_increase_and_list_is_newest_first(pytester: pytest.Pytester, store_path: Path) -> None:
    from tests.conftest import run_cli

    pytester.makepyfile("def test_a(): pass\n")
    for _ in range(3):
        pytester.runpytest()
    code, out = run_cli("--store", str(store_path), "list", "--format", "json")
    assert code == 0
    import json

    assert [run["id"] for run in json.loads(out)] == [3, 2, 1]


def test_terminal_lines_at_start_and_end(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_a(): pass\ndef test_b(): assert 0\n")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(
        [
            "collected 2 items",
            "rerun-runs: recording run 1 in .pytest_runs/runs.db",
            "*",
            "run 1 recorded: 1 passed, 1 failed in .pytest_runs/runs.db",
        ]
    )
    assert result.stdout.str().count("recording run") == 1


def test_the_end_line_counts_the_tests_a_stopped_session_never_ran(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_d="def test_a(): pass\ndef test_b(): assert 0\n"
        "def test_c(): pass\ndef test_d(): pass\n"
    )
    # test_a is selected twice: both of its places are taken, the last two never are.
    result = pytester.runpytest("-x", "--keep-duplicates", "test_d.py::test_a", "test_d.py")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["run 1 recorded: 2 passed, 1 failed, 2 not run in *"])


def test_quiet_quiet_prints_nothing(pytester: pytest.Pytester, store_path: Path) -> None:
    pytester.makepyfile("def test_a(): pass\n")
    result = pytester.runpytest("-qq")
    assert "run 1" not in result.stdout.str()
    assert "rerun-runs" not in result.stdout.str()
    assert store_path.exists()


def test_disabled_with_p_no(pytester: pytest.Pytester, store_path: Path) -> None:
    pytester.makepyfile("def test_a(): pass\n")
    result = pytester.runpytest("-p", "no:rerun_runs")
    result.assert_outcomes(passed=1)
    assert not store_path.exists()


@pytest.mark.parametrize("option", ["--collect-only", "--fixtures", "--markers"])
def test_non_test_sessions_are_not_recorded(
    pytester: pytest.Pytester, store_path: Path, option: str
) -> None:
    pytester.makepyfile("def test_a(): pass\n")
    result = pytester.runpytest(option)
    assert result.ret == 0
    assert not store_path.exists()


def test_usage_error_of_pytest_records_nothing(pytester: pytest.Pytester, store_path: Path) -> None:
    result = pytester.runpytest("does_not_exist.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert not store_path.exists()


def test_no_tests_collected_is_recorded(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile("def helper(): pass\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    run = show()
    assert (run["status"], run["selection"], run["results"]) == ("no_tests", [], [])


def test_default_store_is_gitignored(pytester: pytest.Pytester, store_path: Path) -> None:
    pytester.makepyfile("def test_a(): pass\n")
    pytester.runpytest()
    assert (store_path.parent / ".gitignore").read_text().splitlines()[-1] == "*"


def test_finished_runs_are_immutable_in_the_database(
    pytester: pytest.Pytester, store_path: Path
) -> None:
    # A passing result is stored in a batch, a failing one in a row.
    pytester.makepyfile("def test_a(): pass\ndef test_b(): assert 0\n")
    pytester.runpytest()
    connection = sqlite3.connect(store_path)
    try:
        assert connection.execute("SELECT count(*) FROM passed_results").fetchone() == (1,)
        assert connection.execute("SELECT count(*) FROM results").fetchone() == (1,)
        for statement in (
            "UPDATE runs SET status = 'failed'",
            "DELETE FROM runs",
            "UPDATE results SET outcome = 1",
            "DELETE FROM results",
            "INSERT INTO results VALUES (1, 5, 0, 1, 0, 0, 0, NULL, NULL, 0, 'x', 'x')",
            "UPDATE passed_results SET results = '[]'",
            "DELETE FROM passed_results",
            "INSERT INTO passed_results VALUES (1, '[[1,0,0,0]]')",
            "INSERT OR REPLACE INTO passed_results (rowid, run_id, results)"
            " SELECT rowid, run_id, '[]' FROM passed_results",
            "REPLACE INTO passed_results (rowid, run_id, results)"
            " SELECT rowid, 999, '[]' FROM passed_results",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="a finished run cannot be changed"):
                connection.execute(statement)
    finally:
        connection.close()


def test_results_view_spells_outcomes(pytester: pytest.Pytester, store_path: Path) -> None:
    pytester.makepyfile("def test_a(): pass\ndef test_b(): assert 0\n")
    pytester.runpytest()
    connection = sqlite3.connect(store_path)
    try:
        rows = connection.execute(
            "SELECT position, outcome, phase, duration >= 0, worker, rerun_attempts"
            " FROM results_view ORDER BY position"
        )
        assert rows.fetchall() == [
            (0, "passed", "call", 1, None, 0),
            (1, "failed", "call", 1, None, 0),
        ]
    finally:
        connection.close()


def test_duplicated_node_ids_each_get_their_result(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(test_d="def test_a(): pass\ndef test_b(): assert False\n")
    result = pytester.runpytest("--keep-duplicates", "test_d.py", "test_d.py")
    result.assert_outcomes(passed=2, failed=2)
    run = show()
    assert len(run["selection"]) == 4
    assert [r["outcome"] for r in run["results"]] == ["passed", "failed", "passed", "failed"]
    assert run["counts"]["not_run"] == 0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "postgresql://ci:pw@db/runs",
            "ERROR: --runs-store: postgresql://ci:***@db/runs: postgresql:// stores need the"
            " [postgres] extra: pip install 'pytest-rerun-runs[postgres]' (missing: psycopg)",
        ),
        ("foo://bar", "ERROR: --runs-store: foo://bar: unknown store scheme foo://"),
        ("file:///x.db", "ERROR: --runs-store: file:///x.db: unknown store scheme file://"),
    ],
)
def test_a_store_url_no_backend_serves_is_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, url: str, message: str
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if the extra were not installed
    monkeypatch.delitem(sys.modules, "pytest_rerun_runs.store.postgres", raising=False)
    pytester.makepyfile("def test_a(): pass\n")
    result = pytester.runpytest(f"--runs-store={url}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines[0].startswith(message)
    assert "pw" not in result.stderr.str()
    assert sorted(p.name for p in pytester.path.iterdir()) == [
        "test_a_store_url_no_backend_serves_is_a_usage_error.py"
    ]


def test_an_unreachable_postgres_store_is_one_warning(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_a(): pass\ndef test_b(): assert False\n")
    result = pytester.runpytest("--runs-store=postgresql://ci:s3cret@127.0.0.1:9/runs")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    warnings = [line for line in result.outlines if "rerun-runs: warning" in line]
    assert len(warnings) == 1
    assert "cannot open run store postgresql://ci:***@127.0.0.1:9/runs" in warnings[0]
    assert "s3cret" not in result.stdout.str() + result.stderr.str()


def test_credentials_in_recorded_arguments_are_redacted(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makeconftest("def pytest_addoption(parser):\n    parser.addoption('--db-url')\n")
    pytester.makepyfile("def test_a(): pass\n")
    pytester.runpytest("--db-url=postgresql://ci:s3cret@db/app")
    assert show()["invocation"]["args"][0] == "--db-url=postgresql://ci:***@db/app"
