"""What ``--retry-run ID|last|FILE`` and the CLI's run arguments name.

:func:`parse_run_reference` is the one parser of run references (the pytest
option and every ``pytest-runs`` argument use it); :func:`resolve_source`
turns a reference into the run to retry. Nothing here writes: a run file is
read and checked here and imported only when the retry's run is created.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pytest_rerun_runs.store import (
    DEFAULT_STALE_AFTER,
    FAILING_OUTCOMES,
    OPEN_STATUSES,
    RETRY_OUTCOMES,
    AlreadyClaimed,
    InvalidRunFile,
    InvalidRunReference,
    NothingToRetry,
    Result,
    Run,
    RunDamaged,
    RunStore,
    RunSummary,
    StoreError,
    open_store,
)

if TYPE_CHECKING:
    from pytest_rerun_runs.planner import RetryOrder, RetryPlan

#: The largest run id any backend can hold (a signed 64-bit integer).
MAX_RUN_ID = 2**63 - 1
LAST = "last"
FAILING = "failing"
#: The oldest queued retry of this project (claimed by the session that takes it).
NEXT = "next"


class RunReference(NamedTuple):
    """A run named by id, by ``last`` (the newest finished run), by a run file, or
    ``failing`` (the tests whose latest outcome is a failure)."""

    text: str
    run_id: int | None = None
    file: Path | None = None
    failing: bool = False
    next_queued: bool = False

    def __str__(self) -> str:
        return self.text


def parse_run_id(text: str) -> int | None:
    """``text`` as a run id: ASCII digits only, 1 to 2**63-1; ``None`` otherwise."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_RUN_ID)):
        return None
    value = int(text)
    return value if 0 < value <= MAX_RUN_ID else None


def parse_run_reference(text: str, *, base: Path | None = None) -> RunReference:
    """``ID`` or ``last``; with ``base`` (for ``--retry-run``), also ``failing`` and
    a run file relative to ``base`` (``./failing`` names a file).

    Raises :class:`InvalidRunReference` for anything else.
    """
    if text == LAST:
        return RunReference(text)
    if text == FAILING and base is not None:
        return RunReference(text, failing=True)
    if text == NEXT and base is not None:
        return RunReference(text, next_queued=True)
    run_id = parse_run_id(text)
    if run_id is not None:
        return RunReference(text, run_id=run_id)
    if base is not None and text and _is_file(base / text):
        return RunReference(text, file=base / text)
    what = "a run id (a positive number), 'last'"
    if base is not None:
        what += ", 'failing', 'next' or a run file written by 'pytest-runs export'"
    shown = text if len(text) <= 40 else text[:40] + "..."
    raise InvalidRunReference(f"expected {what}, got {shown!r}", value=shown)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long, a NUL in it
        return False


def run_reference_argument(text: str) -> RunReference:
    """``argparse`` ``type=`` for a run id or ``last``."""
    try:
        return parse_run_reference(text)
    except InvalidRunReference as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def resolve_run_id(store: RunStore, reference: RunReference) -> int:
    """The id a reference names in ``store`` (``last``: the newest finished run)."""
    if reference.run_id is not None:
        return reference.run_id
    run_id = store.latest_run_id(finished=True)
    if run_id is None:
        raise StoreError(f"{store.location} holds no finished run", reason="no_finished_run")
    return run_id


class RetrySource(NamedTuple):
    """The run a retry is made from, with the results a plan needs."""

    run: Run
    #: Set when the run comes from a run file: it is imported when the retry starts.
    file: Path | None = None
    export: dict[str, Any] = {}
    #: The plan, when the source decides it (``failing``, a queued run).
    plan: RetryPlan | None = None
    #: A queued run this session claims and records into (its frozen plan).
    claim: int | None = None

    def describe(self) -> str:
        if self.plan is not None and self.plan.mode == "failing":
            from pytest_rerun_runs.text import summarize

            runs = "run" if len(self.plan.contributors) == 1 else "runs"
            return f"the failing tests of {runs} {summarize(self.plan.contributors)}"
        if self.claim is not None:
            return f"queued run {self.claim}"
        if self.file is None:
            return f"run {self.run.id}"
        from pytest_rerun_runs.text import escape

        return f"run {self.run.id} of {escape(self.file.name)}"


