#!/usr/bin/env python3
"""Planning a failed-only retry from PostgreSQL: ``python benchmarks/postgres_planning.py``.

Builds (once, in a database of its own, ``pytest_runs_bench``) a store of 1,000
finished runs of 20,000 results each (20 failing), then times opening the store
and planning a failed-only retry of the run in the middle: median of 10.
``--url`` names the server (default: this machine's, trust auth).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import psycopg

from pytest_rerun_runs.planner import plan_retry
from pytest_rerun_runs.store import (
    RETRY_OUTCOMES,
    Result,
    RunFinish,
    SelectedTest,
    Selection,
    open_store,
)

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from tests.conftest import make_new_run


def build(url: str, runs: int, tests: int) -> None:
    store = open_store(url)
    try:
        if store.latest_run_id() == runs:
            return
        selection = Selection(
            [
                SelectedTest(f"tests/test_{i // 100}.py::test_{i}", f"tests/test_{i // 100}.py")
                for i in range(tests)
            ]
        )
        run_id = store.create_run(make_new_run(), selection)
        results = [
            Result(
                t.nodeid,
                "failed" if i % (tests // 20) == 7 else "passed",
                "call",
                0,
                0.001,
                0,
                position=i,
            )
            for i, t in enumerate(selection.tests)
        ]
        store.finish_run(run_id, RunFinish(1, 2.0), results)
    finally:
        store.close()
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("SET session_replication_role = replica")  # bulk copies, no triggers
        columns = (
            "status, exit_status, created_at, started_at, finished_at, last_seen_at, label, meta,"
            " invocation, host, pid, attempt, mode, reason, selection, selection_size, deselected,"
            " missing, counts"
        )
        connection.execute(
            f"INSERT INTO runs (uid, {columns}) SELECT md5(n::text), {columns}"
            f" FROM runs, generate_series(2, {runs}) AS n WHERE id = 1"
        )
        connection.execute("UPDATE runs SET root_run_id = id WHERE root_run_id IS NULL")
        connection.execute(
            "INSERT INTO results SELECT r.id, x.position, x.outcome, x.phase, x.setup_us,"
            " x.call_us, x.teardown_us, x.worker, x.longrepr, x.rerun_attempts, x.nodeid, x.file"
            " FROM results x, runs r WHERE x.run_id = 1 AND r.id > 1"
        )
        connection.execute("ANALYZE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--tests", type=int, default=20_000)
    args = parser.parse_args()
    database = f"pytest_runs_bench_{args.runs}_{args.tests}"
    with psycopg.connect(args.url, autocommit=True) as admin:
        if not admin.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone():
            admin.execute(f'CREATE DATABASE "{database}"')
    url = args.url.rsplit("/", 1)[0] + "/" + database
    started = time.perf_counter()
    build(url, args.runs, args.tests)
    ready = time.perf_counter() - started
    print(f"store of {args.runs} runs x {args.tests} results ready in {ready:.0f} s")
    with psycopg.connect(url) as connection:
        row = connection.execute("SELECT pg_total_relation_size('results')").fetchone()
        assert row is not None
        size = row[0]
    print(f"results table: {size / args.runs / args.tests:.0f} bytes per result (with its index)")
    samples = []
    for _ in range(10):
        start = time.perf_counter()
        store = open_store(url, create=False)
        plan = plan_retry(store.get_run(args.runs // 2, RETRY_OUTCOMES), failed_only=True)
        store.close()
        samples.append(time.perf_counter() - start)
    print(
        f"planning a failed-only retry ({len(plan.tests)} tests) of run {args.runs // 2}:"
        f" {statistics.median(samples) * 1000:.0f} ms (median of 10;"
        f" {min(samples) * 1000:.0f}-{max(samples) * 1000:.0f} ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
