#!/usr/bin/env python3
"""Benchmarks of pytest-rerun-runs against the alternatives, in one command:

    python benchmarks/run.py            # 2,000 tests in 200 files (under 10 minutes)
    python benchmarks/run.py --large    # also 20,000 tests in 2,000 files and in 200 files
    python benchmarks/run.py --instructions  # also instruction counts (valgrind's callgrind)
    python benchmarks/run.py --large --instructions --instructions-large  # on every suite

Everything runs on generated suites under ``benchmarks/.work/``, in virtual
environments this command creates there itself:

* ``venv-peers``: this project, pytest-xdist, pytest-replay, pytest-reportlog,
  pytest-json-report (newest pytest);
* ``venv-history``: pytest-history, which pins pytest < 8 (so it is compared
  against a floor measured in its own environment).

Beside the generated suites, a real third-party suite with fat, parametrized
test files: ``packaging`` (its sdist, pinned, fetched by this command; 26,921
tests), with 20 failures injected by a conftest at fixed node ids.

Compared commands run interleaved (A B C A B C ...) so that a noisy machine's
drift hits all alike; each figure is a median of ``--repeat`` runs after one
warm-up, with ``PYTHONDONTWRITEBYTECODE`` unset. Ratios are against the floor of
their group: pytest with every recorder off for recording, pytest given the
failing node ids for re-running failures. Peak memory is the pytest process's
maximum resident set (under ``-n 2``, the controller's). The output size is
what each recorder writes per test result. Results go to ``benchmarks/RESULTS.md``.

Wall time moves with the machine's noise; ``--instructions`` adds, for the
2,000-test suite, the instructions each command executes (one run under valgrind's
callgrind, after a warm-up run, writing results as often per test as a real
session does): a figure that moves by hundredths of a percent
between runs (the recorded times and ids differ), for the differences of a few
percent that medians cannot settle.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
import venv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
ROOT = HERE.parent
PEERS = ["pytest-xdist", "pytest-replay", "pytest-reportlog", "pytest-json-report", "pretend"]
#: About how many times slower a session runs under valgrind's callgrind.
CALLGRIND_SLOWDOWN = 50
#: The real suite: a pinned sdist whose tests are fat, parametrized files.
THIRD_PARTY = "packaging==24.2"
INJECTED_FAILURES = """\
# Written by benchmarks/run.py: fails the node ids listed in $BENCH_FAIL.
import os

import pytest

_LISTED = os.environ.get("BENCH_FAIL")
_FAIL = set()
if _LISTED:
    with open(_LISTED) as listed:
        _FAIL = set(listed.read().splitlines())


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    if item.nodeid in _FAIL:
        raise AssertionError("injected failure")
