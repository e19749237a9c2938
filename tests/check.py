#!/usr/bin/env python3
"""Every check, from a fresh machine with only Python: ``python tests/check.py``.

Creates ``.venv`` (newest pytest) and ``.venv-oldest`` (oldest supported pytest),
installs the project with its test extras, then runs ruff, mypy and the test
suite on both. Exits non-zero on any failure, including pytest's exit code 5
(no tests collected).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OLDEST_PINS = ["pytest==8.0.2", "pytest-xdist==3.5.0", "pytest-rerunfailures==14.0"]
#: schemathesis needs a newer pytest than the oldest supported one: it gets its own
#: environment, and the tests run its command line against a live server.
TOOLS = ["schemathesis==4.32.5"]


def venv_python(path: Path) -> Path:
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv(path: Path, pins: list[str] | None = None, *, project: bool = True) -> Path:
    """A virtual environment at ``path`` with the project installed editable
    (or, without ``project``, only ``pins``)."""
    python = venv_python(path)
    wanted = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + repr(pins).encode()
    ).hexdigest()
    stamp = path / ".installed"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    if not python.exists():
        venv.EnvBuilder(with_pip=True).create(path)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if project:
        subprocess.run([*pip, "-e", f"{ROOT}[test]"], check=True)
    if pins:
        subprocess.run([*pip, *pins], check=True)
    stamp.write_text(wanted)
    return python


def ensure_postgres() -> None:
    """The PostgreSQL tests need the server this machine runs (127.0.0.1:5432):
    start it if it is down (``pg_ctlcluster``, as the machine's setup does).
    ``PYTEST_RUNS_TEST_POSTGRES`` points the tests at another server instead."""
    import shutil
    import socket

    if os.environ.get("PYTEST_RUNS_TEST_POSTGRES"):
        return
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
        return
    except OSError:
        pass
    versions = sorted(Path("/etc/postgresql").glob("*")) if Path("/etc/postgresql").is_dir() else []
    if not versions or shutil.which("pg_ctlcluster") is None:
        print("PostgreSQL is not running and cannot be started here", flush=True)
        return
    command = ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1].name, "main", "start"]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=False)


def run(*command: str | Path) -> int:
    print("+", " ".join(str(part) for part in command), flush=True)
    return subprocess.run([str(part) for part in command], cwd=ROOT, check=False).returncode


def main() -> int:
    python = ensure_venv(ROOT / ".venv")
    oldest = ensure_venv(ROOT / ".venv-oldest", OLDEST_PINS)
    tools = ensure_venv(ROOT / ".venv-tools", TOOLS, project=False)
    ensure_postgres()
    os.environ["PYTEST_RUNS_SCHEMATHESIS"] = str(tools.parent / "st")
    pytest_args = ["-m", "pytest", "-n", "2", "-p", "no:randomly", "tests"]
    failures = []
    checks: list[tuple[str, list[str | Path]]] = [
        ("ruff", [python, "-m", "ruff", "check", "."]),
        ("ruff format", [python, "-m", "ruff", "format", "--check", "."]),
        ("mypy", [python, "-m", "mypy"]),
        ("pytest (newest)", [python, *pytest_args]),
        ("pytest (oldest supported)", [oldest, *pytest_args]),
    ]
    for name, command in checks:
        code = run(*command)
        if code != 0:  # pytest's 5 (no tests collected) is a failure too
            failures.append(f"{name} (exit {code})")
    if failures:
        print("FAILED: " + ", ".join(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
