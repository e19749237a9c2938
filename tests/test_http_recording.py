"""The plugin and ``pytest-runs`` against a live server: recording (plain and
under xdist), the spool when the server is gone, rate limits, queued retries,
``--retry-run=next``, cancelling, and the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_rerun_runs.store import NothingToRetry, open_store
from tests.serving import Served, free_port, runs_cli, serve

SUITE = """
import pytest

def test_a():
    pass

def test_b():
    assert False

@pytest.mark.parametrize("n", [1, 2, 3])
def test_c(n):
    pass
"""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = serve(tmp_path / "server" / "runs.db")
    yield server
    server.stop()


def use_server(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, served: Served, scope: str = "all"
) -> None:
    monkeypatch.setenv("PYTEST_RUNS_STORE", served.base)
    monkeypatch.setenv("PYTEST_RUNS_TOKEN", served.tokens[scope])


def outcomes(served: Served, run_id: int) -> list[tuple[str, str]]:
    run = served.get(f"/runs/{run_id}").json()
    return [(r["nodeid"], r["outcome"]) for r in run["results"]]


EXPECTED = [
    ("test_suite.py::test_a", "passed"),
    ("test_suite.py::test_b", "failed"),
    ("test_suite.py::test_c[1]", "passed"),
    ("test_suite.py::test_c[2]", "passed"),
    ("test_suite.py::test_c[3]", "passed"),
]


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["plain", "xdist"])
def test_a_session_records_into_the_server(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, served: Served, xdist: list[str]
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    use_server(pytester, monkeypatch, served)
    result = pytester.runpytest_subprocess(*xdist)
    assert result.ret == 1
    result.stdout.fnmatch_lines([f"run 1 recorded: 4 passed, 1 failed in {served.base}"])
    printed = result.stdout.str() + result.stderr.str()
    assert all(token not in printed for token in served.tokens.values())
    assert sorted(outcomes(served, 1)) == EXPECTED
    run = served.get("/runs/1").json()
    assert run["status"] == "failed"
    assert served.tokens["all"] not in json.dumps(run)
    assert not (pytester.path / ".pytest_runs" / "spool").exists()


def test_a_token_in_the_url_is_never_recorded_or_printed(
    pytester: pytest.Pytester, served: Served
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    token = served.tokens["all"]
    url = served.base.replace("http://", f"http://{token}@")
    result = pytester.runpytest_subprocess(f"--runs-store={url}")
    assert result.ret == 1
    assert token not in result.stdout.str() + result.stderr.str()
    run = served.get("/runs/1").json()
    assert token not in json.dumps(run)
    assert any("***@" in arg for arg in run["invocation"]["args"])


def test_an_unreachable_server_spools_the_run_and_sync_uploads_it_once(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("PYTEST_RUNS_STORE", base)
    result = pytester.runpytest_subprocess("-o", "runs_flush_interval=0")
    assert result.ret == 1  # the session's own outcome, unchanged
    result.stdout.fnmatch_lines(["*= 1 failed, 4 passed in *"])
    warnings = [line for line in result.stdout.lines if "rerun-runs: warning" in line]
    assert len(warnings) == 1
    assert "spooled to" in warnings[0]
    spooled = list((pytester.path / ".pytest_runs" / "spool").glob("*.jsonl"))
    assert len(spooled) == 1
    server = serve(tmp_path / "later" / "runs.db", port=port)
    try:
        monkeypatch.setenv("PYTEST_RUNS_TOKEN", server.tokens["all"])
        monkeypatch.chdir(pytester.path)
        synced = runs_cli("sync", f"--store={base}", cwd=pytester.path)
        assert synced.stderr == ""
        assert (synced.returncode, synced.stdout) == (
            0,
            f"uploaded 1 spooled run(s) to {base}: 1\n",
        )
        again = runs_cli("sync", f"--store={base}", cwd=pytester.path)
        assert again.stdout == f"uploaded 0 spooled run(s) to {base}\n"
        assert sorted(outcomes(server, 1)) == EXPECTED
        assert server.get("/runs/1").json()["status"] == "failed"
        assert len(server.get("/runs").json()["runs"]) == 1
    finally:
        server.stop()


KILLER = """
import os, signal, time, urllib.request