"""
HISTORY = ["pytest>=7.4.3,<8", "pytest-xdist", "pytest-history"]


# -- suites -----------------------------------------------------------------------


@dataclass(frozen=True)
class SuiteSpec:
    tests: int
    files: int
    failures: int = 20
    seed: int = 1

    @property
    def name(self) -> str:
        return f"{self.tests} tests in {self.files} files"


def generate_suite(spec: SuiteSpec) -> Path:
    """A suite of ``spec.tests`` tests in ``spec.files`` files (100 files a directory):
    plain functions, methods of a test class, parametrized tests, a conftest
    fixture; ``spec.failures`` failing tests chosen by ``spec.seed``."""
    directory = WORK / f"suite-{spec.tests}-{spec.files}-{spec.failures}-{spec.seed}"
    marker = directory / ".generated"
    if marker.exists():
        as_repository(directory)
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    (directory / "pytest.ini").write_text("[pytest]\n")
    (directory / "conftest.py").write_text(
        "import pytest\n\n\n@pytest.fixture\ndef number():\n    return 7\n"
    )
    per_file = spec.tests // spec.files
    failing = set(random.Random(spec.seed).sample(range(spec.tests), spec.failures))
    for index in range(spec.files):
        package = directory / f"tests_{index // 100:03d}"
        package.mkdir(exist_ok=True)
        first = index * per_file
        lines = ["import pytest", ""]
        shapes = per_file // 4
        params = per_file - 3 * shapes
        number = first
        for local in range(shapes):
            lines.append(f"def test_plain_{local}(number):\n    assert {number not in failing}\n")
            number += 1
        lines.append("class TestGroup:")
        for local in range(shapes):
            lines.append(
                f"    def test_method_{local}(self):\n        assert {number not in failing}\n"
            )
            number += 1
        for local in range(shapes):
            lines.append(f"\ndef test_more_{local}():\n    assert {number not in failing}\n")
            number += 1
        outcomes = [number + i not in failing for i in range(params)]
        lines.append(
            f"\n@pytest.mark.parametrize('ok', {outcomes!r})\ndef test_param(ok):\n    assert ok\n"
        )
        (package / f"test_mod_{index:05d}.py").write_text("\n".join(lines))
    marker.write_text(json.dumps(spec.__dict__))
    as_repository(directory)
    return directory


def as_repository(directory: Path) -> None:
    """Make a suite a git repository of its own, committed, as a real project is:
    the working-tree fingerprint each session takes reads it (and not the state of
    this repository, which holds ``benchmarks/.work``). Without git, it stays a
    directory and the fingerprint walks it instead."""
    if (directory / ".git").exists() or shutil.which("git") is None:
        return
    settings = ["-c", "user.name=benchmarks", "-c", "user.email=benchmarks@localhost"]
    settings += ["-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null"]
    try:
        subprocess.run(["git", "init", "-q"], cwd=directory, check=True)
        # What the sessions write in the suite is no change of the project.
        info = directory / ".git" / "info"
        info.mkdir(exist_ok=True)
        (info / "exclude").write_text(".pytest_cache/\n__pycache__/\n.history-bench.db*\n")
        subprocess.run(["git", "add", "-A"], cwd=directory, check=True)
        subprocess.run(["git", *settings, "commit", "-qm", "suite"], cwd=directory, check=True)
    except BaseException:
        shutil.rmtree(directory / ".git", ignore_errors=True)  # no half-made repository
        raise


# -- environments -------------------------------------------------------------------


def ensure_venv(name: str, requirements: Sequence[str]) -> Path:
    path = WORK / name
    python = path / "bin" / "python"
    wanted = hashlib.sha256(
        repr(list(requirements)).encode() + (ROOT / "pyproject.toml").read_bytes()
    ).hexdigest()
    stamp = path / ".installed"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    shutil.rmtree(path, ignore_errors=True)
    venv.EnvBuilder(with_pip=True).create(path)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *requirements,
        ],
        check=True,
    )
    stamp.write_text(wanted)
    return python


#: Extra environment of the suite being measured (the real suite's source path).
SUITE_ENV: dict[str, str] = {}


def bench_env() -> dict[str, str]:
    env = {**os.environ, **SUITE_ENV}
    for name in (
        "PYTHONDONTWRITEBYTECODE",
        "PYTEST_RUNS_STORE",
        "PYTEST_ADDOPTS",
        "PYTEST_HISTORY_DB",
    ):
        env.pop(name, None)
    return env


# -- measuring ---------------------------------------------------------------------


@dataclass
class Measure:
    name: str
    command: list[str]
    prepare: Callable[[], None] = lambda: None
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    peak_kib: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_seconds)

    def paired_ratio(self, floor: Measure) -> float:
        """Median of the per-round ratios: each round's two runs ran back to back,
        so the machine's drift between rounds cancels."""
        return statistics.median(a / b for a, b in zip(self.seconds, floor.seconds, strict=True))

    @property
    def memory_mib(self) -> float:
        return statistics.median(self.peak_kib) / 1024


