from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
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
