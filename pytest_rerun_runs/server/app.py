"""The ASGI app of ``pytest-runs serve``: the "retry a run" API over the store contract.

Handlers are thin: validate (``schemas``), call the store or the planner, render.
Authentication, rate limits, request ids and the error envelope live in one
middleware and a few exception handlers, not in the routes. Every error is
``{"code", "message", "details"}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol

from fastapi import FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from pytest_rerun_runs import __version__
from pytest_rerun_runs.access import RateLimit, hash_token, looks_like_token, parse_rate_limit
from pytest_rerun_runs.server import schemas
from pytest_rerun_runs.server.notify import Notifier
from pytest_rerun_runs.store import (
    DEFAULT_STALE_AFTER,
    OUTCOMES,
    RETRY_OUTCOMES,
    RUN_STATUSES,
    AccessStore,
    ConflictingSelection,
    InvalidRunFile,
    NewRun,
    NothingToRetry,
    RetryMode,
    Run,
    RunsError,
    RunStore,
    RunSummary,
    Selection,
    Token,
    UnknownTests,
    UnsupportedStore,
    iso,
    new_uid,
    open_store,
    redact_url,
)

API = "/api/v1"
#: Paths that need no token.
PUBLIC = frozenset({f"{API}/health", f"{API}/openapi.json"})
MAX_BODY_BYTES = 64 * 1024 * 1024
SERVER_STORE = "the server's store"
log = logging.getLogger("pytest_rerun_runs.server")

#: HTTP status of each error code of the contract.
STATUS_OF_CODE = {
    "run_not_found": 404,
    "token_not_found": 404,
    "inputs_not_retained": 422,
    "invalid_result": 422,
    "invalid_run_file": 422,
    "unknown_tests": 422,
    "invalid_lineage": 422,
    "run_in_progress": 409,
    "run_finished": 409,
    "already_claimed": 409,
    "not_queued": 409,
    "not_claimed": 409,
    "conflicting_selection": 409,
    "nothing_to_retry": 400,
    "run_damaged": 500,
    "store_unavailable": 503,
    "store_not_found": 503,
    "store_too_new": 503,
}


class ServerStore(RunStore, AccessStore, Protocol):
    """A store the server can keep its tokens and limits in."""


class ApiError(RunsError):
    """An error of the API itself, with its HTTP status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message, **details)
        self.status = status
        self.code = code
        self.headers = headers or {}


class ErrorBody(BaseModel):
    """Every non-2xx response."""

    code: str
    message: str
    details: dict[str, Any]


class ActionBody(BaseModel):
    """What ``retry`` and ``cancel`` accepted."""

    run_id: int
    new_run_id: int | None
    action: Literal["retry", "cancel"]
    status: str
    message: str


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in [
        (400, "Bad request: malformed JSON, a conflicting or empty selection"),
        (401, "Missing, malformed, unknown, expired or revoked token"),
        (403, "The token lacks the scope this operation needs"),
        (404, "No such run, token or path"),
        (405, "Method not allowed"),
        (409, "The run's state does not allow this"),
        (413, "Body too large"),
        (422, "The body or parameters do not validate"),
        (429, "Rate limit exceeded"),
        (500, "Internal error"),
        (503, "The store is unavailable"),
    ]
}


DEFAULT_RATE_LIMIT = RateLimit(600, 60)


@dataclass(frozen=True)
class ServerConfig:
    store: str
    rate_limit: RateLimit = DEFAULT_RATE_LIMIT
    stale_after: float = DEFAULT_STALE_AFTER
    webhook: str | None = None
    webhook_secret: str | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "store": self.store,
                "rate_limit": str(self.rate_limit),
                "stale_after": self.stale_after,
                "webhook": self.webhook,
                "webhook_secret": self.webhook_secret,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ServerConfig:
        data = json.loads(text)
        return cls(
            store=data["store"],
            rate_limit=parse_rate_limit(data["rate_limit"]),
            stale_after=float(data["stale_after"]),
            webhook=data.get("webhook"),
            webhook_secret=data.get("webhook_secret"),
        )