def run_once(command: Sequence[str], cwd: Path) -> tuple[float, float, int]:
    """Wall time, CPU time (user and system, with the processes it waited for:
    xdist's workers) and peak RSS (KiB) of one pytest process; exits 0 or 1 expected."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=cwd, env=bench_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.stderr is not None
    errors = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if process.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} exited {process.returncode}: {errors[-2000:]}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def interleave(measures: list[Measure], cwd: Path, repeat: int) -> None:
    for round_number in range(repeat + 1):  # the first round warms up
        for measure in measures:
            measure.prepare()
            seconds, cpu_seconds, peak = run_once(measure.command, cwd)
            if round_number:
                measure.seconds.append(seconds)
                measure.cpu_seconds.append(cpu_seconds)
                measure.peak_kib.append(peak)
    for measure in measures:
        print(f"  {measure.name}: {[round(s, 2) for s in measure.seconds]}", flush=True)


def table(title: str, measures: list[Measure], floor: Measure, sizes: dict[str, str]) -> list[str]:
    """Medians and their ratios to the floor; beside them the median of the
    per-round ratios and the ratio of CPU times, which the machine's noise moves less."""
    lines = [
        f"| {title} | median (s) | x floor | x floor, paired | x floor, CPU |"
        " peak memory (MiB) | written per result |",
        "|---|---|---|---|---|---|---|",
    ]
    for measure in measures:
        lines.append(
            f"| {measure.name} | {measure.median:.2f} | {measure.median / floor.median:.3f} |"
            f" {measure.paired_ratio(floor):.3f} | {measure.cpu_median / floor.cpu_median:.3f} |"
            f" {measure.memory_mib:.0f} | {sizes.get(measure.name, '')} |"
        )
    return lines


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


def fresh(*paths: Path) -> Callable[[], None]:
    def remove() -> None:
        for path in paths:
            for found in path.parent.glob(path.name + "*"):
                if found.is_dir():
                    shutil.rmtree(found)
                else:
                    found.unlink()

    return remove


def checkpoint(store: Path) -> None:
    connection = sqlite3.connect(store)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()


# -- the comparisons ------------------------------------------------------------------


def recording(
    spec: SuiteSpec,
    suite: Path,
    peers: Path,
    history: Path | None,
    *,
    repeat: int,
    xdist: bool,
    only_ours: bool = False,
) -> list[str]:
    out = WORK / "out"
    out.mkdir(exist_ok=True)
    n = ["-n", "2"] if xdist else []
    base = [str(peers), "-m", "pytest", "-q", "-p", "no:randomly", *n]
    off = [*base, "-p", "no:rerun_runs"]
    store, replay, reportlog, jsonreport = (
        out / "ours.db",
        out / "replay",
        out / "report.jsonl",
        out / "report.json",
    )
    measures = [
        Measure("floor: pytest, recorders off", off),
        Measure("pytest-rerun-runs", [*base, f"--runs-store={store}"]),
        Measure("pytest-replay --replay-record-dir", [*off, f"--replay-record-dir={replay}"]),
        Measure("pytest-reportlog --report-log", [*off, f"--report-log={reportlog}"]),
        Measure(
            "pytest-json-report --json-report",
            [*off, "--json-report", f"--json-report-file={jsonreport}"],
        ),
    ]
    if only_ours:
        measures = measures[:2]
    suffix = " (-n 2)" if xdist else ""
    print(f"recording, {spec.name}{suffix}", flush=True)
    fresh(store)()  # a store that already holds runs, as in real use
    interleave(measures, suite, repeat)
    fresh(store)()
    run_once(measures[1].command, suite)  # one run in a new store, to measure its size
    checkpoint(store)
    per = spec.tests
    sizes = {
        "pytest-rerun-runs": f"{size_of(store) / per:.0f} B",
        "pytest-replay --replay-record-dir": f"{size_of(replay) / per:.0f} B",
        "pytest-reportlog --report-log": f"{size_of(reportlog) / per:.0f} B",
        "pytest-json-report --json-report": f"{size_of(jsonreport) / per:.0f} B",
    }
    lines = table(f"recording{suffix}", measures, measures[0], sizes)
    if history is not None:
        # pytest-history creates its database by name in the current directory.
        db = suite / ".history-bench.db"
        hist_base = [str(history), "-m", "pytest", "-q", *n]
        history_measures = [
            Measure(
                "floor (pytest 7 venv): pytest -p no:pytest-history",
                [*hist_base, "-p", "no:pytest-history"],
            ),
            Measure("pytest-history", [*hist_base, f"--history-db={db.name}"]),
        ]
        fresh(db)()
        interleave(history_measures, suite, repeat)
        fresh(db)()
        run_once(history_measures[1].command, suite)
        lines += table(
            f"recording{suffix}, pytest-history's environment",
            history_measures,
            history_measures[0],
            {"pytest-history": f"{size_of(db) / per:.0f} B"},
        )[2:]
    return lines


