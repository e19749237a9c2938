"""Turn pytest's reports into one result per test, batch them, finish the run.

The recorder knows the store interface and pytest's report objects, nothing
else: the plugin feeds it and decides when a run starts and ends.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import repeat
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
    clean_text,
    empty_counts,
)

if TYPE_CHECKING:
    import pytest

    from pytest_rerun_runs.spool import SpoolWriter

#: By default at most this many seconds of results are held in memory before a write.
FLUSH_INTERVAL = 1.0

#: A :class:`Result`'s fields as a plain tuple. Results wait for their write as
#: plain tuples: the garbage collector stops tracking a tuple of strings and
#: numbers, never a named tuple, and a second's worth of tracked objects would be
#: promoted to the oldest generation and bring its costly collections sooner.
PendingResult = tuple[
    str, Outcome, Phase, float, float, float, "str | None", "str | None", int, "str | None", int
]


@contextmanager
def collector_paused() -> Iterator[None]:
    """No garbage collection while a batch of our short-lived objects exists.

    A selection or a batch of results is thousands of tracked objects that die
    together a few milliseconds later; collections in between would promote them
    to older generations, and a session of many tests would run more of its
    costly full collections.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def cap_longrepr(text: str) -> str:
    text = clean_text(text)
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


class _TestProgress:
    """What is known about a test between its setup and teardown reports."""

    __slots__ = ("call", "longrepr", "outcome", "rerun_attempts", "rerun_pending", "setup", "when")

    def __init__(self, rerun_attempts: int = 0) -> None:
        self.outcome: Outcome = "passed"
        self.when: Phase = "call"
        self.setup = 0.0
        self.call = 0.0
        self.longrepr: str | None = None
        self.rerun_attempts = rerun_attempts
        self.rerun_pending = False