class StorePool:
    """One store per thread of this process: handlers run in a thread pool, and an
    SQLite connection serves one thread at a time."""

    def __init__(self, location: str, stale_after: float) -> None:
        self.location = location
        self.stale_after = stale_after
        self._local = threading.local()
        self._opened: list[RunStore] = []
        self._lock = threading.Lock()
        #: How the store names itself in its messages: never shown to clients.
        self.shown = location

    def public(self, message: str) -> str:
        """``message`` with the store's path or URL replaced by ``the server's store``."""
        return redact_url(message.replace(self.shown, SERVER_STORE))

    def get(self) -> ServerStore:
        store: ServerStore | None = getattr(self._local, "store", None)
        ensure_connected = getattr(store, "ensure_connected", None)
        if ensure_connected is not None:
            try:
                ensure_connected()  # a database restarted since the last request
            except RunsError:
                pass  # this request reports it
        if store is not None and getattr(store, "broken", False):
            # Its connection was lost (a database restart): the next request gets a new one.
            with self._lock:
                if store in self._opened:
                    self._opened.remove(store)
            try:
                store.close()
            except Exception:
                pass
            store = self._local.store = None
        if store is None:
            opened = open_store(self.location, stale_after=self.stale_after)
            if not hasattr(opened, "add_token"):
                opened.close()
                raise UnsupportedStore(
                    f"{redact_url(self.location)} cannot hold the server's tokens: serve an"
                    " SQLite or PostgreSQL store"
                )
            if hasattr(opened, "check_pids"):
                opened.check_pids = False  # its clients' pids are not this host's
            store = self._local.store = opened  # type: ignore[assignment]
            self.shown = opened.location
            with self._lock:
                self._opened.append(opened)
        assert store is not None
        return store

    def close(self) -> None:
        with self._lock:
            for store in self._opened:
                store.close()
            self._opened.clear()


def error_response(  # noqa: PLR0917
    request: Request | None,
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"code": code, "message": message, "details": _jsonable(details or {})}
    response = JSONResponse(body, status_code=status, headers=headers)
    if request is not None and hasattr(request.state, "request_id"):
        response.headers["X-Request-Id"] = request.state.request_id
    return response


