"""The store location, the store interface, batching and ``pytest-runs list/show``."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_rerun_runs import invocation
from pytest_rerun_runs.invocation import ci_info, git_info, tree_fingerprint
from pytest_rerun_runs.recorder import Recorder, collector_paused
from pytest_rerun_runs.store import (
    GitInfo,
    InvalidResult,
    NewRun,
    Result,
    RunFinish,
    SelectedTest,
    Selection,
    check_positions,
    open_store,
    selected_tests,
)
from tests.conftest import RunDict, git, make_new_run, run_cli

# -- where the store is -------------------------------------------------------


def test_option_beats_environment_beats_ini(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile("def test_a(): pass\n")
    pytester.makeini("[pytest]\nruns_store = from-ini/runs.db\n")
    pytester.runpytest()
    assert (pytester.path / "from-ini" / "runs.db").exists()
    monkeypatch.setenv("PYTEST_RUNS_STORE", str(pytester.path / "from-env.db"))
    pytester.runpytest()
    assert (pytester.path / "from-env.db").exists()
    pytester.runpytest("--runs-store=from-option.db")
    assert (pytester.path / "from-option.db").exists()
    assert not (pytester.path / ".pytest_runs").exists()


def test_separate_store_value_that_moved_the_rootdir_is_refused(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    project = pytester.mkdir("project")
    (project / "test_a.py").write_text("def test_a(): pass\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store = elsewhere / "runs.db"
    store.write_bytes(b"")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        result = pytester.runpytest("--runs-store", str(store))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: --runs-store {store}: pytest took {store} for a test path and moved the"
            f" rootdir to *; write --runs-store={store}"
        ]
    )
    assert store.read_bytes() == b""


def test_cli_finds_the_store_like_pytest(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nruns_store = history/runs.db\n")
    pytester.makepyfile("def test_a(): pass\n")
    pytester.runpytest()
    sub = pytester.mkdir("sub")
    code, out = run_cli("list", "--format", "json", cwd=sub)
    assert code == 0
    assert [run["id"] for run in json.loads(out)] == [1]


# -- the store interface -------------------------------------------------------


def test_store_round_trip(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "runs.db"))
    try:
        run_id = store.create_run(
            make_new_run(created_at=1.0, started_at=2.0, label="l"),
            Selection(
                tests=[SelectedTest("a.py::t1", "a.py"), SelectedTest("a.py::t2", "a.py")],
                deselected=3,
            ),
        )
        store.append_results(
            run_id, [Result("a.py::t1", "failed", "call", call_duration=0.5, position=0)]
        )
        assert store.get_summary(run_id).status == "running"
        store.finish_run(
            run_id,
            RunFinish(exit_status=1, finished_at=4.0),
            [Result("broken.py", "error", "collect", longrepr="boom", position=2)],
        )
        run = store.get_run(run_id)
    finally:
        store.close()
    assert run.summary.status == "failed"
    assert run.summary.duration == 3.0
    assert [(r.nodeid, r.outcome) for r in run.results] == [
        ("a.py::t1", "failed"),
        ("a.py::t2", "not_run"),
        ("broken.py", "error"),
    ]
    assert run.results[0].call_duration == 0.5
    assert run.summary.counts["not_run"] == 1
    assert run.summary.deselected == 3
    store = open_store(str(tmp_path / "runs.db"))
    try:
        only = store.get_run(run_id, {"error", "not_run"})
        assert [(r.nodeid, r.outcome) for r in only.results] == [
            ("a.py::t2", "not_run"),
            ("broken.py", "error"),
        ]
        assert [r.nodeid for r in store.get_run(run_id, {"failed"}).results] == ["a.py::t1"]
        assert len(only.selection) == 2
    finally:
        store.close()


# -- batching --------------------------------------------------------------------


class CountingStore:
    """A store that counts the writes the recorder makes."""

    location = "memory"

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.finished: list[int] = []

    def create_run(self, new_run: NewRun, selection: Selection) -> int:
        return 1

    def append_results(self, run_id: int, results: Sequence[Result]) -> None:
        self.batches.append(len(results))

    def finish_run(self, run_id: int, finish: RunFinish, results: Sequence[Result] = ()) -> None:
        self.finished.append(len(results))

    def cancel_requested(self, run_id: int) -> bool:
        return False

    def close(self) -> None:
        pass


def report(nodeid: str, when: str, outcome: str = "passed") -> pytest.TestReport:
    return pytest.TestReport(nodeid, ("f.py", 0, nodeid), {}, outcome, None, when)  # type: ignore[arg-type]


def test_selected_tests_are_the_named_tuples_of_their_pairs() -> None:
    made = selected_tests(["a.py::t", "b/c.py::T::m[1]"], ["a.py", "b/c.py"])
    assert made == [SelectedTest("a.py::t", "a.py"), SelectedTest("b/c.py::T::m[1]", "b/c.py")]
    assert [type(test) for test in made] == [SelectedTest, SelectedTest]
    assert made[1].file == "b/c.py"
    assert selected_tests([], []) == []
    with pytest.raises(ValueError, match="shorter"):
        selected_tests(["a.py::t"], [])
    with pytest.raises(ValueError, match="longer"):
        selected_tests(["a.py::t"], ["a.py", "b.py"])


def test_a_result_must_fit_its_position_in_the_selection() -> None:
    selection = ["t.py::a", "t.py::b"]
    check_positions(1, selection, [Result("t.py::b", "passed", "call", position=1)])
    check_positions(1, selection, [Result("c.py", "error", "collect", position=2)])
    for wrong in [
        Result("t.py::a", "passed", "call", position=1),
        Result("t.py::b", "passed", "call", position=-1),  # -1 counted from the end
        Result("t.py::a", "passed", "call", position=-2),
        Result("t.py::a", "error", "collect", position=2),  # selected: not outside it
    ]:
        with pytest.raises(InvalidResult, match=f"cannot take position {wrong.position}"):
            check_positions(1, selection, [wrong])


def test_results_are_written_in_batches_by_time() -> None:
    store = CountingStore()
    now = [0.0]
    recorder = Recorder(lambda: store, lambda message: None, clock=lambda: now[0])  # type: ignore[arg-type,return-value]
    tests = [SelectedTest(f"f.py::t{i}", "f.py") for i in range(1000)]
    recorder.start(lambda store: make_new_run(), Selection(tests))
    for test in tests:
        now[0] += 1 / 256  # 256 tests a second, exactly representable
        for when in ("setup", "call", "teardown"):
            recorder.add_test_report(report(test.nodeid, when))
    recorder.finish(RunFinish(exit_status=0, finished_at=3.0))
    # The write is due at the first report of the second's 256th test, before its result.
    assert store.batches == [255, 256, 256]
    assert store.finished == [233]
    assert recorder.counts()["passed"] == 1000


def test_results_waiting_for_their_write_are_not_tracked_by_the_garbage_collector() -> None:
    # Tracked objects that live for a second are promoted to the oldest
    # generation: thousands of them a second bring more full collections.
    store = CountingStore()
    recorder = Recorder(lambda: store, lambda message: None, clock=lambda: 0.0)  # type: ignore[arg-type,return-value]
    tests = [SelectedTest(f"f.py::t{i}", "f.py") for i in range(100)]
    recorder.start(lambda store: make_new_run(), Selection(tests))
    for test in tests:
        for when in ("setup", "call", "teardown"):
            recorder.add_test_report(report(test.nodeid, when, "passed"))
    recorder._read_reports()  # as when a write is due
    gc.collect()
    pending = recorder._pending
    assert len(pending) == 100
    assert not any(gc.is_tracked(result) for result in pending)
    recorder.finish(RunFinish(exit_status=0, finished_at=1.0))
    assert store.finished == [100]


class UnreadableReport(pytest.TestReport):
    @property
    def longreprtext(self) -> str:
        raise RuntimeError("report unreadable")


def test_a_report_that_cannot_be_read_before_the_run_exists_records_nothing() -> None:
    store = CountingStore()
    warnings: list[str] = []
    recorder = Recorder(lambda: store, warnings.append, clock=lambda: 0.0)  # type: ignore[arg-type,return-value]
    recorder.add_test_report(
        UnreadableReport("f.py::t0", ("f.py", 0, "t0"), {}, "failed", None, "call")
    )
    selection = Selection([SelectedTest("f.py::t0", "f.py")])
    assert recorder.start(lambda store: make_new_run(), selection) is None
    recorder.finish(RunFinish(exit_status=1, finished_at=1.0))
    assert store.finished == []
    assert warnings == ["report unreadable; this session is not recorded (tests run as usual)"]


def worker_report(
    worker: str, nodeid: str, when: str, outcome: str = "passed", duration: float = 0.0
) -> pytest.TestReport:
    """A report as xdist's controller gets it: its own location tuple, the worker's id."""
    made = pytest.TestReport(
        nodeid,
        ("f.py", 0, nodeid.rsplit("::", maxsplit=1)[-1]),
        {},
        outcome,  # type: ignore[arg-type]
        "it broke" if outcome == "failed" else None,
        when,  # type: ignore[arg-type]
        duration=duration,
    )
    made.worker_id = worker  # type: ignore[attr-defined]
    return made


def test_reports_from_xdist_workers_are_read_test_by_test(tmp_path: Path) -> None:
    phases = ("setup", "call", "teardown")
    arrivals = [
        # Two workers' reports interleaved, as the controller gets them.
        ("gw0", "a", "setup"),
        ("gw1", "b", "setup"),
        ("gw0", "a", "call"),
        ("gw0", "a", "teardown"),
        ("gw1", "b", "call", "failed"),
        ("gw1", "b", "teardown"),
        # A test's three reports in a row, and the same node id again (--keep-duplicates).
        *(("gw0", "c", when) for when in phases),
        *(("gw0", "c", when) for when in phases),
        ("gw1", "d", "setup"),
        ("gw1", "d", "call"),
        ("gw0", "e", "setup"),
        ("gw1", "d", "teardown"),
        ("gw0", "e", "call"),
        ("gw0", "e", "teardown"),
    ]
    reports = [
        worker_report(
            worker, f"f.py::{name}", when, failed[0] if failed else "passed", number / 1000
        )
        for number, (worker, name, when, *failed) in enumerate(arrivals, start=1)
    ]
    results = record_arrivals(tmp_path, ["a", "b", "c", "c", "d", "e"], reports)
    assert [
        (r.nodeid, r.outcome, r.worker, r.setup_duration, r.call_duration, r.teardown_duration)
        for r in results
    ] == [
        ("f.py::a", "passed", "gw0", 0.001, 0.003, 0.004),
        ("f.py::b", "failed", "gw1", 0.002, 0.005, 0.006),
        ("f.py::c", "passed", "gw0", 0.007, 0.008, 0.009),
        ("f.py::c", "passed", "gw0", 0.010, 0.011, 0.012),
        ("f.py::d", "passed", "gw1", 0.013, 0.014, 0.016),
        ("f.py::e", "passed", "gw0", 0.015, 0.017, 0.018),
    ]


def record_arrivals(
    tmp_path: Path, names: Sequence[str], arrivals: Sequence[pytest.TestReport]
) -> list[Result]:
    """The results a run of the tests ``names`` gets from reports arriving in this order."""
    store = open_store(str(tmp_path / "runs.db"))
    recorder = Recorder(lambda: store, lambda message: None, clock=lambda: 0.0)
    tests = [SelectedTest(f"f.py::{name}", "f.py") for name in names]
    run_id = recorder.start(lambda store: make_new_run(), Selection(tests))
    assert run_id is not None
    for arrival in arrivals:
        recorder.add_test_report(arrival)
    recorder.finish(RunFinish(exit_status=1, finished_at=1.0))  # closes the store
    store = open_store(str(tmp_path / "runs.db"))
    try:
        return store.get_run(run_id).results
    finally:
        store.close()


def test_two_workers_running_one_node_id_at_once_keep_their_own_results(tmp_path: Path) -> None:
    # --dist each (or --keep-duplicates): both workers run f.py::a at the same moment.
    arrivals = [
        ("gw0", "setup", "passed"),
        ("gw1", "setup", "passed"),
        ("gw0", "call", "passed"),
        ("gw1", "call", "failed"),
        ("gw0", "teardown", "passed"),
        ("gw1", "teardown", "passed"),
    ]
    reports = [
        worker_report(worker, "f.py::a", when, outcome, duration=number / 1000)
        for number, (worker, when, outcome) in enumerate(arrivals, start=1)
    ]
    results = record_arrivals(tmp_path, ["a", "a"], reports)
    assert [
        (r.outcome, r.worker, r.setup_duration, r.call_duration, r.teardown_duration)
        for r in results
    ] == [("passed", "gw0", 0.001, 0.003, 0.005), ("failed", "gw1", 0.002, 0.004, 0.006)]


def crash_report(worker: str, nodeid: str, outcome: str) -> pytest.TestReport:
    """xdist's controller's report of a test whose worker died (pytest-rerunfailures
    turns its outcome into "rerun" when it reschedules the test)."""
    made = pytest.TestReport(
        nodeid,
        ("f.py", None, "f.py"),
        {},
        outcome,  # type: ignore[arg-type]
        f"{worker} crashed",
        "???",  # type: ignore[arg-type]
    )
    # The worker's controller, as far as pytest (the report's text) and the recorder read it.
    made.node = SimpleNamespace(  # type: ignore[attr-defined]
        gateway=SimpleNamespace(id=worker), _workerinfocache=f"[{worker}] linux -- Python 3"
    )
    return made


@pytest.mark.parametrize("interleaved", [False, True])
def test_a_test_rescheduled_off_a_crashed_worker_keeps_its_rerun_count(
    tmp_path: Path, interleaved: bool
) -> None:
    reports = [
        worker_report("gw0", "f.py::t", "setup"),
        crash_report("gw0", "f.py::t", "rerun"),
        worker_report("gw1", "f.py::t", "setup"),
        worker_report("gw1", "f.py::t", "call"),
        worker_report("gw1", "f.py::t", "teardown"),
    ]
    # gw2 starts f.py::u and dies; interleaved, its setup report comes between
    # gw1's, so that gw1's are read a report at a time.
    reports.insert(3 if interleaved else 5, worker_report("gw2", "f.py::u", "setup"))
    reports.append(crash_report("gw2", "f.py::u", "failed"))
    results = record_arrivals(tmp_path, ["t", "u"], reports)
    assert [(r.nodeid, r.outcome, r.when, r.worker, r.rerun_attempts) for r in results] == [
        ("f.py::t", "passed", "call", "gw1", 1),
        ("f.py::u", "error", "crash", "gw2", 0),
    ]


def test_a_worker_crash_after_a_rerun_in_teardown_ends_the_test(tmp_path: Path) -> None:
    # The teardown report ends an attempt: the crash in the next one ends the test.
    reports = [
        worker_report("gw0", "f.py::t", "setup"),
        worker_report("gw0", "f.py::t", "call"),
        worker_report("gw0", "f.py::t", "teardown", "rerun"),
        crash_report("gw0", "f.py::t", "failed"),
    ]
    results = record_arrivals(tmp_path, ["t"], reports)
    assert [(r.outcome, r.when, r.worker, r.rerun_attempts) for r in results] == [
        ("error", "crash", "gw0", 1)
    ]


class UnreadableController:
    @property
    def gateway(self) -> object:
        raise RuntimeError("gone")

    _workerinfocache = "[gw0] linux -- Python 3"


def test_a_crash_report_whose_worker_cannot_be_read_is_recorded_without_it(
    tmp_path: Path,
) -> None:
    crash = crash_report("gw0", "f.py::t", "failed")
    crash.node = UnreadableController()  # type: ignore[attr-defined]
    results = record_arrivals(tmp_path, ["t"], [crash])
    assert [(r.outcome, r.when, r.worker) for r in results] == [("error", "crash", None)]


def test_an_xdist_worker_crash_after_a_failure_ends_the_test_as_failed() -> None:
    store = CountingStore()
    recorder = Recorder(lambda: store, lambda message: None, clock=lambda: 0.0)  # type: ignore[arg-type,return-value]
    recorder.start(lambda store: make_new_run(), Selection([SelectedTest("f.py::t0", "f.py")]))
    recorder.add_test_report(report("f.py::t0", "setup"))
    recorder.add_test_report(report("f.py::t0", "call", "failed"))
    recorder.add_test_report(report("f.py::t0", "???", "failed"))  # the worker died in teardown
    counts = recorder.counts()
    assert (counts["failed"], counts["not_run"]) == (1, 0)


@pytest.mark.parametrize("enabled", [True, False])
def test_the_collector_is_paused_only_while_a_batch_exists(enabled: bool) -> None:
    was_enabled = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert gc.isenabled() is enabled
        with pytest.raises(ValueError, match="a batch failed"), collector_paused():
            raise ValueError("a batch failed")
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was_enabled else gc.disable)()


def test_the_selection_is_let_go_once_the_run_is_created(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import gc
        import pytest

        from pytest_rerun_runs.store import SelectedTest

        @pytest.hookimpl(trylast=True)
        def pytest_collection_finish(session):
            gc.collect()
            session.config.selected_alive = sum(
                isinstance(o, SelectedTest) for o in gc.get_objects()
            )

        def pytest_sessionfinish(session):
            print("selection objects alive:", session.config.selected_alive)
        """
    )
    pytester.makepyfile(
        "import pytest\n@pytest.mark.parametrize('n', range(50))\ndef test_n(n): pass\n"
    )
    # In a process of its own: this one holds selections of other tests.
    result = pytester.runpytest_subprocess("-s")
    result.assert_outcomes(passed=50)
    result.stdout.fnmatch_lines(["*selection objects alive: 0"])


