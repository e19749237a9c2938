"""A broken store never changes the test session: one warning, normal exit code."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_rerun_runs.store import sqlite as sqlite_store

SUITE = "def test_ok(): pass\ndef test_bad(): assert False\n"


def assert_session_unchanged(result: pytest.RunResult) -> None:
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, failed=1)


def test_unwritable_store(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SUITE)
    blocker = pytester.path / "not_a_directory"
    blocker.write_text("a file")
    result = pytester.runpytest(f"--runs-store={blocker}/runs.db")
    assert_session_unchanged(result)
    result.stdout.fnmatch_lines(
        [
            f"rerun-runs: warning: cannot open run store {blocker}/runs.db: *; this session is not"
            " recorded (tests run as usual)"
        ]
    )
    assert result.stdout.str().count("rerun-runs: warning") == 1
    assert "recorded:" not in result.stdout.str()


def test_corrupt_store_is_left_untouched(pytester: pytest.Pytester, store_path: Path) -> None:
    pytester.makepyfile(SUITE)
    store_path.parent.mkdir()
    garbage = b"this is not a database " * 200
    store_path.write_bytes(garbage)
    result = pytester.runpytest()
    assert_session_unchanged(result)
    result.stdout.fnmatch_lines(
        ["rerun-runs: warning: *runs.db is not a run store (not an SQLite database)*"]
    )
    assert store_path.read_bytes() == garbage


def test_store_of_a_newer_schema_is_not_written(
    pytester: pytest.Pytester, store_path: Path
) -> None:
    pytester.makepyfile(SUITE)
    pytester.runpytest()
    connection = sqlite3.connect(store_path)
    with connection:
        connection.execute("UPDATE schema_version SET version = 99")
    connection.close()
    result = pytester.runpytest()
    assert_session_unchanged(result)
    result.stdout.fnmatch_lines(
        ["rerun-runs: warning: run store * was written by a newer pytest-rerun-runs (schema 99,*"]
    )
    connection = sqlite3.connect(store_path)
    assert connection.execute("SELECT count(*) FROM runs").fetchone() == (1,)
    connection.close()


def test_store_locked_for_too_long(
    pytester: pytest.Pytester, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(SUITE)
    pytester.runpytest()
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_SECONDS", 0.05)
    holder = sqlite3.connect(store_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = pytester.runpytest()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert_session_unchanged(result)
    result.stdout.fnmatch_lines(["rerun-runs: warning: *database is locked*"])


def test_store_that_fills_up_mid_session(pytester: pytest.Pytester, store_path: Path) -> None:
    """A file size limit makes every write past it fail, as a full disk does."""
    pytester.makepyfile(
        "import pytest\n"
        "@pytest.mark.parametrize('n', range(300))\n"
        "def test_big_failure(n):\n    assert False, 'x' * 15000\n"
    )
    pytester.makeini("[pytest]\nruns_flush_interval = 0\n")
    pytester.runpytest("-k", "big_failure[0]")  # creates the store
    limit = store_path.stat().st_size + 256 * 1024
    driver = textwrap.dedent(
        f"""
        import resource, signal, sys
        import pytest
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        sys.exit(pytest.main(["-q", "-p", "no:cacheprovider"]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", driver],
        cwd=pytester.path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1, result.stdout
    assert "300 failed" in result.stdout
    warnings = [line for line in result.stdout.splitlines() if "rerun-runs: warning" in line]
    assert len(warnings) == 1, result.stdout
    assert "cannot write run store" in warnings[0]
    assert "cannot rollback" not in warnings[0]
    assert "database or disk is full" in warnings[0] or "disk I/O error" in warnings[0]
    # What was written before the store filled up is still readable.
    connection = sqlite3.connect(store_path)
    (status, count) = connection.execute(
        "SELECT status, (SELECT count(*) FROM results WHERE run_id = 2) FROM runs WHERE id = 2"
    ).fetchone()
    connection.close()
    assert status == "running"
    assert 0 < count < 300
