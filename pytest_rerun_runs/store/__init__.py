"""The store contract: one :class:`RunStore` protocol every backend honours,
and :func:`open_store`, the one place that picks a backend by URL.

Every reader and writer of run history (the plugin, the CLI, the server)
goes through :class:`RunStore`. Backends live beside this module, one per
module; the data classes are in ``model.py`` and the errors in ``errors.py``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Collection, Sequence
from typing import Any, Protocol

from pytest_rerun_runs.store.errors import (
    AlreadyClaimed,
    ConflictingSelection,
    InputsNotRetained,
    InvalidLineage,
    InvalidResult,
    InvalidRunFile,
    InvalidRunReference,
    NotClaimed,
    NothingToRetry,
    NotQueued,
    RunDamaged,
    RunFinished,
    RunInProgress,
    RunNotFound,
    RunsError,
    StoreError,
    StoreNotFound,
    StoreTooNew,
    TokenNotFound,
    UnknownTests,
    UnsupportedStore,
)
from pytest_rerun_runs.store.model import (
    DEFAULT_STALE_AFTER,
    FAILING_OUTCOMES,
    LONGREPR_LIMIT,
    OPEN_STATUSES,
    OUTCOMES,
    PHASES,
    RETRY_MODES,
    RETRY_OUTCOMES,
    RUN_STATUSES,
    SCOPES,
    CancelOutcome,
    Counts,
    GitInfo,
    Invocation,
    NewRun,
    Outcome,
    Phase,
    Result,
    RetryMode,
    Run,
    RunFinish,
    RunStatus,
    RunSummary,
    SelectedTest,
    Selection,
    Token,
    check_positions,
    clean_text,
    count_outcomes,
    counts_from_groups,
    counts_text,
    effective_status,
    empty_counts,
    hostname,
    is_settled,
    iso,
    legacy_uid,
    new_uid,
    parse_iso,
    process_is_gone,
    results_in_selection_order,
    selected_tests,
    status_from_exit,
)

__all__ = [
    "DEFAULT_STALE_AFTER",
    "FAILING_OUTCOMES",
    "LONGREPR_LIMIT",
    "OPEN_STATUSES",
    "OUTCOMES",
    "PHASES",
    "RETRY_MODES",
    "RETRY_OUTCOMES",
    "RUN_STATUSES",
    "SCOPES",
    "AccessStore",
    "AlreadyClaimed",
    "CancelOutcome",
    "ConflictingSelection",
    "Counts",
    "GitInfo",
    "InputsNotRetained",
    "InvalidLineage",
    "InvalidResult",
    "InvalidRunFile",
    "InvalidRunReference",
    "Invocation",
    "NewRun",
    "NotClaimed",
    "NotQueued",
    "NothingToRetry",
    "Outcome",
    "Phase",
    "Result",
    "RetryMode",
    "Run",
    "RunDamaged",
    "RunFinish",
    "RunFinished",
    "RunInProgress",
    "RunNotFound",
    "RunStatus",
    "RunStore",
    "RunSummary",
    "RunsError",
    "SelectedTest",
    "Selection",
    "StoreError",
    "StoreNotFound",
    "StoreTooNew",
    "Token",
    "TokenNotFound",
    "UnknownTests",
    "UnsupportedStore",
    "backend_for",
    "check_positions",
    "clean_text",
    "count_outcomes",
    "counts_from_groups",
    "counts_text",
    "effective_status",
    "empty_counts",
    "hostname",
    "is_settled",
    "iso",
    "legacy_uid",
    "new_uid",
    "open_store",
    "parse_iso",
    "process_is_gone",
    "redact_url",
    "results_in_selection_order",
    "selected_tests",
    "status_from_exit",
]


class RunStore(Protocol):
    """Everything the plugin, the CLI and the server may do with run history.

    Every write is idempotent: a run is keyed by the ``uid`` its creator made,
    a result by its run and its position in the selection. A run is created
    with its selection, gets results while it is open and is finished once;
    after that nothing about it can change (pruning aside).
    """

    #: Where the store is, safe to print (passwords and tokens redacted).
    location: str

    def create_run(self, new_run: NewRun, selection: Selection) -> int:
        """The id of the run with ``new_run.uid``, created if there is none.

        Raises :class:`ConflictingSelection` if that uid exists with another selection
        and :class:`InvalidLineage` if its source is not a run of this store or its
        root is not its source's root.
        """
        ...

    def append_results(self, run_id: int, results: Sequence[Result]) -> None:
        """Store results by position; a position already stored is left as it is.

        Raises :class:`RunFinished` for a new result of a finished run.
        """
        ...

    def finish_run(self, run_id: int, finish: RunFinish, results: Sequence[Result] = ()) -> None:
        """Append the last results and close the run, in one transaction; a
        finished run is left as it is."""
        ...

    def claim_run(self, run_id: int, invocation: Invocation, started_at: float) -> RunSummary:
        """Move a queued run to ``running`` for the session described by ``invocation``.

        Raises :class:`AlreadyClaimed` when another session claimed it first and
        :class:`NotQueued` for a run that was never queued.
        """
        ...

    def get_run(self, run_id: int, outcomes: Collection[str] | None = None) -> Run:
        """The run with its selection and results; with ``outcomes``, only the
        results with those outcomes (``not_run`` included if named)."""
        ...

    def get_summary(self, run_id: int) -> RunSummary: ...

    def get_outcomes(
        self, run_id: int, nodeids: Collection[str], only: Collection[str] | None = None
    ) -> dict[str, Outcome]:
        """The outcomes of just these selected tests (``not_run`` where none was
        stored); with ``only``, just the tests with those outcomes. What a question
        about a few tests of many runs needs."""
        ...

    def cancel_requested(self, run_id: int) -> bool:
        """Whether the run was asked to stop (see :meth:`cancel_run`): what a session
        recording it reads at each write."""
        ...

    def find_run(self, uid: str) -> int | None:
        """The id of the run with ``uid``, if this store has it."""
        ...

    def latest_run_id(self, *, finished: bool = False) -> int | None:
        """The newest run id; with ``finished``, the newest run that can get no
        more results (what ``last`` means)."""
        ...

    def list_runs(
        self,
        limit: int | None = None,
        *,
        before: int | None = None,
        status: str | None = None,
        label: str | None = None,
        branch: str | None = None,
        commit: str | None = None,
        root_run_id: int | None = None,
    ) -> list[RunSummary]:
        """The newest runs first (ids below ``before``), those that match every
        filter given; ``status`` is the status the run reads now."""
        ...

    def cancel_run(self, run_id: int, now: float) -> CancelOutcome:
        """Stop a run: a queued one is ``cancelled`` at once; a running one gets
        ``cancel_requested`` (its session stops at its next write); a finished one
        is left as it is (``no_op``)."""
        ...

    def lineage(self, run_id: int) -> list[RunSummary]:
        """Every run that shares ``run_id``'s root, oldest first."""
        ...

    def import_run(self, run: Run, origin: dict[str, Any]) -> int:
        """Store a finished run from elsewhere, keyed by its uid (importing it
        again returns the same id); ``origin`` is kept."""
        ...

    def prune(self, run_ids: Sequence[int], pruned_at: float) -> None:
        """Drop the selection and results of finished runs, keeping their summaries
        and lineage (the only deletion there is), and give the space back."""
        ...

    def close(self) -> None: ...