# -- git and CI ------------------------------------------------------------------


def test_git_branch_and_commit_from_files(tmp_path: Path) -> None:
    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/feature/x\n")
    (git / "refs" / "heads" / "feature").mkdir()
    (git / "refs" / "heads" / "feature" / "x").write_text("a" * 40 + "\n")
    nested = tmp_path / "src" / "pkg"
    nested.mkdir(parents=True)
    assert git_info(nested) == GitInfo("feature/x", "a" * 40)


def test_git_packed_refs_and_detached_head(tmp_path: Path) -> None:
    git = tmp_path / ".git"
    git.mkdir()
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "packed-refs").write_text(f"# pack-refs\n{'b' * 40} refs/heads/main\n")
    assert git_info(tmp_path) == GitInfo("main", "b" * 40)
    (git / "HEAD").write_text("c" * 40 + "\n")
    assert git_info(tmp_path) == GitInfo(None, "c" * 40)


def test_git_worktree_file(tmp_path: Path) -> None:
    real = tmp_path / "real.git"
    (real / "worktrees" / "wt").mkdir(parents=True)
    (real / "refs" / "heads").mkdir(parents=True)
    (real / "refs" / "heads" / "topic").write_text("d" * 40)
    (real / "worktrees" / "wt" / "HEAD").write_text("ref: refs/heads/topic\n")
    (real / "worktrees" / "wt" / "commondir").write_text("../..\n")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / ".git").write_text(f"gitdir: {real / 'worktrees' / 'wt'}\n")
    assert git_info(checkout) == GitInfo("topic", "d" * 40)


