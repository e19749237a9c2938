"""``--retry-run ID`` and ``--failed-only``: new runs from a recorded selection."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_rerun_runs.store import Selection, hostname, open_store
from tests.conftest import RunDict, git, kill_at_gate, make_new_run, outcomes

SUITE = {
    "test_a": """
        import pytest

        def test_pass():
            pass

        def test_fail():
            assert False

        @pytest.fixture
        def broken():
            raise RuntimeError("setup")

        def test_setup_error(broken):
            pass

        @pytest.fixture
        def bad_teardown():
            yield
            raise RuntimeError("teardown")

        def test_teardown_error(bad_teardown):
            pass
        """,
    "test_b": """
        def test_one():
            pass

        def test_two():
            pass
        """,
}


@pytest.fixture
def source(pytester: pytest.Pytester, show: Callable[..., RunDict]) -> RunDict:
    """Run 1: two passes in test_b, a pass, a failure, a setup and a teardown error in test_a."""
    pytester.makepyfile(**SUITE)
    pytester.runpytest()
    return show(1)


def lineage(run: RunDict) -> tuple[object, ...]:
    return (run["source_run_id"], run["root_run_id"], run["attempt"], run["mode"], run["reason"])


def test_full_retry_is_a_new_run_linked_to_its_source(
    pytester: pytest.Pytester, source: RunDict, show: Callable[..., RunDict]
) -> None:
    result = pytester.runpytest("--retry-run=1")
    result.assert_outcomes(passed=4, failed=1, errors=2)
    retry = show(2)
    assert lineage(retry) == (1, 1, 2, "full", None)
    assert retry["selection"] == source["selection"]
    assert outcomes(retry) == outcomes(source)
    result.stdout.fnmatch_lines(
        [
            "rerun-runs: retrying run 1 (all tests): 6 of 6 tests, attempt 2",
            "rerun-runs: recording run 2 in .pytest_runs/runs.db",
        ]
    )


def test_failed_only_runs_failures_and_errors(
    pytester: pytest.Pytester, source: RunDict, show: Callable[..., RunDict]
) -> None:
    result = pytester.runpytest("--retry-run=1", "--failed-only", "--retry-reason=flaky CI")
    result.assert_outcomes(passed=1, failed=1, errors=2)
    retry = show(2)
    assert lineage(retry) == (1, 1, 2, "failed_only", "flaky CI")
    assert retry["selection"] == [
        "test_a.py::test_fail",
        "test_a.py::test_setup_error",
        "test_a.py::test_teardown_error",
    ]
    # unplanned tests are never built, and test_b.py is not even collected
    assert retry["deselected"] == 0
    result.stdout.fnmatch_lines(
        ["rerun-runs: retrying run 1 (failed-only): 3 of 6 tests, attempt 2"]
    )


def test_collect_only_previews_a_retry_without_recording(
    pytester: pytest.Pytester, source: RunDict, store_path: Path
) -> None:
    result = pytester.runpytest("--retry-run=1", "--failed-only", "--collect-only", "-q")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "test_a.py::test_fail",
            "test_a.py::test_setup_error",
            "test_a.py::test_teardown_error",
            "",
            "3 tests collected in *",
        ]
    )
    assert count_runs(store_path) == 1


def test_failed_only_does_not_import_files_without_failures(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    log = pytester.path / "imports.log"
    pytester.makepyfile(
        test_fails="def test_x():\n    assert False\n",
        test_fine=f"with open({str(log)!r}, 'a') as log:\n    log.write('imported\\n')\n"
        "def test_y():\n    pass\n",
    )
    other = pytester.mkpydir("other")
    (other / "conftest.py").write_text(
        f"with open({str(log)!r}, 'a') as log:\n    log.write('conftest\\n')\n"
    )
    (other / "test_deep.py").write_text("def test_z():\n    pass\n")
    pytester.runpytest()
    assert log.read_text() == "conftest\nimported\n"
    result = pytester.runpytest("--retry-run=last", "--failed-only")
    result.assert_outcomes(failed=1)
    assert log.read_text() == "conftest\nimported\n"  # neither imported again
    assert show(2)["selection"] == ["test_fails.py::test_x"]


def test_failed_only_resumes_after_exitfirst(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(
        "def test_a(): pass\ndef test_b(): assert False\ndef test_c(): pass\ndef test_d(): pass\n"
    )
    pytester.runpytest("-x")
    result = pytester.runpytest("--retry-run=1", "--failed-only")
    result.assert_outcomes(passed=2, failed=1)
    names = [nodeid.split("::")[1] for nodeid in show(2)["selection"]]
    assert names == ["test_b", "test_c", "test_d"]


INTERRUPTING = {
    "ctrl-c": ("raise KeyboardInterrupt", []),
    "maxfail": ("assert False", ["--maxfail=1"]),
    "crashed xdist worker": ("os._exit(1)", ["-n", "1", "--max-worker-restart=0"]),
}


@pytest.mark.parametrize("kind", list(INTERRUPTING))
def test_failed_only_resumes_every_kind_of_interrupted_source(
    pytester: pytest.Pytester, show: Callable[..., RunDict], kind: str
) -> None:
    stop, args = INTERRUPTING[kind]
    pytester.makepyfile(
        test_stop=f"""
        import os

        def test_before(): pass

        def test_stops():
            if not os.path.exists("stopped-once"):
                open("stopped-once", "w").close()
                {stop}

        def test_after(): pass
        """
    )
    pytester.runpytest_subprocess(*args)
    source = show(1)
    assert outcomes(source)["test_stop.py::test_before"] == "passed"
    assert outcomes(source)["test_stop.py::test_stops"] in ("failed", "error", "not_run")
    result = pytester.runpytest("--retry-run=1", "--failed-only")
    result.assert_outcomes(passed=2)
    assert show(2)["selection"] == ["test_stop.py::test_stops", "test_stop.py::test_after"]


def test_failed_only_resumes_a_killed_run(
    pytester: pytest.Pytester, show: Callable[..., RunDict], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    flag = tmp_path / "killed-once"
    pytester.makeini("[pytest]\nruns_flush_interval = 0\n")
    pytester.makepyfile(
        f"""
        import os

        def test_one(): pass
        def test_two(): assert False

        def test_hangs():
            if not os.path.exists({str(flag)!r}):
                open({str(flag)!r}, "w").close()
                with open({str(gate)!r}, "w") as gate:
                    gate.write("running")
                os.read(os.open({str(gate)!r}, os.O_RDONLY), 1)  # blocks until killed

        def test_four(): pass
        """
    )
    kill_at_gate(pytester.path, gate, "-p", "no:cacheprovider")
    killed = show(1)
    assert killed["status"] == "interrupted"
    result = pytester.runpytest("--retry-run=last", "--failed-only")
    result.assert_outcomes(passed=2, failed=1)
    retry = show(2)
    assert [n.split("::")[1] for n in retry["selection"]] == ["test_two", "test_hangs", "test_four"]
    sealed = show(1)
    # The next write to the store sealed the dead session's run where it stopped.
    assert sealed["finished_at"] is not None
    unchanged = {k: v for k, v in killed.items() if k not in ("finished_at", "duration")}
    assert {k: v for k, v in sealed.items() if k not in ("finished_at", "duration")} == unchanged


def test_collection_error_file_is_collected_again(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(
        test_ok="def test_ok(): pass\n",
        test_broken="import missing_module_x\ndef test_fixed(): pass\n",
    )
    pytester.runpytest("--continue-on-collection-errors")
    assert outcomes(show(1)) == {"test_ok.py::test_ok": "passed", "test_broken.py": "error"}
    pytester.makepyfile(test_broken="def test_fixed(): pass\ndef test_other(): pass\n")
    result = pytester.runpytest("--retry-run=1", "--failed-only")
    result.assert_outcomes(passed=2)
    assert show(2)["selection"] == ["test_broken.py::test_fixed", "test_broken.py::test_other"]


def test_retry_runs_in_the_recorded_order(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(test_order="def test_a(): pass\ndef test_b(): pass\ndef test_c(): pass\n")
    pytester.runpytest("test_order.py::test_c", "test_order.py::test_a", "test_order.py::test_b")
    recorded = ["test_order.py::test_c", "test_order.py::test_a", "test_order.py::test_b"]
    assert show(1)["selection"] == recorded
    pytester.runpytest("--retry-run=1")
    assert show(2)["selection"] == recorded
    pytester.runpytest("--retry-run=1", "--retry-order=collected")
    assert show(3)["selection"] == sorted(recorded)


@pytest.mark.parametrize(
    ("narrowing", "expected"),
    [
        (["-k", "test_b"], ["test_b.py::test_one", "test_b.py::test_two"]),
        (
            ["test_a.py"],
            [
                "test_a.py::test_pass",
                "test_a.py::test_fail",
                "test_a.py::test_setup_error",
                "test_a.py::test_teardown_error",
            ],
        ),
        (["test_b.py::test_two"], ["test_b.py::test_two"]),
    ],
)
def test_narrowing_makes_a_subset(
    pytester: pytest.Pytester,
    source: RunDict,
    show: Callable[..., RunDict],
    narrowing: list[str],
    expected: list[str],
) -> None:
    pytester.runpytest("--retry-run=1", *narrowing)
    retry = show(2)
    assert retry["selection"] == expected
    assert retry["mode"] == "subset"
    assert retry["missing"] == []


def test_narrowing_never_adds_tests(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(test_x="def test_one(): assert False\ndef test_two(): pass\n")
    pytester.runpytest("-k", "one")
    result = pytester.runpytest("--retry-run=1", "test_x.py")
    result.assert_outcomes(failed=1)
    assert show(2)["selection"] == ["test_x.py::test_one"]
    assert show(2)["mode"] == "full"


def test_ini_marker_expression_is_not_a_subset(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makeini('[pytest]\naddopts = -m "not slow"\nmarkers = slow\n')
    pytester.makepyfile(
        "import pytest\ndef test_fast(): assert False\n@pytest.mark.slow\ndef test_slow(): pass\n"
    )
    pytester.runpytest()
    pytester.runpytest("--retry-run=1", "--failed-only")
    assert show(2)["mode"] == "failed_only"


def test_renamed_tests_are_listed_and_recorded(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(test_r="def test_old(): assert False\ndef test_kept(): assert False\n")
    pytester.runpytest()
    pytester.makepyfile(test_r="def test_new(): pass\ndef test_kept(): pass\n")
    result = pytester.runpytest("--retry-run=1", "--failed-only")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["rerun-runs: warning: 1 tests of run 1 no longer exist: test_r.py::test_old"]
    )
    retry = show(2)
    assert retry["missing"] == ["test_r.py::test_old"]
    assert retry["selection"] == ["test_r.py::test_kept"]
    assert retry["mode"] == "failed_only"


def test_all_tests_gone_is_a_usage_error(pytester: pytest.Pytester, store_path: Path) -> None:
    pytester.makepyfile(test_r="def test_old(): assert False\n")
    pytester.runpytest()
    pytester.makepyfile(test_r="def test_new(): pass\n")
    before = store_path.read_bytes()
    result = pytester.runpytest("--retry-run=1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: none of the 1 planned tests exist any more (not found: test_r.py::test_old)"]
    )
    assert "Traceback" not in result.stderr.str()
    assert count_runs(store_path) == 1
    assert store_path.read_bytes() == before


def test_all_files_gone_is_a_usage_error(pytester: pytest.Pytester, store_path: Path) -> None:
    pytester.makepyfile(test_r="def test_old(): assert False\n")
    pytester.runpytest()
    (pytester.path / "test_r.py").unlink()
    result = pytester.runpytest("--retry-run=1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --retry-run 1: none of the 1 planned tests of run 1 exist any more"
            " (missing files: test_r.py)"
        ]
    )
    assert count_runs(store_path) == 1


def test_retry_of_a_retry(
    pytester: pytest.Pytester, source: RunDict, show: Callable[..., RunDict]
) -> None:
    pytester.runpytest("--retry-run=1", "--failed-only")
    pytester.runpytest("--retry-run=2", "--failed-only")
    third = show(3)
    assert lineage(third) == (2, 1, 3, "failed_only", None)
    assert third["selection"] == show(2)["selection"]


def test_passed_on_retry_lists_flaky_candidates(
    pytester: pytest.Pytester, show: Callable[..., RunDict], tmp_path: Path
) -> None:
    marker = tmp_path / "seen"  # outside the tree: nothing there changes
    pytester.makepyfile(
        f"""
        import os

        def test_flaky():
            first = not os.path.exists({str(marker)!r})
            open({str(marker)!r}, "w").close()
            assert not first

        def test_broken():
            assert False
        """
    )
    pytester.runpytest()
    result = pytester.runpytest("--retry-run=1", "--failed-only")
    result.stdout.fnmatch_lines(
        [
            "rerun-runs: passed on retry (flaky candidates):"
            " test_passed_on_retry_lists_flaky_candidates.py::test_flaky"
        ]
    )


def test_note_when_the_source_was_at_another_commit(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    git = pytester.path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text("1" * 40)
    pytester.makepyfile("def test_a(): assert False\n")
    pytester.runpytest()
    (git / "refs" / "heads" / "main").write_text("2" * 40)
    result = pytester.runpytest("--retry-run=1")
    result.stdout.fnmatch_lines(
        ["rerun-runs: note: run 1 was recorded at commit 111111111111, this is 222222222222"]
    )


def test_a_run_without_tests_has_nothing_to_retry(
    pytester: pytest.Pytester, store_path: Path
) -> None:
    pytester.makepyfile("def helper(): pass\n")
    pytester.runpytest()
    result = pytester.runpytest("--retry-run=1")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert result.stdout.lines == ["run 1 has no tests to retry"]
    assert count_runs(store_path) == 1


def test_nothing_to_retry_exits_5_and_records_nothing(
    pytester: pytest.Pytester, store_path: Path
) -> None:
    pytester.makepyfile("def test_a(): pass\n")
    pytester.runpytest()
    result = pytester.runpytest("--retry-run=1", "--failed-only")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert result.stdout.lines == ["run 1 has no failed tests to retry"]
    assert count_runs(store_path) == 1


BAD_ID = (
    "--retry-run {raw}: expected a run id (a positive number), 'last', 'failing', 'next'"
    " or a run file written by 'pytest-runs export', got {value}"
)


def count_runs(store_path: Path) -> int:
    store = open_store(str(store_path), create=False)
    try:
        return len(store.list_runs())
    finally:
        store.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--retry-run=abc"], BAD_ID.format(raw="abc", value="'abc'")),
        (["--retry-run=0"], BAD_ID.format(raw="0", value="'0'")),
        (["--retry-run=7"], "--retry-run 7: run 7 not found in {store} (the newest is 1)"),
        (["--retry-run=\u00b2"], BAD_ID.format(raw="\u00b2", value="'\u00b2'")),
        (["--retry-run=\u0661"], BAD_ID.format(raw="\u0661", value="'\u0661'")),
        (["--retry-run=1_0"], BAD_ID.format(raw="1_0", value="'1_0'")),
        (
            ["--retry-run=99999999999999999999"],
            BAD_ID.format(raw="99999999999999999999", value="'99999999999999999999'"),
        ),
        (
            ["--failed-only"],
            "--failed-only needs --retry-run (hint: --retry-run last --failed-only)",
        ),
        (["--retry-reason=x"], "--retry-reason needs --retry-run"),
        (["--retry-order=collected"], "--retry-order needs --retry-run"),
    ],
)
def test_bad_retry_options_are_usage_errors(
    pytester: pytest.Pytester, store_path: Path, args: list[str], message: str
) -> None:
    pytester.makepyfile("def test_a(): assert False\n")
    pytester.runpytest()
    before = store_path.read_bytes()
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines[0] == "ERROR: " + message.format(store=store_path)
    assert "Traceback" not in result.stderr.str()
    assert store_path.read_bytes() == before


def test_retry_without_a_store(pytester: pytest.Pytester, store_path: Path) -> None:
    pytester.makepyfile("def test_a(): pass\n")
    result = pytester.runpytest("--retry-run=last")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --retry-run last: no run store at {store_path}"])
    assert not store_path.exists()


def test_failed_only_of_a_running_run_names_host_and_pid(
    pytester: pytest.Pytester, store_path: Path
) -> None:
    pytester.makepyfile("def test_a(): pass\n")
    pytester.runpytest()
    store = open_store(str(store_path))
    try:
        running = store.create_run(make_new_run(pid=os.getpid(), host=hostname()), Selection([]))
    finally:
        store.close()
    result = pytester.runpytest(f"--retry-run={running}", "--failed-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: --retry-run 2: run 2 is still running (host {hostname()},"
            f" pid {os.getpid()}); wait for it to finish, or retry its whole selection"
        ]
    )


def test_retry_with_rerunfailures_and_without_cacheprovider(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(
        "attempts = []\n"
        "def test_flaky():\n    attempts.append(1)\n    assert len(attempts) % 2 == 0\n"
        "def test_ok(): pass\n"
    )
    pytester.runpytest("-p", "no:cacheprovider")
    result = pytester.runpytest(
        "--retry-run=1", "--failed-only", "-p", "no:cacheprovider", "--reruns=1"
    )
    result.assert_outcomes(passed=1)
    (retried,) = show(2)["results"]
    assert (retried["outcome"], retried["rerun_attempts"]) == ("passed", 1)


def test_retry_under_xdist(
    pytester: pytest.Pytester, source: RunDict, show: Callable[..., RunDict]
) -> None:
    result = pytester.runpytest_subprocess("--retry-run=1", "--failed-only", "-n", "2")
    result.assert_outcomes(passed=1, failed=1, errors=2)
    retry = show(2)
    assert lineage(retry) == (1, 1, 2, "failed_only", None)
    assert sorted(retry["selection"]) == [
        "test_a.py::test_fail",
        "test_a.py::test_setup_error",
        "test_a.py::test_teardown_error",
    ]
    # unplanned tests are never built, and test_b.py is not even collected
    assert retry["deselected"] == 0
    assert {r["worker"] for r in retry["results"]} <= {"gw0", "gw1"}


def test_missing_tests_under_xdist(pytester: pytest.Pytester, show: Callable[..., RunDict]) -> None:
    pytester.makepyfile(test_r="def test_old(): assert False\ndef test_kept(): assert False\n")
    pytester.runpytest()
    pytester.makepyfile(test_r="def test_new(): pass\ndef test_kept(): pass\n")
    result = pytester.runpytest_subprocess("--retry-run=1", "-n", "2")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["rerun-runs: warning: 1 tests of run 1 no longer exist: test_r.py::test_old"]
    )
    assert show(2)["missing"] == ["test_r.py::test_old"]


def test_doctests_need_the_source_options(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(
        mod='def f():\n    """\n    >>> f()\n    2\n    """\n    return 1\n',
        test_m="def test_m(): assert False\n",
    )
    pytester.runpytest("--doctest-modules")
    result = pytester.runpytest("--retry-run=1", "--failed-only", "--doctest-modules")
    result.assert_outcomes(failed=2)
    result = pytester.runpytest("--retry-run=1", "--failed-only")
    result.stdout.fnmatch_lines(
        ["rerun-runs: warning: 1 tests of run 1 no longer exist: mod.py::mod.f"]
    )


def test_source_is_unchanged_by_a_retry_killed_halfway(
    pytester: pytest.Pytester, show: Callable[..., RunDict], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    pytester.makeini("[pytest]\nruns_flush_interval = 0\n")
    pytester.makepyfile(
        f"""
        import os

        def test_one(): assert False

        def test_two():
            if os.environ.get("BLOCK_IN_RETRY"):
                with open({str(gate)!r}, "w") as gate:
                    gate.write("running")
                os.read(os.open({str(gate)!r}, os.O_RDONLY), 1)  # blocks until killed
            assert False
        """
    )
    pytester.runpytest()
    source = show(1)
    kill_at_gate(pytester.path, gate, "--retry-run=1", "--failed-only", env={"BLOCK_IN_RETRY": "1"})
    assert show(1) == source
    killed = show(2)
    assert (killed["status"], killed["source_run_id"]) == ("interrupted", 1)
    assert outcomes(killed) == {
        "test_source_is_unchanged_by_a_retry_killed_halfway.py::test_one": "failed",
        "test_source_is_unchanged_by_a_retry_killed_halfway.py::test_two": "not_run",
    }


def test_source_is_unchanged_by_every_kind_of_retry(
    pytester: pytest.Pytester, source: RunDict, show: Callable[..., RunDict]
) -> None:
    for args in (
        ["--retry-run=1"],
        ["--retry-run=1", "--failed-only"],
        ["--retry-run=1", "-k", "test_b"],
        ["--retry-run=2", "--failed-only"],
    ):
        pytester.runpytest(*args)
        assert show(1) == source
    concurrent = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest",
                "--retry-run=1",
                "--failed-only",
                "-p",
                "no:cacheprovider",
            ],
            cwd=pytester.path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    assert [p.wait(timeout=120) for p in concurrent] == [1, 1]
    assert show(1) == source
    assert {show(6)["source_run_id"], show(7)["source_run_id"]} == {1}


@pytest.mark.parametrize("workers", [[], ["-n", "2"]])
def test_a_retry_that_finds_nothing_writes_nothing_even_with_collection_errors(
    pytester: pytest.Pytester, store_path: Path, workers: list[str]
) -> None:
    pytester.makepyfile(test_a="def test_one(): assert False\n")
    pytester.runpytest()
    pytester.makepyfile(test_a="def test_one(:\n")
    before = store_path.read_bytes()
    result = pytester.runpytest_subprocess("--retry-run=1", *workers)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *none of the 1 planned tests exist any more*"])
    assert store_path.read_bytes() == before


FLAKY_ONCE = """
import os

