"""The store contract over the API of ``pytest-runs serve``, through ``requests``.

``https://runs.example.org`` (the server's base URL; ``/api/v1`` is added) with
the token in ``$PYTEST_RUNS_TOKEN``. One ``requests.Session`` (keep-alive), a
connect and read timeout on every call, and retries with backoff on connection
errors, 429 (``Retry-After`` honoured) and 5xx: every write is idempotent (run
uid, result positions), so a call sent twice changes nothing. The server's
error envelope becomes the contract's exception of the same ``code``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Sequence
from typing import Any

from pytest_rerun_runs.store import errors
from pytest_rerun_runs.store.errors import RunNotFound, RunsError, StoreError
from pytest_rerun_runs.store.model import (
    DEFAULT_STALE_AFTER,
    OPEN_STATUSES,
    CancelOutcome,
    Invocation,
    NewRun,
    Outcome,
    Result,
    Run,
    RunFinish,
    RunSummary,
    Selection,
    clean_text,
)

TOKEN_VARIABLE = "PYTEST_RUNS_TOKEN"
#: How the server names its own store in messages (never its path or URL).
SERVER_STORE = "the server's store"
API = "/api/v1"
#: (connect, read) seconds of every call.
TIMEOUT = (3.05, 20.0)
#: Attempts of one call, the most one call may spend waiting between them, and
#: in all: a session waits at most this long on its store before it spools.
ATTEMPTS = 5
MAX_WAIT = 20.0
MAX_TOTAL = 45.0
#: Results per request (the server takes at most 20,000).
BATCH = 5_000
PAGE = 200

_ERRORS: dict[str, type[RunsError]] = {
    cls.code: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, RunsError) and cls.code != "runs_error"
}


class TokenRejected(StoreError):
    """The server refused the token (401) or its scope (403)."""

    code = "token_rejected"


def connect(
    location: str,
    *,
    create: bool = True,
    read_only: bool = False,
    stale_after: float = DEFAULT_STALE_AFTER,
) -> HttpStore:
    """The backend's entry point for :func:`~pytest_rerun_runs.store.open_store`."""
    return HttpStore(location, read_only=read_only)


def _split_token(url: str) -> tuple[str, str | None]:
    """``https://TOKEN@host/x`` -> (``https://host/x``, ``TOKEN``)."""
    scheme, _, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if "@" not in authority:
        return url, None
    token, host = authority.rsplit("@", 1)
    return f"{scheme}://{host}{slash}{path}", token or None


