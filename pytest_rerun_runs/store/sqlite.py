"""The embedded default store: one SQLite file, WAL, append-only runs.

Layout, chosen so that a passing result costs a few dozen bytes:

* ``runs``: one row per run; the selection is one compressed JSON blob.
* ``results``: one row per reported test, keyed by (run, position in the
  selection); outcome and phase are small integers (``results_view`` spells
  them out), durations are integer microseconds. Results that are not part of
  the selection (collection errors) get positions after it and carry their
  node id.

Triggers make finished runs immutable in the database itself.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import time
import zlib
from collections.abc import Callable, Collection, Iterator, Sequence, Set
from contextlib import contextmanager
from itertools import chain, repeat
from operator import getitem, itemgetter, mul
from pathlib import Path
from typing import Any, NamedTuple

from pytest_rerun_runs.store.errors import (
    AlreadyClaimed,
    ConflictingSelection,
    InvalidLineage,
    InvalidResult,
    NotClaimed,
    NotQueued,
    RunDamaged,
    RunFinished,
    RunNotFound,
    RunsError,
    StoreError,
    StoreNotFound,
    StoreTooNew,
    TokenNotFound,
)
from pytest_rerun_runs.store.model import (
    DEFAULT_STALE_AFTER,
    OUTCOMES,
    PHASES,
    RUN_STATUSES,
    CancelOutcome,
    Counts,
    Invocation,
    NewRun,
    Outcome,
    Result,
    Run,
    RunFinish,
    RunSummary,
    SelectedTest,
    Selection,
    Token,
    check_positions,
    counts_from_groups,
    effective_status,
    imported_results,
    is_settled,
    legacy_uid,
    results_in_selection_order,
    status_from_exit,
)

BUSY_TIMEOUT_SECONDS = 5.0


def _when_not_busy(statement: Callable[[], object], timeout: float = BUSY_TIMEOUT_SECONDS) -> None:
    """Run ``statement`` again while the file is busy, for at most ``timeout``.

    SQLite's busy timeout does not cover every statement: turning a store to WAL
    fails at once while another session reads it, as one that is creating the
    same store does.
    """
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            statement()
            return
        except sqlite3.OperationalError as exc:
            if not str(exc).startswith("database is locked") or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


_RAISE_FINISHED = "SELECT RAISE(ABORT, 'pytest-rerun-runs: a finished run cannot be changed')"

# Frozen with migration 2: the columns a prune may not change.
_UNCHANGED_BY_PRUNE = " AND ".join(
    f"NEW.{column} IS OLD.{column}"
    for column in (
        "id",
        "status",
        "exit_status",
        "created_at",
        "started_at",
        "finished_at",
        "label",
        "meta",
        "invocation",
        "host",
        "pid",
        "source_run_id",
        "root_run_id",
        "attempt",
        "mode",
        "reason",
        "selection_size",
        "deselected",
        "missing",
        "counts",
        "origin",
    )
)

# The columns results_view spells out (migrations 1 and 5 define the view).
_SPELLED_OUTCOME_AND_PHASE = (
    f"CASE outcome {' '.join(f'WHEN {i} THEN {o!r}' for i, o in enumerate(OUTCOMES))} END"
    f" AS outcome, CASE phase {' '.join(f'WHEN {i} THEN {p!r}' for i, p in enumerate(PHASES))}"
    " END AS phase,"
)

MIGRATIONS: list[str] = [
    # 1: the initial schema.
    f"""
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        status TEXT NOT NULL,
        exit_status INTEGER,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        label TEXT,
        meta TEXT NOT NULL DEFAULT '{{}}',
        invocation TEXT NOT NULL,
        host TEXT,
        pid INTEGER,
        source_run_id INTEGER REFERENCES runs (id),
        root_run_id INTEGER,
        attempt INTEGER NOT NULL DEFAULT 1,
        mode TEXT NOT NULL DEFAULT 'full',
        reason TEXT,
        selection BLOB,
        selection_size INTEGER NOT NULL DEFAULT 0,
        deselected INTEGER NOT NULL DEFAULT 0,
        missing TEXT NOT NULL DEFAULT '[]',
        counts TEXT
    );
    CREATE INDEX runs_by_root ON runs (root_run_id);
    CREATE TABLE results (
        run_id INTEGER NOT NULL,
        position INTEGER NOT NULL,
        outcome INTEGER NOT NULL,
        phase INTEGER NOT NULL,
        setup_us INTEGER NOT NULL,
        call_us INTEGER NOT NULL,
        teardown_us INTEGER NOT NULL,
        worker TEXT,
        longrepr TEXT,
        rerun_attempts INTEGER NOT NULL,
        nodeid TEXT,
        file TEXT,
        PRIMARY KEY (run_id, position)
    ) WITHOUT ROWID;
    CREATE TRIGGER finished_runs_are_immutable BEFORE UPDATE ON runs
        WHEN OLD.finished_at IS NOT NULL BEGIN {_RAISE_FINISHED}; END;
    CREATE TRIGGER finished_runs_are_kept BEFORE DELETE ON runs
        WHEN OLD.finished_at IS NOT NULL BEGIN {_RAISE_FINISHED}; END;
    CREATE TRIGGER results_are_append_only BEFORE UPDATE ON results
        BEGIN {_RAISE_FINISHED}; END;
    CREATE TRIGGER results_of_finished_runs_are_kept BEFORE DELETE ON results
        WHEN (SELECT finished_at FROM runs WHERE id = OLD.run_id) IS NOT NULL
        BEGIN {_RAISE_FINISHED}; END;
    CREATE TRIGGER results_only_for_running_runs BEFORE INSERT ON results
        WHEN (SELECT finished_at FROM runs WHERE id = NEW.run_id) IS NOT NULL
        BEGIN {_RAISE_FINISHED}; END;
    CREATE VIEW results_view AS
        SELECT run_id, position, nodeid,
            {_SPELLED_OUTCOME_AND_PHASE}
            (setup_us + call_us + teardown_us) / 1e6 AS duration,
            worker, longrepr, rerun_attempts
        FROM results;
    """,
    # 2: provenance of imported runs; pruning as the one sanctioned change of a
    # finished run (selection and results dropped, everything else kept).
    f"""
    ALTER TABLE runs ADD COLUMN origin TEXT;
    ALTER TABLE runs ADD COLUMN pruned_at REAL;
    DROP TRIGGER finished_runs_are_immutable;
    CREATE TRIGGER finished_runs_are_immutable BEFORE UPDATE ON runs
        WHEN OLD.finished_at IS NOT NULL AND NOT (
            OLD.pruned_at IS NULL AND NEW.pruned_at IS NOT NULL AND NEW.selection IS NULL
            AND {_UNCHANGED_BY_PRUNE}
        ) BEGIN {_RAISE_FINISHED}; END;
    DROP TRIGGER results_of_finished_runs_are_kept;
    CREATE TRIGGER results_of_finished_runs_are_kept BEFORE DELETE ON results
        WHEN (SELECT finished_at IS NOT NULL AND pruned_at IS NULL FROM runs WHERE id = OLD.run_id)
        BEGIN {_RAISE_FINISHED}; END;
    """,
    # 3: the store contract. Runs are keyed by a client-made uid (idempotent
    # creation and imports), liveness is the time of the last write, a queued
    # retry holds its frozen plan; no statement may replace a finished run.
    f"""
    ALTER TABLE runs ADD COLUMN uid TEXT;
    ALTER TABLE runs ADD COLUMN last_seen_at REAL;
    ALTER TABLE runs ADD COLUMN plan TEXT;
    ALTER TABLE runs ADD COLUMN contributors TEXT;
    DROP TRIGGER finished_runs_are_immutable;
    UPDATE runs SET uid = legacy_uid(created_at, host, pid, id);
    CREATE UNIQUE INDEX runs_by_uid ON runs (uid);
    CREATE TRIGGER finished_runs_are_immutable BEFORE UPDATE ON runs
        WHEN OLD.finished_at IS NOT NULL AND NOT (
            OLD.pruned_at IS NULL AND NEW.pruned_at IS NOT NULL AND NEW.selection IS NULL
            AND {_UNCHANGED_BY_PRUNE} AND NEW.uid IS OLD.uid
            AND NEW.last_seen_at IS OLD.last_seen_at AND NEW.plan IS OLD.plan
            AND NEW.contributors IS OLD.contributors
        ) BEGIN {_RAISE_FINISHED}; END;
    CREATE TRIGGER finished_runs_are_not_replaced BEFORE INSERT ON runs
        WHEN EXISTS (
            SELECT 1 FROM runs WHERE (id = NEW.id OR uid = NEW.uid) AND finished_at IS NOT NULL
        ) BEGIN {_RAISE_FINISHED}; END;
    CREATE TRIGGER run_keys_are_permanent BEFORE UPDATE OF id, uid ON runs
        WHEN NEW.id IS NOT OLD.id OR (OLD.uid IS NOT NULL AND NEW.uid IS NOT OLD.uid)
        BEGIN SELECT RAISE(ABORT, 'pytest-rerun-runs: a run keeps its id and uid'); END;
    """,
    # 4: the server. A running run can be asked to stop; tokens (hashed),
    # rate-limit windows and idempotency keys live beside the runs, where every
    # server process sees them.
    f"""
    ALTER TABLE runs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
    DROP TRIGGER finished_runs_are_immutable;
    CREATE TRIGGER finished_runs_are_immutable BEFORE UPDATE ON runs
        WHEN OLD.finished_at IS NOT NULL AND NOT (
            OLD.pruned_at IS NULL AND NEW.pruned_at IS NOT NULL AND NEW.selection IS NULL
            AND {_UNCHANGED_BY_PRUNE} AND NEW.uid IS OLD.uid
            AND NEW.last_seen_at IS OLD.last_seen_at AND NEW.plan IS OLD.plan
            AND NEW.contributors IS OLD.contributors
            AND NEW.cancel_requested IS OLD.cancel_requested
        ) BEGIN {_RAISE_FINISHED}; END;
    CREATE INDEX runs_by_status ON runs (status, id);
    CREATE TABLE tokens (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT,
        token_hash TEXT NOT NULL UNIQUE,
        scopes TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL,
        revoked_at REAL
    );
    CREATE TABLE rate_windows (
        token_id INTEGER NOT NULL,
        window_start INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        PRIMARY KEY (token_id, window_start)
    ) WITHOUT ROWID;
    CREATE TABLE idempotency_keys (
        token_id INTEGER NOT NULL,
        key TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        run_id INTEGER NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (token_id, key)
    ) WITHOUT ROWID;
    """,
    # 5: passing results a batch to a row (most results pass, and a row each cost
    # more than the test it records); every other result keeps a row of its own.
    f"""
    CREATE TABLE passed_results (
        run_id INTEGER NOT NULL,
        results TEXT NOT NULL
    );
    CREATE INDEX passed_results_by_run ON passed_results (run_id);
    CREATE TRIGGER passed_results_are_append_only BEFORE UPDATE ON passed_results
        BEGIN {_RAISE_FINISHED}; END;
    CREATE TRIGGER passed_results_of_finished_runs_are_kept BEFORE DELETE ON passed_results
        WHEN (SELECT finished_at IS NOT NULL AND pruned_at IS NULL FROM runs WHERE id = OLD.run_id)
        BEGIN {_RAISE_FINISHED}; END;
    CREATE TRIGGER passed_results_only_for_running_runs BEFORE INSERT ON passed_results
        WHEN (SELECT finished_at FROM runs WHERE id = NEW.run_id) IS NOT NULL
            OR EXISTS (
                SELECT 1 FROM passed_results AS stored JOIN runs ON runs.id = stored.run_id
                WHERE stored.rowid = NEW.rowid AND runs.finished_at IS NOT NULL
            )
        BEGIN {_RAISE_FINISHED}; END;
    DROP VIEW results_view;
    CREATE VIEW results_view AS
        SELECT run_id, position, nodeid,
            {_SPELLED_OUTCOME_AND_PHASE}
            (setup_us + call_us + teardown_us) / 1e6 AS duration,
            worker, longrepr, rerun_attempts
        FROM results
        UNION ALL
        SELECT run_id, json_extract(result.value, '$[0]') AS position, NULL AS nodeid,
            'passed' AS outcome, 'call' AS phase,
            (json_extract(result.value, '$[1]') + json_extract(result.value, '$[2]')
                + json_extract(result.value, '$[3]')) / 1e6 AS duration,
            json_extract(result.value, '$[4]') AS worker, NULL AS longrepr, 0 AS rerun_attempts
        FROM passed_results, json_each(passed_results.results) AS result;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

