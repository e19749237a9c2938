#!/usr/bin/env python3
"""Load test of ``pytest-runs serve`` on loopback: ``python benchmarks/server_load.py``.

``--clients`` sessions each record a run of ``--results`` results in batches of
``--batch`` (create, batches, finish, as the HTTP store does) while ``--others``
clients list runs, queue retries and cancel them. Afterwards every run's results
are counted through the API: nothing may be lost, no response may be a 5xx.
Prints requests per second and p50/p99 latency per endpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
API = "/api/v1"


@dataclass
class LoadReport:
    seconds: float
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, dict[int, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    run_ids: list[int] = field(default_factory=list)
    lost: dict[int, int] = field(default_factory=dict)

    @property
    def server_errors(self) -> int:
        return sum(n for codes in self.statuses.values() for c, n in codes.items() if c >= 500)

    @property
    def requests(self) -> int:
        return sum(len(times) for times in self.latencies.values())

    def table(self) -> str:
        lines = [
            "| endpoint | requests | p50 (ms) | p99 (ms) | statuses |",
            "|---|---|---|---|---|",
        ]
        for name in sorted(self.latencies):
            times = sorted(self.latencies[name])
            p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
            codes = ", ".join(f"{c}: {n}" for c, n in sorted(self.statuses[name].items()))
            lines.append(
                f"| `{name}` | {len(times)} | {statistics.median(times) * 1000:.1f}"
                f" | {p99 * 1000:.1f} | {codes} |"
            )
        return "\n".join(lines)


class Client:
    def __init__(self, base: str, token: str, report: LoadReport, lock: threading.Lock) -> None:
        self.base = base + API
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.report = report
        self.lock = lock

    def call(self, name: str, method: str, path: str, **kwargs: Any) -> requests.Response:
        started = time.perf_counter()
        response = self.session.request(method, self.base + path, timeout=60, **kwargs)
        elapsed = time.perf_counter() - started
        with self.lock:
            self.report.latencies[name].append(elapsed)
            self.report.statuses[name][response.status_code] += 1
        return response


def invocation(host: str) -> dict[str, Any]:
    return {
        "args": [],
        "invocation_dir": "/load",
        "rootdir": "/load",
        "python": "3",
        "pytest": "9",
        "platform": "linux",
        "host": host,
        "pid": 1,
    }


def record(client: Client, number: int, results: int, batch: int, ids: list[int]) -> None:
    tests = [f"tests/test_{number}.py::test_{i}" for i in range(results)]
    body = {
        "uid": str(uuid.uuid4()),
        "invocation": invocation(f"load-{number}"),
        "created_at": time.time(),
        "started_at": time.time(),
        "selection": [[t, f"tests/test_{number}.py"] for t in tests],
    }
    run_id = client.call("POST /runs", "POST", "/runs", json=body).json()["run_id"]
    ids.append(run_id)
    rows = [
        {
            "position": i,
            "nodeid": t,
            "outcome": "failed" if i % 50 == 0 else "passed",
            "when": "call",
        }
        for i, t in enumerate(tests)
    ]
    for start in range(0, len(rows) - batch, batch):
        client.call(
            "POST /runs/{id}/results",
            "POST",
            f"/runs/{run_id}/results",
            json={"results": rows[start : start + batch]},
        )
    last = rows[(len(rows) - 1) // batch * batch :]
    client.call(
        "POST /runs/{id}/finish",
        "POST",
        f"/runs/{run_id}/finish",
        json={"exit_status": 1, "finished_at": time.time(), "results": last},
    )


def meddle(client: Client, ids: list[int], done: threading.Event) -> None:
    """List, retry and cancel while the recorders record."""
    step = 0
    while not done.is_set():
        step += 1
        client.call("GET /runs", "GET", "/runs", params={"limit": 50})
        if ids:
            source = ids[step % len(ids)]
            retried = client.call("POST /runs/{id}/retry", "POST", f"/runs/{source}/retry", json={})
            if retried.status_code == 202:
                new = retried.json()["new_run_id"]
                client.call("POST /runs/{id}/cancel", "POST", f"/runs/{new}/cancel")


def run_load(
    base: str, token: str, *, clients: int, results: int, batch: int, others: int
) -> LoadReport:
    report = LoadReport(0.0)
    lock = threading.Lock()
    done = threading.Event()
    ids: list[int] = []
    started = time.perf_counter()
    recorders = [
        threading.Thread(
            target=record, args=(Client(base, token, report, lock), n, results, batch, ids)
        )
        for n in range(clients)
    ]
    meddlers = [
        threading.Thread(target=meddle, args=(Client(base, token, report, lock), ids, done))
        for _ in range(others)
    ]
    for thread in [*recorders, *meddlers]:
        thread.start()
    for thread in recorders:
        thread.join()
    done.set()
    for thread in meddlers:
        thread.join()
    report.seconds = time.perf_counter() - started
    report.run_ids = sorted(ids)
    checker = Client(base, token, LoadReport(0.0), lock)
    for run_id in report.run_ids:
        counts = checker.call("check", "GET", f"/runs/{run_id}").json()["counts"]
        stored = sum(n for outcome, n in counts.items() if outcome != "not_run")
        if stored != results:
            report.lost[run_id] = results - stored
    return report


def start_server(store: str, workers: int) -> tuple[subprocess.Popen[str], str, str]:
    """``pytest-runs serve`` on a free port, and an all-scopes token."""
    import socket

    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest_rerun_runs",
            "token",
            "create",
            f"--store={store}",
            "--scope=runs:read",
            "--scope=runs:write",
            "--scope=runs:retry",
            "--format=json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    token = json.loads(made.stdout)["token"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest_rerun_runs",
            "serve",
            f"--store={store}",
            f"--port={port}",
            f"--workers={workers}",
            "--rate-limit=10000000/minute",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(base + API + "/health", timeout=1).ok:
                return process, base, token
        except requests.ConnectionError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("the server did not start")


def stop_server(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
    return process.stderr.read() if process.stderr else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="store URL (default: a new SQLite file)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--results", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--others", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        store = args.store or os.path.join(directory, "runs.db")
        process, base, token = start_server(store, args.workers)
        try:
            report = run_load(
                base,
                token,
                clients=args.clients,
                results=args.results,
                batch=args.batch,
                others=args.others,
            )
        finally:
            stderr = stop_server(process)
    print(
        f"{args.clients} sessions x {args.results:,} results in batches of {args.batch}"
        f" + {args.others} clients listing/retrying/cancelling, {args.workers} server"
        f" worker(s), store {'SQLite' if not args.store else args.store.split(':')[0]}:"
    )
    print(
        f"{report.requests:,} requests in {report.seconds:.1f} s"
        f" = {report.requests / report.seconds:,.0f} requests/s,"
        f" {args.clients * args.results / report.seconds:,.0f} results/s;"
        f" 5xx: {report.server_errors}; runs with lost results: {len(report.lost)}"
    )
    print(report.table())
    if "Traceback" in stderr:
        print(stderr[-3000:])
    return 1 if report.lost or report.server_errors else 0


if __name__ == "__main__":
    sys.exit(main())
