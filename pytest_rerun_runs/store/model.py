"""The data of the store contract: runs, their selection and results.

Plain records and the rules every backend shares (statuses, liveness,
counts, result order); no I/O here.

The records are named tuples, not dataclasses: a dataclass compiles generated
source for its methods when its module is imported, which every pytest session
would pay for (about half a millisecond a class). They are values: nothing
mutates one or the lists and dicts it holds, so the empty defaults can be shared.
Their annotations are evaluated as the classes are made (no ``from __future__
import annotations``): a named tuple compiles each annotation given as a string.
"""

import os
from collections.abc import Collection, Iterable, Sequence
from itertools import repeat
from typing import Any, Literal, NamedTuple

Outcome = Literal["passed", "failed", "error", "skipped", "xfailed", "xpassed", "not_run"]
OUTCOMES: tuple[Outcome, ...] = (
    "passed",
    "failed",
    "error",
    "skipped",
    "xfailed",
    "xpassed",
    "not_run",
)
#: ``crash`` is an xdist worker that died while running the test.
Phase = Literal["setup", "call", "teardown", "collect", "crash", "none"]
PHASES: tuple[Phase, ...] = ("setup", "call", "teardown", "collect", "crash", "none")

#: ``queued``: a retry created but not yet claimed by a session.
RunStatus = Literal[
    "queued", "running", "passed", "failed", "interrupted", "error", "no_tests", "cancelled"
]
RUN_STATUSES: tuple[RunStatus, ...] = (
    "queued",
    "running",
    "passed",
    "failed",
    "interrupted",
    "error",
    "no_tests",
    "cancelled",
)
#: Statuses of runs that may still get results.
OPEN_STATUSES = frozenset({"queued", "running"})
#: ``failing``: a new root of the tests whose latest outcome in the store is a failure.
RetryMode = Literal["full", "failed_only", "subset", "failing"]
RETRY_MODES: tuple[RetryMode, ...] = ("full", "failed_only", "subset", "failing")

#: Outcomes that count as failing (``pytest-runs diff``, ``flaky``, the terminal).
FAILING_OUTCOMES = frozenset({"failed", "error"})
#: Outcomes a failed-only retry runs again: failures, and the tests a stopped
#: session never reached.
RETRY_OUTCOMES = frozenset({"failed", "error", "not_run"})

#: A running run not written to for this long (seconds) reads ``interrupted``.
DEFAULT_STALE_AFTER = 3600.0

#: How the failure or skip text of one result is capped, in characters.
LONGREPR_LIMIT = 16_000


def status_from_exit(exit_status: int) -> RunStatus:
    """The run status for a pytest exit code."""
    statuses: dict[int, RunStatus] = {0: "passed", 1: "failed", 2: "interrupted", 5: "no_tests"}
    return statuses.get(exit_status, "error")


class GitInfo(NamedTuple):
    """The branch and commit a run was recorded at."""

    branch: str | None = None
    commit: str | None = None
    #: The ``origin`` remote's URL (credentials redacted): which project this is.
    remote: str | None = None


class Invocation(NamedTuple):
    """How a session was started, recorded once per run."""

    #: ``None`` when a run was exported without them (it cannot be replayed).
    args: list[str] | None
    invocation_dir: str
    rootdir: str
    inifile: str | None
    python: str
    pytest: str
    platform: str
    host: str
    pid: int
    plugins: list[str] = []
    workers: int | None = None
    git: GitInfo = GitInfo()
    ci: dict[str, str] = {}
    #: pytest-randomly's seed, when it was active.
    randomly_seed: int | None = None
    #: A fingerprint of the working tree: equal exactly when nothing changed.
    tree: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = self._asdict()
        data["args"] = None if self.args is None else list(self.args)
        data["plugins"] = list(self.plugins)
        data["git"] = self.git._asdict()
        data["ci"] = dict(self.ci)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Invocation":
        known = set(cls._fields)
        values = {k: v for k, v in data.items() if k in known}
        values["git"] = GitInfo(**(data.get("git") or {}))
        return cls(**values)