#: SQLite's largest integer: a larger run id cannot exist.
_MAX_ID = 2**63 - 1

_OUTCOME_CODE: dict[str, int] = {outcome: code for code, outcome in enumerate(OUTCOMES)}
_PHASE_CODE = {phase: code for code, phase in enumerate(PHASES)}

#: The columns of a run summary, in the order ``_summary`` reads them, with the
#: migration that added each (older stores read NULL for them).
_SUMMARY_COLUMNS: tuple[tuple[str, int], ...] = (
    *(
        (name, 1)
        for name in [
            "id",
            "status",
            "exit_status",
            "created_at",
            "started_at",
            "finished_at",
            "label",
            "meta",
            "invocation",
            "host",
            "pid",
            "source_run_id",
            "root_run_id",
            "attempt",
            "mode",
            "reason",
            "selection_size",
            "deselected",
            "missing",
            "counts",
        ]
    ),
    ("origin", 2),
    ("pruned_at", 2),
    ("uid", 3),
    ("last_seen_at", 3),
    ("plan", 3),
    ("contributors", 3),
    ("cancel_requested", 4),
)
_SQLITE_HEADER = b"SQLite format 3\x00"
#: An empty file of one of these names may become a new store; any other
#: existing file must already be one.
_STORE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def summary_columns(version: int) -> str:
    """The summary columns of a store at schema ``version``."""
    return ", ".join(
        name if added <= version else f"NULL AS {name}" for name, added in _SUMMARY_COLUMNS
    )


#: What JSON escapes: quote, backslash, control characters, DEL and (as ``json.dumps``
#: writes ASCII) every byte of a character beyond ASCII.
_ESCAPED_IN_JSON = bytes([*range(0x20), ord('"'), ord("\\"), *range(0x7F, 0x100)])


def encode_selection(tests: Sequence[SelectedTest]) -> bytes:
    """The selection as compressed JSON: its node ids, its files once each, and
    the file of each node id.

    A session of many tests pays this when collection ends, so it is built
    without a Python step per test: node ids in which JSON escapes nothing
    (printable ASCII without quote or backslash, as pytest's own are) are joined
    as they are, which is the text ``json.dumps`` writes; level 1 compresses it
    in half the time of level 5, a fifth larger.
    """
    nodeids = list(map(itemgetter(0), tests))
    names = list(map(itemgetter(1), tests))
    files = list(dict.fromkeys(names))
    index = {file: number for number, file in enumerate(files)}
    file_of = list(map(index.__getitem__, names))
    joined = '","'.join(nodeids).encode("utf-8", "surrogatepass")
    # Of the bytes JSON would escape, only the quotes of the separators may be here.
    if nodeids and len(joined.translate(None, _ESCAPED_IN_JSON)) == len(joined) - 2 * (
        len(nodeids) - 1
    ):
        compact = (",", ":")
        return zlib.compress(
            b'{"nodeids":["%s"],"files":%s,"file_of":%s}'
            % (
                joined,
                json.dumps(files, separators=compact).encode(),
                json.dumps(file_of, separators=compact).encode(),
            ),
            1,
        )
    payload = {"nodeids": nodeids, "files": files, "file_of": file_of}
    return zlib.compress(json.dumps(payload, separators=(",", ":")).encode(), 1)


#: Results without a worker, a text or a place outside the selection, inserted
#: by one statement of this many rows (a statement per row costs its own step).
_ROWS_PER_INSERT = 50
_COMMON_COLUMNS = 8