def test_flaky():
    first = not os.path.exists({marker!r})
    open({marker!r}, "w").close()
    assert not first
"""


@pytest.mark.parametrize("with_git", [True, False])
def test_a_pass_after_changes_is_fixed_not_flaky(
    pytester: pytest.Pytester, tmp_path: Path, with_git: bool
) -> None:
    pytester.makepyfile(test_f=FLAKY_ONCE.format(marker=str(tmp_path / "seen")))
    helper = pytester.makepyfile(helper="VALUE = 1\n")
    if with_git:
        git(pytester.path, "init", "-q")
        git(pytester.path, "add", "test_f.py", "helper.py")
        git(pytester.path, "commit", "-qm", "first")
    pytester.runpytest()
    helper.write_text("VALUE = 2  # the fix\n")
    result = pytester.runpytest("--retry-run=1", "--failed-only")
    result.stdout.fnmatch_lines(
        ["rerun-runs: passed after changes (fixed, not flaky evidence): test_f.py::test_flaky"]
    )


def test_a_clean_checkout_of_one_commit_is_evidence(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(test_f=FLAKY_ONCE.format(marker=str(tmp_path / "seen")))
    git(pytester.path, "init", "-q")
    git(pytester.path, "add", "test_f.py")
    git(pytester.path, "commit", "-qm", "first")
    pytester.runpytest()
    result = pytester.runpytest("--retry-run=1", "--failed-only")
    result.stdout.fnmatch_lines(
        ["rerun-runs: passed on retry (flaky candidates): test_f.py::test_flaky"]
    )


def test_failing_retries_what_history_says_is_failing(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(
        test_a="def test_a1(): assert False\ndef test_a2(): pass\n",
        test_b="def test_b1(): assert False\ndef test_b2(): pass\n",
    )
    pytester.runpytest("test_a.py")
    pytester.runpytest("test_b.py")  # a partial run adds up, it does not overwrite
    pytester.makepyfile(test_a="def test_a1(): pass\ndef test_a2(): pass\n")
    result = pytester.runpytest("--retry-run=failing")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["rerun-runs: retrying the failing tests of runs 1, 2 (failing): 2 of 4 tests, attempt 1"]
    )
    run = show(3)
    assert run["selection"] == ["test_a.py::test_a1", "test_b.py::test_b1"]
    assert (run["mode"], run["source_run_id"], run["root_run_id"]) == ("failing", None, 3)
    assert run["contributors"] == [1, 2]
    again = pytester.runpytest("--retry-run=failing")
    again.assert_outcomes(failed=1)
    assert show(4)["selection"] == ["test_b.py::test_b1"]
    assert show(4)["contributors"] == [3]


def test_nothing_failing_exits_5(pytester: pytest.Pytester, store_path: Path) -> None:
    pytester.makepyfile(test_a="def test_a1(): pass\n")
    pytester.runpytest()
    result = pytester.runpytest("--retry-run=failing")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert result.stdout.lines == ["no test is failing in the recorded history of this rootdir"]


def test_a_file_named_failing_is_a_run_file(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a="def test_a1(): pass\n")
    (pytester.path / "failing").write_text("not a run file")
    result = pytester.runpytest("--retry-run=./failing")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --retry-run ./failing: *failing is not a run file*"])


NOTING_CONFTEST = """
import os