class Recorder:
    """Records one run: creation with its selection, batched results, finish.

    Each result gets its position in the selection here, so every write is
    idempotent whatever the backend. Any failure of the store (or of our own
    code around it) disables recording for the rest of the session and is
    reported once through ``warn``; it never reaches pytest.
    """

    def __init__(
        self,
        open_store: Callable[[], RunStore],
        warn: Callable[[str], None],
        *,
        flush_interval: float = FLUSH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        on_result: Callable[[str, Outcome], None] | None = None,
        spool: Callable[[NewRun, Selection, int | None], SpoolWriter] | None = None,
        on_cancel: Callable[[int], None] | None = None,
    ) -> None:
        self._on_result = on_result
        #: Where the run goes when its store fails (a server): see ``spool.py``.
        self._spool_factory = spool
        self.spool: SpoolWriter | None = None
        #: What the run was created from, kept only where it may be spooled.
        self._created: tuple[NewRun, Selection] | None = None
        self._claimed: int | None = None
        self._on_cancel = on_cancel
        #: The run was cancelled through the store (``cancel_run``).
        self.cancelled = False
        self._open_store = open_store
        self._warn = warn
        self._flush_interval = flush_interval
        self._clock = clock
        self.store: RunStore | None = None
        self.run_id: int | None = None
        self.disabled = False
        #: Tests between their setup and teardown reports, by node id, and under
        #: xdist by (node id, worker): two workers may run one node id at once
        #: (``--dist each``, ``--keep-duplicates``).
        self._progress: dict[str | tuple[str, str], _TestProgress] = {}
        #: node id -> reruns so far of a test xdist took off a crashed worker to run
        #: again, on whichever worker gets it.
        self._rescheduled: dict[str, int] = {}
        #: Reports not yet turned into results: they are read a batch at a time,
        #: when a write is due, so that the reading runs warm in the processor's
        #: caches instead of cold between two tests (pytest keeps the reports anyway).
        self._reports: list[pytest.TestReport] = []
        self._pending: list[PendingResult] = []
        #: When the next write is due (by ``clock``); never before the run exists.
        self._next_write = float("inf")
        #: node id -> its first position in the selection; a list only for a node id
        #: selected several times (--keep-duplicates): a list per test would be
        #: thousands of objects more for the garbage collector to count and scan.
        self._positions: dict[str, int | list[int]] = {}
        #: One byte per selection position, set once a result took it: unlike a
        #: set of positions, nothing for the garbage collector to scan.
        self._placed = bytearray()
        self._next_extra = 0
        self._selection_size = 0
        self._counts = empty_counts()

    @property
    def started(self) -> bool:
        return self.run_id is not None or self.spool is not None

    def _position(self, nodeid: str) -> int | None:
        """The first free selection position of ``nodeid``, or the next one after
        the selection for a result outside it; ``None`` for a second final result
        of a selected test (the first one stands)."""
        candidates = self._positions.get(nodeid)
        if candidates is not None:
            if isinstance(candidates, int):
                if self._placed[candidates]:
                    return None
                self._placed[candidates] = 1
                return candidates
            for position in candidates:
                if not self._placed[position]:
                    self._placed[position] = 1
                    return position
            return None
        position = self._next_extra
        self._next_extra += 1
        return position

    def _spool_instead(self, exc: Exception, batch: list[Result]) -> bool:
        """Go on writing the run to the spool when its server fails; whether it could."""
        from pytest_rerun_runs.store import StoreError

        if self._spool_factory is None or self._created is None or self.spool is not None:
            return False
        if not isinstance(exc, StoreError):
            return False
        try:
            self.spool = self._spool_factory(*self._created, self._claimed)
            self.spool.add_results(batch)
        except Exception:
            self.spool = None
            return False
        self._warn(
            f"{exc}; the run is spooled to {self.spool.path.parent} and uploaded by the"
            " next session against this store, or by 'pytest-runs sync'"
        )
        self._drop_store()
        self._next_write = self._clock() + self._flush_interval
        return True

    def _fail(self, exc: Exception) -> None:
        self.disabled = True
        self._reports.clear()
        self._pending.clear()
        self._warn(f"{exc}; this session is not recorded (tests run as usual)")
        self._drop_store()

    def _drop_store(self) -> None:
        if self.store is not None:
            try:
                self.store.close()
            except Exception:
                pass
            self.store = None

    def start(
        self,
        new_run: Callable[[RunStore], NewRun],
        selection: Selection,
        claim: int | None = None,
    ) -> int | None:
        """Create the run with its selection; ``None`` if the store failed.

        ``new_run`` describes the run, given the open store (a retry of a run
        file imports its source there first). With ``claim``, the queued run of
        that id is claimed instead (``selection`` is its stored one), and
        :class:`~pytest_rerun_runs.store.AlreadyClaimed` is raised if another
        session has it.
        """
        if self.disabled:
            return None
        self._read_reports()
        if self.disabled:  # a report received so far could not be read
            return None
        positions: dict[str, int | list[int]] = {}
        for position, test in enumerate(selection.tests):
            first = positions.setdefault(test.nodeid, position)
            if first != position:
                if isinstance(first, int):
                    positions[test.nodeid] = [first, position]
                else:
                    first.append(position)
        self._positions = positions
        self._selection_size = self._next_extra = len(selection.tests)
        self._placed = bytearray(self._selection_size)
        placed = ((r, self._position(r[0])) for r in self._pending)
        self._pending = [(*r[:-1], p) for r, p in placed if p is not None]
        try:
            self.store = self._open_store()
            described = new_run(self.store)
            if self._spool_factory is not None:
                self._created = (described, selection)
            if claim is not None:
                self.store.claim_run(claim, described.invocation, described.started_at)
                self.run_id = self._claimed = claim
            else:
                self.run_id = self.store.create_run(described, selection)
        except Exception as exc:
            from pytest_rerun_runs.store import AlreadyClaimed

            if isinstance(exc, AlreadyClaimed):
                self.close()
                raise
            if claim is None and self._spool_instead(exc, self._take_pending()):
                return None
            self._fail(exc)
            return None
        self._next_write = self._clock() + self._flush_interval
        self.flush()
        return self.run_id

    # -- reports ----------------------------------------------------------------

    def add_test_report(self, report: pytest.TestReport) -> None:
        if self.disabled:
            return
        self._reports.append(report)
        if self._clock() >= self._next_write:
            self.flush()

    def _read_reports(self) -> None:
        """Turn the reports received so far into results."""
        if not self._reports:
            return
        reports, self._reports = self._reports, []
        try:
            self._read(reports)
        except Exception as exc:  # never let recording break the session
            self._fail(exc)

    def _read(self, reports: list[pytest.TestReport]) -> None:
        """Most tests are three passing reports in a row: each such test is read
        as a whole; every other report goes through :meth:`_add_test_report`."""
        index, count = 0, len(reports)
        progress, positions, placed = self._progress, self._positions, self._placed
        rescheduled = self._rescheduled
        started = self.started
        passed: list[PendingResult] = []
        while index < count:
            setup = reports[index]
            try:
                # The reports' fields are read from their own ``__dict__``: through
                # the attribute protocol each read would look its name up on the
                # report's class first, and pytest's reports do not keep the same
                # attributes in the same order for the interpreter to cache that.
                first = setup.__dict__
                if index + 2 < count and first["when"] == "setup" and first["outcome"] == "passed":
                    call, teardown = reports[index + 1], reports[index + 2]
                    second, third = call.__dict__, teardown.__dict__
                    location = first["location"]
                    if (
                        second["when"] == "call"
                        and second["outcome"] == "passed"
                        and third["when"] == "teardown"
                        and third["outcome"] == "passed"
                        and "wasxfail" not in second
                    ) and (
                        (
                            # pytest builds the reports of one item with the item's cached
                            # ``location`` tuple (checked on pytest 8.0 to 9.2), so sharing
                            # it means one test.
                            type(location) is tuple
                            and second["location"] is location
                            and third["location"] is location
                        )
                        or (
                            # Reports that crossed a process (xdist) share nothing; a
                            # worker runs one test at a time, so three reports in a row
                            # from one worker for one node id are one test.
                            "worker_id" in first
                            and setup.nodeid == call.nodeid == teardown.nodeid
                            and first["worker_id"]
                            == second.get("worker_id")
                            == third.get("worker_id")
                        )
                    ):
                        setup_duration, call_duration = first["duration"], second["duration"]
                        teardown_duration = third["duration"]
                        nodeid = teardown.nodeid
                        if not nodeid.isascii():
                            nodeid = clean_text(nodeid)
                        worker = third.get("worker_id")
                        if not (progress or rescheduled) or (
                            ((nodeid, worker) if type(worker) is str else nodeid) not in progress
                            and nodeid not in rescheduled
                        ):
                            index += 3
                            position: int | None = -1
                            if started:
                                found = positions.get(nodeid)
                                if type(found) is int and not placed[found]:
                                    placed[found] = 1
                                    position = found
                                else:
                                    position = self._position(nodeid)
                            if position is not None:
                                passed.append(
                                    (
                                        nodeid,
                                        "passed",
                                        "call",
                                        setup_duration,
                                        call_duration,
                                        teardown_duration,
                                        worker,
                                        None,
                                        0,
                                        None,
                                        position,
                                    )
                                )
                            continue
            except KeyError:
                pass  # a report that keeps one of these fields elsewhere: read as below
            if passed:
                self._add_passed(passed)
                passed = []
            self._add_test_report(setup)
            index += 1
        if passed:
            self._add_passed(passed)

    def _add_passed(self, results: list[PendingResult]) -> None:
        """Add results that all passed, in their order."""
        if self.disabled:
            return
        self._counts["passed"] += len(results)
        if self._on_result is not None:
            for result in results:
                self._on_result(result[0], "passed")
        self._pending.extend(results)

    def _add_test_report(self, report: pytest.TestReport) -> None:
        nodeid = report.nodeid
        if not nodeid.isascii():
            nodeid = clean_text(nodeid)
        when = report.when
        outcome: str = report.outcome
        fields = report.__dict__
        # The attribute pytest's skipping plugin sets; a dict lookup is much
        # cheaper than hasattr() on the common path, where it is missing.
        wasxfail = fields.get("wasxfail")
        worker = fields.get("worker_id")
        if worker is None and when not in ("setup", "call", "teardown"):
            # xdist's controller reports a crashed worker's test itself (when="???"),
            # with the worker's controller as ``node``.
            worker = _crashed_worker(fields.get("node"))
        key: str | tuple[str, str] = (nodeid, worker) if type(worker) is str else nodeid
        found = self._progress.get(key)
        if found is None or when == "setup":
            # A setup report starts a new attempt (pytest-rerunfailures reruns
            # start again from setup); only the rerun count carries over.
            if found is not None:
                attempts = found.rerun_attempts
            else:
                attempts = self._rescheduled.pop(nodeid, 0) if self._rescheduled else 0
            found = self._progress[key] = _TestProgress(attempts)
        progress = found
        if when == "setup":
            progress.setup = report.duration
        elif when == "call":
            progress.call = report.duration

        if outcome == "passed":
            if when == "call" and wasxfail is not None:
                progress.outcome, progress.longrepr = "xpassed", wasxfail
        elif outcome == "rerun":
            progress.rerun_attempts += 1
            if when in ("setup", "call", "teardown"):
                # Until the attempt's teardown report, which ends it.
                progress.rerun_pending = when != "teardown"
            else:
                # A crashed xdist worker's test, rescheduled: it has no teardown
                # to wait for, and may run again on another worker.
                del self._progress[key]
                self._rescheduled[nodeid] = progress.rerun_attempts
            return
        elif outcome == "skipped":
            if wasxfail is not None:
                progress.outcome, progress.longrepr = "xfailed", wasxfail
            else:
                progress.outcome, progress.longrepr = "skipped", skip_reason(report)
            progress.when = when
        elif when == "call":
            progress.outcome, progress.when = "failed", "call"
            progress.longrepr = report.longreprtext
        elif progress.outcome not in ("failed", "error"):
            # setup and teardown failures are errors, as pytest counts them;
            # an xdist worker crash reports when="???".
            progress.outcome = "error"
            progress.when = when if when in ("setup", "teardown") else "crash"
            progress.longrepr = report.longreprtext

        # The teardown report ends a test, and so does an xdist worker's crash
        # report (when="???"), even after a failure that is kept as the outcome.
        if when not in ("setup", "call"):
            if progress.rerun_pending:
                progress.rerun_pending = False
                return
            del self._progress[key]
            longrepr = progress.longrepr
            position = self._position(nodeid) if self.started else -1
            if position is None:
                return
            self._add(
                (
                    nodeid,
                    progress.outcome,
                    progress.when,
                    progress.setup,
                    progress.call,
                    report.duration if when == "teardown" else 0.0,
                    worker,
                    None if longrepr is None else cap_longrepr(longrepr),
                    progress.rerun_attempts,
                    None,
                    position,
                )
            )

    def add_collect_report(self, report: pytest.CollectReport) -> None:
        if self.disabled:
            return
        try:
            self._add_collect_report(report)
        except Exception as exc:  # never let recording break the session
            self._fail(exc)

    def _add_collect_report(self, report: pytest.CollectReport) -> None:
        if report.failed:
            outcome: Outcome = "error"
            text = report.longreprtext
        elif report.skipped:
            outcome = "skipped"
            text = skip_reason(report)
        else:
            return
        nodeid = clean_text(report.nodeid)
        position = self._position(nodeid) if self.started else -1
        if position is None:
            return
        self._add(
            (
                nodeid,
                outcome,
                "collect",
                0.0,
                0.0,
                0.0,
                None,
                cap_longrepr(text),
                0,
                nodeid.split("::")[0],
                position,
            )
        )

    def _add(self, result: PendingResult) -> None:
        if self.disabled:
            return
        outcome = result[1]
        self._counts[outcome] += 1
        if self._on_result is not None:
            self._on_result(result[0], outcome)
        self._pending.append(result)

    def counts(self) -> Counts:
        """Outcomes so far, with ``not_run`` for selected tests that did not report."""
        self._read_reports()
        counts = dict(self._counts)
        counts["not_run"] += self._selection_size - self._placed.count(1)
        return counts

    @property
    def has_pending_results(self) -> bool:
        self._read_reports()
        return bool(self._pending)

    def _take_pending(self) -> list[Result]:
        # ``Result._make`` without its Python frame per result.
        batch = list(map(tuple.__new__, repeat(Result), self._pending))
        self._pending = []
        return batch

    def flush(self) -> None:
        with collector_paused():
            self._read_reports()
            if self._pending:
                self._flush()

    def _flush(self) -> None:
        if self.spool is not None:
            batch = self._take_pending()
            try:
                self.spool.add_results(batch)
            except Exception as exc:
                self._fail(exc)
            self._next_write = self._clock() + self._flush_interval
            return
        if self.store is None or self.run_id is None:
            return
        batch = self._take_pending()
        try:
            self.store.append_results(self.run_id, batch)
            if not self.cancelled and self.store.cancel_requested(self.run_id):
                self.cancelled = True
                if self._on_cancel is not None:
                    self._on_cancel(self.run_id)
        except Exception as exc:
            if not self._spool_instead(exc, batch):
                self._fail(exc)
        self._next_write = self._clock() + self._flush_interval

    def finish(self, finish: RunFinish) -> None:
        with collector_paused():
            self._read_reports()
            self._finish(finish)

    def _finish(self, finish: RunFinish) -> None:
        batch = self._take_pending()
        if self.spool is not None:
            try:
                self.spool.finish(finish, batch)
            except Exception as exc:
                self._fail(exc)
            return
        if self.store is None or self.run_id is None:
            return
        try:
            self.store.finish_run(self.run_id, finish, batch)
        except Exception as exc:
            if self._spool_instead(exc, batch) and self.spool is not None:
                try:
                    self.spool.finish(finish, [])
                except Exception as error:
                    self._fail(error)
                return
            self._fail(exc)
            return
        self.close()

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
        if self.store is not None:
            self.store.close()
            self.store = None


def _crashed_worker(node: object) -> object:
    """The worker id of the controller xdist gives its report of a crashed worker's test."""
    try:
        return node.gateway.id  # type: ignore[attr-defined]
    except Exception:
        return None


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
