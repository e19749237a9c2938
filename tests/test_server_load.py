"""The server under load on loopback (bounded): 16 sessions record 2,000 results
each in batches while other clients list, retry and cancel. Nothing is lost and
nothing answers 5xx. Timings are the benchmark's business
(``benchmarks/server_load.py``), not this test's."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from tests.serving import serve

ROOT = Path(__file__).resolve().parent.parent


def load_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "server_load", ROOT / "benchmarks" / "server_load.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_sixteen_sessions_and_meddlers_lose_nothing(tmp_path: Path) -> None:
    load = load_module()
    server = serve(tmp_path / "runs.db", "--workers=2", "--rate-limit=1000000/minute")
    try:
        report = load.run_load(
            server.base, server.tokens["all"], clients=16, results=2000, batch=250, others=3
        )
    finally:
        stderr = server.stop()
    assert len(report.run_ids) == 16
    assert report.lost == {}
    assert report.server_errors == 0
    assert report.statuses["POST /runs/{id}/results"] == {200: 16 * 7}
    assert report.statuses["POST /runs/{id}/finish"] == {200: 16}
    assert set(report.statuses["POST /runs/{id}/retry"]) <= {202}
    assert set(report.statuses["POST /runs/{id}/cancel"]) <= {202}
    assert "Traceback" not in stderr
