"""A real ``pytest-runs serve`` process on 127.0.0.1 for the tests, with tokens."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from pytest_rerun_runs.store import SCOPES

API = "/api/v1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def runs_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_rerun_runs", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
    )


def create_token(store: Path | str, *scopes: str, expires: str | None = None) -> dict[str, Any]:
    args = ["token", "create", f"--store={store}", "--format", "json"]
    args += [f"--scope={scope}" for scope in scopes]
    if expires:
        args.append(f"--expires={expires}")
    done = runs_cli(*args)
    assert done.returncode == 0, done.stderr
    token: dict[str, Any] = json.loads(done.stdout)
    return token


@dataclass
class Served:
    """A server process and a token per scope (``all`` holds every scope)."""

    store: Path
    process: subprocess.Popen[str]
    base: str
    tokens: dict[str, str] = field(default_factory=dict)
    session: requests.Session = field(default_factory=requests.Session)

    def headers(self, scope: str = "all", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[scope]}", **extra}

    def request(self, method: str, path: str, scope: str = "all", **kwargs: Any) -> Any:
        headers = {**self.headers(scope), **kwargs.pop("headers", {})}
        return self.session.request(
            method, self.base + API + path, headers=headers, timeout=30, **kwargs
        )

    def get(self, path: str, scope: str = "all", **kwargs: Any) -> Any:
        return self.request("GET", path, scope, **kwargs)

    def post(self, path: str, scope: str = "all", **kwargs: Any) -> Any:
        return self.request("POST", path, scope, **kwargs)

    def stop(self) -> str:
        """Stop the server; what it wrote to stderr."""
        self.session.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        stderr = self.process.stderr.read() if self.process.stderr else ""
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()
        return stderr


def serve(store: Path, *args: str, tokens: bool = True, port: int | None = None) -> Served:
    """Start ``pytest-runs serve`` on a free port of 127.0.0.1 and wait until it answers."""
    scoped = {}
    if tokens:
        scoped = {"all": create_token(store, *SCOPES)["token"]}
        scoped.update({scope: create_token(store, scope)["token"] for scope in SCOPES})
    port = port or free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest_rerun_runs",
            "serve",
            f"--store={store}",
            "--host=127.0.0.1",
            f"--port={port}",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    served = Served(store, process, f"http://127.0.0.1:{port}", scoped)
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {served.stop()}")
        try:
            if requests.get(served.base + API + "/health", timeout=1).status_code == 200:
                return served
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            served.stop()
            raise RuntimeError("the server did not answer within 30 s")
        time.sleep(0.05)  # polling for readiness, not synchronising with a result


def invocation(host: str = "ci-1", pid: int = 1) -> dict[str, Any]:
    return {
        "args": ["-q"],
        "invocation_dir": "/p",
        "rootdir": "/p",
        "python": "3.11",
        "pytest": "9",
        "platform": "linux",
        "host": host,
        "pid": pid,
        "tree": "tree-1",
    }


def new_run_body(uid: str, tests: list[str], **fields: Any) -> dict[str, Any]:
    return {
        "uid": uid,
        "invocation": invocation(),
        "created_at": 1_700_000_000.0,
        "started_at": 1_700_000_000.0,
        "selection": [[nodeid, nodeid.split("::")[0]] for nodeid in tests],
        **fields,
    }


def result_body(
    position: int, nodeid: str, outcome: str = "passed", **fields: Any
) -> dict[str, Any]:
    return {"position": position, "nodeid": nodeid, "outcome": outcome, "when": "call", **fields}
