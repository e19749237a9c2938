#!/usr/bin/env python3
"""``pytest-runs flaky --last 500`` on a store of 500 runs of 5,000 tests:

    python benchmarks/flaky.py

The worst case for its two-pass read: 5 different tests fail in each run, so
2,500 tests failed somewhere and every one of them passed in 499 other runs.
Prints the wall time and peak memory of the command (medians of 3).
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STORE = HERE / ".work" / "flaky-500x5000.db"


def build(runs: int = 500, tests: int = 5_000) -> None:
    sys.path.insert(0, str(HERE.parent))
    from pytest_rerun_runs.store import (
        Invocation,
        NewRun,
        Result,
        RunFinish,
        SelectedTest,
        Selection,
        new_uid,
        open_store,
    )

    invocation = Invocation(
        args=[],
        invocation_dir="/p",
        rootdir="/p",
        inifile=None,
        python="3",
        pytest="9",
        platform="x",
        host="h",
        pid=1,
        tree="git:one-tree",
    )
    selection = [
        SelectedTest(f"tests/test_{i // 50}.py::test_{i}", f"tests/test_{i // 50}.py")
        for i in range(tests)
    ]
    chance = random.Random(1)
    STORE.parent.mkdir(exist_ok=True)
    store = open_store(str(STORE.with_suffix(".tmp")))
    try:
        for _ in range(runs):
            now = time.time()
            run_id = store.create_run(
                NewRun(uid=new_uid(), invocation=invocation, created_at=now, started_at=now),
                Selection(selection),
            )
            failing = set(chance.sample(range(tests), 5))
            results = [
                Result(test.nodeid, "failed" if i in failing else "passed", "call", position=i)
                for i, test in enumerate(selection)
            ]
            store.finish_run(run_id, RunFinish(1, time.time()), results)
    finally:
        store.close()
    STORE.with_suffix(".tmp").rename(STORE)


def main() -> int:
    if not STORE.exists():
        build()
    seconds, peaks = [], []
    for _ in range(3):
        start = time.perf_counter()
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest_rerun_runs",
                "--store",
                str(STORE),
                "flaky",
                "--last=500",
            ],
            stdout=subprocess.DEVNULL,
        )
        _, status, usage = os.wait4(process.pid, 0)
        seconds.append(time.perf_counter() - start)
        peaks.append(usage.ru_maxrss / 1024)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit("pytest-runs flaky failed")
    print(
        f"pytest-runs flaky --last 500 (500 runs x 5,000 tests, 2,500 failing tests):"
        f" {statistics.median(seconds):.2f} s, {statistics.median(peaks):.0f} MiB peak"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