def test_no_git_repository(tmp_path: Path) -> None:
    assert git_info(tmp_path) == GitInfo()


def test_the_tree_fingerprint_follows_what_tests_can_see(tmp_path: Path) -> None:
    (tmp_path / "lib.py").write_text("x = 1\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_tracked.py").write_text("def test_a(): pass\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "first")
    (tmp_path / "tests" / "test_new.py").write_text("def test_b(): pass\n")
    (tmp_path / "notes.txt").write_text("not a test file\n")
    files = ["tests/test_tracked.py", "tests/test_new.py"]
    # Every edit below changes a file's size, so that its status tells the change.

    clean = tree_fingerprint(tmp_path, files)
    assert clean is not None
    assert clean.startswith("git:")
    assert tree_fingerprint(tmp_path, files) == clean
    # An untracked file that is not a test file of the run changes nothing.
    (tmp_path / "notes.txt").write_text("still not a test file\n")
    assert tree_fingerprint(tmp_path, files) == clean
    # An untracked test file of the run counts by its size and time.
    (tmp_path / "tests" / "test_new.py").write_text("def test_b(): assert 1\n")
    untracked_edit = tree_fingerprint(tmp_path, files)
    assert untracked_edit != clean
    # A tracked file counts by its content.
    (tmp_path / "lib.py").write_text("x = 22\n")
    tracked_edit = tree_fingerprint(tmp_path, files)
    assert tracked_edit not in (clean, untracked_edit)
    (tmp_path / "lib.py").write_text("x = 1\n")
    assert tree_fingerprint(tmp_path, files) == untracked_edit
    # A commit is a change, whatever the files hold.
    git(tmp_path, "commit", "-qm", "second", "--allow-empty")
    assert tree_fingerprint(tmp_path, files) != untracked_edit


def test_a_large_changed_tracked_file_counts_by_size_and_time_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(invocation, "FINGERPRINT_READ_LIMIT", 100)
    (tmp_path / "small.txt").write_text("s" * 100)
    (tmp_path / "large.bin").write_text("l" * 101)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "first")
    clean = tree_fingerprint(tmp_path)
    # Touched, same content: the small file is read and is no change; the large
    # one is not read, so its new time is a change.
    for name in ("small.txt", "large.bin"):
        os.utime(tmp_path / name, ns=(1_000_000_000, 1_000_000_000))
    assert (tmp_path / "small.txt").stat().st_mtime_ns == 1_000_000_000
    touched = tree_fingerprint(tmp_path)
    assert touched not in (None, clean)
    git(tmp_path, "add", ".")  # the index takes the new times: clean again
    assert tree_fingerprint(tmp_path) == clean
    (tmp_path / "large.bin").write_text("m" * 101)
    assert tree_fingerprint(tmp_path) not in (None, clean)