def rerunning(
    spec: SuiteSpec, suite: Path, peers: Path, repeat: int, *, history_runs: int = 0
) -> list[str]:
    from_here = [str(peers), "-m", "pytest", "-q", "-p", "no:randomly"]
    off = [*from_here, "-p", "no:rerun_runs"]
    out = WORK / "out"
    store = out / "retry-source.db"
    replay_dir = out / "replay-source"
    fresh(store, replay_dir)()
    # One recorded run is the source of every re-run; it also fills --lf's cache.
    run_once([*from_here, f"--runs-store={store}", f"--replay-record-dir={replay_dir}"], suite)
    checkpoint(store)
    failing = failing_node_ids(store)
    replay_failures = out / "replay-failures.txt"
    replay_failures.write_text("".join(json.dumps({"nodeid": nodeid}) + "\n" for nodeid in failing))
    measures = [
        Measure(f"floor: pytest <{len(failing)} failing node ids>", [*off, *failing]),
        Measure("pytest --lf", [*off, "--lf"]),
        Measure(
            "pytest --retry-run ID --failed-only",
            [*from_here, f"--runs-store={store}", "--retry-run=1", "--failed-only"],
        ),
        Measure("pytest-replay --replay <failures>", [*off, f"--replay={replay_failures}"]),
    ]
    if history_runs:
        # The fixed cost of a retry where the store is not new: it holds
        # ``history_runs`` runs like the source, and the source is in the middle.
        big = store_with_history(store, history_runs)
        measures.append(
            Measure(
                f"pytest --retry-run ID --failed-only (store of {history_runs:,} runs)",
                [
                    *from_here,
                    f"--runs-store={big}",
                    f"--retry-run={history_runs // 2}",
                    "--failed-only",
                ],
            )
        )
    print(f"re-running {len(failing)} failures, {spec.name}", flush=True)
    interleave(measures, suite, repeat)
    return table("re-running the failures", measures, measures[0], {})


def store_with_history(source: Path, runs: int) -> Path:
    """A copy of the one-run store ``source`` holding ``runs`` copies of its run
    (retries write to it, so it is made anew for every measurement round)."""
    big = source.with_name(f"{source.stem}-{runs}-runs.db")
    template = source.with_name(f"{source.stem}-{runs}-template.db")
    if not template.exists():
        tmp = template.with_suffix(".tmp")
        tmp.write_bytes(source.read_bytes())
        connection = sqlite3.connect(tmp, isolation_level=None)
        columns = (
            "status, exit_status, created_at, started_at, label, meta, invocation, host,"
            " pid, attempt, mode, reason, selection, selection_size, deselected, missing,"
            " counts"
        )
        connection.execute("BEGIN")
        for _ in range(runs - 1):
            new = connection.execute(
                f"INSERT INTO runs ({columns}) SELECT {columns} FROM runs WHERE id = 1"
            ).lastrowid
            connection.execute(
                "INSERT INTO results SELECT ?, position, outcome, phase, setup_us, call_us,"
                " teardown_us, worker, longrepr, rerun_attempts, nodeid, file FROM results"
                " WHERE run_id = 1",
                (new,),
            )
            connection.execute(
                "INSERT INTO passed_results SELECT ?, results FROM passed_results"
                " WHERE run_id = 1 ORDER BY rowid",
                (new,),
            )
            connection.execute(
                "UPDATE runs SET root_run_id = id, uid = hex(randomblob(16)),"
                " finished_at = created_at + 1 WHERE id = ?",
                (new,),
            )
        connection.execute("COMMIT")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        connection.close()
        tmp.rename(template)
    shutil.copyfile(template, big)
    return big


