"""The store contract: every backend must pass this module.

Backends are the parameters of the ``backend`` fixture; each gives a store URL
on a fresh store, and a way to run raw SQL as another program would (to prove
that finished runs are immutable in the database itself).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from pytest_rerun_runs.access import parse_rate_limit
from pytest_rerun_runs.planner import RetryPlan
from pytest_rerun_runs.store import (
    RETRY_OUTCOMES,
    AccessStore,
    AlreadyClaimed,
    ConflictingSelection,
    InvalidLineage,
    InvalidResult,
    Invocation,
    NotClaimed,
    NotQueued,
    Outcome,
    Result,
    Run,
    RunFinish,
    RunFinished,
    RunNotFound,
    RunStore,
    SelectedTest,
    Selection,
    TokenNotFound,
    hostname,
    open_store,
)
from tests.conftest import make_invocation, make_new_run

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Backend:
    url: str
    #: Runs one SQL statement on its own connection, as any other client could.
    execute_sql: Callable[[str], None]
    #: Whether a client's ``stale_after`` decides liveness (a server decides for
    #: its clients: ``runs_stale_after`` where it runs).
    client_liveness: bool = True
    #: Whether it keeps tokens, limits and idempotency keys (``AccessStore``).
    access: bool = True
    #: The SQL that ``execute_sql`` speaks.
    dialect: str = "sqlite"


def _sqlite_backend(tmp_path: Path) -> Iterator[Backend]:
    path = tmp_path / "runs.db"

    def execute_sql(statement: str) -> None:
        connection = sqlite3.connect(path, isolation_level=None)
        try:
            connection.execute(statement)
        finally:
            connection.close()

    yield Backend(str(path), execute_sql)


def _http_backend(tmp_path: Path) -> Iterator[Backend]:
    """``pytest-runs serve`` (in this process, on a free port) over an SQLite store."""
    import threading
    import time

    import uvicorn

    from pytest_rerun_runs.access import hash_token, new_token
    from pytest_rerun_runs.server import ServerConfig, create_app
    from tests.serving import free_port

    sqlite = next(_sqlite_backend(tmp_path))
    token = new_token()
    local = open_store(sqlite.url)
    cast(AccessStore, local).add_token(
        None, hash_token(token), ["runs:read", "runs:write", "runs:retry", "admin"], 1.0, None
    )
    local.close()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(ServerConfig(sqlite.url, parse_rate_limit("1000000/minute"))),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)  # polling for readiness
    saved = os.environ.get("PYTEST_RUNS_TOKEN")
    os.environ["PYTEST_RUNS_TOKEN"] = token  # for this process and the ones it starts
    try:
        yield Backend(
            f"http://127.0.0.1:{port}", sqlite.execute_sql, client_liveness=False, access=False
        )
    finally:
        if saved is None:
            del os.environ["PYTEST_RUNS_TOKEN"]
        else:
            os.environ["PYTEST_RUNS_TOKEN"] = saved
        server.should_exit = True
        thread.join(20)


def _postgres_backend(url: str) -> Iterator[Backend]:
    import psycopg

    def execute_sql(statement: str) -> None:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(statement)

    yield Backend(url, execute_sql, dialect="postgres")


BACKENDS = ("http", "postgres", "sqlite")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "postgres":
        yield from _postgres_backend(request.getfixturevalue("postgres_url"))
    elif request.param == "http":
        yield from _http_backend(tmp_path)
    else:
        yield from _sqlite_backend(tmp_path)


@pytest.fixture
def store(backend: Backend) -> Iterator[RunStore]:
    opened = open_store(backend.url)
    yield opened
    opened.close()


@pytest.fixture
def other_store(backend: Backend, store: RunStore) -> Iterator[RunStore]:
    """A second, independent store object on the same store."""
    opened = open_store(backend.url)
    yield opened
    opened.close()


ABC = Selection([SelectedTest(f"t.py::{name}", "t.py") for name in "abc"])


def outcomes_of(run: Run) -> list[tuple[str, str]]:
    return [(r.nodeid, r.outcome) for r in run.results]


# -- creating ----------------------------------------------------------------------


def test_creating_a_run_twice_returns_the_same_run(store: RunStore, other_store: RunStore) -> None:
    new_run = make_new_run()
    first = store.create_run(new_run, ABC)
    assert store.create_run(new_run, ABC) == first
    assert other_store.create_run(new_run, ABC) == first
    assert [s.id for s in store.list_runs()] == [first]
    assert store.find_run(new_run.uid) == first


def test_a_uid_with_another_selection_is_a_conflict(store: RunStore) -> None:
    new_run = make_new_run()
    run_id = store.create_run(new_run, ABC)
    with pytest.raises(ConflictingSelection) as raised:
        store.create_run(new_run, Selection(ABC.tests[:2]))
    assert raised.value.code == "conflicting_selection"
    assert raised.value.details == {"run_id": run_id}


def test_run_ids_are_distinct_and_increase(store: RunStore, other_store: RunStore) -> None:
    ids = [s.create_run(make_new_run(), ABC) for s in (store, other_store, store)]
    assert ids == sorted(set(ids))


# -- results by position -------------------------------------------------------------


def test_results_land_at_their_position_from_any_store_object(
    store: RunStore, other_store: RunStore
) -> None:
    run_id = store.create_run(make_new_run(), ABC)
    other_store.finish_run(
        run_id, RunFinish(1, 2.0), [Result("t.py::c", "failed", "call", position=2)]
    )
    assert outcomes_of(store.get_run(run_id)) == [
        ("t.py::a", "not_run"),
        ("t.py::b", "not_run"),
        ("t.py::c", "failed"),
    ]


def test_a_batch_sent_twice_is_stored_once(store: RunStore, other_store: RunStore) -> None:
    run_id = store.create_run(make_new_run(), ABC)
    batch = [
        Result("t.py::a", "passed", "call", position=0),
        Result("t.py::b", "failed", "call", position=1),
    ]
    store.append_results(run_id, batch)
    other_store.append_results(run_id, batch)
    store.finish_run(run_id, RunFinish(1, 2.0), batch)
    store.finish_run(run_id, RunFinish(1, 2.0), batch)
    run = store.get_run(run_id)
    assert outcomes_of(run) == [
        ("t.py::a", "passed"),
        ("t.py::b", "failed"),
        ("t.py::c", "not_run"),
    ]
    assert (run.summary.counts["passed"], run.summary.counts["failed"]) == (1, 1)
    assert run.summary.counts["not_run"] == 1


def test_writers_taking_turns_on_one_run_keep_the_first_result_of_each_position(
    store: RunStore, other_store: RunStore
) -> None:
    tests = Selection([SelectedTest(f"t.py::{p}", "t.py") for p in range(5)])
    run_id = store.create_run(make_new_run(), tests)

    def result(position: int, outcome: Outcome = "passed") -> Result:
        return Result(f"t.py::{position}", outcome, "call", position=position)

    store.append_results(run_id, [result(0), result(1)])
    other_store.append_results(run_id, [result(1, "failed"), result(2, "failed")])
    # Each store has written to the run before: what the other one wrote since counts.
    store.append_results(run_id, [result(2), result(3)])
    other_store.append_results(run_id, [result(3, "failed"), result(0, "failed")])
    store.finish_run(run_id, RunFinish(1, 2.0), [result(4), result(1, "failed")])
    run = store.get_run(run_id)
    assert [r.outcome for r in run.results] == ["passed", "passed", "failed", "passed", "passed"]
    assert (run.summary.counts["passed"], run.summary.counts["failed"]) == (4, 1)


def test_a_position_given_twice_in_one_batch_keeps_the_first_result(store: RunStore) -> None:
    run_id = store.create_run(make_new_run(), ABC)
    store.append_results(
        run_id,
        [
            Result("t.py::a", "passed", "call", position=0),
            Result("t.py::b", "failed", "call", longrepr="it broke", position=1),
            Result("t.py::b", "passed", "call", position=1),
        ],
    )
    run = store.get_run(run_id)
    assert outcomes_of(run) == [
        ("t.py::a", "passed"),
        ("t.py::b", "failed"),
        ("t.py::c", "not_run"),
    ]
    assert run.results[1].longrepr == "it broke"


def test_duplicated_node_ids_keep_a_result_each(store: RunStore) -> None:
    twice = Selection([SelectedTest("t.py::a", "t.py"), SelectedTest("t.py::a", "t.py")])
    run_id = store.create_run(make_new_run(), twice)
    store.finish_run(
        run_id,
        RunFinish(1, 2.0),
        [
            Result("t.py::a", "passed", "call", position=0),
            Result("t.py::a", "failed", "call", position=1),
        ],
    )
    assert outcomes_of(store.get_run(run_id)) == [("t.py::a", "passed"), ("t.py::a", "failed")]


def test_results_outside_the_selection_come_after_it(store: RunStore) -> None:
    run_id = store.create_run(make_new_run(), ABC)
    store.finish_run(
        run_id,
        RunFinish(2, 2.0),
        [
            Result("broken.py", "error", "collect", file="broken.py", position=4),
            Result("t.py::a", "passed", "call", position=0),
            Result("gone.py", "error", "collect", file="gone.py", position=3),
        ],
    )
    run = store.get_run(run_id)
    assert outcomes_of(run)[3:] == [("gone.py", "error"), ("broken.py", "error")]
    assert [r.nodeid for r in store.get_run(run_id, {"error", "not_run"}).results] == [
        "t.py::b",
        "t.py::c",
        "gone.py",
        "broken.py",
    ]


def test_the_failures_of_a_run_where_every_test_reported_are_all_it_retries(
    store: RunStore,
) -> None:
    run_id = store.create_run(make_new_run(), ABC)
    store.finish_run(
        run_id,
        RunFinish(1, 2.0),
        [
            Result("t.py::a", "passed", "call", position=0),
            Result("t.py::b", "failed", "call", position=1),
            Result("t.py::c", "error", "setup", position=2),
        ],
    )
    assert outcomes_of(store.get_run(run_id, RETRY_OUTCOMES)) == [
        ("t.py::b", "failed"),
        ("t.py::c", "error"),
    ]
    running = store.create_run(make_new_run(), ABC)
    store.append_results(running, [Result("t.py::b", "failed", "call", position=1)])
    assert outcomes_of(store.get_run(running, RETRY_OUTCOMES)) == [
        ("t.py::a", "not_run"),
        ("t.py::b", "failed"),
        ("t.py::c", "not_run"),
    ]


def test_a_result_without_a_position_is_refused(store: RunStore) -> None:
    run_id = store.create_run(make_new_run(), ABC)
    with pytest.raises(InvalidResult):
        store.append_results(run_id, [Result("t.py::a", "passed", "call")])
    # A negative position counted from the end would name a selected test.
    with pytest.raises(InvalidResult):
        store.append_results(run_id, [Result("t.py::c", "passed", "call", position=-1)])
    with pytest.raises(InvalidResult):
        store.append_results(run_id, [Result("t.py::a", "passed", "call", position=-3)])
    assert outcomes_of(store.get_run(run_id))[2] == ("t.py::c", "not_run")


def test_a_result_must_fit_its_position(store: RunStore) -> None:
    run_id = store.create_run(make_new_run(), ABC)
    with pytest.raises(InvalidResult, match=r"t\.py::c cannot take position 0"):
        store.append_results(run_id, [Result("t.py::c", "failed", "call", position=0)])
    with pytest.raises(InvalidResult, match=r"t\.py::b cannot take position 5"):
        store.append_results(run_id, [Result("t.py::b", "passed", "call", position=5)])
    assert outcomes_of(store.get_run(run_id)) == [
        ("t.py::a", "not_run"),
        ("t.py::b", "not_run"),
        ("t.py::c", "not_run"),
    ]


@pytest.mark.parametrize("worker", [None, "gw1"])
def test_every_field_of_a_result_is_kept(store: RunStore, worker: str | None) -> None:
    # Without a worker, a batch of results is written column by column.
    run_id = store.create_run(make_new_run(), ABC)
    sent = [
        Result("t.py::a", "passed", "call", 0.000001, 0.25, 1.5, worker, None, 0, None, 0),
        Result("t.py::b", "skipped", "setup", 0.125, 0.0, 0.5, worker, None, 2, None, 1),
        Result("t.py::c", "failed", "teardown", 3.0, 0.000002, 0.75, worker, None, 1, None, 2),
    ]
    store.append_results(run_id, sent)
    store.finish_run(run_id, RunFinish(1, 2.0))
    # Positions are where the results stand; not every store gives them back.
    assert [result[:-1] for result in store.get_run(run_id).results] == [r[:-1] for r in sent]


def test_a_queued_run_takes_no_results_before_it_is_claimed(store: RunStore) -> None:
    run_id = queued(store)
    with pytest.raises(NotClaimed):
        store.append_results(run_id, [Result("t.py::a", "passed", "call", position=0)])
    with pytest.raises(NotClaimed):
        store.finish_run(run_id, RunFinish(0, 2.0))
    assert store.get_summary(run_id).status == "queued"


def test_outcomes_of_a_few_tests(store: RunStore) -> None:
    run_id = store.create_run(make_new_run(), ABC)
    store.finish_run(
        run_id,
        RunFinish(1, 2.0),
        [
            Result("t.py::a", "passed", "call", position=0),
            Result("t.py::b", "failed", "call", position=1),
        ],
    )
    wanted = ["t.py::a", "t.py::c", "t.py::gone"]
    assert store.get_outcomes(run_id, wanted) == {"t.py::a": "passed", "t.py::c": "not_run"}
    assert store.get_outcomes(run_id, ["t.py::a", "t.py::b"], only=["passed"]) == {
        "t.py::a": "passed"
    }


# -- finishing and immutability ---------------------------------------------------------


def test_a_finished_run_refuses_new_results(store: RunStore) -> None:
    run_id = store.create_run(make_new_run(), ABC)
    store.finish_run(run_id, RunFinish(0, 2.0), [Result("t.py::a", "passed", "call", position=0)])
    with pytest.raises(RunFinished) as raised:
        store.append_results(run_id, [Result("t.py::b", "failed", "call", position=1)])
    assert raised.value.code == "run_finished"
    store.finish_run(run_id, RunFinish(1, 3.0))
    summary = store.get_summary(run_id)
    assert (summary.status, summary.exit_status, summary.finished_at) == ("passed", 0, 2.0)


#: Statements that try to change finished run 1, in each backend's SQL.
CHANGES: dict[str, dict[str, str]] = {
    "update": {"any": "UPDATE runs SET status = 'failed' WHERE id = 1"},
    "new uid": {"any": "UPDATE runs SET uid = 'x' WHERE id = 1"},
    "delete": {"any": "DELETE FROM runs WHERE id = 1"},
    "replace by id": {
        "sqlite": "INSERT OR REPLACE INTO runs (id, status, created_at, invocation)"
        " VALUES (1, 'failed', 1.0, '{}')",
        "postgres": "INSERT INTO runs (id, uid, status, created_at, invocation)"
        " VALUES (1, 'y', 'failed', 1.0, '{}') ON CONFLICT (id) DO UPDATE SET status = 'failed'",
    },
    "replace by uid": {
        "sqlite": "REPLACE INTO runs (id, uid, status, created_at, invocation)"
        " SELECT 9, uid, 'failed', 1.0, '{}' FROM runs WHERE id = 1",
        "postgres": "INSERT INTO runs (id, uid, status, created_at, invocation)"
        " SELECT 9, uid, 'failed', 1.0, '{}' FROM runs WHERE id = 1"
        " ON CONFLICT (uid) DO UPDATE SET status = 'failed'",
    },
    "update results": {"any": "UPDATE results SET outcome = 1"},
    "delete results": {"any": "DELETE FROM results"},
    "new result": {
        "any": "INSERT INTO results VALUES (1, 2, 0, 1, 0, 0, 0, NULL, NULL, 0, NULL, NULL)"
    },
    "replace a result": {
        "sqlite": "INSERT OR REPLACE INTO results"
        " VALUES (1, 0, 1, 1, 0, 0, 0, NULL, NULL, 0, NULL, NULL)",
        "postgres": "INSERT INTO results VALUES (1, 0, 1, 1, 0, 0, 0, NULL, NULL, 0, NULL, NULL)"
        " ON CONFLICT (run_id, position) DO UPDATE SET outcome = 1",
    },
    "update passed results": {"sqlite": "UPDATE passed_results SET results = '[]'"},
    "delete passed results": {"sqlite": "DELETE FROM passed_results"},
    "new passed results": {"sqlite": "INSERT INTO passed_results VALUES (1, '[[2,0,0,0]]')"},
    "replace passed results": {
        "sqlite": "INSERT OR REPLACE INTO passed_results (rowid, run_id, results)"
        " SELECT rowid, run_id, '[]' FROM passed_results"
    },
    # REPLACE deletes the row it conflicts with without firing delete triggers.
    "replace passed results by rowid": {
        "sqlite": "REPLACE INTO passed_results (rowid, run_id, results)"
        " SELECT rowid, 999, '[]' FROM passed_results"
    },
    "truncate": {"postgres": "TRUNCATE results, runs"},
}


def statement_for(backend: Backend, change: str) -> str:
    forms = CHANGES[change]
    statement = forms.get(backend.dialect, forms.get("any"))
    if statement is None:
        pytest.skip(f"{backend.dialect} has no such statement")
    return statement


@pytest.mark.parametrize("change", list(CHANGES))
def test_finished_runs_are_immutable_against_any_sql(
    backend: Backend, store: RunStore, change: str
) -> None:
    statement = statement_for(backend, change)
    assert_refused(backend, store, finished_run(store), statement)


IMMUTABLE = "pytest-rerun-runs: a (finished run cannot be changed|run keeps its id and uid)"


TAKEOVERS: dict[str, dict[str, str]] = {
    # An open run taking a finished run's uid or id would make REPLACE delete it.
    "uid": {
        "sqlite": "UPDATE OR REPLACE runs SET uid = (SELECT uid FROM runs WHERE id = 1)"
        " WHERE id = 2",
        "postgres": "UPDATE runs SET uid = (SELECT uid FROM runs WHERE id = 1) WHERE id = 2",
    },
    "id": {
        "sqlite": "UPDATE OR REPLACE runs SET id = 1 WHERE id = 2",
        "postgres": "UPDATE runs SET id = 1 WHERE id = 2",
    },
}


@pytest.mark.parametrize("change", list(TAKEOVERS))
def test_an_open_run_cannot_take_over_a_finished_one(
    backend: Backend, store: RunStore, change: str
) -> None:
    takeover = TAKEOVERS[change][backend.dialect]
    finished = finished_run(store)
    store.create_run(make_new_run(), ABC)
    assert_refused(backend, store, finished, takeover)


def finished_run(store: RunStore) -> int:
    run_id = store.create_run(make_new_run(), ABC)
    # A passing and a failing result: the SQLite store keeps them in two tables.
    results = [
        Result("t.py::a", "passed", "call", position=0),
        Result("t.py::b", "failed", "call", longrepr="it broke", position=1),
    ]
    store.finish_run(run_id, RunFinish(1, 2.0), results)
    return run_id


def assert_refused(backend: Backend, store: RunStore, run_id: int, statement: str) -> None:
    """``statement``, run as another client would, is refused and changes nothing."""
    before = store.get_run(run_id)
    with pytest.raises(Exception, match=IMMUTABLE):
        backend.execute_sql(statement)
    after = store.get_run(run_id)
    assert (after.summary, after.results) == (before.summary, before.results)


# -- claims -------------------------------------------------------------------------------


PLAN = RetryPlan(
    source_run_id=None,
    root_run_id=None,
    attempt=1,
    mode="full",
    reason=None,
    order="recorded",
    tests=tuple(ABC.tests),
    collectors=(),
    source_size=3,
).to_dict()


def queued(store: RunStore) -> int:
    return store.create_run(make_new_run(status="queued", plan=PLAN), ABC)


def test_a_queued_run_holds_its_plan_until_claimed(store: RunStore) -> None:
    run_id = queued(store)
    summary = store.get_summary(run_id)
    assert (summary.status, summary.plan) == ("queued", PLAN)
    assert store.latest_run_id(finished=True) is None
    claimed = store.claim_run(run_id, make_invocation(host="ci-7"), 5.0)
    assert (claimed.status, claimed.invocation.host, claimed.started_at) == ("running", "ci-7", 5.0)


def test_a_second_claim_fails(store: RunStore, other_store: RunStore) -> None:
    run_id = queued(store)
    store.claim_run(run_id, make_invocation(host="ci-1"), 5.0)
    with pytest.raises(AlreadyClaimed) as raised:
        other_store.claim_run(run_id, make_invocation(host="ci-2"), 6.0)
    assert raised.value.code == "already_claimed"
    assert raised.value.details["host"] == "ci-1"
    assert "ci-1" in raised.value.message


def test_only_queued_runs_can_be_claimed(store: RunStore) -> None:
    with pytest.raises(NotQueued):
        store.claim_run(store.create_run(make_new_run(), ABC), make_invocation(), 1.0)
    with pytest.raises(RunNotFound):
        store.claim_run(999, make_invocation(), 1.0)


CLAIM = """
import sys
from pytest_rerun_runs.store import AlreadyClaimed, open_store
from tests.conftest import make_invocation
store = open_store(sys.argv[1])
try:
    store.claim_run(int(sys.argv[2]), make_invocation(host=sys.argv[3]), 1.0)
    print("claimed")
