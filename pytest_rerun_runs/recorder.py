"""Turn pytest's reports into one result per test, batch them, finish the run.

The recorder knows the store interface and pytest's report objects, nothing
else: the plugin feeds it and decides when a run starts and ends.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_rerun_runs.store import (
    LONGREPR_LIMIT,
    Counts,
    NewRun,
    Outcome,
    Phase,
    Result,
    RunFinish,
    RunStore,
    Selection,
    StoreError,
    empty_counts,
)

if TYPE_CHECKING:
    import pytest

#: By default at most this many seconds of results are held in memory before a write.
FLUSH_INTERVAL = 1.0


def cap_longrepr(text: str) -> str:
    if len(text) <= LONGREPR_LIMIT:
        return text
    half = LONGREPR_LIMIT // 2
    cut = len(text) - 2 * half
    return f"{text[:half]}\n... [{cut} characters cut by pytest-rerun-runs] ...\n{text[-half:]}"


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        path, lineno, reason = longrepr
        return f"{path}:{lineno}: {reason}" if lineno is not None else f"{path}: {reason}"
    return report.longreprtext


@dataclass
class _TestProgress:
    """What is known about a test between its setup and teardown reports."""

    outcome: Outcome = "passed"
    when: Phase = "call"
    setup: float = 0.0
    call: float = 0.0
    teardown: float = 0.0
    longrepr: str | None = None
    rerun_attempts: int = 0
    rerun_pending: bool = False


class Recorder:
    """Records one run: creation, selection, batched results, finish.

    Any store failure disables recording for the rest of the session and is
    reported once through ``warn``; it never reaches pytest.
    """

    def __init__(
        self,
        open_store: Callable[[], RunStore],
        warn: Callable[[str], None],
        flush_interval: float = FLUSH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._open_store = open_store
        self._warn = warn
        self._flush_interval = flush_interval
        self._clock = clock
        self.store: RunStore | None = None
        self.run_id: int | None = None
        self.disabled = False
        self._progress: dict[str, _TestProgress] = {}
        self._pending: list[Result] = []
        self._last_flush = self._clock()
        self._selected: set[str] = set()
        self._selection_size = 0
        self._selected_reported = 0
        self._counts = empty_counts()

    @property
    def started(self) -> bool:
        return self.run_id is not None

    def _fail(self, exc: Exception) -> None:
        self.disabled = True
        self._pending.clear()
        self._warn(f"{exc}; this session is not recorded (tests run as usual)")
        if self.store is not None:
            try:
                self.store.close()
            except Exception:
                pass
            self.store = None

    def start(self, new_run: NewRun, selection: Selection) -> int | None:
        """Create the run and record its selection; ``None`` if the store failed."""
        if self.disabled:
            return None
        self._selected = {test.nodeid for test in selection.tests}
        self._selection_size = len(selection.tests)
        self._selected_reported = sum(1 for r in self._pending if r.nodeid in self._selected)
        try:
            self.store = self._open_store()
            self.run_id = self.store.create_run(new_run)
            self.store.record_selection(self.run_id, selection)
        except StoreError as exc:
            self._fail(exc)
            return None
        self._last_flush = self._clock()
        self.flush()
        return self.run_id

    # -- reports ----------------------------------------------------------------

    def add_test_report(self, report: pytest.TestReport) -> None:
        nodeid = report.nodeid
        progress = self._progress.get(nodeid)
        when = report.when
        if progress is None or when == "setup":
            # A setup report starts a new attempt (pytest-rerunfailures reruns
            # start again from setup); only the rerun count carries over.
            reruns = progress.rerun_attempts if progress is not None else 0
            progress = self._progress[nodeid] = _TestProgress(rerun_attempts=reruns)
        outcome: str = report.outcome
        if when == "setup":
            progress.setup = report.duration
        elif when == "call":
            progress.call = report.duration
        elif when == "teardown":
            progress.teardown = report.duration

        if outcome == "rerun":
            progress.rerun_attempts += 1
            progress.rerun_pending = True
            if when not in ("setup", "call", "teardown"):  # a crashed worker, rescheduled
                progress.rerun_pending = False
                progress.outcome, progress.when = "passed", "call"
            return
        if outcome == "passed":
            if when == "call":
                progress.outcome = "xpassed" if hasattr(report, "wasxfail") else "passed"
                if hasattr(report, "wasxfail"):
                    progress.longrepr = report.wasxfail
        elif outcome == "skipped":
            if hasattr(report, "wasxfail"):
                progress.outcome, progress.when = "xfailed", when
                progress.longrepr = report.wasxfail
            else:
                progress.outcome, progress.when = "skipped", when
                progress.longrepr = skip_reason(report)
        elif when == "call":
            progress.outcome, progress.when = "failed", "call"
            progress.longrepr = report.longreprtext
        elif progress.outcome not in ("failed", "error"):
            # setup and teardown failures are errors, as pytest counts them;
            # an xdist worker crash reports when="???".
            progress.outcome = "error"
            progress.when = when if when in ("setup", "teardown") else "crash"
            progress.longrepr = report.longreprtext

        if when == "teardown" or progress.when == "crash":
            if progress.rerun_pending:
                progress.rerun_pending = False
                return
            del self._progress[nodeid]
            worker = getattr(report, "worker_id", None)
            self._add(
                Result(
                    nodeid=nodeid,
                    outcome=progress.outcome,
                    when=progress.when,
                    setup_duration=progress.setup,
                    call_duration=progress.call,
                    teardown_duration=progress.teardown,
                    worker=worker,
                    longrepr=None if progress.longrepr is None else cap_longrepr(progress.longrepr),
                    rerun_attempts=progress.rerun_attempts,
                )
            )

    def add_collect_report(self, report: pytest.CollectReport) -> None:
        if report.failed:
            outcome: Outcome = "error"
            text = report.longreprtext
        elif report.skipped:
            outcome = "skipped"
            text = skip_reason(report)
        else:
            return
        self._add(
            Result(
                nodeid=report.nodeid,
                outcome=outcome,
                when="collect",
                longrepr=cap_longrepr(text),
                file=report.nodeid.split("::")[0],
            )
        )

    def _add(self, result: Result) -> None:
        if self.disabled:
            return
        self._counts[result.outcome] += 1
        if result.nodeid in self._selected:
            self._selected_reported += 1
        self._pending.append(result)
        if self.run_id is not None and self._clock() - self._last_flush >= self._flush_interval:
            self.flush()

    def counts(self) -> Counts:
        """Outcomes so far, with ``not_run`` for selected tests that did not report."""
        counts = dict(self._counts)
        counts["not_run"] += max(self._selection_size - self._selected_reported, 0)
        return counts

    @property
    def has_pending_results(self) -> bool:
        return bool(self._pending)

    def flush(self) -> None:
        if self.store is None or self.run_id is None or not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            self.store.append_results(self.run_id, batch)
        except StoreError as exc:
            self._fail(exc)
        self._last_flush = self._clock()

    def finish(self, finish: RunFinish) -> None:
        if self.store is None or self.run_id is None:
            return
        batch, self._pending = self._pending, []
        try:
            self.store.finish_run(self.run_id, finish, batch)
        except StoreError as exc:
            self._fail(exc)
            return
        self.close()

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


def relative_file(path: os.PathLike[str] | str, rootdir: str) -> str:
    """``path`` relative to ``rootdir``, ``/``-separated, as node ids spell files."""
    text = os.fspath(path)
    prefix = rootdir.rstrip(os.sep) + os.sep
    if text.startswith(prefix):
        relative = text[len(prefix) :]
    elif text == rootdir:
        relative = "."
    else:
        relative = os.path.relpath(text, rootdir)
    return relative.replace(os.sep, "/")