def third_party_suite(peers: Path, failures: int = 20, seed: int = 1) -> tuple[SuiteSpec, Path]:
    """The pinned sdist of the real suite, unpacked, with ``failures`` injected."""
    name = THIRD_PARTY.replace("==", "-")
    directory = WORK / name
    if not (directory / ".prepared").exists():
        shutil.rmtree(directory, ignore_errors=True)
        download = WORK / "sdists"
        download.mkdir(exist_ok=True)
        subprocess.run(
            [
                str(peers),
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-d",
                str(download),
                THIRD_PARTY,
            ],
            check=True,
        )
        import tarfile

        (archive,) = download.glob(f"{name}.tar.gz")
        with tarfile.open(archive) as tar:
            tar.extractall(WORK, filter="data")
        (directory / "conftest.py").write_text(INJECTED_FAILURES)
        # Its own rootdir: without this, pytest walks up to an enclosing project's
        # configuration (this repository's, under benchmarks/.work).
        (directory / "pytest.ini").write_text("[pytest]\n")
        (directory / ".prepared").write_text("")
    as_repository(directory)
    SUITE_ENV["PYTHONPATH"] = str(directory / "src")
    listing = subprocess.run(
        [
            str(peers),
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:randomly",
            "-p",
            "no:rerun_runs",
            "tests",
        ],
        cwd=directory,
        env=bench_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    nodeids = [line for line in listing if "::" in line and not line.startswith(" ")]
    chosen = random.Random(seed).sample(nodeids, failures)
    (WORK / "injected-failures.txt").write_text("\n".join(chosen) + "\n")
    SUITE_ENV["BENCH_FAIL"] = str(WORK / "injected-failures.txt")
    return SuiteSpec(
        len(nodeids), len({n.split("::")[0] for n in nodeids}), failures, seed
    ), directory


def instructions(command: Sequence[str], cwd: Path) -> int:
    """Instructions one run of ``command`` executes, counted by valgrind's callgrind:
    nearly the same figure every time, whatever else the machine is doing."""
    out = WORK / "out" / "callgrind.out"
    out.unlink(missing_ok=True)
    env = {**bench_env(), "PYTHONHASHSEED": "0"}
    process = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
    )
    if process.returncode not in (0, 1) or not out.exists():
        errors = process.stderr.decode(errors="replace")[-2000:]
        shown = " ".join(command)
        raise SystemExit(f"{shown} under callgrind exited {process.returncode}: {errors}")
    # Line by line: the file is megabytes, and what this process holds when it
    # starts the next command counts in that command's peak memory (fork).
    with out.open() as lines:
        for line in lines:
            if line.startswith("summary:"):
                return int(line.split()[1])
    raise SystemExit(f"callgrind counted nothing for {' '.join(command)}")


def counted(spec: SuiteSpec, suite: Path, peers: Path) -> list[str]:
    """Instruction counts of recording and of re-running the failures, each
    against its floor, as the wall-time tables compare them."""
    base = [str(peers), "-m", "pytest", "-q", "-p", "no:randomly"]
    off = [*base, "-p", "no:rerun_runs"]
    # Under callgrind a session runs some 50 times slower: writing once a second
    # would write 50 times as often per test as a real session does.
    ours = [*base, f"-oruns_flush_interval={CALLGRIND_SLOWDOWN}"]
    out = WORK / "out"
    source, store = out / "counted-source.db", out / "counted.db"
    fresh(source)()
    run_once([*base, f"--runs-store={source}"], suite)  # also fills --lf's cache
    checkpoint(source)
    failing = failing_node_ids(source)

    def into_copy() -> None:  # a store that already holds the run, as in real use
        fresh(store)()
        shutil.copyfile(source, store)

    groups = [
        (
            "recording",
            [
                Measure("floor: pytest, recorders off", off),
                Measure("pytest-rerun-runs", [*ours, f"--runs-store={store}"], into_copy),
            ],
        ),
        (
            "re-running the failures",
            [
                Measure(f"floor: pytest <{len(failing)} failing node ids>", [*off, *failing]),
                Measure("pytest --lf", [*off, "--lf"]),
                Measure(
                    "pytest --retry-run ID --failed-only",
                    [*ours, f"--runs-store={store}", "--retry-run=1", "--failed-only"],
                    into_copy,
                ),
            ],
        ),
    ]
    print(f"counting instructions, {spec.name}", flush=True)
    lines = ["| instructions (callgrind) | millions | x floor |", "|---|---|---|"]
    for title, measures in groups:
        counts = []
        for measure in measures:
            measure.prepare()
            run_once(measure.command, suite)  # writes the bytecode and the caches first
            measure.prepare()
            counts.append(instructions(measure.command, suite))
            print(f"  {measure.name}: {counts[-1]:,}", flush=True)
        lines.append(f"| **{title}** | | |")
        for measure, count in zip(measures, counts, strict=True):
            lines.append(f"| {measure.name} | {count / 1e6:,.1f} | {count / counts[0]:.3f} |")
    return lines


