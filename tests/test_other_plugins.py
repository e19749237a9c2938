"""What other plugins do to the session is what gets recorded: cacheprovider's
--lf/--ff/--sw, pytest-randomly, and text that cannot be encoded."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import RunDict, outcomes, run_pytest_subprocess

SUITE = """
def test_a(): pass
def test_b(): assert False
def test_c(): pass
def test_d(): assert False
def test_e(): pass
"""


def ran_in_order(result: pytest.RunResult) -> list[str]:
    return [
        line.split(" ")[0]
        for line in result.outlines
        if line.startswith("test_") and (" PASSED" in line or " FAILED" in line)
    ]


def test_last_failed_records_only_what_it_ran(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(test_s=SUITE)
    pytester.runpytest()
    result = pytester.runpytest("--lf")
    result.assert_outcomes(failed=2, deselected=result.parseoutcomes().get("deselected", 0))
    run = show()
    assert run["selection"] == ["test_s.py::test_b", "test_s.py::test_d"]
    assert run["deselected"] == result.parseoutcomes().get("deselected", 0)
    assert run["counts"]["not_run"] == 0
    retry = pytester.runpytest("--retry-run=last", "--failed-only")
    retry.assert_outcomes(failed=2)


def test_failed_first_records_the_order_pytest_ran(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(test_s=SUITE)
    pytester.runpytest()
    result = pytester.runpytest("--ff", "-v")
    assert show()["selection"] == ran_in_order(result)
    assert show()["selection"][:2] == ["test_s.py::test_b", "test_s.py::test_d"]


def test_stepwise_records_what_it_ran(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(test_s=SUITE)
    pytester.runpytest_subprocess("--sw")
    pytester.makepyfile(test_s=SUITE.replace("def test_b(): assert False", "def test_b(): pass"))
    result = pytester.runpytest_subprocess("--sw", "-v")
    run = show()
    assert run["selection"] == [*ran_in_order(result), "test_s.py::test_e"]
    assert outcomes(run) == {
        "test_s.py::test_b": "passed",
        "test_s.py::test_c": "passed",
        "test_s.py::test_d": "failed",
        "test_s.py::test_e": "not_run",
    }


def test_last_failed_under_xdist(pytester: pytest.Pytester, show: Callable[..., RunDict]) -> None:
    pytester.makepyfile(test_s=SUITE)
    pytester.runpytest_subprocess("-n", "2")
    result = pytester.runpytest_subprocess("-n", "2", "--lf")
    result.assert_outcomes(failed=2)
    run = show()
    assert sorted(run["selection"]) == ["test_s.py::test_b", "test_s.py::test_d"]
    assert run["counts"]["not_run"] == 0


def test_dist_each_records_every_workers_run_of_each_test(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(
        test_w="""
        def test_same(): pass
        def test_fails_on_gw1(worker_id): assert worker_id != "gw1"
        """
    )
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "each")
    result.assert_outcomes(passed=3, failed=1)
    run = show()
    assert sorted(run["selection"]) == 2 * ["test_w.py::test_fails_on_gw1"] + 2 * [
        "test_w.py::test_same"
    ]
    assert sorted((r["nodeid"], r["outcome"], r["worker"]) for r in run["results"]) == [
        ("test_w.py::test_fails_on_gw1", "failed", "gw1"),
        ("test_w.py::test_fails_on_gw1", "passed", "gw0"),
        ("test_w.py::test_same", "passed", "gw0"),
        ("test_w.py::test_same", "passed", "gw1"),
    ]
    assert (run["counts"]["passed"], run["counts"]["failed"], run["counts"]["not_run"]) == (3, 1, 0)
    # Under --dist each again, the retry fails on gw1 again: no flaky candidate.
    result = pytester.runpytest_subprocess(
        "-n", "2", "--dist", "each", "--retry-run", "1", "--failed-only"
    )
    result.assert_outcomes(passed=1, failed=1)
    assert "passed on retry" not in result.stdout.str()
    run = show()
    assert run["selection"] == 2 * ["test_w.py::test_fails_on_gw1"]
    assert run["missing"] == []
    # A skip is not a pass either.
    pytester.makepyfile(
        test_w="""
        import pytest

        def test_same(): pass
        def test_fails_on_gw1(worker_id):
            if worker_id == "gw1":
                pytest.skip("not on gw1")
        """
    )
    result = pytester.runpytest_subprocess(
        "-n", "2", "--dist", "each", "--retry-run", "1", "--failed-only"
    )
    result.assert_outcomes(passed=1, skipped=1)
    assert "rerun-runs: passed" not in result.stdout.str()
    result = pytester.runpytest_subprocess("--retry-run", "1", "--failed-only")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["rerun-runs: passed after changes *: test_w.py::test_fails_on_gw1"]
    )


def test_a_dist_each_retry_runs_what_only_some_workers_collect(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makeconftest(
        """
        def pytest_collection_modifyitems(config, items):
            if getattr(config, "workerinput", {}).get("workerid") == "gw1":
                items[:] = [item for item in items if "only_gw0" not in item.name]
        """
    )
    pytester.makepyfile(test_x="def test_common(): pass\ndef test_only_gw0(): assert 0\n")
    pytester.runpytest_subprocess("-n", "2", "--dist", "each").assert_outcomes(passed=2, failed=1)
    result = pytester.runpytest_subprocess(
        "-n", "2", "--dist", "each", "--retry-run", "1", "--failed-only"
    )
    result.assert_outcomes(failed=1)
    assert result.ret == 1
    run = show()
    assert run["selection"] == ["test_x.py::test_only_gw0"]
    assert [(r["outcome"], r["worker"]) for r in run["results"]] == [("failed", "gw0")]


def test_a_test_gone_since_a_dist_each_run_is_missing_once(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(test_x="def test_kept(): assert 0\ndef test_gone(): assert 0\n")
    pytester.runpytest_subprocess("-n", "2", "--dist", "each").assert_outcomes(failed=4)
    pytester.makepyfile(test_x="def test_kept(): pass\n")
    result = pytester.runpytest_subprocess("--retry-run", "1", "--failed-only")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["rerun-runs: warning: 1 tests of run 1 no longer exist: test_x.py::test_gone"]
    )
    assert show()["missing"] == ["test_x.py::test_gone"]


MANY = "\n".join(f"def test_{n:02}(): pass" for n in range(30)) + "\n"


def test_randomly_order_and_seed_are_recorded(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(test_m=MANY)
    result = pytester.runpytest(
        "-p", "randomly", "-p", "no:cacheprovider", "-v", "--randomly-seed=1234"
    )
    run = show()
    assert run["selection"] == ran_in_order(result)
    assert run["selection"] != sorted(run["selection"])
    assert run["invocation"]["randomly_seed"] == 1234


def test_a_retry_keeps_the_recorded_order_under_randomly(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(test_m=MANY)
    pytester.runpytest("-p", "randomly", "-p", "no:cacheprovider", "--randomly-seed=1234")
    recorded = show()["selection"]
    result = pytester.runpytest(
        "-p", "randomly", "-p", "no:cacheprovider", "-v", "--randomly-seed=99", "--retry-run=1"
    )
    assert ran_in_order(result) == recorded
    result.stdout.fnmatch_lines(
        [
            "rerun-runs: keeping run 1's recorded order (pytest-randomly's seed 99 reorders"
            " nothing; run 1 was recorded with seed 1234)"
        ]
    )


def test_randomly_order_is_recorded_under_xdist(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(test_m=MANY)
    result = pytester.runpytest_subprocess(
        "-p", "randomly", "-n", "2", "--randomly-seed=7", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=30)
    run = show()
    assert sorted(run["selection"]) == sorted(f"test_m.py::test_{n:02}" for n in range(30))
    assert run["selection"] != sorted(run["selection"])
    assert run["invocation"]["randomly_seed"] == 7


# -- text that cannot be encoded -------------------------------------------------------

SURROGATES = r"""
import pytest

