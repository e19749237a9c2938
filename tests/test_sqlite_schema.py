"""The SQLite backend's schema: released migrations are frozen, old stores upgrade in place."""

from __future__ import annotations

import json
import sqlite3
import zlib
from pathlib import Path
from typing import Any

import pytest

from pytest_rerun_runs.store import (
    RETRY_OUTCOMES,
    Result,
    RunDamaged,
    RunFinish,
    SelectedTest,
    Selection,
    StoreError,
    legacy_uid,
    open_store,
)
from pytest_rerun_runs.store.sqlite import (
    MIGRATIONS,
    PASSED_DAMAGE,
    SCHEMA_VERSION,
    SELECTION_DAMAGE,
    SqliteStore,
    _decoded,
    _split_statements,
    decode_passed,
    decode_selection,
    encode_passed,
    encode_selection,
)
from tests.conftest import make_new_run

DATA = Path(__file__).parent / "data"
#: The schema as each released version left it, checked in as SQL text.
RELEASED = [DATA / "schema_v1.sql", DATA / "schema_v2.sql"]

INVOCATION = json.dumps(
    {
        "args": [],
        "invocation_dir": ".",
        "rootdir": ".",
        "inifile": None,
        "python": "3",
        "pytest": "8",
        "platform": "x",
        "host": "h",
        "pid": 1,
    }
)