class SelectedTest(NamedTuple):
    """One entry of a run's selection: a node id and the file pytest collected it from
    (relative to the rootdir, ``/``-separated)."""

    nodeid: str
    file: str


def selected_tests(nodeids: Sequence[str], files: Sequence[str]) -> list[SelectedTest]:
    """``SelectedTest(nodeid, file)`` for each pair, made without a Python call per
    test (a selection is a test suite long; the named tuple's ``__new__`` is Python)."""
    pairs = zip(nodeids, files, strict=True)
    return list(map(tuple.__new__, repeat(SelectedTest), pairs))


class Result(NamedTuple):
    """The final outcome of one selected test (or one collection error).

    A named tuple: one is made per test while the session runs, so it must be cheap.
    """

    nodeid: str
    outcome: Outcome
    when: Phase
    setup_duration: float = 0.0
    call_duration: float = 0.0
    teardown_duration: float = 0.0
    worker: str | None = None
    longrepr: str | None = None
    rerun_attempts: int = 0
    #: Set for results that are not part of the selection (collection errors).
    file: str | None = None
    #: Index in the run's selection; results outside it (collection errors) come after it.
    position: int = -1

    @property
    def duration(self) -> float:
        return self.setup_duration + self.call_duration + self.teardown_duration

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodeid": self.nodeid,
            "outcome": self.outcome,
            "when": self.when,
            "duration": round(self.duration, 6),
            "durations": {
                "setup": round(self.setup_duration, 6),
                "call": round(self.call_duration, 6),
                "teardown": round(self.teardown_duration, 6),
            },
            "worker": self.worker,
            "longrepr": self.longrepr,
            "rerun_attempts": self.rerun_attempts,
            "file": self.file,
        }


class NewRun(NamedTuple):
    """What is known about a run when it is created.

    ``uid`` is made by the client (a UUID4, or the uid of an imported run):
    creating a run with a uid that exists returns the existing run.
    """

    uid: str
    invocation: Invocation
    created_at: float
    started_at: float
    label: str | None = None
    meta: dict[str, str] = {}
    source_run_id: int | None = None
    root_run_id: int | None = None
    attempt: int = 1
    mode: RetryMode = "full"
    reason: str | None = None
    #: ``queued`` for a retry that a session will claim later; it holds its plan.
    status: Literal["running", "queued"] = "running"
    plan: dict[str, Any] | None = None
    #: The runs whose failures a ``failing`` run retries.
    contributors: tuple[int, ...] = ()


class Selection(NamedTuple):
    """The ordered node ids a run meant to execute, recorded when collection ends."""

    tests: list[SelectedTest]
    deselected: int = 0
    #: Retry only: tests of the source's selection that no longer exist.
    missing: list[str] = []


class RunFinish(NamedTuple):
    """How a run ended: what ``finish_run`` writes."""

    exit_status: int
    finished_at: float
    deselected: int | None = None
    mode: RetryMode | None = None
    missing: list[str] | None = None
    #: ``cancelled`` for a session stopped by ``cancel_run``; otherwise the
    #: status follows from ``exit_status``.
    status: Literal["cancelled"] | None = None


Counts = dict[str, int]


def empty_counts() -> Counts:
    return dict.fromkeys(OUTCOMES, 0)


def counts_text(counts: Counts) -> str:
    """``118 passed, 2 failed``: the non-zero counts in outcome order."""
    parts = [f"{counts[o]} {o.replace('_', ' ')}" for o in OUTCOMES if counts.get(o)]
    return ", ".join(parts) or "no tests"


def count_outcomes(results: Iterable[Result]) -> Counts:
    counts = empty_counts()
    for result in results:
        counts[result.outcome] += 1
    return counts


