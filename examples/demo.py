#!/usr/bin/env python3
"""The demo, from a fresh machine with only Python: ``python examples/demo.py``.

Sets up ``.venv`` (as ``tests/check.py`` does), records a run of this example
suite (one real failure, one flaky test), retries it failed-only as a new run
(the flaky test passes, the real failure fails again), and shows the lineage.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent
sys.path.insert(0, str(EXAMPLES.parent))

from tests.check import ensure_venv  # noqa: E402


def step(title: str, *command: str | Path) -> int:
    print(f"\n$ {title}", flush=True)
    return subprocess.run([str(part) for part in command], cwd=EXAMPLES, check=False).returncode


def main() -> int:
    python = ensure_venv(EXAMPLES.parent / ".venv")
    (EXAMPLES / ".flaky-has-run").unlink(missing_ok=True)  # the flaky test fails once again
    runs: list[str | Path] = [python, "-m", "pytest_rerun_runs"]
    code = step("pytest  (record a run: one real failure, one flaky test)", python, "-m", "pytest")
    if code != 1:
        print(f"expected the first run to fail (exit 1), got {code}")
        return 1
    code = step(
        "pytest --retry-run=last --failed-only  (a new run; the source stays as it was)",
        python, "-m", "pytest", "--retry-run=last", "--failed-only", "--retry-reason=demo",
    )
    if code != 1:
        print(f"expected the retry to fail on the real bug (exit 1), got {code}")
        return 1
    for title, args in (
        ("pytest-runs lineage last  (the first run and its retry)", ["lineage", "last"]),
        ("pytest-runs show last", ["show", "last"]),
        ("pytest-runs list", ["list", "--limit", "5"]),
    ):
        if step(title, *runs, *args) != 0:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
