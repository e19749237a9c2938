"""Request bodies of the API: pydantic models that validate what arrives over HTTP
(types, ranges, sizes, paths) before anything reaches the store.

Text is cleaned on the way in (lone surrogates escaped) and never trusted as a
path: a selected test's file stays inside the rootdir.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, model_validator

from pytest_rerun_runs.store import (
    LONGREPR_LIMIT,
    SCOPES,
    GitInfo,
    Invocation,
    NewRun,
    Result,
    RunFinish,
    SelectedTest,
    Selection,
    clean_text,
)

MAX_ID = 2**63 - 1
MAX_NODEID = 8_192
MAX_SHORT = 1_024
MAX_TESTS = 2_000_000
MAX_BATCH = 20_000
MAX_ITEMS = 200
#: A timestamp between 1970 and the year 3000; a duration up to a year.
MAX_TIMESTAMP = 32_503_680_000.0
MAX_SECONDS = 366 * 86_400.0


def _clean_line(text: str) -> str:
    if "\0" in text or "\n" in text or "\r" in text:
        raise ValueError("holds a NUL or a line break")
    return clean_text(text)


def _clean_block(text: str) -> str:
    if "\0" in text:
        raise ValueError("holds a NUL")
    return clean_text(text)


def _inside_rootdir(text: str) -> str:
    from pytest_rerun_runs.runfile import reaches_outside

    if reaches_outside(text):
        raise ValueError("reaches outside the rootdir")
    return text


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("is not a finite number")
    return value


Line = Annotated[str, Field(max_length=MAX_SHORT), AfterValidator(_clean_line)]
NodeId = Annotated[str, Field(min_length=1, max_length=MAX_NODEID), AfterValidator(_clean_line)]
RelativePath = Annotated[
    str, Field(max_length=MAX_NODEID), AfterValidator(_clean_line), AfterValidator(_inside_rootdir)
]
# Strict numbers: JSON's true is not 1, and "5" is not 5.
Timestamp = Annotated[float, Field(strict=True, ge=0, le=MAX_TIMESTAMP), AfterValidator(_finite)]
Seconds = Annotated[float, Field(strict=True, ge=0, le=MAX_SECONDS), AfterValidator(_finite)]
RunId = Annotated[int, Field(strict=True, ge=1, le=MAX_ID)]
#: Positions, sizes and pids: what every backend stores (PostgreSQL's INTEGER).
Count = Annotated[int, Field(strict=True, ge=0, le=2**31 - 1)]
Uid = Annotated[str, Field(pattern=r"^[0-9A-Za-z-]{1,64}$")]
Scope = Literal["runs:read", "runs:write", "runs:retry", "admin"]
assert set(Scope.__args__) == set(SCOPES)  # type: ignore[attr-defined]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GitModel(Strict):
    branch: Line | None = None
    commit: Line | None = None
    remote: Line | None = None


class InvocationModel(Strict):
    """How a session was started (``Invocation``)."""

    args: (
        Annotated[list[Annotated[str, Field(max_length=MAX_NODEID)]], Field(max_length=10_000)]
        | None
    )
    invocation_dir: Line
    rootdir: Line
    inifile: Line | None = None
    python: Line
    pytest: Line
    platform: Line
    host: Line
    pid: Count
    plugins: Annotated[list[Line], Field(max_length=MAX_ITEMS)] = []
    workers: Count | None = None
    git: GitModel = GitModel()
    ci: Annotated[dict[Line, Line], Field(max_length=MAX_ITEMS)] = {}
    randomly_seed: Annotated[int, Field(strict=True, ge=-MAX_ID, le=MAX_ID)] | None = None
    tree: Line | None = None

    def to_invocation(self) -> Invocation:
        values = self.model_dump()
        values["args"] = None if self.args is None else [clean_text(a) for a in self.args]
        values["git"] = GitInfo(**values["git"])
        return Invocation(**values)


class NewRunBody(Strict):
    """A run with its selection (``POST /runs``); the same ``uid`` again is the same run."""

    uid: Uid
    invocation: InvocationModel
    created_at: Timestamp
    started_at: Timestamp
    label: Line | None = None
    meta: Annotated[dict[Line, Line], Field(max_length=MAX_ITEMS)] = {}
    source_run_id: RunId | None = None
    root_run_id: RunId | None = None
    attempt: Annotated[int, Field(strict=True, ge=1, le=1_000_000)] = 1
    mode: Literal["full", "failed_only", "subset", "failing"] = "full"
    reason: Line | None = None
    contributors: Annotated[list[RunId], Field(max_length=10_000)] = []
    #: ``[node id, file]`` pairs, in the order the session runs them.
    selection: Annotated[list[tuple[NodeId, RelativePath]], Field(max_length=MAX_TESTS)]
    deselected: Count = 0
    missing: Annotated[list[NodeId], Field(max_length=MAX_TESTS)] = []
    #: ``queued``: a run a session claims later, holding its ``plan``.
    status: Literal["running", "queued"] = "running"
    plan: dict[str, Any] | None = None

    def to_new_run(self) -> tuple[NewRun, Selection]:
        new_run = NewRun(
            uid=self.uid,
            invocation=self.invocation.to_invocation(),
            created_at=self.created_at,
            started_at=self.started_at,
            label=self.label,
            meta=dict(self.meta),
            source_run_id=self.source_run_id,
            root_run_id=self.root_run_id,
            attempt=self.attempt,
            mode=self.mode,
            reason=self.reason,
            contributors=tuple(self.contributors),
            status=self.status,
            plan=None if self.plan is None else plain(self.plan),
        )
        tests = [SelectedTest(nodeid, file) for nodeid, file in self.selection]
        return new_run, Selection(tests, self.deselected, list(self.missing))


class ResultModel(Strict):
    """The final outcome of one test, at its position in the run's selection."""

    position: Count
    nodeid: NodeId
    outcome: Literal["passed", "failed", "error", "skipped", "xfailed", "xpassed", "not_run"]
    when: Literal["setup", "call", "teardown", "collect", "crash", "none"]
    setup_duration: Seconds = 0.0
    call_duration: Seconds = 0.0
    teardown_duration: Seconds = 0.0
    worker: Line | None = None
    longrepr: (
        Annotated[str, Field(max_length=LONGREPR_LIMIT * 2), AfterValidator(_clean_block)] | None
    ) = None
    rerun_attempts: Annotated[int, Field(strict=True, ge=0, le=1_000_000)] = 0
    file: RelativePath | None = None

    def to_result(self) -> Result:
        return Result(
            self.nodeid,
            self.outcome,
            self.when,
            self.setup_duration,
            self.call_duration,
            self.teardown_duration,
            self.worker,
            self.longrepr,
            self.rerun_attempts,
            self.file,
            self.position,
        )