@functools.cache
def _insert_statement(worker: bool, longrepr: bool, outside: bool, rows: int = 1) -> str:
    """The insert of ``rows`` results that have a worker, a text, a place outside the
    selection (node id and file stored), or not."""
    columns = "run_id, position, outcome, phase, setup_us, call_us, teardown_us, rerun_attempts"
    columns += ", worker" * worker + ", longrepr" * longrepr + ", nodeid, file" * outside
    marks = "(" + ", ".join("?" * (columns.count(",") + 1)) + ")"
    return f"INSERT OR IGNORE INTO results ({columns}) VALUES {', '.join([marks] * rows)}"


#: Bounds of an SQLite integer, which a duration in a row of ``results`` must fit too.
_INTEGER_RANGE = (-(2**63), 2**63 - 1)


def _microseconds(seconds: Sequence[float]) -> list[int]:
    try:
        micro = list(map(float.__round__, map(mul, seconds, repeat(1_000_000))))
    except TypeError:  # durations that are not all floats (an int from elsewhere)
        micro = list(map(round, map(mul, seconds, repeat(1_000_000))))
    if micro and (min(micro) < _INTEGER_RANGE[0] or max(micro) > _INTEGER_RANGE[1]):
        raise OverflowError("a duration is too large to store")
    return micro


def encode_passed(columns: Sequence[Sequence[Any]]) -> str:
    """Passing results, given as the columns of their :class:`Result` tuples, as the
    JSON ``passed_results`` holds: ``[[position, setup_us, call_us, teardown_us], ...]``,
    with the worker fifth where any result has one.

    A session of many tests pays this for each of them, so it is built without a
    Python step per result: the numbers are integers, which ``%d`` spells as JSON
    does, and each distinct worker is spelled once by ``json.dumps``.
    """
    positions, workers = columns[10], columns[6]
    count = len(positions)
    durations = [_microseconds(column) for column in columns[3:6]]
    if workers.count(None) == count:
        fields: Iterator[Any] = chain.from_iterable(zip(positions, *durations, strict=True))
        return "[" + ("[%d,%d,%d,%d]," * count % tuple(fields))[:-1] + "]"
    spelled = {worker: json.dumps(worker) for worker in set(workers)}
    spelled_workers = map(spelled.__getitem__, workers)
    fields = chain.from_iterable(zip(positions, *durations, spelled_workers, strict=True))
    return "[" + ("[%d,%d,%d,%d,%s]," * count % tuple(fields))[:-1] + "]"


#: What a worker of a result stored in a batch may be (any other goes to a row).
_WORKER_TYPES = frozenset({str, type(None)})

#: What decoding a damaged batch of passing results raises.
PASSED_DAMAGE = (ValueError, TypeError, KeyError, IndexError, RecursionError)


def decode_passed(text: str, size: int) -> list[tuple[int, int, int, int, str | None]]:
    """The rows of one ``passed_results`` batch, checked: one of
    :data:`PASSED_DAMAGE` for anything this module would not have written."""
    low, high = _INTEGER_RANGE
    rows = json.loads(text)
    if type(rows) is not list:
        raise ValueError("passed results are not a list")
    decoded = []
    for row in rows:
        if type(row) is not list or not 4 <= len(row) <= 5:
            raise ValueError(f"a passed result is {row!r}")
        position, setup, call, teardown = row[:4]
        worker = row[4] if len(row) == 5 else None
        if not (
            type(position) is int
            and 0 <= position < size
            and type(setup) is int
            and type(call) is int
            and type(teardown) is int
            and low <= min(setup, call, teardown)
            and max(setup, call, teardown) <= high
            and (worker is None or type(worker) is str)
        ):
            raise ValueError(f"a passed result is {row!r}")
        decoded.append((position, setup, call, teardown, worker))
    if len({row[0] for row in decoded}) < len(decoded):
        raise ValueError("a position is given twice")
    return decoded


def same_selection(stored: bytes, blob: bytes) -> bool:
    """Whether two encoded selections hold the same tests (compared uncompressed:
    another version may have compressed them at another level)."""
    return stored == blob or zlib.decompress(stored) == zlib.decompress(blob)


def decode_selection(blob: bytes | None) -> list[SelectedTest]:
    if not blob:
        return []
    return list(_decoded(blob)[0])


#: What decoding a damaged selection raises (``_decoded``): that run's damage alone.
SELECTION_DAMAGE = (ValueError, TypeError, KeyError, IndexError, zlib.error)


@functools.lru_cache(maxsize=8)
def _decoded(blob: bytes) -> tuple[tuple[SelectedTest, ...], dict[str, int]]:
    """A selection and each node id's first position. Runs of one suite share
    their selection, so reading many runs decodes it once."""
    payload = json.loads(zlib.decompress(blob))
    nodeids = payload["nodeids"]
    # Built without a Python frame per test: a retry of a few failures decodes
    # its source's whole selection, and should cost what the failures cost.
    files = map(getitem, repeat(payload["files"]), payload["file_of"])
    tests = tuple(map(tuple.__new__, repeat(SelectedTest), zip(nodeids, files, strict=True)))
    # Filled from the end, so that a node id selected twice keeps its first position.
    first = dict(zip(reversed(nodeids), range(len(nodeids) - 1, -1, -1), strict=True))
    return tests, first


class _StoredPositions:
    """The positions of a run that hold a result, as of ``rows`` rows of
    ``results`` and ``batches`` rows of ``passed_results``."""

    __slots__ = ("batches", "positions", "rows")

    def __init__(self, rows: int, batches: int, positions: set[int]) -> None:
        self.rows = rows
        self.batches = batches
        self.positions = positions


class _Added(NamedTuple):
    """What one insert stored."""

    positions: Collection[int]
    rows: int
    batches: int


def connect(
    location: str,
    *,
    create: bool = True,
    read_only: bool = False,
    stale_after: float = DEFAULT_STALE_AFTER,
) -> SqliteStore:
    """The backend's entry point for :func:`~pytest_rerun_runs.store.open_store`."""
    path = location[len("sqlite://") :] if location.startswith("sqlite://") else location
    return SqliteStore(path, create=create, read_only=read_only, stale_after=stale_after)


