#!/usr/bin/env python3
"""Benchmarks of pytest-rerun-runs, in one command: ``python benchmarks/run.py``.

Generates a synthetic suite under ``benchmarks/.work/`` and times whole pytest
processes, interleaving the compared commands (A B A B ...) so that drift of a
noisy machine hits every command alike. Reports medians and ratios against the
floor, writes ``benchmarks/RESULTS.md``.

Measured:

* recording: ``pytest`` with the plugin vs ``pytest -p no:rerun_runs`` (the
  floor), without and with ``-n 2``;
* import cost of the plugin module;
* store growth per passing result;
* re-running the suite's failures: the failing node ids given to pytest directly
  (the floor), ``pytest --lf``, ``pytest --retry-run ID --failed-only``;
* planning a retry from a store that holds many runs of the whole suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
ROOT = HERE.parent


def generate_suite(directory: Path, files: int, tests: int, failures: int, seed: int = 1) -> Path:
    """``files`` modules in package-less directories of 100 files, ``tests`` tests in
    all; the first ``failures`` files each hold one failing test."""
    marker = directory / ".generated"
    spec = json.dumps({"files": files, "tests": tests, "failures": failures, "seed": seed})
    if marker.exists() and marker.read_text() == spec:
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    (directory / "pytest.ini").write_text("[pytest]\n")
    per_file = tests // files
    failing_files = set(range(0, files, max(files // max(failures, 1), 1))[:failures])
    for index in range(files):
        package = directory / f"tests_{index // 100:03d}"
        package.mkdir(exist_ok=True)
        lines = []
        for number in range(per_file):
            body = "assert False" if index in failing_files and number == 0 else "pass"
            lines.append(f"def test_case_{number:04d}():\n    {body}\n")
        (package / f"test_mod_{index:05d}.py").write_text("\n".join(lines))
    marker.write_text(spec)
    return directory


def pytest_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode caching is part of real runs
    env.pop("PYTEST_RUNS_STORE", None)
    env.pop("PYTEST_ADDOPTS", None)
    return env


@dataclass
class Measured:
    name: str
    command: list[str]
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def time_command(command: Sequence[str], cwd: Path, allowed: Sequence[int] = (0, 1)) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        command,
        cwd=cwd,
        env=pytest_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if result.returncode not in allowed:
        raise SystemExit(
            f"{' '.join(command)} exited {result.returncode}: {result.stderr[-2000:]!r}"
        )
    return elapsed


def interleave(measures: list[Measured], cwd: Path, repeat: int, warmup: int = 1) -> None:
    for _ in range(warmup):
        for measure in measures:
            time_command(measure.command, cwd)
    for _ in range(repeat):
        for measure in measures:
            measure.seconds.append(time_command(measure.command, cwd))


def import_cost(repeat: int) -> float:
    code = (
        "import time, pytest; start = time.perf_counter();"
        " import pytest_rerun_runs.plugin; print(time.perf_counter() - start)"
    )
    samples = []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=pytest_env(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        samples.append(float(out))
    return statistics.median(samples)


def store_bytes_per_result(suite: Path, tests: int, runs: int = 3) -> tuple[float, float]:
    """Bytes the store grows by for the first run and for each later run of the suite."""
    store = WORK / "size-check.db"
    for path in WORK.glob("size-check.db*"):
        path.unlink()
    sizes = []
    for _ in range(runs):
        time_command(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                f"--runs-store={store}",
            ],
            suite,
        )
        connection = sqlite3.connect(store)
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.close()
        sizes.append(store.stat().st_size)
    first = sizes[0] / tests
    later = (sizes[-1] - sizes[0]) / (tests * (runs - 1))
    return first, later


def record_source(suite: Path, store: Path) -> tuple[int, list[str]]:
    """A fresh store holding one recorded run of ``suite``; its id and failing node ids."""
    from pytest_rerun_runs.store import open_store

    for path in store.parent.glob(store.name + "*"):
        path.unlink()
    time_command(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", f"--runs-store={store}"],
        suite,
    )
    opened = open_store(str(store), create=False)
    try:
        run_id = opened.latest_run_id(finished=True)
        assert run_id is not None
        run = opened.get_run(run_id)
    finally:
        opened.close()
    return run_id, [r.nodeid for r in run.results if r.outcome == "failed"]


def planning_seconds(source_store: Path, runs: int, repeat: int) -> float:
    """Median time to open a store of ``runs`` copies of the source run and plan a
    failed-only retry of one in the middle."""
    from pytest_rerun_runs.planner import RETRY_SOURCE_OUTCOMES, plan_retry
    from pytest_rerun_runs.store import open_store

    big = WORK / f"planning-{runs}.db"
    if not big.exists():
        shutil.copy(source_store, WORK / "planning-tmp.db")
        connection = sqlite3.connect(WORK / "planning-tmp.db", isolation_level=None)
        columns = (
            "status, exit_status, created_at, started_at, label, meta, invocation, host, pid,"
            " attempt, mode, reason, selection, selection_size, deselected, missing, counts"
        )
        connection.execute("BEGIN")
        for _ in range(runs - 1):
            cursor = connection.execute(
                f"INSERT INTO runs ({columns}) SELECT {columns} FROM runs WHERE id = 1"
            )
            new_id = cursor.lastrowid
            connection.execute(
                "INSERT INTO results SELECT ?, position, outcome, phase, setup_us, call_us,"
                " teardown_us, worker, longrepr, rerun_attempts, nodeid, file FROM results"
                " WHERE run_id = 1",
                (new_id,),
            )
            connection.execute(
                "UPDATE runs SET root_run_id = id, finished_at = created_at + 1 WHERE id = ?",
                (new_id,),
            )
        connection.execute("COMMIT")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.close()
        (WORK / "planning-tmp.db").rename(big)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        store = open_store(str(big), create=False)
        try:
            plan_retry(store.get_run(runs // 2, RETRY_SOURCE_OUTCOMES), failed_only=True)
        finally:
            store.close()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def machine() -> str:
    cpus = os.cpu_count()
    try:
        import pytest

        pytest_version = pytest.__version__
    except ImportError:  # pragma: no cover
        pytest_version = "?"
    return (
        f"{platform.machine()}, {cpus} cores, {platform.system()} {platform.release()},"
        f" Python {platform.python_version()}, pytest {pytest_version}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=20_000)
    parser.add_argument("--files", type=int, default=2_000)
    parser.add_argument("--failures", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-xdist", action="store_true", help="skip the -n 2 comparison")
    parser.add_argument(
        "--planning-runs", type=int, default=1000, help="runs in the store for planning (0: skip)"
    )
    args = parser.parse_args(argv)

    WORK.mkdir(exist_ok=True)
    suite = generate_suite(
        WORK / f"suite-{args.tests}-{args.files}", args.files, args.tests, args.failures
    )
    store = WORK / "bench-runs.db"
    pytest_cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly"]
    lines = [f"Machine: {machine()}", f"Suite: {args.tests} tests in {args.files} files", ""]
    lines.append("| comparison | median (s) | ratio to floor |")
    lines.append("|---|---|---|")

    groups: list[list[Measured]] = [
        [
            Measured("floor: pytest -p no:rerun_runs", [*pytest_cmd, "-p", "no:rerun_runs"]),
            Measured("recording: pytest", [*pytest_cmd, f"--runs-store={store}"]),
        ]
    ]
    if not args.no_xdist:
        groups.append(
            [
                Measured(
                    "floor: pytest -n 2 -p no:rerun_runs",
                    [*pytest_cmd, "-n", "2", "-p", "no:rerun_runs"],
                ),
                Measured(
                    "recording: pytest -n 2", [*pytest_cmd, "-n", "2", f"--runs-store={store}"]
                ),
            ]
        )
    for group in groups:
        interleave(group, suite, args.repeat)
        floor = group[0].median
        for measure in group:
            lines.append(
                f"| {measure.name} | {measure.median:.2f} | {measure.median / floor:.3f} |"
            )
            print(f"{measure.name}: {[round(s, 2) for s in measure.seconds]}", flush=True)

    source_store = WORK / "retry-runs.db"
    source_id, failing = record_source(suite, source_store)
    retries = [
        Measured(
            f"floor: pytest <{len(failing)} failing node ids>",
            [*pytest_cmd, "-p", "no:rerun_runs", *failing],
        ),
        Measured("pytest --lf", [*pytest_cmd, "-p", "no:rerun_runs", "--lf"]),
        Measured(
            "pytest --retry-run ID --failed-only",
            [
                *pytest_cmd,
                f"--runs-store={source_store}",
                f"--retry-run={source_id}",
                "--failed-only",
            ],
        ),
    ]
    interleave(retries, suite, args.repeat)
    lines += ["", "| re-running the failures | median (s) | ratio to floor |", "|---|---|---|"]
    for measure in retries:
        ratio = measure.median / retries[0].median
        lines.append(f"| {measure.name} | {measure.median:.2f} | {ratio:.3f} |")
        print(f"{measure.name}: {[round(s, 2) for s in measure.seconds]}", flush=True)

    imported = import_cost(args.repeat * 2)
    first, later = store_bytes_per_result(suite, args.tests)
    lines += [
        "",
        f"Import of the plugin module: {imported * 1000:.1f} ms (median)",
        f"Store growth per passing result: {first:.1f} bytes (first run, node ids included),"
        f" {later:.1f} bytes (each later run)",
        f"Medians of {args.repeat} interleaved runs after a warm-up.",
    ]
    if args.planning_runs:
        planned = planning_seconds(source_store, args.planning_runs, args.repeat)
        lines.append(
            f"Planning a failed-only retry from a store of {args.planning_runs} runs of"
            f" {args.tests} results: {planned * 1000:.0f} ms (median)"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    (HERE / "RESULTS.md").write_text(
        "# Benchmark results\n\nWritten by `python benchmarks/run.py`.\n\n" + report
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