class AccessStore(Protocol):
    """What the server keeps beside the runs, in the same store so that every
    server process sees it: tokens (hashed), rate-limit windows, idempotency keys."""

    def add_token(
        self,
        name: str | None,
        token_hash: str,
        scopes: Sequence[str],
        created_at: float,
        expires_at: float | None,
    ) -> Token: ...

    def list_tokens(self) -> list[Token]: ...

    def revoke_token(self, token_id: int, now: float) -> Token:
        """Revoke a token (revoking it again changes nothing); :class:`TokenNotFound`."""
        ...

    def token_by_hash(self, token_hash: str) -> Token | None: ...

    def count_request(self, token_id: int, window_start: int, now: float) -> int:
        """Count one request of ``token_id`` in the rate-limit window starting at
        ``window_start`` and return how many it holds now (atomic across processes)."""
        ...

    def remember_key(
        self, token_id: int, key: str, request_hash: str, run_id: int, now: float
    ) -> tuple[str, int]:
        """Keep ``key`` -> (``request_hash``, ``run_id``) unless the key is known;
        return what the key holds."""
        ...

    def recall_key(self, token_id: int, key: str) -> tuple[str, int] | None: ...


#: URL scheme -> (backend module, extra that installs what it needs).
BACKENDS: dict[str, tuple[str, str | None]] = {
    "sqlite": ("pytest_rerun_runs.store.sqlite", None),
    "postgresql": ("pytest_rerun_runs.store.postgres", "postgres"),
    "postgres": ("pytest_rerun_runs.store.postgres", "postgres"),
    "http": ("pytest_rerun_runs.store.http", None),
    "https": ("pytest_rerun_runs.store.http", None),
}

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*")
_SECRET_NAME = re.compile(
    r"pass|pwd|token|secret|key|signature|credential|auth|session", re.IGNORECASE
)
#: Schemes whose user part alone is a secret (``https://TOKEN@host``).
_TOKEN_USER_SCHEMES = frozenset({"http", "https"})


