"""On an xdist worker: what the controller's recorder needs from it.

A worker never touches the store, so this module imports none of it.
"""

from __future__ import annotations

import pytest

#: The workeroutput key a worker reports its deselected count under.
DESELECTED_KEY = "rerun_runs_deselected"
#: The workeroutput key a retrying worker reports the planned tests that no longer exist under.
MISSING_KEY = "rerun_runs_missing"


class WorkerPlugin:
    """Reports what the worker deselected (its figures are the controller's)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.deselected = 0

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += len(items)

    def pytest_sessionfinish(self) -> None:
        self.config.workeroutput[DESELECTED_KEY] = self.deselected  # type: ignore[attr-defined]