class RunSummary(NamedTuple):
    """A run without its selection and results: what ``list`` shows."""

    id: int
    status: RunStatus
    exit_status: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    label: str | None
    meta: dict[str, str]
    source_run_id: int | None
    root_run_id: int
    attempt: int
    mode: RetryMode
    reason: str | None
    counts: Counts
    invocation: Invocation
    deselected: int
    missing: list[str]
    #: Where an imported run came from: its original id, store and lineage.
    origin: dict[str, Any] | None = None
    #: When ``pytest-runs prune`` dropped its selection and results.
    pruned_at: float | None = None
    uid: str | None = None
    #: The last write of the session recording it.
    last_seen_at: float | None = None
    #: The frozen plan of a queued (or claimed) retry.
    plan: dict[str, Any] | None = None
    #: The runs whose failures a ``failing`` run retries.
    contributors: tuple[int, ...] = ()
    #: A running run asked to stop (its session stops at its next write).
    cancel_requested: bool = False

    @property
    def duration(self) -> float | None:
        if self.finished_at is None or self.started_at is None:
            return None
        return self.finished_at - self.created_at

    def to_dict(self) -> dict[str, Any]:
        """The run's part of the ``show --format json`` contract (no selection or
        results), with ``last_seen_at`` and ``plan``: what the server lists."""
        data = Run(self, [], []).to_dict()
        del data["selection"], data["results"]
        data["last_seen_at"] = iso(self.last_seen_at)
        data["plan"] = self.plan
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], results: Sequence[Result] = ()) -> "RunSummary":
        """A summary from :meth:`to_dict` or the ``show --format json`` contract.

        Raises ``ValueError`` (or ``KeyError``/``TypeError``) for anything else.
        """
        if data["status"] not in RUN_STATUSES:
            raise ValueError(f"unknown status {data['status']!r}")
        uid = data.get("uid")
        plan = data.get("plan")
        return cls(
            id=int(data["id"]),
            status=data["status"],
            exit_status=data.get("exit_status"),
            created_at=parse_iso(data["created_at"]) or 0.0,
            started_at=parse_iso(data.get("started_at")),
            finished_at=parse_iso(data.get("finished_at")),
            label=data.get("label"),
            meta=dict(data.get("meta") or {}),
            source_run_id=data.get("source_run_id"),
            root_run_id=int(data.get("root_run_id") or data["id"]),
            attempt=int(data.get("attempt") or 1),
            mode=data.get("mode") or "full",
            reason=data.get("reason"),
            counts={**empty_counts(), **(data.get("counts") or count_outcomes(results))},
            invocation=Invocation.from_dict(dict(data["invocation"])),
            deselected=int(data.get("deselected") or 0),
            missing=list(data.get("missing") or []),
            origin=data.get("origin"),
            pruned_at=parse_iso(data.get("pruned_at")),
            uid=uid if isinstance(uid, str) else None,
            last_seen_at=parse_iso(data.get("last_seen_at")),
            plan=plan if isinstance(plan, dict) else None,
            contributors=tuple(int(i) for i in data.get("contributors") or ()),
            cancel_requested=bool(data.get("cancel_requested")),
        )