class ResultsBody(Strict):
    results: Annotated[list[ResultModel], Field(max_length=MAX_BATCH)]


class FinishBody(Strict):
    exit_status: Annotated[int, Field(strict=True, ge=0, le=255)]
    finished_at: Timestamp
    deselected: Count | None = None
    mode: Literal["full", "failed_only", "subset", "failing"] | None = None
    missing: Annotated[list[NodeId], Field(max_length=MAX_TESTS)] | None = None
    #: ``cancelled``: the session stopped because the run was cancelled.
    status: Literal["cancelled"] | None = None
    results: Annotated[list[ResultModel], Field(max_length=MAX_BATCH)] = []

    def to_finish(self) -> RunFinish:
        return RunFinish(
            self.exit_status,
            self.finished_at,
            self.deselected,
            self.mode,
            None if self.missing is None else list(self.missing),
            self.status,
        )


class ClaimBody(Strict):
    invocation: InvocationModel
    started_at: Timestamp | None = None


class RetryBody(Strict):
    """``POST /runs/{id}/retry``: ``{}`` retries the whole selection."""

    failed_only: StrictBool = False
    tests: Annotated[list[NodeId], Field(max_length=MAX_TESTS)] | None = None
    reason: Line | None = None
    send_notifications: StrictBool = True


class TokenBody(Strict):
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=len(SCOPES))]
    name: Line | None = None
    #: Seconds until it expires; none: it never does.
    expires_in: Annotated[int, Field(strict=True, ge=1, le=10 * 366 * 86_400)] | None = None


def _age(text: str) -> str:
    from pytest_rerun_runs.analysis import parse_age

    parse_age(text)  # ValueError: not an age
    return text


class ImportBody(Strict):
    """A finished run from elsewhere (an export), kept with where it came from."""

    run: dict[str, Any]
    origin: Annotated[dict[Line, Any], Field(max_length=MAX_ITEMS)] = {}


class PruneBody(Strict):
    #: These runs (what ``pytest-runs prune`` chose), or the rules below.
    run_ids: Annotated[list[RunId], Field(max_length=1_000_000)] | None = None
    keep: Annotated[int, Field(strict=True, ge=0, le=2**31 - 1)] | None = None
    #: ``30d``, ``12h``, ``2w``: runs created longer ago than this.
    older_than: Annotated[str, Field(pattern=r"^\d{1,9}[smhdw]$"), AfterValidator(_age)] | None = (
        None
    )
    dry_run: StrictBool = False

    @model_validator(mode="after")
    def _one_rule(self) -> PruneBody:
        given = [self.run_ids is not None, self.keep is not None, self.older_than is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of run_ids, keep and older_than")
        return self


def plain(data: Any) -> Any:
    """``data`` with every string cleaned (for bodies passed through as they are)."""
    if isinstance(data, str):
        return clean_text(data)
    if isinstance(data, list):
        return [plain(item) for item in data]
    if isinstance(data, dict):
        return {clean_text(str(key)): plain(value) for key, value in data.items()}
    return data