def pytest_generate_tests(metafunc):
    with open(os.environ["GENERATED_FOR"], "a") as notes:
        notes.write(metafunc.definition.nodeid + "\\n")

def pytest_itemcollected(item):
    with open(os.environ["BUILT"], "a") as notes:
        notes.write(item.nodeid + "\\n")
"""

FAT_FILE = """
import pytest

@pytest.mark.parametrize("n", range(3))
def test_param(n):
    assert n != 1

def test_plain():
    pass

class TestGroup:
    def test_inside(self):
        assert False

    def test_other(self):
        pass

class TestUntouched:
    def test_never(self):
        pass
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2"]])
def test_a_retry_builds_only_what_it_plans(
    pytester: pytest.Pytester,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    show: Callable[..., RunDict],
    workers: list[str],
) -> None:
    generated, built = tmp_path / "generated", tmp_path / "built"
    monkeypatch.setenv("GENERATED_FOR", str(generated))
    monkeypatch.setenv("BUILT", str(built))
    pytester.makeconftest(NOTING_CONFTEST)
    pytester.makepyfile(test_fat=FAT_FILE)
    pytester.runpytest_subprocess(*workers)
    generated.unlink()
    built.unlink()
    result = pytester.runpytest_subprocess("--retry-run=1", "--failed-only", *workers)
    outcomes = result.parseoutcomes()
    assert (outcomes["failed"], outcomes.get("passed", 0)) == (2, 0)
    # Only the planned functions are parametrized and built; of a planned
    # parametrized function only the planned parameters become items.
    assert set(generated.read_text().split()) == {
        "test_fat.py::test_param",
        "test_fat.py::TestGroup::test_inside",
    }
    assert set(built.read_text().split()) == {
        "test_fat.py::test_param[1]",
        "test_fat.py::TestGroup::test_inside",
    }
    assert "deselected" not in outcomes
    retry = show(2)
    assert sorted(retry["selection"]) == [
        "test_fat.py::TestGroup::test_inside",
        "test_fat.py::test_param[1]",
    ]