class Run(NamedTuple):
    """A whole run: summary, selection and one result per selected test."""

    summary: RunSummary
    selection: list[SelectedTest]
    #: One per selected test, in selection order (``not_run`` where nothing was
    #: reported), then one per collection error.
    results: list[Result]

    @property
    def id(self) -> int:
        return self.summary.id

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON contract of ``pytest-runs show --format json``."""
        s = self.summary
        inv = s.invocation
        return {
            "id": s.id,
            "uid": s.uid,
            "status": s.status,
            "exit_status": s.exit_status,
            "created_at": iso(s.created_at),
            "started_at": iso(s.started_at),
            "finished_at": iso(s.finished_at),
            "duration": None if s.duration is None else round(s.duration, 6),
            "label": s.label,
            "meta": dict(s.meta),
            "source_run_id": s.source_run_id,
            "root_run_id": s.root_run_id,
            "attempt": s.attempt,
            "mode": s.mode,
            "reason": s.reason,
            "invocation": {
                "args": None if inv.args is None else list(inv.args),
                "invocation_dir": inv.invocation_dir,
                "rootdir": inv.rootdir,
                "inifile": inv.inifile,
                "python": inv.python,
                "pytest": inv.pytest,
                "platform": inv.platform,
                "host": inv.host,
                "pid": inv.pid,
                "plugins": list(inv.plugins),
                "workers": inv.workers,
                "git": {
                    "branch": inv.git.branch,
                    "commit": inv.git.commit,
                    "remote": inv.git.remote,
                },
                "ci": dict(inv.ci),
                "randomly_seed": inv.randomly_seed,
                "tree": inv.tree,
            },
            "selection": [test.nodeid for test in self.selection],
            "deselected": s.deselected,
            "missing": list(s.missing),
            "counts": dict(s.counts),
            "results": [result.to_dict() for result in self.results],
            "origin": s.origin,
            "pruned_at": iso(s.pruned_at),
            "contributors": list(s.contributors),
            "cancel_requested": s.cancel_requested,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Run":
        """A run from its JSON contract (``show --format json``, ``export``).

        Raises ``ValueError`` (or ``KeyError``/``TypeError``) for anything else.
        """
        files = data.get("selection_files") or [n.split("::")[0] for n in data["selection"]]
        selection = [
            SelectedTest(str(nodeid), str(file))
            for nodeid, file in zip(data["selection"], files, strict=True)
        ]
        results = []
        for entry in data["results"]:
            if entry["outcome"] not in OUTCOMES or entry["when"] not in PHASES:
                raise ValueError(f"unknown outcome or phase in {entry!r}")
            durations = entry.get("durations") or {"call": entry.get("duration") or 0.0}
            results.append(
                Result(
                    str(entry["nodeid"]),
                    entry["outcome"],
                    entry["when"],
                    float(durations.get("setup", 0.0)),
                    float(durations.get("call", 0.0)),
                    float(durations.get("teardown", 0.0)),
                    entry.get("worker"),
                    entry.get("longrepr"),
                    int(entry.get("rerun_attempts") or 0),
                    entry.get("file"),
                )
            )
        summary = RunSummary.from_dict(data, results)
        return cls(summary=summary, selection=selection, results=results)


#: What cancelling did: stopped a queued run, asked a running one to stop, nothing.
CancelOutcome = Literal["cancelled", "cancel_requested", "no_op"]

#: What a token may do: read history, record runs, retry/cancel/claim them, administer.
Scope = Literal["runs:read", "runs:write", "runs:retry", "admin"]
SCOPES: tuple[Scope, ...] = ("runs:read", "runs:write", "runs:retry", "admin")


class Token(NamedTuple):
    """An API token of the server, as stored: its secret only as a hash."""

    id: int
    name: str | None
    scopes: tuple[str, ...]
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "scopes": list(self.scopes),
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "revoked_at": iso(self.revoked_at),
        }


def hostname() -> str:
    """This machine's name (``os.uname`` avoids importing ``socket`` at start-up)."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket  # pragma: no cover - Windows

    return socket.gethostname()  # pragma: no cover


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat()


def parse_iso(text: str | None) -> float | None:
    if text is None:
        return None
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def process_alive(host: str | None, pid: int | None) -> bool | None:
    """Whether ``pid`` runs on this host; ``None`` when that cannot be known here
    (another host, no pid, no permission to ask)."""
    if pid is None or host != hostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return None
    return True


def process_is_gone(host: str | None, pid: int | None) -> bool:
    """True when ``pid`` on this host no longer exists (its run can never finish)."""
    return process_alive(host, pid) is False


def clean_text(text: str) -> str:
    """``text`` as valid UTF-8 without NUL: lone surrogates (from tests, ids or a
    non-UTF-8 argv) and NUL become visible escapes instead of errors in every
    writer downstream."""
    if "\0" in text:  # PostgreSQL's text cannot hold NUL, nor can the server's JSON fields
        text = text.replace("\0", "\\x00")
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def effective_status(
    status: RunStatus,
    last_seen_at: float | None,
    host: str | None,
    pid: int | None,
    *,
    now: float,
    stale_after: float = DEFAULT_STALE_AFTER,
) -> RunStatus:
    """A stored status as readers should see it: a ``running`` run that can never
    finish reads ``interrupted``. On the host that runs it the process answers at
    once (alive or gone); anywhere else a run not written to for ``stale_after``
    seconds is taken for dead."""
    if status != "running":
        return status
    alive = process_alive(host, pid)
    if alive is not None:
        return "running" if alive else "interrupted"
    if last_seen_at is not None and now - last_seen_at > stale_after:
        return "interrupted"
    return status