class SqliteStore:
    """:class:`~pytest_rerun_runs.store.RunStore` on one SQLite file.

    Writers open it read-write (creating it, private to the user, if asked) and
    migrate its schema forward; readers open it read-only and never change it,
    whatever its schema version or journal mode.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        create: bool = True,
        read_only: bool = False,
        stale_after: float = DEFAULT_STALE_AFTER,
    ) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self.stale_after = stale_after
        self.read_only = read_only
        #: Runs ``list_runs`` could not read, with why.
        self.damaged: list[RunsError] = []
        #: Node ids of the selection of each run this object writes to.
        self._selections: dict[int, list[str]] = {}
        #: The positions stored of each run this object writes to.
        self._positions: dict[int, _StoredPositions] = {}
        existed = self._check_file(create and not read_only)
        self._connection = self._connect(create=create and not read_only, read_only=read_only)
        try:
            if not read_only and (not existed or self.path.stat().st_size == 0):
                os.chmod(self.path, 0o600)  # failure texts often hold secrets
            self.version = self._open_schema()
            self._summary_columns = summary_columns(self.version)
        except BaseException:
            self._connection.close()
            raise

    #: Whether a run's pid on this host tells whether it is alive. A server's store
    #: turns this off: its clients' pids are not its own (another container, a
    #: process that spooled its run), so only their last write tells.
    check_pids = True

    def _host(self, host: str | None) -> str | None:
        return host if self.check_pids else None

    # -- connection and schema ------------------------------------------------

    def _check_file(self, create: bool) -> bool:
        """Whether the file exists; an existing one must look like a run store
        before anything opens it (an empty file only with a store's name)."""
        try:
            with self.path.open("rb") as file:
                header = file.read(len(_SQLITE_HEADER))
        except FileNotFoundError:
            if not create:
                raise StoreNotFound(f"no run store at {self.location}") from None
            return False
        except OSError as exc:
            raise StoreError(f"cannot open run store {self.location}: {exc}") from exc
        if header == _SQLITE_HEADER:
            return True
        if not header and create and self.path.suffix in _STORE_SUFFIXES:
            return True
        what = "an empty file" if not header else "not an SQLite database"
        raise StoreError(f"{self.location} is not a run store ({what}); it was left untouched")

    def _connect(self, *, create: bool, read_only: bool) -> sqlite3.Connection:
        def open_uri(parameters: str) -> sqlite3.Connection:
            return sqlite3.connect(
                f"{self.path.resolve().as_uri()}?{parameters}",
                uri=True,
                timeout=BUSY_TIMEOUT_SECONDS,
                isolation_level=None,
                check_same_thread=False,
            )

        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            if not read_only:
                return open_uri("mode=rwc" if create else "mode=rw")
            connection = open_uri("mode=ro")
            try:
                connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.OperationalError:
                connection.close()
                if Path(f"{self.path}-wal").exists():
                    raise
                # A WAL store in a directory this user cannot write: with no
                # -wal file left, the file itself holds everything.
                connection = open_uri("mode=ro&immutable=1")
            return connection
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open run store {self.location}: {exc}") from exc

    def _open_schema(self) -> int:
        """The schema version, after migrating a writable store forward."""
        with self._errors("open"):
            connection = self._connection
            # What the file is, before any statement that could change it, read
            # in one transaction: a store another session is creating is seen
            # either empty or whole.
            connection.execute("BEGIN")
            try:
                version = self._schema_version()
                has_tables = bool(
                    connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                )
            finally:
                if connection.in_transaction:
                    connection.execute("COMMIT")
            if version > SCHEMA_VERSION:
                raise StoreTooNew(
                    f"run store {self.location} was written by a newer pytest-rerun-runs"
                    f" (schema {version}, this version knows {SCHEMA_VERSION}); upgrade"
                    " pytest-rerun-runs to use it",
                    schema=version,
                    known=SCHEMA_VERSION,
                )
            if version == 0 and has_tables:
                raise StoreError(
                    f"{self.location} is an SQLite database but not a run store;"
                    " it was left untouched"
                )
            if self.read_only:
                if version == 0:
                    raise StoreError(f"{self.location} is not a run store (an empty database)")
                return version
            if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                _when_not_busy(lambda: connection.execute("PRAGMA journal_mode=WAL"))
            connection.execute("PRAGMA synchronous=NORMAL")
            if version == SCHEMA_VERSION:
                return version
            # Migration 3 gives runs recorded before uids existed the uid their
            # exports carry.
            connection.create_function("legacy_uid", 4, legacy_uid, deterministic=True)
            with self.transaction():
                version = self._schema_version()
                if version == 0:
                    connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                    connection.execute("INSERT INTO schema_version VALUES (0)")
                for number in range(version, SCHEMA_VERSION):
                    for statement in _split_statements(MIGRATIONS[number]):
                        connection.execute(statement)
                connection.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
            return SCHEMA_VERSION

    def _schema_version(self) -> int:
        exists = self._connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if not exists:
            return 0
        row = self._connection.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            return 0
        if not isinstance(row[0], int) or row[0] < 0:
            raise StoreError(
                f"run store {self.location} is damaged: its schema version is {row[0]!r};"
                " it was left untouched"
            )
        return row[0]

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot {action} run store {self.location}: {exc}") from exc

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction; every write goes through here."""
        if self.read_only:
            raise StoreError(f"run store {self.location} was opened read-only")
        connection = self._connection
        with self._errors("write"):
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def close(self) -> None:
        self._connection.close()

    # -- writing --------------------------------------------------------------

    def find_run(self, uid: str) -> int | None:
        if self.version < 3:
            return None
        with self._errors("read"):
            row = self._connection.execute("SELECT id FROM runs WHERE uid = ?", (uid,)).fetchone()
        return None if row is None else int(row[0])

    def _existing(self, connection: sqlite3.Connection, uid: str, blob: bytes) -> int | None:
        row = connection.execute("SELECT id, selection FROM runs WHERE uid = ?", (uid,)).fetchone()
        if row is None:
            return None
        run_id, stored = row
        if stored is not None and not same_selection(stored, blob):
            raise ConflictingSelection(
                f"run {run_id} (uid {uid}) exists with another selection", run_id=run_id
            )
        return int(run_id)

    def create_run(self, new_run: NewRun, selection: Selection) -> int:
        inv = new_run.invocation
        blob = encode_selection(selection.tests)
        queued = new_run.status == "queued"
        with self.transaction() as connection:
            existing = self._existing(connection, new_run.uid, blob)
            if existing is not None:
                return existing
            self._check_lineage(connection, new_run)
            self._probe(connection)
            self._seal_stale_runs(connection)
            cursor = connection.execute(
                "INSERT INTO runs (uid, status, created_at, started_at, last_seen_at, label,"
                " meta, invocation, host, pid, source_run_id, root_run_id, attempt, mode,"
                " reason, plan, selection, selection_size, deselected, missing, contributors)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    new_run.uid,
                    new_run.status,
                    new_run.created_at,
                    None if queued else new_run.started_at,
                    None if queued else time.time(),
                    new_run.label,
                    json.dumps(new_run.meta),
                    json.dumps(inv.to_dict()),
                    None if queued else inv.host,
                    None if queued else inv.pid,
                    new_run.source_run_id,
                    new_run.root_run_id,
                    new_run.attempt,
                    new_run.mode,
                    new_run.reason,
                    None if new_run.plan is None else json.dumps(new_run.plan),
                    blob,
                    len(selection.tests),
                    selection.deselected,
                    json.dumps(selection.missing),
                    json.dumps(list(new_run.contributors)) if new_run.contributors else None,
                ),
            )
            run_id = cursor.lastrowid
            assert run_id is not None
            if new_run.root_run_id is None:
                connection.execute("UPDATE runs SET root_run_id = id WHERE id = ?", (run_id,))
        # The writer of a run checks its results against this selection: it has it.
        self._remember_selection(run_id, [test.nodeid for test in selection.tests])
        return run_id

    def _remember_selection(self, run_id: int, nodeids: list[str]) -> None:
        """Keep the selections of the few runs this object writes to (a server's
        thread writes to many runs over its life: the oldest are forgotten)."""
        self._selections[run_id] = nodeids
        while len(self._selections) > 16:
            del self._selections[next(iter(self._selections))]

    def _check_lineage(self, connection: sqlite3.Connection, new_run: NewRun) -> None:
        source, root = new_run.source_run_id, new_run.root_run_id
        if source is None:
            if root is not None:
                raise InvalidLineage(
                    f"run root {root} given without a source run", root_run_id=root
                )
            return
        row = connection.execute(
            "SELECT coalesce(root_run_id, id) FROM runs WHERE id = ?", (min(source, _MAX_ID),)
        ).fetchone()
        if row is None:
            raise InvalidLineage(
                f"source run {source} is not in {self.location}", source_run_id=source
            )
        if root is not None and root != row[0]:
            raise InvalidLineage(
                f"run {source}'s root is run {row[0]}, not {root}",
                source_run_id=source,
                root_run_id=root,
            )

    @staticmethod
    def _probe(connection: sqlite3.Connection) -> None:
        """Read the pages a new run writes to (the right edge of both tables), so
        that a damaged store fails here, before it gets a run it cannot finish."""
        connection.execute("SELECT max(id) FROM runs").fetchone()
        connection.execute(
            "SELECT run_id, position FROM results ORDER BY run_id DESC, position DESC LIMIT 1"
        ).fetchone()
        connection.execute("SELECT max(rowid) FROM passed_results").fetchone()

    def _seal_stale_runs(self, connection: sqlite3.Connection) -> None:
        """Finish, as ``interrupted``, the runs whose sessions are gone: they can
        never finish themselves, and a finished run is immutable and prunable."""
        now = time.time()
        candidates = connection.execute(
            "SELECT id, status, last_seen_at, started_at, created_at, host, pid, selection_size"
            " FROM runs WHERE finished_at IS NULL AND status = 'running'"
        ).fetchall()
        for run_id, status, seen, started_at, created_at, host, pid, size in candidates:
            last_seen = _last_seen(seen, started_at, created_at)
            live = effective_status(
                status, last_seen, self._host(host), pid, now=now, stale_after=self.stale_after
            )
            if live == "interrupted":
                try:
                    counts: str | None = json.dumps(self._live_counts(run_id, size))
                except RunDamaged:
                    counts = None  # its readers report the damage; other runs go on
                connection.execute(
                    "UPDATE runs SET status = 'interrupted', finished_at = ?, counts = ?"
                    " WHERE id = ? AND finished_at IS NULL",
                    (last_seen, counts, run_id),
                )

    def claim_run(self, run_id: int, invocation: Invocation, started_at: float) -> RunSummary:
        with self.transaction() as connection:
            claimed = connection.execute(
                "UPDATE runs SET status = 'running', invocation = ?, host = ?, pid = ?,"
                " started_at = ?, last_seen_at = ? WHERE id = ? AND status = 'queued'",
                (
                    json.dumps(invocation.to_dict()),
                    invocation.host,
                    invocation.pid,
                    started_at,
                    time.time(),
                    run_id,
                ),
            ).rowcount
            if not claimed:
                row = connection.execute(
                    "SELECT plan, host, status FROM runs WHERE id = ?", (run_id,)
                ).fetchone()
                if row is None:
                    raise RunNotFound(f"run {run_id} not found in {self.location}", run_id=run_id)
                plan, host, status = row
                if plan is None:
                    raise NotQueued(f"run {run_id} is not a queued retry", run_id=run_id)
                # The same session claiming again (a retried request) holds it already.
                mine = connection.execute(
                    "SELECT 1 FROM runs WHERE id = ? AND host IS ? AND pid IS ?"
                    " AND finished_at IS NULL",
                    (run_id, invocation.host, invocation.pid),
                ).fetchone()
                if mine is None:
                    raise AlreadyClaimed(
                        f"run {run_id} was already claimed by {host or 'another session'}"
                        f" (it is {status})",
                        run_id=run_id,
                        host=host,
                    )
        return self.get_summary(run_id)

    def _open_run(
        self, connection: sqlite3.Connection, run_id: int, results: Sequence[Result]
    ) -> tuple[int, _StoredPositions | None]:
        """(selection size, positions stored) of ``run_id``, with ``results`` checked
        against its selection; for a finished run, ``None`` once ``results`` are
        found stored already (a repeated write): new ones are refused."""
        for result in results:
            if result.position < 0:
                raise InvalidResult(
                    f"result for {result.nodeid} has no position in run {run_id}", run_id=run_id
                )
        row = connection.execute(
            "SELECT selection_size, finished_at, status FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
        if row is None:
            raise RunNotFound(f"run {run_id} not found in {self.location}", run_id=run_id)
        size, finished_at, status = row
        if status == "queued":
            raise NotClaimed(f"run {run_id} is queued: claim it before recording", run_id=run_id)
        stored = self._stored_positions(connection, run_id, int(size))
        if finished_at is None:
            check_positions(run_id, self._selection_nodeids(connection, run_id), results)
            return int(size), stored
        if any(result.position not in stored.positions for result in results):
            raise RunFinished(f"run {run_id} is finished and cannot change", run_id=run_id)
        return int(size), None

    def _stored_positions(
        self, connection: sqlite3.Connection, run_id: int, size: int
    ) -> _StoredPositions:
        """The positions of ``run_id`` that hold a result. This object remembers
        them between its writes to a run, for as long as no one else writes to it."""
        rows, batches = connection.execute(
            "SELECT (SELECT count(*) FROM results WHERE run_id = ?1),"
            " (SELECT count(*) FROM passed_results WHERE run_id = ?1)",
            (run_id,),
        ).fetchone()
        known = self._positions.get(run_id)
        if known is not None and (known.rows, known.batches) == (rows, batches):
            return known
        positions = {
            position
            for (position,) in connection.execute(
                "SELECT position FROM results WHERE run_id = ?", (run_id,)
            )
        }
        positions.update(map(itemgetter(0), self._passed_of(run_id, size)))
        return _StoredPositions(rows, batches, positions)

    def _remember_positions(self, run_id: int, stored: _StoredPositions, added: _Added) -> None:
        """After a write's commit: what it stored is stored."""
        stored.positions.update(added.positions)
        stored.rows += added.rows
        stored.batches += added.batches
        self._positions[run_id] = stored
        while len(self._positions) > 16:
            del self._positions[next(iter(self._positions))]

    def _selection_nodeids(self, connection: sqlite3.Connection, run_id: int) -> list[str]:
        nodeids = self._selections.get(run_id)
        if nodeids is None:
            (blob,) = connection.execute(
                "SELECT selection FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            nodeids = [t.nodeid for t in decode_selection(blob)]
            self._remember_selection(run_id, nodeids)
        return nodeids

    @staticmethod
    def _insert(
        connection: sqlite3.Connection,
        run_id: int,
        results: Sequence[Result],
        size: int,
        stored: Set[int],
    ) -> _Added:
        """Insert the ``results`` whose position holds no result yet (of a position
        given twice, the first result stands): the passing ones as one row of
        ``passed_results``, every other one in a row of its own.

        A batch in which every result passed, in the call phase, without a text or
        a rerun, inside the selection and at a new position (nearly every batch of
        a session) is checked and written without a Python step per result.
        """
        if not results:
            return _Added([], 0, 0)
        columns = list(zip(*results, strict=True))
        positions = columns[10]
        count = len(positions)
        if (
            columns[1].count("passed") == count
            and columns[2].count("call") == count
            and columns[7].count(None) == count
            and columns[8].count(0) == count
            and min(positions) >= 0
            and max(positions) < size
            and len(set(positions)) == count
            and stored.isdisjoint(positions)
            and _WORKER_TYPES.issuperset(map(type, columns[6]))
        ):
            connection.execute(
                "INSERT INTO passed_results (run_id, results) VALUES (?, ?)",
                (run_id, encode_passed(columns)),
            )
            return _Added(positions, 0, 1)
        taken: set[int] = set()
        passing: list[Result] = []
        others: list[Result] = []
        for result in results:
            position = result.position
            if position in taken or position in stored:
                continue
            taken.add(position)
            if (
                result.outcome == "passed"
                and result.when == "call"
                and result.longrepr is None
                and result.rerun_attempts == 0
                and position < size
                and type(result.worker) in _WORKER_TYPES
            ):
                passing.append(result)
            else:
                others.append(result)
        if passing:
            connection.execute(
                "INSERT INTO passed_results (run_id, results) VALUES (?, ?)",
                (run_id, encode_passed(list(zip(*passing, strict=True)))),
            )
        if others:
            SqliteStore._insert_rows(connection, run_id, others, size)
        return _Added(taken, len(others), 1 if passing else 0)

    @staticmethod
    def _insert_rows(
        connection: sqlite3.Connection, run_id: int, results: Sequence[Result], size: int
    ) -> None:
        """Insert ``results``, a row each, at positions that hold none.

        Columns left NULL are not bound: binding ``None`` costs Python's sqlite3
        module a failed adapter lookup, and most results have no worker, no text,
        and (inside the selection, which names them) no node id or file. Those
        common results go :data:`_ROWS_PER_INSERT` to a statement.
        """
        outcome_code, phase_code = _OUTCOME_CODE, _PHASE_CODE
        common: list[Any] = []
        groups: dict[tuple[bool, bool, bool], list[tuple[Any, ...]]] = {}
        for (
            nodeid,
            outcome,
            when,
            setup,
            call,
            teardown,
            worker,
            longrepr,
            rerun_attempts,
            file,
            position,
        ) in results:
            row: tuple[Any, ...] = (
                run_id,
                position,
                outcome_code[outcome],
                phase_code[when],
                round(setup * 1_000_000),
                round(call * 1_000_000),
                round(teardown * 1_000_000),
                rerun_attempts,
            )
            outside = position >= size
            if worker is None and longrepr is None and not outside:
                common += row
                continue
            if worker is not None:
                row += (worker,)
            if longrepr is not None:
                row += (longrepr,)
            if outside:
                row += (nodeid, file or nodeid.split("::")[0])
            key = (worker is not None, longrepr is not None, outside)
            group = groups.get(key)
            if group is None:
                group = groups[key] = []
            group.append(row)
        if common:
            width = _ROWS_PER_INSERT * _COMMON_COLUMNS
            whole = len(common) - len(common) % width
            if whole:
                connection.executemany(
                    _insert_statement(False, False, False, _ROWS_PER_INSERT),
                    [common[start : start + width] for start in range(0, whole, width)],
                )
            if whole < len(common):
                rest = common[whole:]
                connection.execute(
                    _insert_statement(False, False, False, len(rest) // _COMMON_COLUMNS), rest
                )
        for key, rows in groups.items():
            connection.executemany(_insert_statement(*key), rows)

    def append_results(self, run_id: int, results: Sequence[Result]) -> None:
        if not results:
            return
        with self.transaction() as connection:
            size, stored = self._open_run(connection, run_id, results)
            if stored is None:
                return
            added = self._insert(connection, run_id, results, size, stored.positions)
            connection.execute(
                "UPDATE runs SET last_seen_at = ? WHERE id = ?", (time.time(), run_id)
            )
        self._remember_positions(run_id, stored, added)

    def finish_run(self, run_id: int, finish: RunFinish, results: Sequence[Result] = ()) -> None:
        with self.transaction() as connection:
            size, stored = self._open_run(connection, run_id, results)
            if stored is None:
                return
            self._insert(connection, run_id, results, size, stored.positions)
            counts = self._live_counts(run_id, size)
            assignments = [
                "status = ?",
                "exit_status = ?",
                "finished_at = ?",
                "last_seen_at = ?",
                "counts = ?",
            ]
            values: list[Any] = [
                finish.status or status_from_exit(finish.exit_status),
                finish.exit_status,
                finish.finished_at,
                time.time(),
                json.dumps(counts),
            ]
            if finish.deselected is not None:
                assignments.append("deselected = ?")
                values.append(finish.deselected)
            if finish.mode is not None:
                assignments.append("mode = ?")
                values.append(finish.mode)
            if finish.missing is not None:
                assignments.append("missing = ?")
                values.append(json.dumps(finish.missing))
            connection.execute(
                f"UPDATE runs SET {', '.join(assignments)} WHERE id = ?", (*values, run_id)
            )
        self._selections.pop(run_id, None)
        self._positions.pop(run_id, None)

    # -- reading --------------------------------------------------------------

    def _live_counts(self, run_id: int, selection_size: int) -> Counts:
        groups = self._connection.execute(
            "SELECT outcome, position < ?, count(*) FROM results WHERE run_id = ?"
            " GROUP BY outcome, position < ?",
            (selection_size, run_id, selection_size),
        )
        counted = [(OUTCOMES[o], bool(inside), n) for o, inside, n in groups]
        counted.append(("passed", True, self._passed_count(run_id)))
        return counts_from_groups(selection_size, counted)

    def _passed_count(self, run_id: int) -> int:
        """How many passing results of ``run_id`` are stored a batch to a row."""
        if not self._has_passed_results():
            return 0
        try:
            (passed,) = self._connection.execute(
                "SELECT coalesce(sum(json_array_length(results)), 0) FROM passed_results"
                " WHERE run_id = ?",
                (run_id,),
            ).fetchone()
        except sqlite3.OperationalError as exc:  # malformed JSON
            raise self._damaged(run_id, exc) from None
        return int(passed)

    def _damaged(self, run_id: int, reason: object) -> RunDamaged:
        return RunDamaged(
            f"run {run_id} in {self.location} is damaged ({reason}); other runs are readable",
            run_id=run_id,
        )

    def _passed_positions(self, run_id: int, size: int) -> list[int]:
        """The positions of the passing results of ``run_id`` stored a batch to a row,
        checked without a Python step per result (the readers that need only these
        look at many runs)."""
        if not self._has_passed_results():
            return []
        positions: list[int] = []
        for (text,) in self._connection.execute(
            "SELECT results FROM passed_results WHERE run_id = ?", (run_id,)
        ):
            try:
                rows = json.loads(text)
                if type(rows) is not list or not {list}.issuperset(map(type, rows)):
                    raise ValueError("passed results are not a list of lists")
                batch = list(map(itemgetter(0), rows))
                if batch and (
                    not {int}.issuperset(map(type, batch))
                    or min(batch) < 0
                    or max(batch) >= size
                    or len(set(batch)) < len(batch)
                ):
                    raise ValueError("a passed result has no position of the selection")
            except PASSED_DAMAGE as exc:
                raise self._damaged(run_id, exc) from None
            positions += batch
        return positions

    def _has_passed_results(self) -> bool:
        """Whether the store has ``passed_results``: from schema 5, and in a store
        opened read-only at an older one, once another process has migrated it."""
        if self.version < 5:
            row = self._connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'passed_results'"
            ).fetchone()
            if row is None:
                return False
            self.version = 5
            self._summary_columns = summary_columns(5)
        return True

    def _passed_of(self, run_id: int, size: int) -> list[tuple[int, int, int, int, str | None]]:
        """The passing results of ``run_id`` stored a batch to a row, in the order
        they were written."""
        if not self._has_passed_results():
            return []
        passed = []
        for (text,) in self._connection.execute(
            "SELECT results FROM passed_results WHERE run_id = ? ORDER BY rowid", (run_id,)
        ):
            try:
                passed += decode_passed(text, size)
            except PASSED_DAMAGE as exc:
                raise self._damaged(run_id, exc) from None
        return passed

    def _summary(self, row: sqlite3.Row | tuple[Any, ...], now: float) -> RunSummary:
        try:
            return _checked_summary(self._decode_summary(row, now))
        except (ValueError, TypeError, KeyError, AttributeError, zlib.error) as exc:
            raise self._damaged(row[0], exc) from None

    def _decode_summary(self, row: sqlite3.Row | tuple[Any, ...], now: float) -> RunSummary:
        (
            run_id,
            status,
            exit_status,
            created_at,
            started_at,
            finished_at,
            label,
            meta,
            invocation,
            host,
            pid,
            source_run_id,
            root_run_id,
            attempt,
            mode,
            reason,
            selection_size,
            deselected,
            missing,
            counts,
            origin,
            pruned_at,
            uid,
            last_seen_at,
            plan,
            contributors,
            cancel_requested,
        ) = row
        return RunSummary(
            id=run_id,
            status=effective_status(
                status,
                _last_seen(last_seen_at, started_at, created_at),
                self._host(host),
                pid,
                now=now,
                stale_after=self.stale_after,
            ),
            exit_status=exit_status,
            created_at=created_at,
            started_at=started_at,
            finished_at=finished_at,
            label=label,
            meta=json.loads(meta),
            source_run_id=source_run_id,
            root_run_id=root_run_id if root_run_id is not None else run_id,
            attempt=attempt,
            mode=mode,
            reason=reason,
            counts=json.loads(counts) if counts else self._live_counts(run_id, selection_size),
            invocation=Invocation.from_dict(json.loads(invocation)),
            deselected=deselected,
            missing=json.loads(missing),
            origin=json.loads(origin) if origin else None,
            pruned_at=pruned_at,
            uid=uid if uid is not None else legacy_uid(created_at, host, pid, run_id),
            last_seen_at=last_seen_at,
            plan=json.loads(plan) if plan else None,
            contributors=tuple(json.loads(contributors)) if contributors else (),
            cancel_requested=bool(cancel_requested),
        )

    def get_summary(self, run_id: int) -> RunSummary:
        if not 0 < run_id <= _MAX_ID:
            raise RunNotFound(f"run {run_id} not found in {self.location}", run_id=run_id)
        with self._errors("read"):
            row = self._connection.execute(
                f"SELECT {self._summary_columns} FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            if row is None:
                newest = self.latest_run_id()
                hint = f"the newest is {newest}" if newest is not None else "it holds no runs"
                raise RunNotFound(
                    f"run {run_id} not found in {self.location} ({hint})", run_id=run_id
                )
            return self._summary(row, time.time())

    def get_run(self, run_id: int, outcomes: Collection[str] | None = None) -> Run:
        """The whole run; a pruned run has its summary and no selection or results.

        With ``outcomes``, only the results with those outcomes (a retry plan needs
        the few failures of a large run, not all of its results).
        """
        summary = self.get_summary(run_id)
        query = (
            "SELECT position, nodeid, outcome, phase, setup_us, call_us, teardown_us,"
            " worker, longrepr, rerun_attempts, file FROM results WHERE run_id = ?"
        )
        parameters: list[Any] = [run_id]
        if outcomes is not None:
            codes = [_OUTCOME_CODE[o] for o in outcomes if o != "not_run"]
            query += f" AND outcome IN ({', '.join('?' * len(codes))})"
            parameters.extend(codes)
        with self._errors("read"):
            selection = list(self._stored_selection(run_id)[0])
            size = len(selection)
            rows = self._connection.execute(query, parameters).fetchall()
            wants_passed = outcomes is None or "passed" in outcomes
            passed = self._passed_of(run_id, size) if wants_passed else []
            reported: set[int] = set()
            if outcomes is not None and "not_run" in outcomes:
                # Positions are unique: as many inside the selection as it holds
                # means every selected test reported, and none is looked at.
                (inside,) = self._connection.execute(
                    "SELECT count(*) FROM results WHERE run_id = ? AND position >= 0"
                    " AND position < ?",
                    (run_id, size),
                ).fetchone()
                if inside + self._passed_count(run_id) == size:
                    outcomes = frozenset(outcomes) - {"not_run"}
                else:
                    reported = {
                        position
                        for (position,) in self._connection.execute(
                            "SELECT position FROM results WHERE run_id = ? AND position < ?",
                            (run_id, size),
                        )
                    }
                    if wants_passed:
                        reported.update(map(itemgetter(0), passed))
                    else:
                        reported.update(self._passed_positions(run_id, size))
        all_outcomes, phases = OUTCOMES, PHASES
        stored = [
            Result(
                selection[position].nodeid if nodeid is None else nodeid,
                all_outcomes[outcome],
                phases[phase],
                setup / 1e6,
                call / 1e6,
                teardown / 1e6,
                worker,
                longrepr,
                rerun_attempts,
                file,
                position,
            )
            for (
                position,
                nodeid,
                outcome,
                phase,
                setup,
                call,
                teardown,
                worker,
                longrepr,
                rerun_attempts,
                file,
            ) in rows
        ]
        # Of a position stored twice (only SQL from elsewhere can do that) the first
        # result stands, as it does for every write.
        taken = {result.position for result in stored}
        for position, setup, call, teardown, worker in passed:
            if position not in taken:
                taken.add(position)
                stored.append(
                    Result(
                        selection[position].nodeid,
                        "passed",
                        "call",
                        setup / 1e6,
                        call / 1e6,
                        teardown / 1e6,
                        worker,
                        None,
                        0,
                        None,
                        position,
                    )
                )
        results = results_in_selection_order(selection, stored, outcomes, reported)
        return Run(summary=summary, selection=selection, results=results)

    def _stored_selection(self, run_id: int) -> tuple[tuple[SelectedTest, ...], dict[str, int]]:
        """A run's selection and each node id's first position, as ``_decoded`` gives
        them; a selection that cannot be decoded is this run's damage alone."""
        row = self._connection.execute(
            "SELECT selection FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
        if row is None:
            raise RunNotFound(f"run {run_id} not found in {self.location}", run_id=run_id)
        if not row[0]:
            return (), {}
        try:
            return _decoded(row[0])
        except SELECTION_DAMAGE as exc:
            raise self._damaged(run_id, exc) from None

    def get_outcomes(
        self, run_id: int, nodeids: Collection[str], only: Collection[str] | None = None
    ) -> dict[str, Outcome]:
        with self._errors("read"):
            selection, first = self._stored_selection(run_id)
            position_of = {first[nodeid]: nodeid for nodeid in nodeids if nodeid in first}
            found: dict[str, Outcome] = {}
            if only is None or "not_run" in only:
                found = dict.fromkeys(position_of.values(), "not_run")
            codes = [code for code, name in enumerate(OUTCOMES) if only is None or name in only]
            positions = sorted(position_of)
            in_rows: dict[str, Outcome] = {}
            for start in range(0, len(positions), 900):
                chunk = positions[start : start + 900]
                # One row per outcome, its positions joined: reading many tests of
                # many runs is dominated by rows, not by bytes.
                for outcome, joined in self._connection.execute(
                    "SELECT outcome, group_concat(position) FROM results WHERE run_id = ?"
                    f" AND position IN ({', '.join('?' * len(chunk))})"
                    f" AND outcome IN ({', '.join('?' * len(codes))}) GROUP BY outcome",
                    (run_id, *chunk, *codes),
                ):
                    tests = map(position_of.__getitem__, map(int, joined.split(",")))
                    in_rows.update(dict.fromkeys(tests, OUTCOMES[outcome]))
            if position_of and (only is None or "passed" in only):
                for position in self._passed_positions(run_id, len(selection)):
                    nodeid = position_of.get(position)
                    if nodeid is not None and nodeid not in in_rows:
                        found[nodeid] = "passed"
            found.update(in_rows)
        return found

    def lineage(self, run_id: int) -> list[RunSummary]:
        root = self.get_summary(run_id).root_run_id
        with self._errors("read"):
            rows = self._connection.execute(
                f"SELECT {self._summary_columns} FROM runs WHERE root_run_id = ? ORDER BY id",
                (root,),
            ).fetchall()
            now = time.time()
            return [self._summary(row, now) for row in rows]

    def import_run(self, run: Run, origin: dict[str, Any]) -> int:
        s = run.summary
        uid = s.uid or legacy_uid(s.created_at, s.invocation.host, s.invocation.pid, s.id)
        status = s.status if s.status not in ("running", "queued") else "interrupted"
        selection = run.selection
        size = len(selection)
        blob = encode_selection(selection)
        with self.transaction() as connection:
            existing = self._existing(connection, uid, blob)
            if existing is not None:
                return existing
            cursor = connection.execute(
                "INSERT INTO runs (uid, status, exit_status, created_at, started_at, label, meta,"
                " invocation, host, pid, attempt, mode, reason, selection, selection_size,"
                " deselected, missing, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 'full',"
                " ?, ?, ?, ?, ?, ?)",
                (
                    uid,
                    status,
                    s.exit_status,
                    s.created_at,
                    s.started_at,
                    s.label,
                    json.dumps(s.meta),
                    json.dumps(s.invocation.to_dict()),
                    s.invocation.host,
                    s.invocation.pid,
                    s.reason,
                    blob,
                    size,
                    s.deselected,
                    json.dumps(s.missing),
                    json.dumps(origin),
                ),
            )
            run_id = cursor.lastrowid
            assert run_id is not None
            results = imported_results(run)
            self._insert(connection, run_id, results, size, set())
            # Counts come from the results, never from what the file says.
            counts = self._live_counts(run_id, size)
            connection.execute(
                "UPDATE runs SET root_run_id = id, finished_at = ?, counts = ? WHERE id = ?",
                (s.finished_at or s.created_at, json.dumps(counts), run_id),
            )
        return run_id

    def prune(self, run_ids: Sequence[int], pruned_at: float) -> None:
        if not run_ids:
            return
        with self.transaction() as connection:
            self._seal_stale_runs(connection)
            for run_id in run_ids:
                connection.execute(
                    "UPDATE runs SET pruned_at = ?, selection = NULL"
                    " WHERE id = ? AND finished_at IS NOT NULL AND pruned_at IS NULL",
                    (pruned_at, run_id),
                )
                for table in ("results", "passed_results"):
                    connection.execute(
                        f"DELETE FROM {table} WHERE run_id = ? AND"
                        " (SELECT pruned_at FROM runs WHERE id = ?) IS NOT NULL",
                        (run_id, run_id),
                    )
        with self._errors("compact"):
            self._connection.execute("VACUUM")
            # VACUUM goes through the WAL: only a checkpoint gives the space back.
            self._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def size(self) -> int:
        """Bytes on disk: the file and its WAL."""
        wal = Path(f"{self.path}-wal")
        return self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)

    def latest_run_id(self, *, finished: bool = False) -> int | None:
        """The newest run id; with ``finished``, the newest run that can get no more
        results (finished, or no longer running: see ``effective_status``)."""
        with self._errors("read"):
            rows = self._connection.execute(
                "SELECT id, status, finished_at,"
                f" {'last_seen_at' if self.version >= 3 else 'NULL'}, started_at, created_at,"
                " host, pid FROM runs ORDER BY id DESC"
            )
            now = time.time()
            for run_id, status, finished_at, seen, started_at, created_at, host, pid in rows:
                if not finished or finished_at is not None:
                    return int(run_id)
                last_seen = _last_seen(seen, started_at, created_at)
                if is_settled(
                    status, last_seen, self._host(host), pid, now=now, stale_after=self.stale_after
                ):
                    return int(run_id)
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
        """The newest runs first; a run that cannot be read is left out and noted
        in ``damaged``."""
        conditions: list[str] = []
        values: list[object] = []
        if before is not None:
            conditions.append("id < ?")
            values.append(min(before, _MAX_ID))
        if label is not None:
            conditions.append("label = ?")
            values.append(label)
        if root_run_id is not None:
            conditions.append("coalesce(root_run_id, id) = ?")
            values.append(min(root_run_id, _MAX_ID))
        for value, path in ((branch, "$.git.branch"), (commit, "$.git.commit")):
            if value is not None:
                conditions.append(f"json_extract(invocation, '{path}') = ?")
                values.append(value)
        if status is not None:
            # A running run whose session is gone reads interrupted: which of the
            # stored statuses can read ``status`` is decided here, the rest below.
            stored = {"interrupted": ("interrupted", "running")}.get(status, (status,))
            conditions.append(f"status IN ({', '.join('?' * len(stored))})")
            values.extend(stored)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        wanted = -1 if limit is None else min(limit, _MAX_ID)
        summaries: list[RunSummary] = []
        with self._errors("read"):
            rows = self._connection.execute(
                f"SELECT {self._summary_columns} FROM runs {where} ORDER BY id DESC", values
            )
            now = time.time()
            for row in rows:
                if len(summaries) == wanted:
                    break
                try:
                    summary = self._summary(row, now)
                except RunDamaged as exc:
                    self.damaged.append(exc)
                    continue
                if status is None or summary.status == status:
                    summaries.append(summary)
        return summaries

    def cancel_run(self, run_id: int, now: float) -> CancelOutcome:
        if not 0 < run_id <= _MAX_ID:
            raise RunNotFound(f"run {run_id} not found in {self.location}", run_id=run_id)
        with self.transaction() as connection:
            row = connection.execute(
                "SELECT status, finished_at, selection_size FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise RunNotFound(f"run {run_id} not found in {self.location}", run_id=run_id)
            status, finished_at, size = row
            if finished_at is not None:
                return "no_op"
            if status == "queued":
                connection.execute(
                    "UPDATE runs SET status = 'cancelled', finished_at = ?, last_seen_at = ?,"
                    " counts = ? WHERE id = ?",
                    (now, now, json.dumps(self._live_counts(run_id, size)), run_id),
                )
                return "cancelled"
        if self.get_summary(run_id).status != "running":
            return "no_op"  # its session is gone: it reads interrupted
        with self.transaction() as connection:
            connection.execute(
                "UPDATE runs SET cancel_requested = 1 WHERE id = ? AND finished_at IS NULL",
                (run_id,),
            )
        return "cancel_requested"

    def cancel_requested(self, run_id: int) -> bool:
        if self.version < 4:
            return False
        with self._errors("read"):
            row = self._connection.execute(
                "SELECT cancel_requested FROM runs WHERE id = ?", (min(run_id, _MAX_ID),)
            ).fetchone()
        if row is None:
            raise RunNotFound(f"run {run_id} not found in {self.location}", run_id=run_id)
        return bool(row[0])

    # -- what the server keeps beside the runs ----------------------------------

    _TOKEN_COLUMNS = "id, name, scopes, created_at, expires_at, revoked_at"

    @staticmethod
    def _token(row: tuple[Any, ...]) -> Token:
        token_id, name, scopes, created_at, expires_at, revoked_at = row
        return Token(token_id, name, tuple(json.loads(scopes)), created_at, expires_at, revoked_at)

    def add_token(
        self,
        name: str | None,
        token_hash: str,
        scopes: Sequence[str],
        created_at: float,
        expires_at: float | None,
    ) -> Token:
        with self.transaction() as connection:
            cursor = connection.execute(
                "INSERT INTO tokens (name, token_hash, scopes, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (name, token_hash, json.dumps(list(scopes)), created_at, expires_at),
            )
            token_id = cursor.lastrowid
            assert token_id is not None
        return Token(token_id, name, tuple(scopes), created_at, expires_at)

    def list_tokens(self) -> list[Token]:
        with self._errors("read"):
            rows = self._connection.execute(
                f"SELECT {self._TOKEN_COLUMNS} FROM tokens ORDER BY id"
            ).fetchall()
        return [self._token(row) for row in rows]

    def revoke_token(self, token_id: int, now: float) -> Token:
        with self.transaction() as connection:
            connection.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (now, token_id),
            )
            row = connection.execute(
                f"SELECT {self._TOKEN_COLUMNS} FROM tokens WHERE id = ?", (token_id,)
            ).fetchone()
        if row is None:
            raise TokenNotFound(f"no token {token_id} in {self.location}", token_id=token_id)
        return self._token(row)

    def token_by_hash(self, token_hash: str) -> Token | None:
        with self._errors("read"):
            row = self._connection.execute(
                f"SELECT {self._TOKEN_COLUMNS} FROM tokens WHERE token_hash = ?", (token_hash,)
            ).fetchone()
        return None if row is None else self._token(row)

    def count_request(self, token_id: int, window_start: int, now: float) -> int:
        with self.transaction() as connection:
            (requests,) = connection.execute(
                "INSERT INTO rate_windows VALUES (?, ?, 1) ON CONFLICT (token_id, window_start)"
                " DO UPDATE SET requests = requests + 1 RETURNING requests",
                (token_id, window_start),
            ).fetchone()
            if requests == 1:  # a new window: the token's older ones are done with
                connection.execute(
                    "DELETE FROM rate_windows WHERE token_id = ? AND window_start < ?",
                    (token_id, window_start),
                )
        return int(requests)

    def remember_key(
        self, token_id: int, key: str, request_hash: str, run_id: int, now: float
    ) -> tuple[str, int]:
        with self.transaction() as connection:
            connection.execute(
                "INSERT OR IGNORE INTO idempotency_keys VALUES (?, ?, ?, ?, ?)",
                (token_id, key, request_hash, run_id, now),
            )
            row = connection.execute(
                "SELECT request_hash, run_id FROM idempotency_keys WHERE token_id = ? AND key = ?",
                (token_id, key),
            ).fetchone()
        return str(row[0]), int(row[1])

    def recall_key(self, token_id: int, key: str) -> tuple[str, int] | None:
        with self._errors("read"):
            row = self._connection.execute(
                "SELECT request_hash, run_id FROM idempotency_keys WHERE token_id = ? AND key = ?",
                (token_id, key),
            ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))


def _checked_summary(summary: RunSummary) -> RunSummary:
    """``summary`` if its fields have the types a reader relies on; a damaged row
    (another program's writes, a bad disk) raises ``TypeError``."""
    texts = (summary.label, summary.reason, summary.invocation.host)
    numbers = (summary.created_at, summary.started_at, summary.finished_at, summary.pruned_at)
    if not all(value is None or isinstance(value, str) for value in texts):
        raise TypeError("a text column holds something else")
    if not all(value is None or isinstance(value, int | float) for value in numbers):
        raise TypeError("a time column holds something else")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in summary.meta.items()):
        raise TypeError("meta holds something other than text")
    if summary.invocation.args is not None and not all(
        isinstance(arg, str) for arg in summary.invocation.args
    ):
        raise TypeError("the recorded arguments hold something other than text")
    if not isinstance(summary.counts, dict) or summary.status not in RUN_STATUSES:
        raise TypeError("counts or status hold something else")
    return summary


def _last_seen(last_seen_at: float | None, started_at: float | None, created_at: float) -> float:
    """Runs recorded before ``last_seen_at`` existed were last seen when they started."""
    if last_seen_at is not None:
        return last_seen_at
    return started_at if started_at is not None else created_at


def _split_statements(script: str) -> Iterator[str]:
    """Split a migration into statements (``executescript`` would commit)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            if statement.strip():
                yield statement
            statement = ""