def test_a_symlinked_test_file_is_fingerprinted_as_its_target(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    target = tmp_path / "tests" / "test_real.py"
    target.write_text("def test_a(): pass\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "first")
    (tmp_path / "test_link.py").symlink_to(target)
    before = tree_fingerprint(tmp_path, ["test_link.py"])
    # The link points at a tracked file: only its content counts, as for that file.
    assert before == tree_fingerprint(tmp_path, [])
    target.write_text("def test_a(): assert 1\n")
    assert tree_fingerprint(tmp_path, ["test_link.py"]) != before


def test_a_repository_of_sha256_ids_is_not_fingerprinted(tmp_path: Path) -> None:
    (tmp_path / "test_a.py").write_text("def test_a(): pass\n")
    git(tmp_path, "init", "-q", "--object-format=sha256")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "first")
    # Its index holds 32-byte ids, which the fingerprint does not read: no evidence.
    assert tree_fingerprint(tmp_path, ["test_a.py"]) is None


def test_without_git_the_fingerprint_is_of_code_and_configuration(tmp_path: Path) -> None:
    (tmp_path / "test_a.py").write_text("def test_a(): pass\n")
    (tmp_path / "output.log").write_text("written by a test\n")
    first = tree_fingerprint(tmp_path, ["test_a.py"])
    assert first is not None
    assert first.startswith("files:")
    (tmp_path / "output.log").write_text("written again by a test\n")
    assert tree_fingerprint(tmp_path, ["test_a.py"]) == first
    (tmp_path / "test_a.py").write_text("def test_a(): assert 1\n")
    assert tree_fingerprint(tmp_path, ["test_a.py"]) != first


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, {}),
        (
            {
                "GITHUB_ACTIONS": "true",
                "GITHUB_RUN_ID": "77",
                "GITHUB_JOB": "test",
                "GITHUB_REF_NAME": "main",
                "GITHUB_SHA": "abc",
            },
            {
                "provider": "github_actions",
                "build_id": "77",
                "job": "test",
                "branch": "main",
                "commit": "abc",
            },
        ),
        (
            {
                "GITLAB_CI": "true",
                "CI_PIPELINE_ID": "5",
                "CI_JOB_NAME": "pytest",
                "CI_COMMIT_REF_NAME": "dev",
                "CI_COMMIT_SHA": "def",
            },
            {
                "provider": "gitlab_ci",
                "build_id": "5",
                "job": "pytest",
                "branch": "dev",
                "commit": "def",
            },
        ),
        (
            {"JENKINS_URL": "http://j", "BUILD_NUMBER": "9"},
            {"provider": "jenkins", "build_id": "9"},
        ),
        (
            {"TF_BUILD": "True", "BUILD_BUILDID": "3"},
            {"provider": "azure_pipelines", "build_id": "3"},
        ),
    ],
)
def test_ci_variables(environ: dict[str, str], expected: dict[str, str]) -> None:
    assert ci_info(environ) == expected