except AlreadyClaimed:
    print("refused")
finally:
    store.close()
"""


def test_racing_processes_claim_a_run_once(backend: Backend, store: RunStore) -> None:
    run_id = queued(store)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIM, backend.url, str(run_id), f"ci-{number}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for number in range(4)
    ]
    answers = sorted(process.communicate(timeout=60)[0].strip() for process in processes)
    assert answers == ["claimed", "refused", "refused", "refused"]
    assert store.get_summary(run_id).status == "running"


APPEND = """
import sys
from pytest_rerun_runs.store import Result, open_store
store = open_store(sys.argv[1])
try:
    run_id, first, last = map(int, sys.argv[2:5])
    for position in range(first, last, 10):
        batch = range(position, min(position + 10, last))
        results = [Result(f"t.py::{p}", "passed", "call", position=p) for p in batch]
        store.append_results(run_id, results)
finally:
    store.close()
"""


def test_two_processes_writing_overlapping_batches_store_each_result_once(
    backend: Backend, store: RunStore
) -> None:
    tests = Selection([SelectedTest(f"t.py::{p}", "t.py") for p in range(100)])
    run_id = store.create_run(make_new_run(), tests)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", APPEND, backend.url, str(run_id), *bounds], cwd=ROOT
        )
        for bounds in (("0", "60"), ("40", "100"))
    ]
    assert [process.wait(timeout=60) for process in processes] == [0, 0]
    store.finish_run(run_id, RunFinish(0, 2.0))
    run = store.get_run(run_id)
    assert [r.nodeid for r in run.results] == [t.nodeid for t in tests.tests]
    assert run.summary.counts["passed"] == 100
    assert run.summary.counts["not_run"] == 0


# -- liveness ---------------------------------------------------------------------------


def test_a_run_not_seen_for_longer_than_the_threshold_reads_interrupted(
    backend: Backend, store: RunStore
) -> None:
    if not backend.client_liveness:
        pytest.skip("a server decides with its own runs_stale_after, not the client's")
    # On another host the pid says nothing: only the last write does.
    run_id = store.create_run(make_new_run(host="elsewhere"), ABC)
    assert store.get_summary(run_id).status == "running"
    assert store.latest_run_id(finished=True) is None
    impatient = open_store(backend.url, stale_after=0.0)
    try:
        assert impatient.get_summary(run_id).status == "interrupted"
        assert impatient.latest_run_id(finished=True) == run_id
    finally:
        impatient.close()


def test_a_live_process_on_this_host_keeps_its_run_running(backend: Backend) -> None:
    if not backend.client_liveness:
        pytest.skip("a server decides with its own runs_stale_after, not the client's")
    impatient = open_store(backend.url, stale_after=1e-9)
    try:
        run_id = impatient.create_run(make_new_run(pid=os.getpid(), host=hostname()), ABC)
        assert impatient.get_summary(run_id).status == "running"
        assert impatient.latest_run_id(finished=True) is None
    finally:
        impatient.close()


def test_a_run_of_a_vanished_process_on_this_host_reads_interrupted(
    backend: Backend, store: RunStore
) -> None:
    if not backend.client_liveness:
        pytest.skip("a server judges its clients by their last write, not their pids")
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    run_id = store.create_run(make_new_run(pid=int(gone.stdout), host=hostname()), ABC)
    assert store.get_summary(run_id).status == "interrupted"
    assert store.latest_run_id(finished=True) == run_id


# -- imports ----------------------------------------------------------------------------


def test_importing_a_run_twice_gives_one_run(store: RunStore, other_store: RunStore) -> None:
    run_id = store.create_run(make_new_run(), ABC)
    store.finish_run(run_id, RunFinish(1, 2.0), [Result("t.py::b", "failed", "call", position=1)])
    exported = store.get_run(run_id)
    data = json.loads(json.dumps(exported.to_dict()))
    data["id"] = 41
    copy = Run.from_dict(data)
    assert store.import_run(copy, {"run_id": 41}) == run_id
    assert other_store.import_run(copy, {"run_id": 41}) == run_id
    assert len(store.list_runs()) == 1


# -- errors -------------------------------------------------------------------------------


def test_errors_carry_stable_codes(store: RunStore) -> None:
    with pytest.raises(RunNotFound) as raised:
        store.get_run(5)
    assert raised.value.to_dict() == {
        "code": "run_not_found",
        "message": f"run 5 not found in {store.location} (it holds no runs)",
        "details": {"run_id": 5},
    }


# -- cancelling ------------------------------------------------------------------------------


def test_cancelling_a_queued_run_finishes_it_as_cancelled(store: RunStore) -> None:
    run_id = queued(store)
    assert store.cancel_run(run_id, 9.0) == "cancelled"
    summary = store.get_summary(run_id)
    assert (summary.status, summary.counts["not_run"]) == ("cancelled", 3)
    assert summary.finished_at is not None  # a server's clock may say when
    with pytest.raises(RunFinished):
        store.append_results(run_id, [Result("t.py::a", "passed", "call", position=0)])
    assert store.cancel_run(run_id, 11.0) == "no_op"


def test_cancelling_a_running_run_asks_its_session_to_stop(
    store: RunStore, other_store: RunStore
) -> None:
    run_id = store.create_run(make_new_run(), ABC)
    assert not store.cancel_requested(run_id)
    assert other_store.cancel_run(run_id, 9.0) == "cancel_requested"
    assert store.cancel_requested(run_id)
    summary = store.get_summary(run_id)
    assert (summary.status, summary.cancel_requested) == ("running", True)
    store.append_results(run_id, [Result("t.py::a", "passed", "call", position=0)])
    assert store.get_run(run_id).to_dict()["cancel_requested"] is True


def test_cancelling_a_finished_run_changes_nothing(store: RunStore) -> None:
    run_id = finished_run(store)
    before = store.get_run(run_id)
    assert store.cancel_run(run_id, 9.0) == "no_op"
    assert store.get_run(run_id) == before
    with pytest.raises(RunNotFound):
        store.cancel_run(run_id + 100, 9.0)


# -- listing -----------------------------------------------------------------------------------


def test_listing_filters_and_pages(store: RunStore) -> None:
    from pytest_rerun_runs.store import GitInfo

    def on(branch: str, commit: str) -> Invocation:
        return make_invocation()._replace(git=GitInfo(branch, commit))

    first = store.create_run(make_new_run(label="nightly", invocation=on("main", "c1")), ABC)
    second = store.create_run(make_new_run(invocation=on("dev", "c2")), ABC)
    store.finish_run(second, RunFinish(1, 3.0))
    third = store.create_run(make_new_run(label="nightly", invocation=on("main", "c3")), ABC)
    retry = store.create_run(
        make_new_run(source_run_id=first, root_run_id=first, attempt=2, status="queued", plan=PLAN),
        ABC,
    )

    def ids(**filters: Any) -> list[int]:
        return [s.id for s in store.list_runs(**filters)]

    assert ids() == [retry, third, second, first]
    assert ids(limit=2) == [retry, third]
    assert ids(limit=2, before=third) == [second, first]
    assert ids(label="nightly") == [third, first]
    assert ids(branch="main") == [third, first]
    assert ids(commit="c2") == [second]
    assert ids(status="failed") == [second]
    assert ids(status="queued") == [retry]
    assert ids(status="running") == [third, first]
    assert ids(root_run_id=first) == [retry, first]
    assert ids(label="nope") == []


# -- what the server keeps -------------------------------------------------------------------


@pytest.fixture
def access(backend: Backend, store: RunStore) -> AccessStore:
    if not backend.access:
        pytest.skip("a server keeps these in its own store")
    return cast(AccessStore, store)


def test_tokens_are_kept_by_hash_and_revoked(access: AccessStore) -> None:
    token = access.add_token("ci", "h" * 64, ["runs:read", "runs:write"], 1.0, None)
    assert access.token_by_hash("h" * 64) == token
    assert token.scopes == ("runs:read", "runs:write")
    assert token.usable(2.0)
    assert access.token_by_hash("x" * 64) is None
    revoked = access.revoke_token(token.id, 5.0)
    assert (revoked.revoked_at, revoked.usable(6.0)) == (5.0, False)
    assert access.revoke_token(token.id, 7.0).revoked_at == 5.0
    assert [t.id for t in access.list_tokens()] == [token.id]
    with pytest.raises(TokenNotFound):
        access.revoke_token(token.id + 1, 5.0)
    expiring = access.add_token(None, "e" * 64, ["admin"], 1.0, 10.0)
    assert (expiring.usable(9.9), expiring.usable(10.0)) == (True, False)


def test_requests_are_counted_per_token_and_window(
    access: AccessStore, other_store: RunStore
) -> None:
    other = cast(AccessStore, other_store)
    assert [access.count_request(1, 60, 61.0) for _ in range(3)] == [1, 2, 3]
    assert other.count_request(1, 60, 62.0) == 4
    assert other.count_request(2, 60, 62.0) == 1
    assert access.count_request(1, 120, 121.0) == 1


def test_an_idempotency_key_keeps_its_first_request(
    access: AccessStore, other_store: RunStore
) -> None:
    assert access.recall_key(1, "k") is None
    assert access.remember_key(1, "k", "body-1", 7, 1.0) == ("body-1", 7)
    assert cast(AccessStore, other_store).remember_key(1, "k", "body-2", 8, 2.0) == ("body-1", 7)
    assert access.recall_key(1, "k") == ("body-1", 7)
    assert access.recall_key(2, "k") is None


def test_a_retry_must_name_a_source_of_this_store_and_its_root(store: RunStore) -> None:
    source = store.create_run(make_new_run(), ABC)
    retry = store.create_run(make_new_run(source_run_id=source, root_run_id=source, attempt=2), ABC)
    assert store.get_summary(retry).root_run_id == source
    wrong: list[dict[str, Any]] = [
        {"source_run_id": source + 100, "root_run_id": source + 100},
        {"source_run_id": retry, "root_run_id": retry},
        {"source_run_id": None, "root_run_id": source},
    ]
    for fields in wrong:
        with pytest.raises(InvalidLineage) as raised:
            store.create_run(make_new_run(attempt=3, **fields), ABC)
        assert raised.value.code == "invalid_lineage"
    assert [s.id for s in store.list_runs()] == [retry, source]
