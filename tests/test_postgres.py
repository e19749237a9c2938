"""PostgreSQL beyond the contract: many sessions at once (directly and through
the server), retries from it, copying history in and out, a newer schema."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_rerun_runs.store import StoreTooNew, open_store
from tests.serving import runs_cli, serve

ROOT = Path(__file__).resolve().parent.parent

SUITE = """
import pytest

@pytest.mark.parametrize("n", range(40))
def test_n(n):
    assert n % 10 != 7
"""


def test_sixteen_sessions_record_into_one_database_at_once(
    pytester: pytest.Pytester, postgres_url: str
) -> None:
    pytester.makepyfile(test_many=SUITE)
    sessions = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:randomly",
                f"--runs-store={postgres_url}",
            ],
            cwd=pytester.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(16)
    ]
    outputs = [session.communicate(timeout=120)[0] for session in sessions]
    assert [session.returncode for session in sessions] == [1] * 16, outputs[0]
    warned = [line for output in outputs for line in output.splitlines() if "warning" in line]
    assert warned == []
    store = open_store(postgres_url)
    try:
        runs = store.list_runs()
        assert sorted(s.id for s in runs) == list(range(1, 17))
        for summary in runs:
            assert (summary.status, summary.counts["passed"], summary.counts["failed"]) == (
                "failed",
                36,
                4,
            )
            assert len(store.get_run(summary.id).results) == 40
    finally:
        store.close()


def test_a_retry_from_postgres(pytester: pytest.Pytester, postgres_url: str) -> None:
    pytester.makepyfile(test_many=SUITE)
    pytester.runpytest_subprocess(f"--runs-store={postgres_url}")
    result = pytester.runpytest_subprocess(
        f"--runs-store={postgres_url}", "--retry-run=1", "--failed-only"
    )
    result.assert_outcomes(failed=4)
    shown = runs_cli("--store", postgres_url, "show", "2", "--format=json")
    run = json.loads(shown.stdout)
    assert (run["source_run_id"], run["attempt"], run["mode"]) == (1, 2, "failed_only")
    assert run["selection"] == [f"test_many.py::test_n[{n}]" for n in (7, 17, 27, 37)]


def test_sessions_through_the_server_into_postgres_lose_nothing(
    tmp_path: Path, postgres_url: str
) -> None:
    spec = importlib.util.spec_from_file_location(
        "server_load", ROOT / "benchmarks" / "server_load.py"
    )
    assert spec is not None
    assert spec.loader is not None
    load = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = load
    spec.loader.exec_module(load)
    server = serve(postgres_url, "--workers=2", "--rate-limit=1000000/minute")  # type: ignore[arg-type]
    try:
        report = load.run_load(
            server.base, server.tokens["all"], clients=16, results=2000, batch=250, others=3
        )
    finally:
        stderr = server.stop()
    assert (len(report.run_ids), report.lost, report.server_errors) == (16, {}, 0)
    assert len(set(report.run_ids)) == 16
    assert "Traceback" not in stderr


def test_copy_moves_history_both_ways_once(
    pytester: pytest.Pytester, postgres_url: str, tmp_path: Path
) -> None:
    pytester.makepyfile(test_many=SUITE)
    local = pytester.path / "runs.db"
    pytester.runpytest_subprocess(f"--runs-store={local}")
    pytester.runpytest_subprocess(f"--runs-store={local}", "--retry-run=1", "--failed-only")
    first = runs_cli("copy", f"--from={local}", f"--to={postgres_url}", "--format=json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["copied"] == [{"from": 1, "to": 1}, {"from": 2, "to": 2}]
    again = runs_cli("copy", f"--from={local}", f"--to={postgres_url}", "--format=json")
    assert json.loads(again.stdout) == {"copied": [], "already_there": [1, 2], "skipped": []}
    copied = json.loads(runs_cli("--store", postgres_url, "show", "2", "--format=json").stdout)
    original = json.loads(runs_cli("--store", str(local), "show", "2", "--format=json").stdout)
    assert copied["origin"]["run_id"] == 2
    assert (copied["origin"]["source_run_id"], copied["origin"]["attempt"]) == (1, 2)
    assert copied["selection"] == original["selection"]
    assert [(r["nodeid"], r["outcome"]) for r in copied["results"]] == [
        (r["nodeid"], r["outcome"]) for r in original["results"]
    ]
    back = tmp_path / "back.db"
    home = runs_cli("copy", f"--from={postgres_url}", f"--to={back}")
    assert home.stdout.startswith("copied 2 run(s) from postgresql://")
    assert (
        json.loads(runs_cli("--store", str(back), "show", "2", "--format=json").stdout)["uid"]
        == original["uid"]
    )


def test_a_database_of_a_newer_schema_is_never_written(postgres_url: str) -> None:
    import psycopg

    open_store(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("UPDATE schema_version SET version = 99")
        before = connection.execute("SELECT count(*) FROM runs").fetchone()
    with pytest.raises(StoreTooNew) as raised:
        open_store(postgres_url)
    assert "schema 99" in str(raised.value)
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        assert connection.execute("SELECT count(*) FROM runs").fetchone() == before
        assert connection.execute("SELECT version FROM schema_version").fetchone() == (99,)


def test_a_server_on_postgres_survives_a_lost_connection(postgres_url: str) -> None:
    import psycopg

    server = serve(postgres_url, "--rate-limit=1000000/minute")  # type: ignore[arg-type]
    try:
        assert server.get("/runs").status_code == 200
        database = postgres_url.split("?", maxsplit=1)[0].rsplit("/", 1)[1]
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            ).fetchone()
        assert killed is not None
        assert killed[0] >= 1
        assert [server.get("/runs").status_code for _ in range(3)] == [200, 200, 200]
    finally:
        server.stop()


def test_text_with_nul_is_recorded_on_postgres(
    pytester: pytest.Pytester, postgres_url: str
) -> None:
    pytester.makepyfile("def test_nul():\n    raise Exception('a\\x00b')\n")
    result = pytester.runpytest_subprocess(f"--runs-store={postgres_url}")
    assert result.ret == 1
    assert "warning" not in result.stdout.str()
    run = json.loads(runs_cli("--store", postgres_url, "show", "1", "--format=json").stdout)
    assert "Exception: a\\x00b" in run["results"][0]["longrepr"]