def failing_node_ids(store_path: Path) -> list[str]:
    sys.path.insert(0, str(ROOT))
    from pytest_rerun_runs.store import open_store

    store = open_store(str(store_path), create=False)
    try:
        return [r.nodeid for r in store.get_run(1, {"failed"}).results]
    finally:
        store.close()


def planning(peers: Path, tests: int, runs: int, repeat: int) -> str:
    """Median time to open a store of ``runs`` runs of ``tests`` results each and plan
    a failed-only retry of one in the middle (in the peers' environment)."""
    code = f"""
import sqlite3, statistics, time
from pathlib import Path
from pytest_rerun_runs.planner import plan_retry
from pytest_rerun_runs.store import RETRY_OUTCOMES, open_store
source = Path({str(WORK / "out" / "retry-source.db")!r})
big = Path({str(WORK / f"planning-{runs}-{tests}.db")!r})
if not big.exists():
    tmp = big.with_suffix(".tmp")
    tmp.write_bytes(source.read_bytes())
    c = sqlite3.connect(tmp, isolation_level=None)
    columns = ("status, exit_status, created_at, started_at, label, meta, invocation, host,"
               " pid, attempt, mode, reason, selection, selection_size, deselected, missing,"
               " counts")
    c.execute("BEGIN")
    for _ in range({runs} - 1):
        new = c.execute(f"INSERT INTO runs ({{columns}}) SELECT {{columns}} FROM runs"
                        " WHERE id = 1").lastrowid
        c.execute("INSERT INTO results SELECT ?, position, outcome, phase, setup_us, call_us,"
                  " teardown_us, worker, longrepr, rerun_attempts, nodeid, file FROM results"
                  " WHERE run_id = 1", (new,))
        c.execute("INSERT INTO passed_results SELECT ?, results FROM passed_results"
                  " WHERE run_id = 1 ORDER BY rowid", (new,))
        c.execute("UPDATE runs SET root_run_id = id, finished_at = created_at + 1 WHERE id = ?",
                  (new,))
    c.execute("COMMIT")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    tmp.rename(big)
samples = []
for _ in range({repeat}):
    start = time.perf_counter()
    store = open_store(str(big), create=False)
    plan_retry(store.get_run({runs} // 2, RETRY_OUTCOMES), failed_only=True)
    store.close()
    samples.append(time.perf_counter() - start)
print(statistics.median(samples))
"""
    result = subprocess.run(
        [str(peers), "-c", code], env=bench_env(), capture_output=True, text=True, check=True
    )
    seconds = float(result.stdout)
    return (
        f"Planning a failed-only retry from a store of {runs} runs of {tests} results:"
        f" {seconds * 1000:.0f} ms (median of {repeat})"
    )