def words(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return " ".join(lines).split()


@pytest.mark.parametrize("number", range(len(RELEASED)))
def test_released_migrations_are_never_edited(number: int) -> None:
    assert words(MIGRATIONS[number]) == words(RELEASED[number].read_text())


def old_store(path: Path, version: int) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    connection.execute("INSERT INTO schema_version VALUES (?)", (version,))
    for script in RELEASED[:version]:
        connection.executescript(script.read_text())
    return connection


@pytest.mark.parametrize("version", [1, 2])
def test_an_old_store_is_migrated_in_place(tmp_path: Path, version: int) -> None:
    path = tmp_path / "old.db"
    connection = old_store(path, version)
    connection.execute(
        "INSERT INTO runs (status, created_at, invocation, finished_at, root_run_id, counts)"
        " VALUES ('passed', 1.0, ?, 2.0, 1, '{}')",
        (INVOCATION,),
    )
    # A run whose session was killed long ago: never finished.
    connection.execute(
        "INSERT INTO runs (status, created_at, started_at, invocation, host, pid, root_run_id)"
        " VALUES ('running', 1.0, 1.0, ?, 'elsewhere', 1, 2)",
        (INVOCATION,),
    )
    connection.close()
    store = open_store(str(path))
    try:
        finished = store.get_summary(1)
        assert (finished.status, finished.origin, finished.pruned_at) == ("passed", None, None)
        assert finished.uid is not None
        assert finished.uid == legacy_uid(1.0, None, None, 1)
        assert store.find_run(finished.uid) == 1
        assert store.get_summary(2).status == "interrupted"
        assert store.latest_run_id(finished=True) == 2
    finally:
        store.close()
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("SELECT version FROM schema_version").fetchone() == (
            SCHEMA_VERSION,
        )
        with pytest.raises(sqlite3.IntegrityError, match="a finished run cannot be changed"):
            connection.execute(
                "INSERT OR REPLACE INTO runs (id, status, created_at, invocation)"
                " VALUES (1, 'failed', 1.0, '{}')"
            )
    finally:
        connection.close()


def test_a_store_of_a_newer_schema_is_not_touched(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    connection = old_store(path, 1)
    connection.execute("UPDATE schema_version SET version = 99")
    connection.close()
    before = path.read_bytes()
    with pytest.raises(Exception, match="newer pytest-rerun-runs"):
        open_store(str(path))
    assert path.read_bytes() == before
    assert not Path(f"{path}-wal").exists()


def test_a_selection_compressed_by_another_version_is_the_same_selection(tmp_path: Path) -> None:
    selection = Selection([SelectedTest(f"test_a.py::t{i}", "test_a.py") for i in range(50)])
    store = open_store(str(tmp_path / "runs.db"))
    try:
        new_run = make_new_run()
        run_id = store.create_run(new_run, selection)
        # An earlier version compressed the selection at another level.
        blob = encode_selection(selection.tests)
        recompressed = zlib.compress(zlib.decompress(blob), 9)
        assert recompressed != blob
        connection = sqlite3.connect(tmp_path / "runs.db")
        with connection:
            connection.execute("UPDATE runs SET selection = ? WHERE id = ?", (recompressed, run_id))
        connection.close()
        assert store.create_run(new_run, selection) == run_id
        assert decode_selection(recompressed) == selection.tests
    finally:
        store.close()


def test_a_selection_is_encoded_with_each_file_once() -> None:
    tests = [SelectedTest("b.py::t", "b.py"), SelectedTest("a.py::t", "a.py")]
    tests += [SelectedTest("b.py::u", "b.py")]
    blob = encode_selection(tests)
    assert json.loads(zlib.decompress(blob)) == {
        "nodeids": ["b.py::t", "a.py::t", "b.py::u"],
        "files": ["b.py", "a.py"],
        "file_of": [0, 1, 0],
    }
    assert decode_selection(blob) == tests
    assert decode_selection(encode_selection([])) == []


@pytest.mark.parametrize(
    "nodeids",
    [
        [],
        [""],
        ["", ""],
        ["a.py::t[x]", "a.py::t[y]"],
        ['a.py::t["]'],
        ['a.py::t[","]', "a.py::u"],
        ["a.py::t[\\]"],
        ["a.py::t[\n]"],
        ["a.py::t[\x7f]"],
        ["a.py::t[\u00e9]"],
        ["a.py::t[\udce9]"],
        ["a.py::t[\u2028]"],
    ],
)
def test_a_selection_is_the_json_that_json_dumps_gives(nodeids: list[str]) -> None:
    # Node ids that need no escaping are joined by hand: the text must be the
    # one every version wrote, whatever the node ids hold.
    tests = [SelectedTest(nodeid, f"f{i % 2}.py") for i, nodeid in enumerate(nodeids)]
    payload = {
        "nodeids": nodeids,
        "files": list(dict.fromkeys(test.file for test in tests)),
        "file_of": [i % 2 for i in range(len(nodeids))],
    }
    blob = encode_selection(tests)
    assert zlib.decompress(blob) == json.dumps(payload, separators=(",", ":")).encode()
    assert decode_selection(blob) == tests


def test_a_decoded_selection_knows_each_node_ids_first_position() -> None:
    tests = [SelectedTest("a.py::t", "a.py"), SelectedTest("b.py::t", "b.py")]
    tests += [SelectedTest("a.py::t", "a.py"), SelectedTest("b.py::u", "b.py")]
    decoded, first = _decoded(encode_selection(tests))
    assert decoded == tuple(tests)
    assert all(type(test) is SelectedTest for test in decoded)
    assert first == {"a.py::t": 0, "b.py::t": 1, "b.py::u": 3}


@pytest.mark.parametrize(
    "payload",
    [
        {"nodeids": ["a.py::t", "a.py::u"], "files": ["a.py"], "file_of": [0]},
        {"nodeids": ["a.py::t"], "files": ["a.py"], "file_of": [1]},
        {"nodeids": ["a.py::t"], "files": ["a.py"], "file_of": ["0"]},
        {"nodeids": [["a.py::t"]], "files": ["a.py"], "file_of": [0]},
        {"nodeids": ["a.py::t"], "file_of": [0]},
        {"nodeids": ["a.py::t"], "files": None, "file_of": [0]},
        {"nodeids": ["a.py::t"], "files": 3, "file_of": [0]},
    ],
)
def test_a_damaged_selection_raises_what_the_stores_read_as_damage(
    payload: dict[str, object],
) -> None:
    blob = zlib.compress(json.dumps(payload).encode())
    with pytest.raises(SELECTION_DAMAGE):
        _decoded(blob)


def test_a_selection_whose_files_are_not_a_list_is_that_runs_damage(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "runs.db"))
    try:
        run_id = store.create_run(make_new_run(), Selection([SelectedTest("a.py::t", "a.py")]))
        payload = {"nodeids": ["a.py::t"], "files": None, "file_of": [0]}
        connection = sqlite3.connect(tmp_path / "runs.db")
        with connection:
            connection.execute(
                "UPDATE runs SET selection = ? WHERE id = ?",
                (zlib.compress(json.dumps(payload).encode()), run_id),
            )
        connection.close()
        with pytest.raises(RunDamaged, match=f"run {run_id} .* is damaged"):
            store.get_run(run_id)
    finally:
        store.close()


def test_unreported_tests_are_found_from_the_results_not_the_counts(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "runs.db"))
    try:
        selection = Selection([SelectedTest(f"a.py::t{i}", "a.py") for i in range(3)])
        run_id = store.create_run(make_new_run(), selection)
        failed = Result("a.py::t0", "failed", "call", position=0)
        store.finish_run(run_id, RunFinish(1, 2.0), [failed])
        # Counts that say every test reported (a store written by an older version
        # kept an imported run's counts from its file) do not hide the two that did not.
        connection = sqlite3.connect(tmp_path / "runs.db")
        with connection:
            connection.execute("DROP TRIGGER finished_runs_are_immutable")
            counts = {"passed": 2, "failed": 1, "not_run": 0}
            connection.execute(
                "UPDATE runs SET counts = ? WHERE id = ?", (json.dumps(counts), run_id)
            )
        connection.close()
        run = store.get_run(run_id, RETRY_OUTCOMES)
        assert [(r.nodeid, r.outcome) for r in run.results] == [
            ("a.py::t0", "failed"),
            ("a.py::t1", "not_run"),
            ("a.py::t2", "not_run"),
        ]
    finally:
        store.close()