def test_1():
    pass

def test_2_the_server_goes_away():
    os.kill(int(os.environ["SERVER_PID"]), signal.SIGKILL)
    deadline = time.monotonic() + 20
    while os.path.exists(f"/proc/{os.environ['SERVER_PID']}/status"):
        with open(f"/proc/{os.environ['SERVER_PID']}/status") as status:
            if "State:\\tZ" in status.read():
                break
        assert time.monotonic() < deadline
        time.sleep(0.01)  # polling for the process to be gone

def test_3():
    pass

def test_4():
    assert False
"""


def test_a_server_killed_mid_session_loses_nothing(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    store = tmp_path / "server" / "runs.db"
    server = serve(store)
    port = int(server.base.rsplit(":", 1)[1])
    pytester.makepyfile(test_killer=KILLER)
    use_server(pytester, monkeypatch, server)
    monkeypatch.setenv("SERVER_PID", str(server.process.pid))
    result = pytester.runpytest_subprocess("-o", "runs_flush_interval=0")
    server.stop()
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*rerun-runs: warning: *spooled to*"])
    revived = serve(store, tokens=False, port=port)
    revived.tokens = server.tokens
    try:
        pytester.makepyfile(test_other="def test_x():\n    pass\n")
        later = pytester.runpytest_subprocess("test_other.py")
        later.stdout.fnmatch_lines(["rerun-runs: uploaded 1 spooled run(s) to *: 1"])
        assert outcomes(revived, 1) == [
            ("test_killer.py::test_1", "passed"),
            ("test_killer.py::test_2_the_server_goes_away", "passed"),
            ("test_killer.py::test_3", "passed"),
            ("test_killer.py::test_4", "failed"),
        ]
        first = revived.get("/runs/1").json()
        assert (first["status"], first["counts"]["not_run"]) == ("failed", 0)
        assert [r["id"] for r in revived.get("/runs").json()["runs"]] == [2, 1]
        assert not list((pytester.path / ".pytest_runs" / "spool").glob("*.jsonl"))
    finally:
        revived.stop()


def test_a_storm_of_429s_still_records_everything(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server = serve(tmp_path / "server" / "runs.db", "--rate-limit=4/second")
    try:
        pytester.makepyfile(
            test_many="import pytest\n@pytest.mark.parametrize('n', range(12))\n"
            "def test_n(n):\n    pass\n"
        )
        use_server(pytester, monkeypatch, server)
        result = pytester.runpytest_subprocess("-o", "runs_flush_interval=0")
        assert result.ret == 0
        assert "warning" not in result.stdout.str()
        # Read the server's store itself: the API would count against the tiny limit.
        store = open_store(str(server.store), create=False, read_only=True)
        try:
            recorded = store.get_summary(1)
        finally:
            store.close()
        assert (recorded.status, recorded.counts["passed"]) == ("passed", 12)
    finally:
        server.stop()


def queue_retry(served: Served, source: int, **body: Any) -> int:
    answer = served.post(f"/runs/{source}/retry", json=body)
    assert answer.status_code == 202, answer.text
    new_run_id: int = answer.json()["new_run_id"]
    return new_run_id


def test_a_queued_retry_is_claimed_and_recorded_into(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, served: Served
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    use_server(pytester, monkeypatch, served)
    pytester.runpytest_subprocess()
    queued = queue_retry(served, 1, failed_only=True, reason="bot")
    result = pytester.runpytest_subprocess(f"--retry-run={queued}")
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [f"rerun-runs: retrying queued run {queued} (failed-only): 1 of 5 tests, attempt 2"]
    )
    run = served.get(f"/runs/{queued}").json()
    assert (run["status"], run["mode"], run["reason"]) == ("failed", "failed_only", "bot")
    assert [(r["nodeid"], r["outcome"]) for r in run["results"]] == [
        ("test_suite.py::test_b", "failed")
    ]
    assert run["invocation"]["pid"] != served.get("/runs/1").json()["invocation"]["pid"]
    assert [r["id"] for r in served.get("/runs").json()["runs"]] == [queued, 1]


def test_a_queued_run_another_session_claimed_is_refused(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, served: Served
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    use_server(pytester, monkeypatch, served)
    pytester.runpytest_subprocess()
    queued = queue_retry(served, 1)
    from tests.serving import invocation

    served.post(f"/runs/{queued}/claim", json={"invocation": invocation("ci-other")})
    result = pytester.runpytest_subprocess(f"--retry-run={queued}")
    assert result.ret == 4
    result.stderr.fnmatch_lines(
        [
            f"ERROR: --retry-run {queued}: run {queued} is a queued retry"
            " that ci-other already claimed"
        ]
    )
    assert "Traceback" not in result.stderr.str()


def test_retry_run_next_claims_the_oldest_queued_run_of_the_project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, served: Served
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    use_server(pytester, monkeypatch, served)
    pytester.runpytest_subprocess()
    first = queue_retry(served, 1)
    second = queue_retry(served, 1, failed_only=True)
    taken = pytester.runpytest_subprocess("--retry-run=next")
    taken.stdout.fnmatch_lines([f"rerun-runs: retrying queued run {first} (all tests)*"])
    assert served.get(f"/runs/{first}").json()["status"] == "failed"
    again = pytester.runpytest_subprocess("--retry-run=next")
    again.stdout.fnmatch_lines([f"rerun-runs: retrying queued run {second} (failed-only)*"])
    none = pytester.runpytest_subprocess("--retry-run=next")
    assert none.ret == 5
    assert f"no queued run for {pytester.path.name}" in none.stdout.str() + none.stderr.str()


CANCELLER = """
import json, os, urllib.request