def import_cost(peers: Path, repeat: int) -> str:
    # What a recording session imports beyond pytest (the plugin module alone
    # imports only what every session needs: its options).
    code = (
        "import time, pytest; start = time.perf_counter();"
        " import pytest_rerun_runs.plugin, pytest_rerun_runs.recording,"
        " pytest_rerun_runs.store.sqlite; print(time.perf_counter() - start)"
    )
    samples = [
        float(
            subprocess.run(
                [str(peers), "-c", code],
                env=bench_env(),
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        for _ in range(repeat)
    ]
    return (
        "Import of what a recording session imports (the plugin, the recorder, the SQLite"
        f" store): {statistics.median(samples) * 1000:.1f} ms (median)"
    )


def machine(python: Path) -> str:
    versions = subprocess.run(
        [str(python), "-c", "import pytest, xdist; print(pytest.__version__, xdist.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()},"
        f" Python {platform.python_version()}, pytest {versions[0]}, pytest-xdist {versions[1]}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--large", action="store_true", help="also the 20,000-test suites (2,000 files; 200 files)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="measured runs per command")
    parser.add_argument("--no-history", action="store_true", help="skip pytest-history")
    parser.add_argument(
        "--planning-runs", type=int, default=1000, help="runs in the planning store (0: skip)"
    )
    parser.add_argument(
        "--only-ours",
        action="store_true",
        help="recording: compare pytest-rerun-runs with the floor only (no peers, quicker)",
    )
    parser.add_argument(
        "--third-party", action="store_true", help="also the real suite (" + THIRD_PARTY + ")"
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count instructions (valgrind's callgrind) on the 2,000-test suite",
    )
    parser.add_argument(
        "--instructions-large",
        action="store_true",
        help="with --large, count them on the 20,000-test suites too (about 40 minutes more)",
    )
    args = parser.parse_args(argv)
    options = argv if argv is not None else sys.argv[1:]

    WORK.mkdir(exist_ok=True)
    started = time.time()
    peers = ensure_venv("venv-peers", ["-e", str(ROOT), *PEERS])
    history = None if args.no_history else ensure_venv("venv-history", HISTORY)
    specs = [SuiteSpec(2_000, 200)]
    if args.large:
        specs += [SuiteSpec(20_000, 2_000), SuiteSpec(20_000, 200)]

    report = [
        "# Benchmark results",
        "",
        f"Written by `python benchmarks/run.py {' '.join(options)}`"
        f" on {time.strftime('%Y-%m-%d', time.gmtime())}.",
        "",
        f"Machine: {machine(peers)}.",
        f"Medians of {args.repeat} interleaved runs after a warm-up, wall time; ratios against"
        " the floor of each table: of the medians ('x floor'), the median of the per-round"
        " ratios ('paired': a round's commands ran back to back, so the machine's drift"
        " between rounds cancels) and of the median CPU times (user and system, xdist's"
        " workers included).",
    ]
    for spec in specs:
        suite = generate_suite(spec)
        report += ["", f"## {spec.name}, {spec.failures} failing", ""]
        if args.instructions and (spec.tests < 20_000 or args.instructions_large):
            if shutil.which("valgrind") is None:
                raise SystemExit("--instructions needs valgrind")
            report += counted(spec, suite, peers)
            report += [""]
        report += recording(
            spec, suite, peers, history, repeat=args.repeat, xdist=False, only_ours=args.only_ours
        )
        report += [""]
        report += recording(
            spec, suite, peers, history, repeat=args.repeat, xdist=True, only_ours=args.only_ours
        )
        report += [""]
        history_runs = args.planning_runs if spec.tests < 20_000 else 0
        report += rerunning(spec, suite, peers, args.repeat, history_runs=history_runs)
        if args.planning_runs and spec.tests >= 20_000:
            report += ["", planning(peers, spec.tests, args.planning_runs, args.repeat)]
    if args.third_party:
        spec, suite = third_party_suite(peers)
        report += ["", f"## {THIRD_PARTY}: {spec.name}, {spec.failures} failures injected", ""]
        report += recording(
            spec, suite, peers, None, repeat=args.repeat, xdist=False, only_ours=True
        )
        report += [""]
        report += rerunning(spec, suite, peers, args.repeat)
        SUITE_ENV.clear()
    report += ["", import_cost(peers, 10), f"Total time: {(time.time() - started) / 60:.1f} min"]
    text = "\n".join(report) + "\n"
    (HERE / "RESULTS.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