def _redact_pairs(text: str, separator: str) -> str:
    pairs = []
    for pair in text.split(separator):
        name, equals, value = pair.partition("=")
        pairs.append(f"{name}=***" if equals and value and _SECRET_NAME.search(name) else pair)
    return separator.join(pairs)


def _redact_one(url: str) -> str:
    scheme, _, rest = url.partition("://")
    authority_end = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if found != -1:
            authority_end = min(authority_end, found)
    authority, tail = rest[:authority_end], rest[authority_end:]
    if "@" in authority:
        userinfo, host = authority.rsplit("@", 1)
        user, colon, _ = userinfo.partition(":")
        if colon:
            authority = f"{user}:***@{host}"
        elif scheme.lower() in _TOKEN_USER_SCHEMES:
            authority = f"***@{host}"
    path, question, query = tail.partition("?")
    if not question:
        path, hash_mark, fragment = tail.partition("#")
        return f"{scheme}://{authority}{path}{hash_mark}{_redact_pairs(fragment, '&')}"
    query, hash_mark, fragment = query.partition("#")
    return (
        f"{scheme}://{authority}{path}?{_redact_pairs(query, '&')}"
        f"{hash_mark}{_redact_pairs(fragment, '&')}"
    )


def redact_url(text: str) -> str:
    """``text`` with the passwords and tokens of every URL in it replaced by ``***``:
    ``user:password@``, a token given as the user of an HTTP URL, and query or
    fragment parameters whose names say they are secret."""
    if "://" not in text:
        return text
    return _URL.sub(lambda match: _redact_one(match.group(0)), text)


def store_scheme(location: str) -> str:
    """The backend scheme of a store location: ``sqlite`` for a plain path."""
    match = _SCHEME.match(location)
    return match.group(1).lower() if match else "sqlite"


def backend_for(location: str) -> Any:
    """The backend module serving ``location``.

    Raises :class:`UnsupportedStore` for an unknown scheme or a backend whose
    extra is not installed, before anything is created.
    """
    scheme = store_scheme(location)
    shown = redact_url(location)
    if scheme not in BACKENDS:
        known = ", ".join(f"{name}://" for name in BACKENDS)
        raise UnsupportedStore(
            f"{shown}: unknown store scheme {scheme}:// (a store is a file path or one of {known})",
            scheme=scheme,
        )
    module_name, extra = BACKENDS[scheme]
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name == module_name or extra is None:
            raise UnsupportedStore(
                f"{shown}: {scheme}:// stores are not supported by this version of"
                " pytest-rerun-runs",
                scheme=scheme,
            ) from None
        raise UnsupportedStore(
            f"{shown}: {scheme}:// stores need the [{extra}] extra:"
            f" pip install 'pytest-rerun-runs[{extra}]' (missing: {exc.name})",
            scheme=scheme,
            extra=extra,
        ) from None


def open_store(
    location: str,
    *,
    create: bool = True,
    read_only: bool = False,
    stale_after: float = DEFAULT_STALE_AFTER,
) -> RunStore:
    """Open the store at ``location`` (a file path, ``sqlite:///path``, or the
    URL of another backend).

    With ``create=False`` a missing store raises :class:`StoreNotFound`
    instead of being created; ``read_only`` never writes to it.
    """
    store: RunStore = backend_for(location).connect(
        location, create=create and not read_only, read_only=read_only, stale_after=stale_after
    )
    return store