def call(method, path):
    request = urllib.request.Request(
        os.environ["PYTEST_RUNS_STORE"] + "/api/v1" + path,
        method=method,
        headers={"Authorization": "Bearer " + os.environ["PYTEST_RUNS_TOKEN"]},
    )
    with urllib.request.urlopen(request) as response:
        return json.load(response)

def test_1():
    pass

def test_2_cancels_its_own_run():
    [run] = call("GET", "/runs?status=running")["runs"]
    assert call("POST", f"/runs/{run['id']}/cancel")["status"] == "cancel_requested"

def test_3():
    pass

def test_4():
    pass
"""


def test_a_run_cancelled_through_the_api_stops_the_session(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, served: Served
) -> None:
    pytester.makepyfile(test_cancel=CANCELLER)
    use_server(pytester, monkeypatch, served)
    result = pytester.runpytest_subprocess("-o", "runs_flush_interval=0", "-p", "no:randomly")
    assert result.ret == 2
    result.stdout.fnmatch_lines(["*run 1 was cancelled*"])
    run = served.get("/runs/1").json()
    assert run["status"] == "cancelled"
    assert [(r["nodeid"].split("::")[1], r["outcome"]) for r in run["results"]] == [
        ("test_1", "passed"),
        ("test_2_cancels_its_own_run", "passed"),
        ("test_3", "not_run"),
        ("test_4", "not_run"),
    ]


def test_the_cli_against_the_server(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, served: Served
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    use_server(pytester, monkeypatch, served)
    pytester.runpytest_subprocess()
    listed = runs_cli("list", "--format=json", cwd=pytester.path)
    assert [run["id"] for run in json.loads(listed.stdout)] == [1]
    shown = runs_cli("show", "1", "--format=json", cwd=pytester.path)
    assert json.loads(shown.stdout)["selection"] == [nodeid for nodeid, _ in EXPECTED]
    exported = runs_cli("export", "1", "--format=json", "-o", "run.json", cwd=pytester.path)
    assert exported.returncode == 0
    assert runs_cli("lineage", "1", cwd=pytester.path).stdout.startswith("run 1  failed")
    assert runs_cli("diff", "1", "1", cwd=pytester.path).returncode == 0
    assert runs_cli("flaky", cwd=pytester.path).returncode == 0
    imported = runs_cli("import", "run.json", "--format=json", cwd=pytester.path)
    assert json.loads(imported.stdout)["new"] is False  # the same uid: the same run
    pytester.runpytest_subprocess()
    monkeypatch.setenv("PYTEST_RUNS_TOKEN", served.tokens["runs:read"])
    prune = runs_cli("prune", "--keep", "1", cwd=pytester.path)
    assert (prune.returncode, prune.stdout) == (4, "")
    assert (
        prune.stderr
        == f"pytest-runs: error: run store {served.base}: the token lacks the admin scope\n"
    )
    monkeypatch.setenv("PYTEST_RUNS_TOKEN", served.tokens["admin"])
    assert (
        runs_cli("prune", "--keep", "1", cwd=pytester.path).returncode == 4
    )  # admin only: no read
    monkeypatch.setenv("PYTEST_RUNS_TOKEN", "prr_" + "x" * 43)
    refused = runs_cli("list", cwd=pytester.path)
    assert refused.returncode == 4
    assert refused.stderr.startswith(
        f"pytest-runs: error: run store {served.base} refused the token"
    )


def test_recorded_arguments_from_a_shared_store_run_only_when_confirmed(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, served: Served
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    use_server(pytester, monkeypatch, served)
    pytester.runpytest_subprocess()
    refused = runs_cli("retry", "1", cwd=pytester.path)
    assert refused.returncode == 4
    assert "run 1 was read from a shared store: its recorded arguments would run as" in (
        refused.stderr
    )
    assert "pass --yes to run them" in refused.stderr
    assert [r["id"] for r in served.get("/runs").json()["runs"]] == [1]
    confirmed = runs_cli("retry", "1", "--failed-only", "--yes", cwd=pytester.path)
    assert confirmed.returncode == 1
    assert [r["id"] for r in served.get("/runs").json()["runs"]] == [2, 1]


def test_a_label_on_two_lines_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest("--run-label=one\ntwo")
    assert result.ret == 4
    assert "--run-label expects one line of text" in result.stderr.str()


def test_a_nul_in_a_failure_is_recorded_through_the_server(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, served: Served
) -> None:
    pytester.makepyfile("def test_nul():\n    raise Exception('a\\x00b')\n")
    use_server(pytester, monkeypatch, served)
    result = pytester.runpytest_subprocess()
    assert result.ret == 1
    assert "warning" not in result.stdout.str()
    assert "Exception: a\\x00b" in served.get("/runs/1").json()["results"][0]["longrepr"]


def test_retry_run_next_takes_the_next_run_when_another_session_won_the_oldest(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, served: Served
) -> None:
    from pytest_rerun_runs.retry_source import parse_run_reference, resolve_source

    pytester.makepyfile(test_suite=SUITE)
    use_server(pytester, monkeypatch, served)
    pytester.runpytest_subprocess()
    first = queue_retry(served, 1)
    second = queue_retry(served, 1, failed_only=True)
    tried: list[int] = []

    def claim(run_id: int) -> bool:  # another job wins the oldest in between
        tried.append(run_id)
        return run_id != first

    reference = parse_run_reference("next", base=pytester.path)
    source = resolve_source(reference, served.base, rootdir=str(pytester.path), claim=claim)
    assert (tried, source.claim) == ([first, second], second)
    with pytest.raises(NothingToRetry, match="claimed by another session"):
        resolve_source(reference, served.base, rootdir=str(pytester.path), claim=lambda _: False)
