from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_rerun_runs import cli
from pytest_rerun_runs.invocation import CI_PROVIDERS
from pytest_rerun_runs.locate import ENV_VAR
from pytest_rerun_runs.store import Invocation, NewRun, new_uid

RunDict = dict[str, Any]


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads a store or CI identity it did not make."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    # pytest-randomly is installed for the tests that are about it (they pass
    # "-p randomly"); everywhere else the order of a session is fixed.
    monkeypatch.setenv("PYTEST_ADDOPTS", RANDOMLY_OFF)
    for marker, *_ in CI_PROVIDERS.values():
        monkeypatch.delenv(marker, raising=False)


RANDOMLY_OFF = "-p no:randomly"


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytester, with pytest-randomly off unless a test passes ``-p randomly``
    (pytester itself clears PYTEST_ADDOPTS when it starts)."""
    monkeypatch.setenv("PYTEST_ADDOPTS", RANDOMLY_OFF)
    return pytester


@pytest.fixture
def store_path(pytester: pytest.Pytester) -> Path:
    """The default store of a pytester project."""
    return pytester.path / ".pytest_runs" / "runs.db"


def run_cli(*args: str, cwd: Path | None = None) -> tuple[int, str]:
    out = io.StringIO()
    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        code = cli.main(list(args), out=out)
    except SystemExit as exit:  # argparse rejects the arguments
        code = int(exit.code or 0)
    finally:
        os.chdir(old)
    return code, out.getvalue()


@pytest.fixture
def show(store_path: Path) -> Callable[..., RunDict]:
    """``pytest-runs show ID --format json`` of the default store, parsed."""

    def show(run: str | int = "last", store: Path | None = None) -> RunDict:
        code, out = run_cli(
            "--store", str(store or store_path), "show", str(run), "--format", "json"
        )
        assert code == 0
        result: RunDict = json.loads(out)
        return result

    return show


def outcomes(run: RunDict) -> dict[str, str]:
    return {r["nodeid"]: r["outcome"] for r in run["results"]}


def run_pytest_subprocess(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """A real pytest process (xdist, signals, concurrency)."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def kill_at_gate(cwd: Path, gate: Path, *args: str, env: dict[str, str] | None = None) -> None:
    """Run pytest in a real process, wait until a test opens the FIFO ``gate`` and
    writes ``running`` to it, then SIGKILL the process (no sleeps)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with open(gate) as reader:  # returns once the blocking test is running
            assert reader.read() == "running"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def make_invocation(pid: int = 1, host: str = "host") -> Invocation:
    return Invocation(
        args=[],
        invocation_dir="/p",
        rootdir="/p",
        inifile=None,
        python="3",
        pytest="9",
        platform="x",
        host=host,
        pid=pid,
    )


def make_new_run(
    pid: int = 1, host: str = "host", created_at: float = 1.0, **fields: Any
) -> NewRun:
    """A new run with a fresh uid (``fields`` override the rest)."""
    values: dict[str, Any] = {
        "uid": new_uid(),
        "invocation": make_invocation(pid=pid, host=host),
        "created_at": created_at,
        "started_at": created_at,
    }
    return NewRun(**{**values, **fields})


#: The server the PostgreSQL tests create their database on (trust auth here).
POSTGRES_ADMIN_URL = os.environ.get(
    "PYTEST_RUNS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of its own for this test session (each xdist worker has one),
    dropped at the end. Unreachable: a skip, but a failure under ``CI=true``."""
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is not installed: pip install -e '.[postgres]'")
    name = f"pytest_runs_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        reason = f"no PostgreSQL at {POSTGRES_ADMIN_URL} (PYTEST_RUNS_TEST_POSTGRES): {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """A store URL on a schema of its own in the session's database."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_database, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    return f"{postgres_database}?options=-csearch_path%3D{schema}"


def git(directory: Path, *args: str) -> None:
    """Run git in ``directory`` with an identity of its own."""
    subprocess.run(
        ["git", "-c", "user.email=t@example.org", "-c", "user.name=t", *args],
        cwd=directory,
        check=True,
        capture_output=True,
    )