class HttpStore:
    """:class:`~pytest_rerun_runs.store.RunStore` over HTTP."""

    def __init__(self, url: str, *, read_only: bool = False, token: str | None = None) -> None:
        import requests

        from pytest_rerun_runs.store import redact_url

        base, url_token = _split_token(url.rstrip("/"))
        self.base = base + API
        self.location = redact_url(url)
        self.read_only = read_only
        # A token in the URL names this server's; the environment's serves any.
        self.token = token or url_token or os.environ.get(TOKEN_VARIABLE)
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "pytest-rerun-runs"
        if self.token:
            self.session.headers["Authorization"] = f"Bearer {self.token}"
        #: Runs the server asked to stop, as its last answer to a write said.
        self._cancel: dict[int, bool] = {}

    # -- the one place that talks to the server ------------------------------------

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        import requests

        waited = 0.0
        deadline = time.monotonic() + MAX_TOTAL
        for attempt in range(ATTEMPTS):
            retry_after: float | None = None
            try:
                response = self.session.request(method, self.base + path, timeout=TIMEOUT, **kwargs)
            except requests.RequestException as exc:
                problem = f"{type(exc).__name__}"
                retry_after = 0.25 * 2**attempt
            else:
                if response.status_code < 300:
                    return self._json(response, method, path)
                if response.status_code == 429 or response.status_code >= 500:
                    problem = f"HTTP {response.status_code}"
                    retry_after = _retry_after(response) or 0.25 * 2**attempt
                else:
                    raise self._error(response)
            late = time.monotonic() + retry_after > deadline
            if attempt == ATTEMPTS - 1 or waited + retry_after > MAX_WAIT or late:
                break
            time.sleep(retry_after)
            waited += retry_after
        raise StoreError(
            f"run store {self.location} did not answer {method} {path}: {problem}"
            f" (after {attempt + 1} attempts)"
        )

    def _json(self, response: Any, method: str, path: str) -> Any:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise StoreError(
                f"run store {self.location} answered {method} {path} without JSON"
                " (is it a pytest-runs server, or a proxy's page?)"
            ) from None

    def _error(self, response: Any) -> RunsError:
        try:
            body = response.json()
            code, message = str(body["code"]), str(body["message"])
            details = body.get("details") if isinstance(body.get("details"), dict) else {}
        except (ValueError, KeyError, TypeError):
            return StoreError(
                f"run store {self.location} answered HTTP {response.status_code}"
                " without an error envelope (is it a pytest-runs server?)"
            )
        message = clean_text(message).replace(SERVER_STORE, self.location)
        if response.status_code == 401:
            hint = "" if self.token else f": set ${TOKEN_VARIABLE}"
            return TokenRejected(f"run store {self.location} refused the token: {message}{hint}")
        if response.status_code == 403:
            needed = details.get("required_scope")
            return TokenRejected(
                f"run store {self.location}: the token lacks the {needed} scope", **details
            )
        error_class = _ERRORS.get(code)
        if error_class is errors.InputsNotRetained:
            return errors.InputsNotRetained(int(details.get("run_id") or 0))
        if error_class is None:
            error = RunsError(f"run store {self.location}: {message}", **details)
            error.code = code
            return error
        return error_class(message, **details)

    # -- writing ---------------------------------------------------------------------

    def create_run(self, new_run: NewRun, selection: Selection) -> int:
        inv = new_run.invocation
        body = {
            "uid": new_run.uid,
            "invocation": _invocation_body(inv),
            "created_at": new_run.created_at,
            "started_at": new_run.started_at,
            "label": new_run.label,
            "meta": dict(new_run.meta),
            "source_run_id": new_run.source_run_id,
            "root_run_id": new_run.root_run_id,
            "attempt": new_run.attempt,
            "mode": new_run.mode,
            "reason": new_run.reason,
            "contributors": list(new_run.contributors),
            "selection": [[t.nodeid, t.file] for t in selection.tests],
            "deselected": selection.deselected,
            "missing": list(selection.missing),
            "status": new_run.status,
            "plan": new_run.plan,
        }
        return int(self._call("POST", "/runs", json=body)["run_id"])

    def append_results(self, run_id: int, results: Sequence[Result]) -> None:
        _check_positions(run_id, results)
        for start in range(0, len(results), BATCH):
            batch = [_result_body(r) for r in results[start : start + BATCH]]
            answer = self._call("POST", f"/runs/{run_id}/results", json={"results": batch})
            self._cancel[run_id] = bool(answer.get("cancel_requested"))

    def finish_run(self, run_id: int, finish: RunFinish, results: Sequence[Result] = ()) -> None:
        _check_positions(run_id, results)
        head, tail = list(results[:-BATCH]), results[-BATCH:]
        if head:
            self.append_results(run_id, head)
        body = {
            "exit_status": finish.exit_status,
            "finished_at": finish.finished_at,
            "deselected": finish.deselected,
            "mode": finish.mode,
            "missing": finish.missing,
            "status": finish.status,
            "results": [_result_body(r) for r in tail],
        }
        self._call("POST", f"/runs/{run_id}/finish", json=body)

    def claim_run(self, run_id: int, invocation: Invocation, started_at: float) -> RunSummary:
        data = self._call(
            "POST",
            f"/runs/{run_id}/claim",
            json={"invocation": _invocation_body(invocation), "started_at": started_at},
        )
        return _summary(self, data)

    def cancel_run(self, run_id: int, now: float) -> CancelOutcome:
        answer = self._call("POST", f"/runs/{run_id}/cancel")
        outcome: CancelOutcome = answer["status"]
        return outcome

    def cancel_requested(self, run_id: int) -> bool:
        if run_id in self._cancel:
            return self._cancel[run_id]
        return self.get_summary(run_id).cancel_requested

    def import_run(self, run: Run, origin: dict[str, Any]) -> int:
        data = run.to_dict()
        data["selection_files"] = [test.file for test in run.selection]
        answer = self._call("POST", "/runs/import", json={"run": data, "origin": origin})
        return int(answer["run_id"])

    def prune(self, run_ids: Sequence[int], pruned_at: float) -> None:
        if run_ids:
            self._call("POST", "/prune", json={"run_ids": list(run_ids)})

    # -- reading ---------------------------------------------------------------------

    def get_summary(self, run_id: int) -> RunSummary:
        self._known_id(run_id)
        return RunSummary.from_dict(
            self._call("GET", f"/runs/{run_id}", params={"results": "false"})
        )

    def get_run(self, run_id: int, outcomes: Collection[str] | None = None) -> Run:
        self._known_id(run_id)
        data = self._call("GET", f"/runs/{run_id}")
        try:
            run = Run.from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(
                f"run store {self.location} answered an unreadable run: {exc}"
            ) from None
        summary = run.summary._replace(plan=data.get("plan"))
        results = run.results
        if outcomes is not None:
            results = [r for r in results if r.outcome in outcomes]
        return Run(summary, run.selection, results)

    def get_outcomes(
        self, run_id: int, nodeids: Collection[str], only: Collection[str] | None = None
    ) -> dict[str, Outcome]:
        wanted = set(nodeids)
        found: dict[str, Outcome] = {}
        for result in self.get_run(run_id).results:
            if result.nodeid in wanted and (only is None or result.outcome in only):
                found.setdefault(result.nodeid, result.outcome)
        return found

    def find_run(self, uid: str) -> int | None:
        runs = self._call("GET", "/runs", params={"uid": uid})["runs"]
        return int(runs[0]["id"]) if runs else None

    def latest_run_id(self, *, finished: bool = False) -> int | None:
        for summary in self._pages(None, {}):
            if not finished or summary.status not in OPEN_STATUSES:
                return int(summary.id)
        return None

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
        filters = {
            "status": status,
            "label": label,
            "branch": branch,
            "commit": commit,
            "root_run_id": root_run_id,
        }
        params = {k: v for k, v in filters.items() if v is not None}
        if before is not None:
            if before <= 1:
                return []
            params["before"] = before
        found = []
        for summary in self._pages(limit, params):
            found.append(summary)
            if limit is not None and len(found) >= limit:
                break
        return found

    def _pages(self, limit: int | None, params: dict[str, Any]) -> Any:
        params = dict(params)
        while True:
            size = PAGE if limit is None else max(1, min(PAGE, limit))
            page = self._call("GET", "/runs", params={**params, "limit": size})
            for item in page["runs"]:
                yield _summary(self, item)
            if not page.get("next_cursor"):
                return
            params["cursor"] = page["next_cursor"]

    def lineage(self, run_id: int) -> list[RunSummary]:
        root = self.get_summary(run_id).root_run_id
        return sorted(self._pages(None, {"root_run_id": root}), key=lambda s: s.id)

    def close(self) -> None:
        self.session.close()

    def _known_id(self, run_id: int) -> None:
        if not 0 < run_id <= 2**63 - 1:
            raise RunNotFound(f"run {run_id} not found in {self.location}", run_id=run_id)