def resolve_source(
    reference: RunReference,
    store_location: str,
    *,
    stale_after: float = DEFAULT_STALE_AFTER,
    rootdir: str | None = None,
    order: RetryOrder = "recorded",
    claim: Callable[[int], bool] | None = None,
) -> RetrySource:
    """The source run ``reference`` names; reads the store or the file, writes
    nothing — but for ``next`` with ``claim``: then the oldest queued run that
    ``claim`` can take (another session may be taking the same one this moment)."""
    if reference.file is not None:
        from pytest_rerun_runs import exchange

        try:
            run, export = exchange.load_run_file(reference.file)
        except exchange.RunFileError as exc:
            raise InvalidRunFile(str(exc)) from None
        return RetrySource(run=run, file=reference.file, export=export)
    store = open_store(store_location, create=False, read_only=True, stale_after=stale_after)
    try:
        if reference.failing:
            return failing_source(store, rootdir, order)
        if reference.next_queued:
            candidates = next_queued(store, rootdir)
            if claim is not None:
                taken = next((c for c in candidates if claim(c)), None)
                if taken is None:
                    raise NothingToRetry(
                        f"every queued run for {Path(rootdir or '.').name} was claimed by"
                        " another session a moment ago"
                    )
                return queued_source(store, store.get_summary(taken), claimed=True)
            run_id = candidates[0]
        else:
            run_id = resolve_run_id(store, reference)
        summary = store.get_summary(run_id)
        if summary.plan is not None and summary.status in OPEN_STATUSES:
            return queued_source(store, summary)
        run = store.get_run(run_id, RETRY_OUTCOMES)
    finally:
        store.close()
    return RetrySource(run=run)


def next_queued(store: RunStore, rootdir: str | None) -> list[int]:
    """The queued retries of this project, oldest first: recorded with the same git
    remote when both know one, otherwise in a rootdir of the same name (CI machines
    check a project out in different places)."""
    from pytest_rerun_runs.invocation import git_info

    name = Path(rootdir).name if rootdir else None
    remote = git_info(Path(rootdir)).remote if rootdir else None

    def same_project(summary: RunSummary) -> bool:
        theirs = summary.invocation.git.remote
        if remote is not None and theirs is not None:
            return theirs == remote
        return name is None or Path(summary.invocation.rootdir).name == name

    queued = [s for s in store.list_runs(None, status="queued") if same_project(s)]
    if not queued:
        where = f" for {name}" if name else ""
        raise NothingToRetry(f"no queued run{where} in {store.location}")
    return sorted(s.id for s in queued)


def queued_source(store: RunStore, summary: RunSummary, *, claimed: bool = False) -> RetrySource:
    """A retry queued through the server: this session claims it (or, ``claimed``,
    has) and runs its frozen plan; one that another session claimed is refused,
    naming its host."""
    from pytest_rerun_runs.planner import RetryPlan

    if summary.status != "queued" and not claimed:
        host = summary.invocation.host
        raise AlreadyClaimed(
            f"run {summary.id} is a queued retry that {host} already claimed",
            run_id=summary.id,
            host=host,
        )
    assert summary.plan is not None
    try:
        plan = RetryPlan.from_dict(summary.plan)
    except (KeyError, TypeError, ValueError) as exc:
        raise RunDamaged(
            f"run {summary.id} is a queued retry whose plan cannot be read ({exc!r})",
            run_id=summary.id,
        ) from None
    run = store.get_run(summary.id)
    return RetrySource(run=run, plan=plan, claim=summary.id)


def failing_source(store: RunStore, rootdir: str | None, order: RetryOrder) -> RetrySource:
    """The tests whose most recent outcome in the store's history of ``rootdir``
    is a failure, as a plan of their own."""
    from pytest_rerun_runs.planner import FAILING_HISTORY, plan_failing

    summaries = [
        s
        for s in store.list_runs(None)
        if s.status not in OPEN_STATUSES
        and s.pruned_at is None
        and (rootdir is None or s.invocation.rootdir == rootdir)
    ][:FAILING_HISTORY]
    history = []
    for summary in summaries:
        try:
            history.append(store.get_run(summary.id))
        except RunDamaged:
            continue  # what a damaged run said is unknown: the others still count
    plan = plan_failing(history, order)
    # A stand-in source: the newest contributing run's summary, with the failing
    # tests as its selection and their latest failures as its results.
    planned = {t.nodeid for t in (*plan.tests, *plan.collectors)}
    latest: dict[str, Result] = {}
    for past in history:
        for result in past.results:
            if result.nodeid in planned and result.outcome in FAILING_OUTCOMES:
                latest.setdefault(result.nodeid, result)
    newest = next(run for run in history if run.id == plan.contributors[-1])
    run = Run(summary=newest.summary, selection=list(plan.tests), results=list(latest.values()))
    return RetrySource(run=run, plan=plan)
