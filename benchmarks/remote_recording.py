#!/usr/bin/env python3
"""Recording into a shared store, against plain pytest: ``python benchmarks/remote_recording.py``.

The generated suite of ``benchmarks/run.py`` (2,000 tests in 200 files; ``--large``:
20,000 tests in 200 files) is run with the plugin off (the floor), recording into
a local SQLite file, into ``pytest-runs serve`` on this machine (over HTTP, the
server on an SQLite store) and, with ``--postgres URL``, straight into PostgreSQL;
plain and with ``-n 2``. Medians of interleaved rounds after a warm-up, with
``PYTHONDONTWRITEBYTECODE`` unset.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench
import server_load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="20,000 tests in 200 files")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--postgres", metavar="URL", help="also record into this database")
    args = parser.parse_args()
    spec = bench.SuiteSpec(20_000, 200) if args.large else bench.SuiteSpec(2_000, 200)
    suite = bench.generate_suite(spec)
    python = bench.ensure_venv(
        "venv-remote", ["-e", f"{bench.ROOT}[server,postgres]", "pytest-xdist"]
    )
    pytest_command = [str(python), "-m", "pytest", "-q", "-p", "no:randomly"]
    lines = [f"## Recording into a shared store: {spec.name}", ""]
    with tempfile.TemporaryDirectory() as directory:
        process, base, token = server_load.start_server(
            os.path.join(directory, "server.db"), workers=2
        )
        bench.SUITE_ENV["PYTEST_RUNS_TOKEN"] = token
        pg_server = None
        if args.postgres:
            # The same token is good for both servers: it is created in each store.
            pg_server = server_load.start_server(args.postgres, workers=2)
        try:
            for extra in ([], ["-n", "2"]):
                label = " ".join(extra) or "plain"
                local = Path(directory) / "local.db"
                measures = [
                    bench.Measure(
                        "floor: pytest, plugin off",
                        [*pytest_command, *extra, "-p", "no:rerun_runs"],
                    ),
                    bench.Measure(
                        "SQLite file",
                        [*pytest_command, *extra, f"--runs-store={local}"],
                        bench.fresh(local),
                    ),
                    bench.Measure(
                        "pytest-runs serve (HTTP, 2 workers)",
                        [*pytest_command, *extra, f"--runs-store={base}"],
                    ),
                ]
                if args.postgres and pg_server is not None:
                    measures.append(
                        bench.Measure(
                            "PostgreSQL", [*pytest_command, *extra, f"--runs-store={args.postgres}"]
                        )
                    )
                    through = f"{pg_server[1].replace('http://', f'http://{pg_server[2]}@')}"
                    measures.append(
                        bench.Measure(
                            "pytest-runs serve on PostgreSQL (HTTP, 2 workers)",
                            [*pytest_command, *extra, f"--runs-store={through}"],
                        )
                    )
                print(f"recording, {spec.name}, {label}", flush=True)
                bench.interleave(measures, suite, args.repeat)
                lines += [
                    *bench.table(f"recording ({label})", measures, measures[0], {}),
                    "",
                ]
        finally:
            stderr = server_load.stop_server(process)
            if pg_server is not None:
                stderr += server_load.stop_server(pg_server[0])
    print("\n".join(lines))
    if "Traceback" in stderr:
        print(stderr[-3000:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