def test_editing_an_untracked_test_file_is_a_change(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    (pytester.path / "pytest.ini").write_text("[pytest]\n")
    git(pytester.path, "init", "-q")
    git(pytester.path, "add", "pytest.ini")
    git(pytester.path, "commit", "-qm", "first")
    pytester.makepyfile(test_new="def test_x():\n    assert False\n")
    pytester.runpytest()
    pytester.makepyfile(test_new="def test_x():\n    assert True  # fixed\n")
    result = pytester.runpytest("--retry-run=last", "--failed-only")
    result.stdout.fnmatch_lines(
        ["rerun-runs: passed after changes (fixed, not flaky evidence): test_new.py::test_x"]
    )


def test_a_retry_of_unittest_and_doctest_items_builds_only_those(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(
        test_u="""
        import unittest

        class TestCase(unittest.TestCase):
            def test_ok(self):
                pass

            def test_fail(self):
                self.fail("no")

        def helper():
            '''
            >>> 1 + 1
            3
            '''

        def other():
            '''
            >>> 2
            2
            '''
        """
    )
    pytester.runpytest("--doctest-modules")
    result = pytester.runpytest("--doctest-modules", "--retry-run=1", "--failed-only", "-v")
    result.assert_outcomes(failed=2)
    assert sorted(show(2)["selection"]) == [
        "test_u.py::TestCase::test_fail",
        "test_u.py::test_u.helper",
    ]
    assert "deselected" not in result.parseoutcomes()