def passing(position: int, worker: str | None = None, **fields: Any) -> Result:
    return Result(
        f"a.py::t{position}", "passed", "call", position=position, worker=worker
    )._replace(**fields)


@pytest.mark.parametrize(
    "workers",
    [
        [None, None, None],
        ["gw0", "gw1", "gw0"],
        [None, "gw0", None],
        ['a "quoted" one', "back\\slash", "new\nline"],
        ["\u00e9t\u00e9", "\u2028", "\ud800"],
    ],
)
def test_a_batch_of_passing_results_round_trips(workers: list[str | None]) -> None:
    durations = [(0.0015, 2.5e-7, 12.3456789), (1, 0, 2), (0.1 + 0.2, 1e-6, 0.0000005)]
    results = [
        passing(
            position, worker, setup_duration=setup, call_duration=call, teardown_duration=teardown
        )
        for position, (worker, (setup, call, teardown)) in enumerate(
            zip(workers, durations, strict=True)
        )
    ]
    text = encode_passed(list(zip(*results, strict=True)))
    assert text.isascii()
    assert decode_passed(text, 3) == [
        (
            r.position,
            round(r.setup_duration * 1_000_000),
            round(r.call_duration * 1_000_000),
            round(r.teardown_duration * 1_000_000),
            r.worker,
        )
        for r in results
    ]


@pytest.mark.parametrize(
    "text",
    [
        "{}",
        "[[0, 1, 2]]",
        "[[0, 1, 2, 3, null, 5]]",
        "[[3, 0, 0, 0]]",
        "[[-1, 0, 0, 0]]",
        "[[0.5, 0, 0, 0]]",
        "[[0, 1.5, 0, 0]]",
        '[[0, "1", 0, 0]]',
        "[[0, 0, 0, 0, 7]]",
        "[[true, 0, 0, 0]]",
        "[0]",
        "[[0, 0, 0, 0]",
        "[[0, 0, 0, 0], [0, 1, 1, 1]]",
        f"[[0, {2**63}, 0, 0]]",
        f"[[0, 0, 0, {10**400}]]",
        "[" * 1500 + "]" * 1500,
    ],
)
def test_a_batch_of_passing_results_this_module_did_not_write_is_refused(text: str) -> None:
    with pytest.raises(PASSED_DAMAGE):
        decode_passed(text, 3)


