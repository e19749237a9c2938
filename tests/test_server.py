"""``pytest-runs serve`` over real HTTP on 127.0.0.1: auth, limits, the error
envelope, recording, retry, cancel and the reading endpoints."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from pytest_rerun_runs.store import open_store
from tests.serving import (
    API,
    Served,
    create_token,
    invocation,
    new_run_body,
    result_body,
    runs_cli,
    serve,
)

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["t.py::a", "t.py::b", "t.py::c", "u.py::d"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # A budget this module's requests never exhaust: limits have their own test.
    server = serve(tmp_path_factory.mktemp("server") / "runs.db", "--rate-limit=100000/minute")
    yield server
    server.stop()


def assert_envelope(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "message", "details"}
    assert body["code"] == code
    assert isinstance(body["message"], str)
    assert body["message"]
    assert isinstance(body["details"], dict)
    assert response.headers["X-Request-Id"]
    assert "Traceback" not in response.text
    return body


def recorded_run(
    served: Served, outcomes: dict[str, str] | None = None, finish: bool = True
) -> int:
    """A run of ``TESTS`` recorded through the API; ``outcomes`` by node id (others pass)."""
    created = served.post("/runs", json=new_run_body(str(uuid.uuid4()), TESTS))
    assert created.status_code == 201, created.text
    run_id: int = created.json()["run_id"]
    outcomes = outcomes or {}
    results = [result_body(i, n, outcomes.get(n, "passed")) for i, n in enumerate(TESTS)]
    if finish:
        failing = any(o in ("failed", "error") for o in outcomes.values())
        done = served.post(
            f"/runs/{run_id}/finish",
            json={"exit_status": int(failing), "finished_at": 1_700_000_100.0, "results": results},
        )
        assert done.status_code == 200, done.text
    return run_id


# -- auth, scopes, the envelope ----------------------------------------------------------


def test_health_needs_no_token(served: Served) -> None:
    response = requests.get(served.base + API + "/health", timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert len(response.headers["X-Request-Id"]) == 16


@pytest.mark.parametrize(
    ("authorization", "says"),
    [
        (None, "missing token"),
        ("Basic dXNlcjpwYXNz", "malformed"),
        ("Bearer", "malformed"),
        ("Bearer not-a-token", "malformed"),
        ("Bearer prr_" + "A" * 43, "unknown token"),
    ],
)
def test_requests_without_a_valid_token_are_401(
    served: Served, authorization: str | None, says: str
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in [("GET", "/runs"), ("POST", "/runs/1/retry"), ("GET", "/nowhere")]:
        response = requests.request(
            method, served.base + API + path, headers=headers, data="{not json", timeout=10
        )
        body = assert_envelope(response, 401, "unauthorized")
        assert says in body["message"]
        assert "X-RateLimit-Limit" not in response.headers


def test_revoked_and_expired_tokens_are_401(served: Served) -> None:
    token = create_token(served.store, "runs:read")
    good = {"Authorization": f"Bearer {token['token']}"}
    assert requests.get(served.base + API + "/runs", headers=good, timeout=10).status_code == 200
    assert runs_cli("token", "revoke", str(token["id"]), f"--store={served.store}").returncode == 0
    body = assert_envelope(
        requests.get(served.base + API + "/runs", headers=good, timeout=10), 401, "unauthorized"
    )
    assert "revoked" in body["message"]
    from pytest_rerun_runs.access import hash_token, new_token

    secret = new_token()
    store = open_store(str(served.store))
    try:
        store.add_token("old", hash_token(secret), ["runs:read"], 1.0, 2.0)  # type: ignore[attr-defined]
    finally:
        store.close()
    expired = requests.get(
        served.base + API + "/runs", headers={"Authorization": f"Bearer {secret}"}, timeout=10
    )
    assert "expired" in assert_envelope(expired, 401, "unauthorized")["message"]


@pytest.mark.parametrize(
    ("method", "path", "scope", "needed"),
    [
        ("POST", "/runs/1/retry", "runs:read", "runs:retry"),
        ("POST", "/runs/1/cancel", "runs:write", "runs:retry"),
        ("POST", "/runs/1/claim", "runs:read", "runs:retry"),
        ("POST", "/runs", "runs:retry", "runs:write"),
        ("POST", "/runs/1/results", "runs:read", "runs:write"),
        ("POST", "/runs/1/finish", "runs:read", "runs:write"),
        ("GET", "/runs", "runs:write", "runs:read"),
        ("GET", "/runs/1/export", "runs:retry", "runs:read"),
        ("GET", "/flaky", "admin", "runs:read"),
        ("GET", "/tokens", "runs:read", "admin"),
        ("POST", "/prune", "runs:retry", "admin"),
    ],
)
def test_a_token_without_the_scope_is_403(
    served: Served, method: str, path: str, scope: str, needed: str
) -> None:
    response = served.request(method, path, scope, data="{not json")
    body = assert_envelope(response, 403, "forbidden")
    assert body["details"]["required_scope"] == needed
    assert int(response.headers["X-RateLimit-Remaining"]) >= 0


def test_unknown_paths_and_methods_have_the_envelope(served: Served) -> None:
    assert_envelope(served.get("/nowhere"), 404, "not_found")
    assert_envelope(served.get("/runs/abc"), 404, "not_found")
    assert_envelope(served.get("/runs/0"), 422, "validation_error")
    response = served.request("DELETE", "/runs")
    assert_envelope(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "GET, POST"


def test_malformed_json_is_400_and_schema_violations_422(served: Served) -> None:
    json_header = {"Content-Type": "application/json"}
    assert_envelope(
        served.post("/runs/1/retry", data="{not json", headers=json_header), 400, "invalid_json"
    )
    body = assert_envelope(
        served.post("/runs/1/retry", json={"failed_only": "maybe", "colour": 1}),
        422,
        "validation_error",
    )
    located = {tuple(error["location"]) for error in body["details"]["errors"]}
    assert located == {("body", "failed_only"), ("body", "colour")}
    body = assert_envelope(
        served.post("/runs", json=new_run_body("u-1", ["../x.py::t"])), 422, "validation_error"
    )
    assert body["details"]["errors"][0]["location"][:2] == ["body", "selection"]
    assert_envelope(served.get("/runs", params={"limit": 0}), 422, "validation_error")
    assert_envelope(served.get("/runs", params={"cursor": "bogus"}), 400, "invalid_cursor")


def test_every_response_carries_a_request_id_and_the_rate_headers(served: Served) -> None:
    first, second = served.get("/runs"), served.get("/runs")
    assert first.headers["X-Request-Id"] != second.headers["X-Request-Id"]
    assert first.headers["X-RateLimit-Limit"] == "100000"
    if first.headers["X-RateLimit-Reset"] == second.headers["X-RateLimit-Reset"]:
        # (a new minute's window between them starts its count again)
        assert int(second.headers["X-RateLimit-Remaining"]) < int(
            first.headers["X-RateLimit-Remaining"]
        )
    assert int(first.headers["X-RateLimit-Reset"]) > time.time()


# -- recording ----------------------------------------------------------------------------


def test_recording_a_run_is_idempotent(served: Served) -> None:
    body = new_run_body(str(uuid.uuid4()), TESTS)
    created = served.post("/runs", json=body)
    assert created.status_code == 201
    run_id = created.json()["run_id"]
    assert created.headers["Location"] == f"{API}/runs/{run_id}"
    again = served.post("/runs", json=body)
    assert (again.status_code, again.json()) == (200, {"run_id": run_id, "created": False})
    conflict = served.post("/runs", json={**body, "selection": body["selection"][:2]})
    assert_envelope(conflict, 409, "conflicting_selection")
    batch = {"results": [result_body(0, TESTS[0]), result_body(2, TESTS[2], "failed")]}
    for _ in range(2):
        stored = served.post(f"/runs/{run_id}/results", json=batch)
        assert stored.json() == {"run_id": run_id, "results": 2, "cancel_requested": False}
    misplaced = {"results": [result_body(1, TESTS[3])]}
    assert_envelope(served.post(f"/runs/{run_id}/results", json=misplaced), 422, "invalid_result")
    finish = {
        "exit_status": 1,
        "finished_at": 1_700_000_050.0,
        "results": [result_body(1, TESTS[1])],
    }
    finished = served.post(f"/runs/{run_id}/finish", json=finish)
    assert finished.json()["status"] == "failed"
    assert served.post(f"/runs/{run_id}/finish", json=finish).status_code == 200
    late = {"results": [result_body(3, TESTS[3])]}
    assert_envelope(served.post(f"/runs/{run_id}/results", json=late), 409, "run_finished")
    run = served.get(f"/runs/{run_id}").json()
    assert [(r["nodeid"], r["outcome"]) for r in run["results"]] == [
        (TESTS[0], "passed"),
        (TESTS[1], "passed"),
        (TESTS[2], "failed"),
        (TESTS[3], "not_run"),
    ]


def test_text_that_is_not_unicode_is_refused_and_control_characters_too(served: Served) -> None:
    for label in ["\ud800 label", "two\nlines", "nul\0"]:
        body = new_run_body(str(uuid.uuid4()), TESTS, label=label)
        error = assert_envelope(served.post("/runs", json=body), 422, "validation_error")
        assert error["details"]["errors"][0]["location"] == ["body", "label"]
    body = new_run_body(str(uuid.uuid4()), TESTS, label="caf\u00e9 \u2603")
    run_id = served.post("/runs", json=body).json()["run_id"]
    assert served.get(f"/runs/{run_id}").json()["label"] == "caf\u00e9 \u2603"


def test_a_queued_run_is_claimed_once(served: Served) -> None:
    source = recorded_run(served, {TESTS[1]: "failed"})
    queued = served.post(f"/runs/{source}/retry", json={"failed_only": True}).json()["new_run_id"]
    early = {"results": [result_body(0, TESTS[1])]}
    assert_envelope(served.post(f"/runs/{queued}/results", json=early), 409, "not_claimed")
    claimed = served.post(f"/runs/{queued}/claim", json={"invocation": invocation("ci-9")})
    assert claimed.status_code == 200
    run = claimed.json()
    assert (run["status"], run["selection"]) == ("running", [TESTS[1]])
    assert run["invocation"]["host"] == "ci-9"
    assert run["plan"]["tests"] == [[TESTS[1], "t.py"]]
    second = served.post(f"/runs/{queued}/claim", json={"invocation": invocation("ci-10")})
    assert assert_envelope(second, 409, "already_claimed")["details"]["host"] == "ci-9"
    assert_envelope(
        served.post(f"/runs/{source}/claim", json={"invocation": invocation()}), 409, "not_queued"
    )


# -- retry ---------------------------------------------------------------------------------


def test_retry_queues_a_new_run_and_never_changes_the_source(served: Served) -> None:
    source = recorded_run(served, {TESTS[1]: "failed", TESTS[3]: "error"})
    before = served.get(f"/runs/{source}").json()
    response = served.post(f"/runs/{source}/retry", json={"failed_only": True, "reason": "flaky"})
    assert response.status_code == 202
    accepted = response.json()
    new_id = accepted["new_run_id"]
    assert accepted == {
        "run_id": source,
        "new_run_id": new_id,
        "action": "retry",
        "status": "queued",
        "message": f"run {new_id} queued: retry of run {source}, 2 of 4 tests (failed-only),"
        " attempt 2",
    }
    assert response.headers["Location"] == f"{API}/runs/{new_id}"
    new = served.get(f"/runs/{new_id}").json()
    assert new["status"] == "queued"
    assert new["selection"] == [TESTS[1], TESTS[3]]
    assert (new["source_run_id"], new["root_run_id"], new["attempt"]) == (source, source, 2)
    assert (new["mode"], new["reason"]) == ("failed_only", "flaky")
    full = served.post(f"/runs/{source}/retry", json={}).json()
    assert served.get(f"/runs/{full['new_run_id']}").json()["mode"] == "full"
    empty_body = served.post(f"/runs/{source}/retry")
    assert (
        empty_body.status_code,
        served.get(f"/runs/{empty_body.json()['new_run_id']}").json()["selection"],
    ) == (202, TESTS)
    subset = served.post(f"/runs/{source}/retry", json={"tests": [TESTS[2], TESTS[0]]}).json()
    subset_run = served.get(f"/runs/{subset['new_run_id']}").json()
    assert (subset_run["mode"], subset_run["selection"]) == ("subset", [TESTS[0], TESTS[2]])
    whole = served.post(f"/runs/{source}/retry", json={"tests": list(reversed(TESTS))}).json()
    assert served.get(f"/runs/{whole['new_run_id']}").json()["mode"] == "full"
    retry_of_retry = served.post(f"/runs/{new_id}/retry", json={}).json()
    deeper = served.get(f"/runs/{retry_of_retry['new_run_id']}").json()
    assert (deeper["root_run_id"], deeper["attempt"]) == (source, 3)
    served.post(f"/runs/{new_id}/cancel")
    assert served.get(f"/runs/{source}").json() == before


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"failed_only": True, "tests": [TESTS[0]]}, 400, "conflicting_selection"),
        ({"tests": []}, 400, "nothing_to_retry"),
        ({"tests": [TESTS[0], "nope.py::x"]}, 422, "unknown_tests"),
    ],
)
def test_retry_refuses_what_cannot_be_retried(
    served: Served, body: dict[str, Any], status: int, code: str
) -> None:
    source = recorded_run(served, {TESTS[0]: "failed"})
    runs_before = len(served.get("/runs", params={"limit": 200}).json()["runs"])
    error = assert_envelope(served.post(f"/runs/{source}/retry", json=body), status, code)
    if code == "unknown_tests":
        assert error["details"]["tests"] == ["nope.py::x"]
    assert len(served.get("/runs", params={"limit": 200}).json()["runs"]) == runs_before


def test_retry_states_of_the_source(served: Served, tmp_path: Path) -> None:
    passing = recorded_run(served)
    assert_envelope(
        served.post(f"/runs/{passing}/retry", json={"failed_only": True}), 400, "nothing_to_retry"
    )
    running = recorded_run(served, finish=False)
    assert_envelope(
        served.post(f"/runs/{running}/retry", json={"failed_only": True}), 409, "run_in_progress"
    )
    assert served.post(f"/runs/{running}/retry", json={}).status_code == 202
    assert_envelope(served.post("/runs/999999/retry", json={}), 404, "run_not_found")
    pruned = recorded_run(served, {TESTS[0]: "failed"})
    store = open_store(str(served.store))
    try:
        store.prune([pruned], time.time())
    finally:
        store.close()
    assert_envelope(served.post(f"/runs/{pruned}/retry", json={}), 422, "inputs_not_retained")


def test_an_idempotency_key_returns_the_first_retry(served: Served) -> None:
    source = recorded_run(served, {TESTS[0]: "failed"})
    key = {"Idempotency-Key": f"button-{uuid.uuid4()}"}
    first = served.post(f"/runs/{source}/retry", json={"failed_only": True}, headers=key)
    again = served.post(f"/runs/{source}/retry", json={"failed_only": True}, headers=key)
    assert (first.status_code, again.status_code) == (202, 202)
    assert first.json() == again.json()
    lineage = served.get(f"/runs/{source}/lineage").json()
    assert [child["id"] for child in lineage["children"]] == [first.json()["new_run_id"]]
    other = served.post(f"/runs/{source}/retry", json={}, headers=key)
    assert_envelope(other, 409, "idempotency_key_reused")
    other_token = served.post(
        f"/runs/{source}/retry", "runs:retry", json={"failed_only": True}, headers=key
    )
    assert other_token.json()["new_run_id"] != first.json()["new_run_id"]
    bad = served.post(f"/runs/{source}/retry", json={}, headers={"Idempotency-Key": "a b"})
    assert_envelope(bad, 422, "validation_error")


# -- cancel --------------------------------------------------------------------------------


def test_cancel_by_state(served: Served) -> None:
    source = recorded_run(served, {TESTS[0]: "failed"})
    queued = served.post(f"/runs/{source}/retry", json={}).json()["new_run_id"]
    response = served.post(f"/runs/{queued}/cancel")
    assert response.status_code == 202
    assert response.json() == {
        "run_id": queued,
        "new_run_id": None,
        "action": "cancel",
        "status": "cancelled",
        "message": f"run {queued} cancelled",
    }
    assert served.get(f"/runs/{queued}").json()["status"] == "cancelled"
    running = recorded_run(served, finish=False)
    asked = served.post(f"/runs/{running}/cancel").json()
    assert asked["status"] == "cancel_requested"
    run = served.get(f"/runs/{running}").json()
    assert (run["status"], run["cancel_requested"]) == ("running", True)
    batch = {"results": [result_body(0, TESTS[0])]}
    assert served.post(f"/runs/{running}/results", json=batch).json()["cancel_requested"] is True
    before = served.get(f"/runs/{source}").json()
    assert served.post(f"/runs/{source}/cancel").json()["status"] == "no_op"
    assert served.get(f"/runs/{source}").json() == before
    assert_envelope(served.post("/runs/999999/cancel"), 404, "run_not_found")


# -- reading -------------------------------------------------------------------------------


def test_listing_filters_and_pages(tmp_path: Path) -> None:
    server = serve(tmp_path / "runs.db")
    try:
        ids = [recorded_run(server, {TESTS[0]: "failed"} if i % 2 else None) for i in range(5)]
        labelled = server.post("/runs", json=new_run_body("lab-1", TESTS, label="nightly"))
        label_id = labelled.json()["run_id"]
        page = server.get("/runs", params={"limit": 2}).json()
        assert [r["id"] for r in page["runs"]] == [label_id, ids[4]]
        rest = server.get("/runs", params={"limit": 10, "cursor": page["next_cursor"]}).json()
        assert [r["id"] for r in rest["runs"]] == [ids[3], ids[2], ids[1], ids[0]]
        assert rest["next_cursor"] is None
        failed = server.get("/runs", params={"status": "failed"}).json()["runs"]
        assert [r["id"] for r in failed] == [ids[3], ids[1]]
        assert [
            r["id"] for r in server.get("/runs", params={"label": "nightly"}).json()["runs"]
        ] == [label_id]
        assert server.get("/runs", params={"branch": "main"}).json()["runs"] == []
        retry = server.post(f"/runs/{ids[1]}/retry", json={}).json()["new_run_id"]
        lineage = server.get("/runs", params={"root_run_id": ids[1]}).json()["runs"]
        assert [r["id"] for r in lineage] == [retry, ids[1]]
        assert_envelope(server.get("/runs", params={"status": "done"}), 422, "validation_error")
    finally:
        server.stop()


def test_results_lineage_export_diff_flaky(served: Served) -> None:
    source = recorded_run(served, {TESTS[1]: "failed", TESTS[2]: "failed"})
    page = served.get(f"/runs/{source}/results", params={"limit": 3}).json()
    assert [r["position"] for r in page["results"]] == [0, 1, 2]
    rest = served.get(f"/runs/{source}/results", params={"cursor": page["next_cursor"]}).json()
    assert ([r["nodeid"] for r in rest["results"]], rest["next_cursor"]) == ([TESTS[3]], None)
    failed = served.get(f"/runs/{source}/results", params={"outcome": "failed"}).json()
    assert [(r["position"], r["nodeid"]) for r in failed["results"]] == [
        (1, TESTS[1]),
        (2, TESTS[2]),
    ]
    exported = served.get(f"/runs/{source}/export").json()
    assert (exported["id"], exported["selection"]) == (source, TESTS)
    assert served.get(f"/runs/{source}/export", params={"format": "yaml"}).text.startswith("id: ")
    junit = served.get(f"/runs/{source}/export", params={"format": "junit"})
    assert junit.headers["Content-Type"] == "application/xml"
    assert 'failures="2"' in junit.text
    retry = served.post(f"/runs/{source}/retry", json={"failed_only": True}).json()["new_run_id"]
    served.post(f"/runs/{retry}/claim", json={"invocation": invocation()})
    results = [result_body(0, TESTS[1], "passed"), result_body(1, TESTS[2], "failed")]
    served.post(
        f"/runs/{retry}/finish",
        json={"exit_status": 1, "finished_at": 1_700_000_200.0, "results": results},
    )
    diff = served.get("/diff", params={"base": source, "head": retry}).json()
    assert (diff["fixed"], diff["still_failing"]) == ([TESTS[1]], [TESTS[2]])
    lineage = served.get(f"/runs/{retry}/lineage").json()
    assert (lineage["id"], [c["id"] for c in lineage["children"]]) == (source, [retry])
    flaky = served.get("/flaky", params={"last": 200}).json()
    assert TESTS[1] in [f["nodeid"] for f in flaky]


def test_tokens_and_prune_through_the_api(served: Served) -> None:
    created = served.post(
        "/tokens", json={"scopes": ["runs:read"], "name": "bot", "expires_in": 60}
    )
    assert created.status_code == 201
    token = created.json()
    assert token["token"].startswith("prr_")
    bot = {"Authorization": f"Bearer {token['token']}"}
    assert requests.get(served.base + API + "/runs", headers=bot, timeout=10).status_code == 200
    listed = served.get("/tokens").json()["tokens"]
    assert "token" not in listed[-1]
    assert listed[-1]["name"] == "bot"
    assert served.post(f"/tokens/{token['id']}/revoke").json()["revoked_at"] is not None
    assert requests.get(served.base + API + "/runs", headers=bot, timeout=10).status_code == 401
    assert_envelope(served.post("/tokens/999999/revoke"), 404, "token_not_found")
    dry = served.post("/prune", json={"keep": 1, "dry_run": True}).json()
    assert dry["dry_run"] is True


# -- limits across workers, unexpected failures, webhooks ------------------------------------


def test_the_rate_limit_holds_across_workers(tmp_path: Path) -> None:
    # A day's window: the test does not straddle two of them (but at midnight UTC).
    server = serve(tmp_path / "runs.db", "--workers=2", "--rate-limit=5/day")
    try:
        responses = [server.get("/runs") for _ in range(7)]
        server.session.close()  # new connections may land on either worker
        responses += [
            requests.get(server.base + API + "/runs", headers=server.headers(), timeout=10)
        ]
        assert [r.status_code for r in responses] == [200] * 5 + [429] * 3
        limited = assert_envelope(responses[-1], 429, "rate_limited")
        assert limited["details"]["limit"] == "5/day"
        assert 0 < int(responses[-1].headers["Retry-After"]) <= 86400
        assert responses[-1].headers["X-RateLimit-Remaining"] == "0"
        assert [r.headers["X-RateLimit-Remaining"] for r in responses[:5]] == [
            "4",
            "3",
            "2",
            "1",
            "0",
        ]
        other = requests.get(
            server.base + API + "/runs", headers=server.headers("runs:read"), timeout=10
        )
        assert other.status_code == 200
    finally:
        server.stop()


def test_an_unexpected_failure_is_500_without_a_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    from pytest_rerun_runs import analysis
    from pytest_rerun_runs.access import hash_token, new_token
    from pytest_rerun_runs.server import ServerConfig, create_app
    from tests.serving import free_port

    secret = new_token()
    store = open_store(str(tmp_path / "runs.db"))
    store.add_token(None, hash_token(secret), ["runs:read"], 1.0, None)  # type: ignore[attr-defined]
    store.close()

    def broken(summaries: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(analysis, "flaky_report", broken)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(ServerConfig(str(tmp_path / "runs.db"))), port=port, log_level="critical"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)  # polling for readiness
        response = requests.get(
            f"http://127.0.0.1:{port}{API}/flaky",
            headers={"Authorization": f"Bearer {secret}"},
            timeout=10,
        )
        body = assert_envelope(response, 500, "internal_error")
        assert body["details"]["request_id"] == response.headers["X-Request-Id"]
        assert "secret internals" not in response.text
    finally:
        server.should_exit = True
        thread.join(10)


class Receiver(BaseHTTPRequestHandler):
    deliveries: list[tuple[dict[str, str], bytes]] = []
    failures_left = 0
    arrived = threading.Condition()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with Receiver.arrived:
            if Receiver.failures_left:
                Receiver.failures_left -= 1
                self.send_response(503)
            else:
                Receiver.deliveries.append((dict(self.headers), body))
                self.send_response(204)
            Receiver.arrived.notify_all()
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def wait_for_deliveries(count: int) -> list[tuple[dict[str, str], bytes]]:
    with Receiver.arrived:
        assert Receiver.arrived.wait_for(lambda: len(Receiver.deliveries) >= count, timeout=30)
        return list(Receiver.deliveries)


def test_webhooks_are_signed_retried_and_can_be_silenced(tmp_path: Path) -> None:
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    Receiver.deliveries, Receiver.failures_left = [], 1
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    server = serve(tmp_path / "runs.db", f"--webhook={url}", "--webhook-secret=s3cret")
    try:
        source = recorded_run(server, {TESTS[0]: "failed"})
        [(headers, body)] = wait_for_deliveries(1)  # run.finished, after one refused attempt
        assert headers["X-Runs-Event"] == "run.finished"
        expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        assert headers["X-Runs-Signature"] == expected
        assert json.loads(body)["data"]["id"] == source
        silent = server.post(f"/runs/{source}/retry", json={"send_notifications": False}).json()
        server.post(f"/runs/{silent['new_run_id']}/cancel")
        loud = server.post(f"/runs/{source}/retry", json={"failed_only": True}).json()
        deliveries = wait_for_deliveries(2)  # one queue, in order: the silenced ones came before
        events = [(h["X-Runs-Event"], json.loads(b)["data"]["id"]) for h, b in deliveries]
        assert events == [("run.finished", source), ("run.queued", loud["new_run_id"])]
    finally:
        server.stop()
        receiver.shutdown()
        receiver.server_close()


# -- the command line and the package ----------------------------------------------------------


def test_the_openapi_document_is_committed_and_served(served: Served) -> None:
    from pytest_rerun_runs.server import ServerConfig, create_app

    generated = create_app(ServerConfig(str(served.store))).openapi()
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert generated == committed, "regenerate: python -m pytest_rerun_runs.server.openapi"
    served_document = requests.get(served.base + API + "/openapi.json", timeout=10).json()
    assert served_document == committed


def test_token_commands(tmp_path: Path) -> None:
    store = tmp_path / "new" / "runs.db"
    made = runs_cli("token", "create", f"--store={store}", "--scope=runs:read", "--name=ci")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.splitlines()[1]
    assert secret.startswith("prr_")
    assert secret.encode() not in store.read_bytes()
    listed = runs_cli("token", "list", f"--store={store}")
    assert listed.stdout.splitlines()[1].split()[:4] == [
        "1",
        "ci",
        "runs:read",
        listed.stdout.splitlines()[1].split()[3],
    ]
    assert runs_cli("token", "revoke", "1", f"--store={store}").stdout == "token 1 revoked\n"
    assert json.loads(runs_cli("token", "list", f"--store={store}", "--format=json").stdout)[0][
        "revoked_at"
    ]
    bad = runs_cli("token", "create", f"--store={store}", "--scope=root")
    assert (bad.returncode, bad.stdout) == (4, "")
    assert len(bad.stderr.splitlines()) == 1
    missing = runs_cli("token", "revoke", "9", f"--store={store}")
    assert (missing.returncode, missing.stderr) == (
        4,
        f"pytest-runs: error: no token 9 in {store}\n",
    )


def test_serve_without_the_extra_is_one_line() -> None:
    code = (
        "import sys; sys.modules['uvicorn'] = None;"
        "from pytest_rerun_runs.cli import main; sys.exit(main(['serve']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 4
    assert done.stderr == (
        "pytest-runs: error: pytest-runs serve needs the [server] extra:"
        " pip install 'pytest-rerun-runs[server]' (missing: uvicorn)\n"
    )


def test_the_plugin_never_imports_the_server(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_a():\n    assert True\n")
    pytester.makeconftest(
        """
        import json, sys
        def pytest_unconfigure(config):
            heavy = ("fastapi", "starlette", "uvicorn", "pydantic", "pytest_rerun_runs.server")
            loaded = [m for m in sys.modules if m.startswith(heavy)]
            with open("modules.json", "w") as file:
                json.dump(loaded, file)
        """
    )
    result = pytester.runpytest_subprocess("-p", "rerun_runs")
    result.assert_outcomes(passed=1)
    assert "recorded: 1 passed" in result.stdout.str()
    assert json.loads((pytester.path / "modules.json").read_text()) == []


def schemathesis_command() -> Path | None:
    """schemathesis lives in its own environment (it needs a newer pytest than the
    oldest one this project supports): ``tests/check.py`` makes it."""
    configured = os.environ.get("PYTEST_RUNS_SCHEMATHESIS")
    candidate = Path(configured) if configured else ROOT / ".venv-tools" / "bin" / "st"
    return candidate if candidate.exists() else None


def test_schemathesis_finds_no_violation_of_the_document(tmp_path: Path) -> None:
    command = schemathesis_command()
    if command is None:
        if os.environ.get("CI") == "true":
            pytest.fail("schemathesis is not installed: run python tests/check.py")
        pytest.skip("schemathesis is not installed (python tests/check.py installs it)")
    server = serve(tmp_path / "runs.db", "--rate-limit=1000000/minute")
    try:
        for _ in range(3):  # runs for the generated ids to find
            recorded_run(server, {TESTS[0]: "failed"})
        done = subprocess.run(
            [
                str(command),
                "run",
                f"{server.base}{API}/openapi.json",
                "--header",
                f"Authorization: Bearer {server.tokens['all']}",
                "--checks=all",
                # Ids that do not exist are 404s, not rejections of valid data.
                "--exclude-checks=positive_data_acceptance",
                # Revoking its own token would leave it nothing but 401s to test.
                "--exclude-path-regex=revoke",
                "--phases=examples,coverage,fuzzing",
                "--generation-with-security-parameters=false",
                "--max-examples=15",
                "--seed=1",
                "--request-timeout=20",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
            cwd=tmp_path,  # its cache directory
        )
        assert done.returncode == 0, done.stdout[-5000:]
        assert " passed" in done.stdout
        assert "Authentication failed" not in done.stdout
    finally:
        stderr = server.stop()
    assert "Traceback" not in stderr


def test_a_body_over_the_limit_is_413_before_it_is_read(served: Served) -> None:
    import http.client

    port = int(served.base.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest("POST", API + "/runs")
        connection.putheader("Authorization", f"Bearer {served.tokens['all']}")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(64 * 1024 * 1024 + 1))
        connection.endheaders()
        response = connection.getresponse()
        body = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 413
    assert body["code"] == "payload_too_large"
    assert set(body) == {"code", "message", "details"}
    assert response.getheader("X-Request-Id")


def test_prune_needs_exactly_one_rule(served: Served) -> None:
    for body in [{}, {"dry_run": True}, {"keep": 1, "older_than": "30d"}]:
        assert_envelope(served.post("/prune", json=body), 422, "validation_error")


def test_queuing_a_run_directly_needs_a_plan_and_the_retry_scope(served: Served) -> None:
    body = new_run_body(str(uuid.uuid4()), TESTS, status="queued", plan={"bogus": 1})
    error = assert_envelope(served.post("/runs", json=body), 422, "validation_error")
    assert error["details"]["errors"][0]["location"] == ["body", "plan"]
    forbidden = served.post("/runs", "runs:write", json=body)
    assert assert_envelope(forbidden, 403, "forbidden")["details"]["required_scope"] == (
        "runs:retry"
    )
