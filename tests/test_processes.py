"""Real processes: xdist, a crashed worker, SIGKILL, concurrent sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import RunDict, kill_at_gate, outcomes
from tests.test_recording import EXPECTED, SHAPES


def test_xdist_records_the_same_outcomes(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(test_shapes=SHAPES)
    spaced = pytester.mkdir("dir with space")
    (spaced / "test_spaced.py").write_text("def test_in_spaced_dir():\n    pass\n")
    result = pytester.runpytest_subprocess("-n", "2", "--doctest-modules")
    assert result.ret == 1
    run = show()
    recorded = {r["nodeid"]: (r["outcome"], r["when"]) for r in run["results"]}
    assert recorded == {k: v for k, v in EXPECTED.items() if k != "test_broken.py"}
    assert {r["worker"] for r in run["results"]} == {"gw0", "gw1"}
    assert run["invocation"]["workers"] == 2
    assert sorted(run["selection"]) == sorted(recorded)
    result.stdout.fnmatch_lines(["rerun-runs: recording run 1 in .pytest_runs/runs.db"])


def test_xdist_records_deselection_from_the_workers(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile("def test_one(): pass\ndef test_two(): pass\ndef test_three(): pass\n")
    result = pytester.runpytest_subprocess("-n", "2", "-k", "not two")
    result.assert_outcomes(passed=2)
    run = show()
    assert run["deselected"] == 1
    assert len(run["selection"]) == 2


NOTING_IMPORTS = """
import json, os, sys

def pytest_sessionfinish(session):
    workerinput = getattr(session.config, "workerinput", None)
    worker = "controller" if workerinput is None else workerinput["workerid"]
    ours = sorted(m for m in sys.modules if m.startswith("pytest_rerun_runs"))
    heavy = sorted(m for m in ("requests", "psycopg", "fastapi", "yaml") if m in sys.modules)
    with open(os.path.join(os.environ["NOTES"], worker + ".json"), "w") as notes:
        json.dump({"ours": ours, "heavy": heavy}, notes)
"""


def test_each_process_imports_only_what_it_uses(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    monkeypatch.setenv("NOTES", str(tmp_path))
    pytester.makeconftest(NOTING_IMPORTS)
    pytester.makepyfile("def test_one(): pass\ndef test_two(): pass\n")
    result = pytester.runpytest_subprocess("-n", "2")
    result.assert_outcomes(passed=2)
    imported = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert set(imported) == {"controller", "gw0", "gw1"}
    # A worker never touches the store.
    for worker in ("gw0", "gw1"):
        assert imported[worker] == {
            "ours": [
                "pytest_rerun_runs",
                "pytest_rerun_runs.locate",
                "pytest_rerun_runs.plugin",
                "pytest_rerun_runs.worker",
            ],
            "heavy": [],
        }
    # The controller records: no retry, server or other backend modules.
    controller = imported["controller"]
    assert controller["heavy"] == []
    assert not {
        "pytest_rerun_runs.collection",
        "pytest_rerun_runs.planner",
        "pytest_rerun_runs.retry_source",
        "pytest_rerun_runs.server",
        "pytest_rerun_runs.store.http",
        "pytest_rerun_runs.store.postgres",
    } & set(controller["ours"])
    assert "pytest_rerun_runs.store.sqlite" in controller["ours"]


def test_xdist_worker_crash_is_an_error(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(
        """
        import os

        def test_before():
            pass

        def test_crash():
            os._exit(1)

        def test_after():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-n", "1", "-p", "no:randomly")
    assert result.ret == 1
    run = show()
    by_id = {r["nodeid"].split("::")[1]: r for r in run["results"]}
    assert by_id["test_crash"]["outcome"] == "error"
    assert by_id["test_crash"]["when"] == "crash"
    assert by_id["test_crash"]["worker"] == "gw0"
    assert "crashed while running" in by_id["test_crash"]["longrepr"]
    assert by_id["test_before"]["outcome"] == "passed"
    assert by_id["test_after"]["outcome"] == "passed"