def test_a_session_stores_its_passing_results_a_batch_to_a_row(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "runs.db"))
    try:
        selection = Selection([SelectedTest(f"a.py::t{i}", "a.py") for i in range(6)])
        run_id = store.create_run(make_new_run(), selection)
        store.append_results(run_id, [passing(0), passing(1, "gw0")])
        failed = Result("a.py::t3", "failed", "call", longrepr="no", position=3)
        store.append_results(run_id, [passing(2), failed, passing(4, rerun_attempts=1)])
        store.finish_run(run_id, RunFinish(1, 2.0))
        connection = sqlite3.connect(tmp_path / "runs.db")
        try:
            batches = connection.execute("SELECT results FROM passed_results ORDER BY rowid")
            assert [json.loads(text) for (text,) in batches] == [
                [[0, 0, 0, 0, None], [1, 0, 0, 0, "gw0"]],
                [[2, 0, 0, 0]],
            ]
            rows = connection.execute("SELECT position FROM results ORDER BY position")
            assert rows.fetchall() == [(3,), (4,)]
            view = connection.execute(
                "SELECT position, outcome, worker, rerun_attempts FROM results_view"
                " ORDER BY position"
            )
            assert view.fetchall() == [
                (0, "passed", None, 0),
                (1, "passed", "gw0", 0),
                (2, "passed", None, 0),
                (3, "failed", None, 0),
                (4, "passed", None, 1),
            ]
        finally:
            connection.close()
        run = store.get_run(run_id)
        assert [(r.nodeid, r.outcome, r.worker) for r in run.results] == [
            ("a.py::t0", "passed", None),
            ("a.py::t1", "passed", "gw0"),
            ("a.py::t2", "passed", None),
            ("a.py::t3", "failed", None),
            ("a.py::t4", "passed", None),
            ("a.py::t5", "not_run", None),
        ]
        assert run.summary.counts == {
            **run.summary.counts,
            "passed": 4,
            "failed": 1,
            "not_run": 1,
        }
        assert store.get_outcomes(run_id, ["a.py::t1", "a.py::t3", "a.py::t5"]) == {
            "a.py::t1": "passed",
            "a.py::t3": "failed",
            "a.py::t5": "not_run",
        }
        retried = store.get_run(run_id, RETRY_OUTCOMES)
        assert [(r.nodeid, r.outcome) for r in retried.results] == [
            ("a.py::t3", "failed"),
            ("a.py::t5", "not_run"),
        ]
    finally:
        store.close()