def _summary(store: HttpStore, data: Any) -> RunSummary:
    try:
        return RunSummary.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StoreError(f"run store {store.location} answered an unreadable run: {exc}") from None


def _check_positions(run_id: int, results: Sequence[Result]) -> None:
    for result in results:
        if result.position < 0:
            raise errors.InvalidResult(
                f"result for {result.nodeid} has no position in run {run_id}", run_id=run_id
            )


def _retry_after(response: Any) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _invocation_body(inv: Invocation) -> dict[str, Any]:
    data = inv.to_dict()
    data["args"] = None if inv.args is None else [clean_text(a) for a in inv.args]
    return data


def _result_body(result: Result) -> dict[str, Any]:
    """A result as the API takes it; fields at their default are left out (most
    results pass quickly, and every byte is encoded, sent, parsed and validated)."""
    body: dict[str, Any] = {
        "position": result.position,
        "nodeid": result.nodeid,
        "outcome": result.outcome,
        "when": result.when,
        "call_duration": result.call_duration,
    }
    if result.setup_duration:
        body["setup_duration"] = result.setup_duration
    if result.teardown_duration:
        body["teardown_duration"] = result.teardown_duration
    if result.worker is not None:
        body["worker"] = result.worker
    if result.longrepr is not None:
        body["longrepr"] = result.longrepr
    if result.rerun_attempts:
        body["rerun_attempts"] = result.rerun_attempts
    if result.file is not None:
        body["file"] = result.file
    return body