def _jsonable(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


def _encode_cursor(kind: str, value: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{value}".encode()).decode().rstrip("=")


def _decode_cursor(kind: str, cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        found, _, value = text.partition(":")
        number = int(value)
        if found != kind or number < 0 or not value.isdigit():
            raise ValueError(text)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(400, "invalid_cursor", "cursor is not one this API gave out") from None
    return number


def run_json(run: Run) -> dict[str, Any]:
    data = run.to_dict()
    data["selection_files"] = [test.file for test in run.selection]
    data["last_seen_at"] = iso(run.summary.last_seen_at)
    data["plan"] = run.summary.plan
    return data


MODE_TEXT = {"failed_only": "failed-only", "subset": "subset", "full": "full", "failing": "failing"}


def plan_from_request(source: Run, body: schemas.RetryBody) -> tuple[Any, RetryMode]:
    """The frozen plan of a queued retry and its mode."""
    from pytest_rerun_runs.planner import RetryPlan, plan_retry

    if body.failed_only and body.tests is not None:
        raise ApiError(
            400,
            "conflicting_selection",
            "give either failed_only or tests, not both",
        )
    if body.tests is not None and not body.tests:
        raise NothingToRetry("tests is empty: name at least one test, or send {} for all")
    plan = plan_retry(source, failed_only=body.failed_only, reason=body.reason)
    if body.tests is None:
        return plan, plan.mode
    selected = {test.nodeid for test in source.selection}
    unknown = [nodeid for nodeid in dict.fromkeys(body.tests) if nodeid not in selected]
    if unknown:
        raise UnknownTests(
            f"{len(unknown)} of the tests are not in run {source.id}'s selection",
            tests=unknown[:100],
            run_id=source.id,
        )
    wanted = set(body.tests)
    whole = wanted >= selected
    tests = plan.tests if whole else tuple(t for t in plan.tests if t.nodeid in wanted)
    mode: RetryMode = "full" if whole else "subset"
    subset = RetryPlan(
        source_run_id=plan.source_run_id,
        root_run_id=plan.root_run_id,
        attempt=plan.attempt,
        mode=mode,
        reason=plan.reason,
        order=plan.order,
        tests=tests,
        collectors=plan.collectors if whole else (),
        source_size=plan.source_size,
    )
    return subset, mode


def request_fingerprint(run_id: int, body: schemas.RetryBody) -> str:
    data = json.dumps([run_id, body.model_dump()], sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(data.encode()).hexdigest()


def retry_message(new: RunSummary) -> str:
    plan = new.plan or {}
    planned = len(plan.get("tests", ())) + len(plan.get("collectors", ()))
    return (
        f"run {new.id} queued: retry of run {new.source_run_id}, {planned:,} of"
        f" {int(plan.get('source_size', 0)):,} tests ({MODE_TEXT.get(new.mode, new.mode)}),"
        f" attempt {new.attempt}"
    )


RunPath = Annotated[int, Path(ge=1, le=schemas.MAX_ID, description="A run id")]
TokenPath = Annotated[int, Path(ge=1, le=schemas.MAX_ID, description="A token id")]


def create_app(config: ServerConfig) -> FastAPI:
    pool = StorePool(config.store, config.stale_after)
    notifier = Notifier(config.webhook, config.webhook_secret) if config.webhook else None
    limit = config.rate_limit

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if notifier is not None:
            await run_in_threadpool(notifier.close, 5.0)
        pool.close()

    app = FastAPI(
        title="pytest-rerun-runs",
        version=__version__,
        description=(
            "Run history of pytest sessions: record runs, read them, and retry a run"
            " (or its failures) as a new, queued run. Every error is"
            ' `{"code", "message", "details"}`.'
        ),
        openapi_url=f"{API}/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate_openapi()
            document.setdefault("components", {})["securitySchemes"] = {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from `pytest-runs token create`",
                }
            }
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]

    def scoped(scope: str, **responses: dict[str, Any]) -> dict[str, Any]:
        return {
            "openapi_extra": {"x-required-scope": scope, "security": [{"bearer": []}]},
            "responses": {**ERRORS, **{int(status): r for status, r in responses.items()}},
        }

    def notify(event: str, summary: RunSummary) -> None:
        if notifier is None or (summary.plan or {}).get("send_notifications") is False:
            return
        notifier.send(event, summary.to_dict())

    # -- the guard: request id, body size, token, rate limit, scope ---------------

    def authenticate(header: str | None, now: float) -> Token:
        if not header:
            raise ApiError(401, "unauthorized", "missing token: send Authorization: Bearer <token>")
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not looks_like_token(value):
            raise ApiError(
                401, "unauthorized", "malformed Authorization header: expected Bearer prr_..."
            )
        token = pool.get().token_by_hash(hash_token(value))
        if token is None:
            raise ApiError(401, "unauthorized", "unknown token")
        if token.revoked_at is not None:
            raise ApiError(401, "unauthorized", f"token {token.id} was revoked", token_id=token.id)
        if not token.usable(now):
            raise ApiError(401, "unauthorized", f"token {token.id} has expired", token_id=token.id)
        return token

    def count(token: Token, now: float) -> tuple[dict[str, str], bool]:
        start = limit.window_start(now)
        used = pool.get().count_request(token.id, start, now)
        reset = start + limit.period
        headers = {
            "X-RateLimit-Limit": str(limit.requests),
            "X-RateLimit-Remaining": str(max(0, limit.requests - used)),
            "X-RateLimit-Reset": str(reset),
        }
        if used > limit.requests:
            headers["Retry-After"] = str(max(1, int(reset - now + 0.999)))
        return headers, used > limit.requests

    def admit(header: str | None, now: float) -> tuple[Token, dict[str, str], bool]:
        token = authenticate(header, now)
        return (token, *count(token, now))

    def required_scope(request: Request) -> str | None:
        for route in app.router.routes:
            match, _ = route.matches(request.scope)
            if match == Match.FULL:
                extra = getattr(route, "openapi_extra", None) or {}
                scope = extra.get("x-required-scope")
                return str(scope) if scope else None
        return None

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request.state.request_id = secrets.token_hex(8)
        rate_headers: dict[str, str] = {}
        try:
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
                raise ApiError(
                    413, "payload_too_large", f"bodies are limited to {MAX_BODY_BYTES:,} bytes"
                )
            if request.url.path not in PUBLIC:
                token, rate_headers, over = await run_in_threadpool(
                    admit, request.headers.get("authorization"), time.time()
                )
                if over:
                    raise ApiError(
                        429,
                        "rate_limited",
                        f"rate limit of {limit} exceeded for token {token.id};"
                        f" retry after {rate_headers['Retry-After']} s",
                        limit=str(limit),
                        retry_after=int(rate_headers["Retry-After"]),
                    )
                needed = required_scope(request)
                if needed is not None and needed not in token.scopes:
                    raise ApiError(
                        403,
                        "forbidden",
                        f"token {token.id} lacks the {needed} scope",
                        required_scope=needed,
                        token_id=token.id,
                    )
                request.state.token = token
            response = await call_next(request)
        except ApiError as exc:
            response = error_response(request, exc.status, exc.code, exc.message, exc.details)
        except RunsError as exc:
            response = error_response(
                request,
                STATUS_OF_CODE.get(exc.code, 500),
                exc.code,
                pool.public(exc.message),
                exc.details,
            )
        except Exception:
            log.exception("request %s failed", request.state.request_id)
            response = error_response(
                request,
                500,
                "internal_error",
                "the server failed to handle this request; its log has the details",
                {"request_id": request.state.request_id},
            )
        response.headers["X-Request-Id"] = request.state.request_id
        for name, value in rate_headers.items():
            response.headers[name] = value
        return response

    # -- errors -------------------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        return error_response(request, exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RunsError)
    async def runs_error(request: Request, exc: RunsError) -> Response:
        status = STATUS_OF_CODE.get(exc.code, 500)
        return error_response(request, status, exc.code, pool.public(exc.message), exc.details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(request, 404, "not_found", f"no such path: {request.url.path}")
        if exc.status_code == 405:
            allowed: set[str] = set()
            for route in app.router.routes:
                match, _ = route.matches(request.scope)
                if match != Match.NONE:
                    allowed |= set(getattr(route, "methods", None) or ())
            return error_response(
                request,
                405,
                "method_not_allowed",
                f"{request.method} is not allowed on {request.url.path}",
                {"allowed": sorted(allowed)},
                headers={"Allow": ", ".join(sorted(allowed))},
            )
        code = "_".join(str(exc.detail).lower().split()) or "http_error"
        return error_response(request, exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        if any(error.get("type") == "json_invalid" for error in errors):
            return error_response(request, 400, "invalid_json", "the body is not valid JSON")
        fields = [
            {
                "location": [str(part) for part in error.get("loc", ())],
                "message": str(error.get("msg", "")),
                "type": str(error.get("type", "")),
            }
            for error in errors[:50]
        ]
        where = ", ".join(".".join(f["location"]) for f in fields[:5])
        return error_response(
            request,
            422,
            "validation_error",
            f"the request does not validate: {where}",
            {"errors": fields},
        )

    # -- reading --------------------------------------------------------------------------

    @app.get(f"{API}/health", responses=ERRORS)
    def health() -> dict[str, Any]:
        """Liveness of the server and its store; needs no token (so it says no more)."""
        try:
            pool.get().latest_run_id()
        except RunsError:
            log.exception("health check")
            raise ApiError(503, "store_unavailable", "the server's store is unavailable") from None
        return {"status": "ok", "version": __version__}

    @app.get(f"{API}/runs", **scoped("runs:read"))
    def list_runs(
        *,
        status: Annotated[Literal[RUN_STATUSES] | None, Query()] = None,  # type: ignore[valid-type]
        label: Annotated[str | None, Query(max_length=1024)] = None,
        branch: Annotated[str | None, Query(max_length=1024)] = None,
        commit: Annotated[str | None, Query(max_length=1024)] = None,
        root_run_id: Annotated[int | None, Query(ge=1, le=schemas.MAX_ID)] = None,
        uid: Annotated[str | None, Query(pattern=r"^[0-9A-Za-z-]{1,64}$")] = None,
        before: Annotated[int | None, Query(ge=1, le=schemas.MAX_ID)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(max_length=64)] = None,
    ) -> dict[str, Any]:
        """Runs, newest first; ``next_cursor`` pages on, ``before`` starts below a run
        id. ``uid`` finds the run a client created with that uid."""
        after_cursor = _decode_cursor("before", cursor)
        if after_cursor is not None:
            before = after_cursor if before is None else min(before, after_cursor)
        store = pool.get()
        if uid is not None:
            found_id = store.find_run(uid)
            found_runs = [] if found_id is None else [store.get_summary(found_id)]
            return {"runs": [s.to_dict() for s in found_runs], "next_cursor": None}
        found = store.list_runs(
            limit + 1,
            before=before,
            status=status,
            label=label,
            branch=branch,
            commit=commit,
            root_run_id=root_run_id,
        )
        page = found[:limit]
        more = len(found) > limit
        return {
            "runs": [s.to_dict() for s in page],
            "next_cursor": _encode_cursor("before", page[-1].id) if more else None,
        }

    @app.get(f"{API}/runs/{{run_id:int}}", **scoped("runs:read"))
    def get_run(run_id: RunPath, results: bool = True) -> dict[str, Any]:
        """A run as ``pytest-runs show --format json`` prints it, with its plan and
        the file of each selected test; ``results=false``: without the selection
        and results (as ``GET /runs`` lists it)."""
        if not results:
            return pool.get().get_summary(run_id).to_dict()
        return run_json(pool.get().get_run(run_id))

    @app.get(f"{API}/runs/{{run_id:int}}/results", **scoped("runs:read"))
    def get_results(
        run_id: RunPath,
        outcome: Annotated[Literal[OUTCOMES] | None, Query()] = None,  # type: ignore[valid-type]
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
        cursor: Annotated[str | None, Query(max_length=64)] = None,
    ) -> dict[str, Any]:
        """The results of a run in selection order, paged; ``outcome`` filters."""
        start = _decode_cursor("after", cursor) or 0
        run = pool.get().get_run(run_id, None if outcome is None else (outcome,))
        page = run.results[start : start + limit]
        more = start + limit < len(run.results)
        return {
            "run_id": run_id,
            "results": [
                {"position": r.position if r.position >= 0 else start + i, **r.to_dict()}
                for i, r in enumerate(page)
            ],
            "next_cursor": _encode_cursor("after", start + limit) if more else None,
        }

    @app.get(f"{API}/runs/{{run_id:int}}/lineage", **scoped("runs:read"))
    def get_lineage(run_id: RunPath) -> dict[str, Any]:
        """The tree of the run's root and its retries."""
        from pytest_rerun_runs.analysis import lineage_tree

        return lineage_tree(pool.get().lineage(run_id)).to_dict()

    exported = {
        "description": "The run in the format asked for",
        "content": {"application/json": {}, "application/yaml": {}, "application/xml": {}},
    }

    @app.get(f"{API}/runs/{{run_id:int}}/export", **scoped("runs:read", **{"200": exported}))
    def export_run(
        run_id: RunPath,
        format: Annotated[Literal["json", "yaml", "junit"], Query()] = "json",
        omit_args: bool = False,
    ) -> Response:
        """The run as ``pytest-runs export`` writes it."""
        from pytest_rerun_runs import exchange
        from pytest_rerun_runs.store import InputsNotRetained

        run = pool.get().get_run(run_id)
        if format == "junit":
            return Response(exchange.junit_xml(run), media_type="application/xml")
        if run.summary.pruned_at is not None:
            raise InputsNotRetained(run.id)
        data = exchange.export_dict(run, "pytest-runs serve", omit_args=omit_args)
        if format == "yaml":
            return Response(exchange.dump_yaml(data), media_type="application/yaml")
        return Response(exchange.dump_json(data), media_type="application/json")

    @app.get(f"{API}/diff", **scoped("runs:read"))
    def diff(
        base: Annotated[int, Query(ge=1, le=schemas.MAX_ID)],
        head: Annotated[int, Query(ge=1, le=schemas.MAX_ID)],
    ) -> dict[str, Any]:
        """What changed from run ``base`` to run ``head`` (``pytest-runs diff``)."""
        from pytest_rerun_runs.analysis import diff_runs

        store = pool.get()
        before, after = store.get_run(base), store.get_run(head)
        return {"before": before.id, "after": after.id, **diff_runs(before, after)}

    @app.get(f"{API}/flaky", **scoped("runs:read"))
    def flaky(last: Annotated[int, Query(ge=1, le=10_000)] = 50) -> list[dict[str, Any]]:
        """Flaky tests of the newest ``last`` runs (``pytest-runs flaky``)."""
        from pytest_rerun_runs.analysis import flaky_report
        from pytest_rerun_runs.cli import flaky_outcomes

        runs, sources = flaky_outcomes(pool.get(), last)
        return [f.to_dict() for f in flaky_report(runs, sources).flaky]

    # -- recording --------------------------------------------------------------------------

    existed = {"description": "A run with this uid existed: the same run"}

    @app.post(f"{API}/runs", status_code=201, **scoped("runs:write", **{"200": existed}))
    def create_run(
        body: schemas.NewRunBody, request: Request, response: Response
    ) -> dict[str, Any]:
        """A run with its selection; the same ``uid`` again returns the same run (200).
        A ``queued`` run (with its retry plan) needs ``runs:retry`` as well."""
        store = pool.get()
        new_run, selection = body.to_new_run()
        if new_run.status == "queued":
            from pytest_rerun_runs.planner import RetryPlan

            token: Token = request.state.token
            if "runs:retry" not in token.scopes:
                raise ApiError(
                    403,
                    "forbidden",
                    f"token {token.id} lacks the runs:retry scope (to queue a run)",
                    required_scope="runs:retry",
                    token_id=token.id,
                )
            try:
                RetryPlan.from_dict(new_run.plan or {})
            except (KeyError, TypeError, ValueError) as exc:
                raise ApiError(
                    422,
                    "validation_error",
                    f"a queued run needs a retry plan ({type(exc).__name__}: {exc})",
                    errors=[{"location": ["body", "plan"], "message": str(exc), "type": "plan"}],
                ) from None
        known = store.find_run(new_run.uid)
        run_id = store.create_run(new_run, selection)
        if known is not None:
            response.status_code = 200
        response.headers["Location"] = f"{API}/runs/{run_id}"
        return {"run_id": run_id, "created": known is None}

    @app.post(f"{API}/runs/{{run_id:int}}/results", **scoped("runs:write"))
    def append_results(run_id: RunPath, body: schemas.ResultsBody) -> dict[str, Any]:
        """A batch of results by position; a position sent again is stored once."""
        store = pool.get()
        store.append_results(run_id, [r.to_result() for r in body.results])
        return {
            "run_id": run_id,
            "results": len(body.results),
            "cancel_requested": store.cancel_requested(run_id),
        }

    @app.post(f"{API}/runs/{{run_id:int}}/finish", **scoped("runs:write"))
    def finish_run(run_id: RunPath, body: schemas.FinishBody) -> dict[str, Any]:
        """The last results and the end of the run; finishing again changes nothing."""
        store = pool.get()
        was_open = store.get_summary(run_id).finished_at is None
        store.finish_run(run_id, body.to_finish(), [r.to_result() for r in body.results])
        summary = store.get_summary(run_id)
        if was_open and summary.finished_at is not None:
            notify("run.finished", summary)
        return summary.to_dict()

    @app.post(f"{API}/runs/{{run_id:int}}/claim", **scoped("runs:retry"))
    def claim_run(run_id: RunPath, body: schemas.ClaimBody) -> dict[str, Any]:
        """Move a queued run to running for the session described; its ``selection``
        and ``plan`` are what to run."""
        store = pool.get()
        started_at = body.started_at if body.started_at is not None else time.time()
        store.claim_run(run_id, body.invocation.to_invocation(), started_at)
        return run_json(store.get_run(run_id))

    @app.post(f"{API}/runs/import", status_code=201, **scoped("runs:write", **{"200": existed}))
    def import_run(body: schemas.ImportBody, response: Response) -> dict[str, Any]:
        """A finished run exported elsewhere; its uid makes a second import the same run."""
        from pytest_rerun_runs.runfile import check_run_data

        checked = check_run_data(body.run)
        try:
            run = Run.from_dict(checked)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRunFile(f"not a valid run: {exc}") from None
        store = pool.get()
        known = run.summary.uid is not None and store.find_run(run.summary.uid) is not None
        run_id = store.import_run(run, schemas.plain(body.origin))
        if known:
            response.status_code = 200
        response.headers["Location"] = f"{API}/runs/{run_id}"
        return {"run_id": run_id, "created": not known}

    # -- retry and cancel ----------------------------------------------------------------

    @app.post(
        f"{API}/runs/{{run_id:int}}/retry",
        status_code=202,
        response_model=ActionBody,
        **scoped("runs:retry"),
    )
    def retry_run(
        run_id: RunPath,
        request: Request,
        response: Response,
        body: schemas.RetryBody | None = None,
        idempotency_key: Annotated[str | None, Header(pattern=r"^[\x21-\x7e]{1,255}$")] = None,
    ) -> ActionBody:
        """Queue a new run from run ``run_id``'s selection: all of it (``{}``), its
        failures (``failed_only``) or the ``tests`` named. The source never changes."""
        body = body or schemas.RetryBody()
        store = pool.get()
        token: Token = request.state.token
        fingerprint = request_fingerprint(run_id, body)
        new_id: int | None = None
        if idempotency_key is not None:
            recalled = store.recall_key(token.id, idempotency_key)
            if recalled is not None:
                new_id = _same_request(recalled, fingerprint, idempotency_key)
        if new_id is None:
            needs = RETRY_OUTCOMES if body.failed_only else None
            source = store.get_run(run_id, needs)
            plan, mode = plan_from_request(source, body)
            plan_data = {**plan.to_dict(), "send_notifications": body.send_notifications}
            uid = new_uid()
            if idempotency_key is not None:
                uid = hashlib.sha256(f"{token.id}\0{idempotency_key}".encode()).hexdigest()[:64]
            s = source.summary
            now = time.time()
            new_run = NewRun(
                uid=uid,
                invocation=s.invocation,
                created_at=now,
                started_at=now,
                label=s.label,
                meta=dict(s.meta),
                source_run_id=s.id,
                root_run_id=s.root_run_id,
                attempt=plan.attempt,
                mode=mode,
                reason=body.reason,
                status="queued",
                plan=plan_data,
            )
            created = store.find_run(uid) is None
            try:
                new_id = store.create_run(new_run, Selection(list(plan.tests)))
            except ConflictingSelection:
                raise ApiError(
                    409,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with another request",
                ) from None
            if idempotency_key is not None:
                new_id = _same_request(
                    store.remember_key(token.id, idempotency_key, fingerprint, new_id, now),
                    fingerprint,
                    idempotency_key,
                )
            if created:
                notify("run.queued", store.get_summary(new_id))
        new = store.get_summary(new_id)
        response.headers["Location"] = f"{API}/runs/{new_id}"
        return ActionBody(
            run_id=run_id,
            new_run_id=new_id,
            action="retry",
            status=new.status,
            message=retry_message(new),
        )

    def _same_request(recalled: tuple[str, int], fingerprint: str, key: str) -> int:
        stored_fingerprint, stored_run = recalled
        if stored_fingerprint != fingerprint:
            raise ApiError(
                409,
                "idempotency_key_reused",
                "this Idempotency-Key was used with another request",
                run_id=stored_run,
            )
        return stored_run

    @app.post(
        f"{API}/runs/{{run_id:int}}/cancel",
        status_code=202,
        response_model=ActionBody,
        **scoped("runs:retry"),
    )
    def cancel_run(run_id: RunPath) -> ActionBody:
        """Stop a run: a queued one is cancelled at once, a running one is asked to
        stop at its next write, a finished one is left as it is (``no_op``)."""
        store = pool.get()
        outcome = store.cancel_run(run_id, time.time())
        messages = {
            "cancelled": f"run {run_id} cancelled",
            "cancel_requested": f"run {run_id} asked to stop: its session stops at its next write",
            "no_op": f"run {run_id} is already {store.get_summary(run_id).status}: nothing changed",
        }
        if outcome == "cancelled":
            notify("run.finished", store.get_summary(run_id))
        return ActionBody(
            run_id=run_id,
            new_run_id=None,
            action="cancel",
            status=outcome,
            message=messages[outcome],
        )

    # -- administration ---------------------------------------------------------------

    @app.get(f"{API}/tokens", **scoped("admin"))
    def list_tokens() -> dict[str, Any]:
        """Every token (never their secrets)."""
        return {"tokens": [t.to_dict() for t in pool.get().list_tokens()]}

    @app.post(f"{API}/tokens", status_code=201, **scoped("admin"))
    def create_token(body: schemas.TokenBody) -> dict[str, Any]:
        """A new token; its secret is in this response only."""
        from pytest_rerun_runs.access import new_token

        secret = new_token()
        now = time.time()
        expires = None if body.expires_in is None else now + body.expires_in
        token = pool.get().add_token(
            body.name, hash_token(secret), list(dict.fromkeys(body.scopes)), now, expires
        )
        return {**token.to_dict(), "token": secret}

    @app.post(f"{API}/tokens/{{token_id:int}}/revoke", **scoped("admin"))
    def revoke_token(token_id: TokenPath) -> dict[str, Any]:
        """Revoke a token; requests with it get 401 from now on."""
        return pool.get().revoke_token(token_id, time.time()).to_dict()

    @app.post(f"{API}/prune", **scoped("admin"))
    def prune(body: schemas.PruneBody) -> dict[str, Any]:
        """Drop the selection and results of old finished runs (``pytest-runs prune``)."""
        from pytest_rerun_runs.analysis import parse_age, runs_to_prune

        store = pool.get()
        now = time.time()
        older_than = None if body.older_than is None else parse_age(body.older_than)
        chosen = runs_to_prune(
            store.list_runs(None), keep=body.keep, older_than=older_than, now=now
        )
        if body.run_ids is not None:
            asked = set(body.run_ids)
            chosen = [s for s in runs_to_prune(store.list_runs(None)) if s.id in asked]
        doomed = sorted(s.id for s in chosen)
        if not body.dry_run:
            store.prune(doomed, now)
        return {"pruned": doomed, "dry_run": body.dry_run}

    return app


def app_from_environment() -> FastAPI:
    """The app uvicorn's workers build (``--workers``): its settings come from
    ``PYTEST_RUNS_SERVER_CONFIG``."""
    return create_app(ServerConfig.from_json(os.environ["PYTEST_RUNS_SERVER_CONFIG"]))