def schema_4_store(path: Path) -> None:
    """A store as pytest-rerun-runs left it before passing results were batched:
    a finished run and a running one, each with a passing result in a row."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.create_function("legacy_uid", 4, legacy_uid, deterministic=True)
    connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    connection.execute("INSERT INTO schema_version VALUES (4)")
    for script in MIGRATIONS[:4]:
        for statement in _split_statements(script):
            connection.execute(statement)
    blob = encode_selection([SelectedTest(f"a.py::t{i}", "a.py") for i in range(3)])
    for run_id, finished_at in ((1, 2.0), (2, None)):
        connection.execute(
            "INSERT INTO runs (id, uid, status, created_at, started_at, invocation, host, pid,"
            " root_run_id, selection, selection_size, last_seen_at)"
            " VALUES (?, ?, 'running', 1.0, 1.0, ?, 'h', 1, ?, ?, 3, 1e12)",
            (run_id, f"uid{run_id}", INVOCATION, run_id, blob),
        )
        connection.execute(
            "INSERT INTO results (run_id, position, outcome, phase, setup_us, call_us,"
            " teardown_us, rerun_attempts) VALUES (?, 0, 0, 1, 1, 2, 3, 0)",
            (run_id,),
        )
        if finished_at is not None:
            connection.execute(
                "UPDATE runs SET status = 'passed', finished_at = ?, counts = ? WHERE id = ?",
                (finished_at, json.dumps({"passed": 1, "not_run": 2}), run_id),
            )
    connection.close()


def test_a_schema_4_store_keeps_its_result_rows_and_batches_new_passing_results(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    schema_4_store(path)
    store = open_store(str(path))
    try:
        assert isinstance(store, SqliteStore)
        assert store.version == SCHEMA_VERSION == 5
        assert [(r.outcome, r.setup_duration) for r in store.get_run(1).results] == [
            ("passed", 1e-6),
            ("not_run", 0.0),
            ("not_run", 0.0),
        ]
        # The running run: its stored position is still taken, the others are new.
        store.append_results(2, [passing(0, setup_duration=9.0), passing(1)])
        store.finish_run(2, RunFinish(1, 2.0), [Result("a.py::t2", "failed", "call", position=2)])
        run = store.get_run(2)
        assert [(r.outcome, r.setup_duration) for r in run.results] == [
            ("passed", 1e-6),
            ("passed", 0.0),
            ("failed", 0.0),
        ]
        assert (run.summary.counts["passed"], run.summary.counts["failed"]) == (2, 1)
    finally:
        store.close()


#: Damaged batches, and whether what is wrong is in the positions, which the
#: readers that need only those check too (the others read only the whole run).
DAMAGED_BATCHES = {
    "[[7, 0, 0, 0]]": True,
    "[[true, 0, 0, 0]]": True,
    '"abc"': True,
    '{"a": 1}': True,
    "[" * 1500 + "]" * 1500: True,
    "not json": True,
    "[[1, 0, 0, 0], [1, 0, 0, 0]]": False,
    "[[1, 0, 0]]": False,
    "[[1, NaN, 0, 0]]": False,
}


@pytest.mark.parametrize(("text", "in_positions"), DAMAGED_BATCHES.items())
def test_a_damaged_batch_of_passing_results_is_that_runs_damage(
    tmp_path: Path, text: str, in_positions: bool
) -> None:
    path = tmp_path / "runs.db"
    store = open_store(str(path))
    try:
        selection = Selection([SelectedTest(f"a.py::t{i}", "a.py") for i in range(2)])
        damaged = store.create_run(make_new_run(), selection)
        whole = store.create_run(make_new_run(), selection)
        store.append_results(whole, [passing(0)])
        connection = sqlite3.connect(path)
        with connection:  # a running run: SQL from elsewhere can still add to it
            connection.execute("INSERT INTO passed_results VALUES (?, ?)", (damaged, text))
        connection.close()
        match = f"run {damaged} .* is damaged"
        with pytest.raises(RunDamaged, match=match):
            store.get_run(damaged)
        with pytest.raises(RunDamaged, match=match):
            store.append_results(damaged, [passing(1)])
        if in_positions:
            with pytest.raises(RunDamaged, match=match):
                store.get_run(damaged, RETRY_OUTCOMES)
            with pytest.raises(RunDamaged, match=match):
                store.get_outcomes(damaged, ["a.py::t1"], only=("passed",))
        assert [r.outcome for r in store.get_run(whole).results] == ["passed", "not_run"]
    finally:
        store.close()
    # Once its session is gone, the damaged run is sealed like any other, and the
    # store takes new runs.
    later = open_store(str(path), stale_after=0.0)
    try:
        assert later.create_run(make_new_run(), selection) == whole + 1
        assert later.get_summary(whole).status == "interrupted"
        with pytest.raises(RunDamaged, match=f"run {damaged} .* is damaged"):
            later.get_run(damaged)
    finally:
        later.close()


def test_a_reader_of_a_schema_4_store_sees_results_batched_after_it_is_migrated(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    schema_4_store(path)
    reader = open_store(str(path), read_only=True)
    writer = open_store(str(path))
    try:
        writer.append_results(2, [passing(1)])
        finished = Result("a.py::t2", "failed", "call", position=2)
        writer.finish_run(2, RunFinish(1, 2.0), [finished])
        run = reader.get_run(2)
        assert [r.outcome for r in run.results] == ["passed", "passed", "failed"]
        assert reader.get_run(2, RETRY_OUTCOMES).results == [finished]
    finally:
        writer.close()
        reader.close()


@pytest.mark.parametrize("worker", [5, float("nan"), ["gw0"]], ids=["an int", "nan", "a list"])
def test_a_passing_result_whose_worker_is_not_text_is_not_batched(
    tmp_path: Path, worker: Any
) -> None:
    store = open_store(str(tmp_path / "runs.db"))
    try:
        selection = Selection([SelectedTest(f"a.py::t{i}", "a.py") for i in range(2)])
        run_id = store.create_run(make_new_run(), selection)
        try:
            store.append_results(run_id, [passing(0, worker), passing(1)])
        except StoreError:
            pass  # refused as a row refuses it; what matters is what is readable
        store.finish_run(run_id, RunFinish(0, 2.0))
        assert [r.outcome for r in store.get_run(run_id).results][1:] in (["passed"], ["not_run"])
        connection = sqlite3.connect(tmp_path / "runs.db")
        try:
            batches = connection.execute("SELECT results FROM passed_results")
            assert all("[0," not in text for (text,) in batches)
        finally:
            connection.close()
    finally:
        store.close()