def test_skip_reason():
    pytest.skip("bad \udcff reason")

def test_assertion_message():
    assert False, "bad \udcff message"

@pytest.mark.parametrize("value", ["\udcff"])
def test_id(value):
    pass

def test_after():
    pass
"""


def test_unencodable_text_never_changes_the_session(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(test_u=SURROGATES)
    plain = pytester.runpytest("-p", "no:rerun_runs")
    recorded = pytester.runpytest()
    assert recorded.ret == plain.ret == pytest.ExitCode.TESTS_FAILED
    recorded.assert_outcomes(passed=2, failed=1, skipped=1)
    assert "INTERNALERROR" not in recorded.stdout.str()
    assert "rerun-runs: warning" not in recorded.stdout.str()
    results = {r["nodeid"]: r for r in show()["results"]}
    assert "bad \\udcff reason" in results["test_u.py::test_skip_reason"]["longrepr"]
    assert "bad \\udcff message" in results["test_u.py::test_assertion_message"]["longrepr"]
    assert results["test_u.py::test_after"]["outcome"] == "passed"


def test_an_unencodable_label_is_recorded_escaped(tmp_path: Path) -> None:
    (tmp_path / "test_a.py").write_text("def test_a(): pass\n")
    completed = subprocess.run(
        [os.fsencode(sys.executable), b"-m", b"pytest", b"--run-label=\xff", b"-p", b"no:randomly"],
        cwd=tmp_path,
        capture_output=True,
        check=False,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    assert completed.returncode == 0, completed.stdout
    assert b"INTERNALERROR" not in completed.stdout
    shown = run_pytest_subprocess(tmp_path, "-p", "no:rerun_runs", "--version")
    assert shown.returncode == 0
    from tests.conftest import run_cli

    code, out = run_cli(
        "--store", str(tmp_path / ".pytest_runs" / "runs.db"), "list", "--format", "json"
    )
    assert code == 0
    assert '"label": "\\\\udcff"' in out