def is_settled(
    status: RunStatus,
    last_seen_at: float | None,
    host: str | None,
    pid: int | None,
    *,
    now: float,
    stale_after: float = DEFAULT_STALE_AFTER,
) -> bool:
    """Whether a run can get no more results: what ``last`` looks for."""
    live = effective_status(status, last_seen_at, host, pid, now=now, stale_after=stale_after)
    return live not in OPEN_STATUSES


def new_uid() -> str:
    import uuid  # a few milliseconds: not at plugin import

    return uuid.uuid4().hex


def legacy_uid(created_at: float, host: str | None, pid: int | None, run_id: int) -> str:
    """A stable uid for a run recorded before runs had one (and for such exports)."""
    import uuid

    return uuid.uuid5(uuid.NAMESPACE_OID, f"pytest-runs:{created_at!r}:{host}:{pid}:{run_id}").hex


def results_in_selection_order(
    selection: Sequence[SelectedTest],
    stored: Iterable[Result],
    outcomes: Collection[str] | None = None,
    reported: Collection[int] = (),
) -> list[Result]:
    """A run's results as the contract returns them: one per selected test, in
    selection order, ``not_run`` where nothing was stored, then the results
    outside the selection.

    With ``outcomes``, only those outcomes (``stored`` is already filtered; a
    ``not_run`` result is made for each selected position not in ``reported``).
    """
    if outcomes is not None and "not_run" not in outcomes:
        return sorted(stored, key=lambda result: result.position)
    size = len(selection)
    by_position: dict[int, Result] = {}
    extras: list[Result] = []
    for result in stored:
        if 0 <= result.position < size:
            by_position[result.position] = result
        else:
            extras.append(result)
    want_not_run = outcomes is None or "not_run" in outcomes
    results: list[Result] = []
    for position, test in enumerate(selection):
        found = by_position.get(position)
        if found is not None:
            results.append(found)
        elif want_not_run and (outcomes is None or position not in reported):
            results.append(Result(test.nodeid, "not_run", "none", position=position))
    extras.sort(key=lambda result: result.position)
    results.extend(extras)
    return results


def counts_from_groups(selection_size: int, groups: Iterable[tuple[str, bool, int]]) -> Counts:
    """Counts from ``(outcome, inside the selection, number)`` groups of stored
    results, with ``not_run`` for selected tests without a result."""
    counts = empty_counts()
    in_selection = 0
    for outcome, is_selected, number in groups:
        counts[outcome] += number
        if is_selected:
            in_selection += number
    counts["not_run"] += selection_size - in_selection
    return counts


def imported_results(run: Run) -> list[Result]:
    """The reported results of a run from elsewhere, each at its position in the
    run's selection (a node id selected twice takes its positions in turn);
    results outside the selection come after it."""
    free: dict[str, list[int]] = {}
    for position, test in enumerate(run.selection):
        free.setdefault(test.nodeid, []).append(position)
    results, extra = [], len(run.selection)
    for result in run.results:
        if result.outcome == "not_run":
            continue
        places = free.get(result.nodeid)
        if places:
            position = places.pop(0)
        else:
            position, extra = extra, extra + 1
        results.append(result._replace(position=position))
    return results


def check_positions(run_id: int, selection: Sequence[str], results: Iterable[Result]) -> None:
    """Refuse results whose position does not fit the run's selection: inside it
    the node id must be the one selected there; after it (collection errors) it
    must be one the selection does not hold."""
    from pytest_rerun_runs.store.errors import InvalidResult

    size = len(selection)
    selected: set[str] | None = None
    for result in results:
        position, nodeid = result.position, result.nodeid
        if 0 <= position < size:
            if selection[position] == nodeid:
                continue
        elif position >= size:
            if selected is None:
                selected = set(selection)
            if nodeid not in selected:
                continue
        raise InvalidResult(
            f"run {run_id}: a result for {nodeid} cannot take position {position}",
            run_id=run_id,
            position=position,
        )