def test_ci_variables_are_recorded(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, show: Callable[..., RunDict]
) -> None:
    monkeypatch.setenv("CIRCLECI", "true")
    monkeypatch.setenv("CIRCLE_BUILD_NUM", "12")
    pytester.makepyfile("def test_a(): pass\n")
    pytester.runpytest()
    assert show()["invocation"]["ci"] == {"provider": "circleci", "build_id": "12"}


# -- pytest-runs list / show ---------------------------------------------------------


@pytest.fixture
def two_runs(pytester: pytest.Pytester, store_path: Path) -> Path:
    pytester.makepyfile("def test_ok(): pass\ndef test_bad(): assert False\n")
    pytester.runpytest("--run-label=first")
    pytester.runpytest("-k", "ok")
    return store_path


def test_list_table(two_runs: Path) -> None:
    code, out = run_cli("--store", str(two_runs), "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "CREATED", "DURATION", "COUNTS", "LABEL", "SOURCE"]
    assert lines[1].split()[:2] == ["2", "passed"]
    assert lines[2].split()[:2] == ["1", "failed"]
    assert "1 passed, 1 failed  first" in lines[2]


def test_list_json_and_limit(two_runs: Path) -> None:
    code, out = run_cli("--store", str(two_runs), "list", "--limit", "1", "--format", "json")
    assert code == 0
    (run,) = json.loads(out)
    assert run["id"] == 2
    assert run["counts"]["passed"] == 1
    assert set(run) == {
        "id",
        "status",
        "exit_status",
        "created_at",
        "duration",
        "counts",
        "label",
        "source_run_id",
        "root_run_id",
        "attempt",
        "mode",
    }


def test_show_json_contract(two_runs: Path) -> None:
    code, out = run_cli("--store", str(two_runs), "show", "1", "--format", "json")
    assert code == 0
    run = json.loads(out)
    assert list(run) == [
        "id",
        "uid",
        "status",
        "exit_status",
        "created_at",
        "started_at",
        "finished_at",
        "duration",
        "label",
        "meta",
        "source_run_id",
        "root_run_id",
        "attempt",
        "mode",
        "reason",
        "invocation",
        "selection",
        "deselected",
        "missing",
        "counts",
        "results",
        "origin",
        "pruned_at",
        "contributors",
        "cancel_requested",
    ]
    assert (
        run["source_run_id"],
        run["root_run_id"],
        run["attempt"],
        run["mode"],
        run["reason"],
    ) == (None, 1, 1, "full", None)
    assert set(run["invocation"]) >= {
        "args",
        "invocation_dir",
        "rootdir",
        "python",
        "pytest",
        "platform",
        "host",
        "git",
        "ci",
    }
    assert set(run["results"][0]) >= {
        "nodeid",
        "outcome",
        "when",
        "duration",
        "worker",
        "longrepr",
        "rerun_attempts",
    }


def test_show_text(two_runs: Path) -> None:
    code, out = run_cli("--store", str(two_runs), "show", "last")
    assert code == 0
    assert out.startswith("run 2: passed (exit 0)")
    code, out = run_cli("--store", str(two_runs), "show", "1")
    assert "FAILED   test_show_text.py::test_bad" in out
    assert "label     first" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "9"], "run 9 not found in {store} (the newest is 2)"),
        (["show", "abc"], "expected a run id (a positive number), 'last', got 'abc'"),
        (["show", "0"], "expected a run id (a positive number), 'last', got '0'"),
        (["show", "\u0661"], "expected a run id (a positive number), 'last', got '\u0661'"),
        (["show", "\uff11"], "expected a run id (a positive number), 'last', got '\uff11'"),
        (["show", "1_0"], "expected a run id (a positive number), 'last', got '1_0'"),
        (
            ["show", "99999999999999999999"],
            "expected a run id (a positive number), 'last', got '99999999999999999999'",
        ),
        (
            ["list", "--limit", "0"],
            "argument --limit: expected a positive whole number up to 9223372036854775807, got '0'",
        ),
        (["--store", "foo://x", "list"], "foo://x: unknown store scheme foo://"),
        (
            ["--store", "http://u:tok@127.0.0.1:9", "list"],
            "run store http://u:***@127.0.0.1:9 did not answer GET /runs: ConnectionError",
        ),
    ],
)
def test_cli_errors_are_one_line_exit_4(
    two_runs: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    capsys.readouterr()
    code, _ = run_cli("--store", str(two_runs), *args)
    assert code == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert message.format(store=two_runs) in err


def test_cli_missing_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run_cli("--store", str(tmp_path / "nope.db"), "list")
    assert code == 4
    assert (
        capsys.readouterr().err == f"pytest-runs: error: no run store at {tmp_path / 'nope.db'}\n"
    )
    assert not (tmp_path / "nope.db").exists()


def test_cli_module_entry_point_lists_every_example() -> None:
    from pytest_rerun_runs.cli import EXAMPLES

    help_text = subprocess.run(
        [sys.executable, "-m", "pytest_rerun_runs", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for examples in EXAMPLES.values():
        for example in examples:
            assert f"  {example}\n" in help_text


def test_cli_reads_runs_stale_after_from_the_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nruns_stale_after = 0.000001\n")
    store = open_store(str(pytester.path / ".pytest_runs" / "runs.db"))
    try:
        store.create_run(make_new_run(host="another-machine"), Selection([]))
    finally:
        store.close()
    code, out = run_cli("list", "--format", "json", cwd=pytester.path)
    assert code == 0
    assert json.loads(out)[0]["status"] == "interrupted"


def test_cli_finds_the_store_from_a_subdirectory_of_a_bare_pyproject(
    pytester: pytest.Pytester,
) -> None:
    pytester.makefile(".toml", pyproject="[project]\nname = 'x'\n")
    tests = pytester.mkdir("tests")
    (tests / "test_a.py").write_text("def test_a(): pass\n")
    pytester.runpytest_subprocess("tests")
    code, out = run_cli("list", "--format", "json", cwd=tests)
    assert code == 0
    assert [run["id"] for run in json.loads(out)] == [1]


def test_cli_falls_back_to_the_nearest_store_above(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_a(): pass\n")
    pytester.runpytest()
    deep = pytester.mkdir("docs") / "inner"
    deep.mkdir()
    (deep / "tox.ini").write_text("[pytest]\n")
    code, out = run_cli("list", "--format", "json", cwd=deep)
    assert code == 0
    assert len(json.loads(out)) == 1


def test_the_origin_remote_is_recorded_without_credentials(tmp_path: Path) -> None:
    git = tmp_path / ".git"
    git.mkdir()
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "config").write_text(
        '[core]\n\tbare = false\n[remote "upstream"]\n\turl = https://example.org/other.git\n'
        '[remote "origin"]\n\turl = https://ci:s3cret@example.org/team/app.git\n'
    )
    assert git_info(tmp_path).remote == "https://ci:***@example.org/team/app.git"