def test_a_test_that_crashed_its_worker_and_passed_when_rerun_counts_the_rerun(
    pytester: pytest.Pytester, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(
        """
        import os
        from pathlib import Path

        def test_crash_once():
            crashed = Path(__file__).with_name("crashed")
            if not crashed.exists():
                crashed.touch()
                os._exit(1)

        def test_fine():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-n", "2", "--reruns", "1", "-p", "rerunfailures")
    assert result.parseoutcomes() == {"passed": 2, "rerun": 1}
    by_id = {r["nodeid"].split("::")[1]: r for r in show()["results"]}
    crashed = by_id["test_crash_once"]
    assert (crashed["outcome"], crashed["when"], crashed["rerun_attempts"]) == ("passed", "call", 1)
    assert crashed["worker"] in {"gw0", "gw1", "gw2"}
    assert (by_id["test_fine"]["outcome"], by_id["test_fine"]["rerun_attempts"]) == ("passed", 0)


def test_sigkill_keeps_earlier_results_and_reads_interrupted(
    pytester: pytest.Pytester, show: Callable[..., RunDict], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    never = tmp_path / "never"
    os.mkfifo(gate)
    os.mkfifo(never)
    pytester.makeini("[pytest]\nruns_flush_interval = 0\n")
    pytester.makepyfile(
        f"""
        def test_one(): pass
        def test_two(): pass
        def test_three(): assert False

        def test_blocks():
            with open({str(gate)!r}, "w") as gate:
                gate.write("running")
            open({str(never)!r}).read()  # blocks until the process is killed

        def test_after(): pass
        """
    )
    kill_at_gate(pytester.path, gate, "-p", "no:cacheprovider")
    run = show()
    assert run["status"] == "interrupted"
    assert run["finished_at"] is None
    assert list(outcomes(run).values()) == ["passed", "passed", "failed", "not_run", "not_run"]
    assert run["counts"]["not_run"] == 2


OPEN_AT_ONCE = """
import json, multiprocessing, sys
from pathlib import Path
from pytest_rerun_runs.store.sqlite import SqliteStore

def open_store(path, barrier, failures):
    barrier.wait()
    try:
        SqliteStore(path, create=True).close()
    except Exception as exc:
        failures.put(str(exc))

if __name__ == "__main__":
    fork = multiprocessing.get_context("fork")
    failures = fork.Queue()
    for round in range(30):
        path = Path(sys.argv[1], str(round), "runs.db")
        barrier = fork.Barrier(6)
        openers = [
            fork.Process(target=open_store, args=(path, barrier, failures)) for _ in range(6)
        ]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join()
    failed = []
    while not failures.empty():
        failed.append(failures.get())
    print(json.dumps(failed))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="forks its openers")
def test_sessions_creating_one_store_at_once_all_open_it(tmp_path: Path) -> None:
    # Before each opener saw a whole store or none, about one round in six
    # failed: WAL refused while another opener read, or tables seen half made.
    script = tmp_path / "open_at_once.py"
    script.write_text(OPEN_AT_ONCE)
    opened = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "stores")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(opened.stdout) == []
    assert len(list((tmp_path / "stores").glob("*/runs.db"))) == 30


def test_concurrent_sessions_on_one_store_all_succeed(
    pytester: pytest.Pytester, tmp_path: Path, show: Callable[..., RunDict]
) -> None:
    store = tmp_path / "shared" / "runs.db"
    pytester.makeini("[pytest]\nruns_flush_interval = 0\n")
    pytester.makepyfile(
        "import pytest\n"
        "@pytest.mark.parametrize('n', range(150))\n"
        "def test_many(n):\n    assert n != 7\n"
    )
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                f"--runs-store={store}",
            ],
            cwd=pytester.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [process.returncode for process in processes] == [1, 1, 1, 1], outputs
    warnings = [line for output in outputs for line in output.splitlines() if "warning" in line]
    assert warnings == []
    runs = [show(run_id, store=store) for run_id in (1, 2, 3, 4)]
    assert {run["invocation"]["pid"] for run in runs} == {p.pid for p in processes}
    for run in runs:
        assert run["status"] == "failed"
        assert run["counts"] == {
            "passed": 149,
            "failed": 1,
            "error": 0,
            "skipped": 0,
            "xfailed": 0,
            "xpassed": 0,
            "not_run": 0,
        }
