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

import json
import sqlite3
import zlib
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pytest_rerun_runs.store import (
    OUTCOMES,
    PHASES,
    Counts,
    Invocation,
    NewRun,
    Result,
    Run,
    RunFinish,
    RunNotFound,
    RunSummary,
    SelectedTest,
    Selection,
    StoreError,
    StoreNotFound,
    StoreTooNew,
    empty_counts,
    process_is_gone,
    status_from_exit,
)

BUSY_TIMEOUT_SECONDS = 5.0

_RAISE_FINISHED = "SELECT RAISE(ABORT, 'pytest-rerun-runs: a finished run cannot be changed')"

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
            CASE outcome {" ".join(f"WHEN {i} THEN '{o}'" for i, o in enumerate(OUTCOMES))} END
                AS outcome,
            CASE phase {" ".join(f"WHEN {i} THEN '{p}'" for i, p in enumerate(PHASES))} END
                AS phase,
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
]
SCHEMA_VERSION = len(MIGRATIONS)

#: SQLite's largest integer: a larger run id cannot exist.
_MAX_ID = 2**63 - 1

_OUTCOME_CODE: dict[str, int] = {outcome: code for code, outcome in enumerate(OUTCOMES)}
_PHASE_CODE = {phase: code for code, phase in enumerate(PHASES)}

_SUMMARY_COLUMNS = (
    "id, status, exit_status, created_at, started_at, finished_at, label, meta, invocation,"
    " host, pid, source_run_id, root_run_id, attempt, mode, reason, selection_size,"
    " deselected, missing, counts, origin, pruned_at"
)


def encode_selection(tests: Sequence[SelectedTest]) -> bytes:
    files: dict[str, int] = {}
    file_of = [files.setdefault(test.file, len(files)) for test in tests]
    payload = {"nodeids": [t.nodeid for t in tests], "files": list(files), "file_of": file_of}
    return zlib.compress(json.dumps(payload, separators=(",", ":")).encode(), 6)


def decode_selection(blob: bytes | None) -> list[SelectedTest]:
    if not blob:
        return []
    payload = json.loads(zlib.decompress(blob))
    files = payload["files"]
    return [
        SelectedTest(nodeid, files[index])
        for nodeid, index in zip(payload["nodeids"], payload["file_of"], strict=True)
    ]


def _micros(seconds: float) -> int:
    return round(seconds * 1_000_000)


class SqliteStore:
    """:class:`~pytest_rerun_runs.store.RunStore` on one SQLite file."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        # Per run being written by this process: node id -> selection position.
        # A node id selected more than once (--keep-duplicates) has several positions.
        self._positions: dict[int, dict[str, list[int]]] = {}
        self._next_extra: dict[int, int] = {}
        self._reported: dict[int, set[int]] = {}
        if not create and not self.path.exists():
            raise StoreNotFound(f"no run store at {self.location}")
        self._connection = self._connect(create)
        try:
            self._migrate()
        except BaseException:
            self._connection.close()
            raise

    # -- connection and schema ------------------------------------------------

    def _connect(self, create: bool) -> sqlite3.Connection:
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            uri = f"{self.path.resolve().as_uri()}?mode={'rwc' if create else 'rw'}"
            connection = sqlite3.connect(
                uri,
                uri=True,
                timeout=BUSY_TIMEOUT_SECONDS,
                isolation_level=None,
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open run store {self.location}: {exc}") from exc
        return connection

    def _migrate(self) -> None:
        with self._errors("open"):
            connection = self._connection
            if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            version = self._schema_version()
            if version > SCHEMA_VERSION:
                raise StoreTooNew(
                    f"run store {self.location} was written by a newer pytest-rerun-runs"
                    f" (schema {version}, this version knows {SCHEMA_VERSION}); upgrade"
                    " pytest-rerun-runs to use it"
                )
            if version == SCHEMA_VERSION:
                return
            with self.transaction():
                version = self._schema_version()
                if version == 0:
                    connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                    connection.execute("INSERT INTO schema_version VALUES (0)")
                for number in range(version, SCHEMA_VERSION):
                    for statement in _split_statements(MIGRATIONS[number]):
                        connection.execute(statement)
                connection.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def _schema_version(self) -> int:
        exists = self._connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if not exists:
            return 0
        row = self._connection.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0]) if row else 0

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
        connection = self._connection
        with self._errors("write"):
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def close(self) -> None:
        self._connection.close()

    # -- writing --------------------------------------------------------------

    def create_run(self, new_run: NewRun) -> int:
        inv = new_run.invocation
        with self.transaction() as connection:
            cursor = connection.execute(
                "INSERT INTO runs (status, created_at, started_at, label, meta, invocation,"
                " host, pid, source_run_id, root_run_id, attempt, mode, reason)"
                " VALUES ('running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    new_run.created_at,
                    new_run.started_at,
                    new_run.label,
                    json.dumps(new_run.meta),
                    json.dumps(inv.to_dict()),
                    inv.host,
                    inv.pid,
                    new_run.source_run_id,
                    new_run.root_run_id,
                    new_run.attempt,
                    new_run.mode,
                    new_run.reason,
                ),
            )
            run_id = cursor.lastrowid
            assert run_id is not None
            if new_run.root_run_id is None:
                connection.execute("UPDATE runs SET root_run_id = id WHERE id = ?", (run_id,))
        self._positions[run_id] = {}
        self._next_extra[run_id] = 0
        self._reported[run_id] = set()
        return run_id

    def record_selection(self, run_id: int, selection: Selection) -> None:
        positions: dict[str, list[int]] = {}
        for position, test in enumerate(selection.tests):
            positions.setdefault(test.nodeid, []).append(position)
        self._positions[run_id] = positions
        self._next_extra[run_id] = len(selection.tests)
        with self.transaction() as connection:
            connection.execute(
                "UPDATE runs SET selection = ?, selection_size = ?, deselected = ?, missing = ?"
                " WHERE id = ?",
                (
                    encode_selection(selection.tests),
                    len(selection.tests),
                    selection.deselected,
                    json.dumps(selection.missing),
                    run_id,
                ),
            )

    def _result_rows(self, run_id: int, results: Sequence[Result]) -> list[tuple[Any, ...]]:
        positions = self._positions.get(run_id, {})
        reported = self._reported.setdefault(run_id, set())
        rows = []
        for result in results:
            candidates = positions.get(result.nodeid)
            if candidates is None:
                position = None
            elif len(candidates) == 1:
                position = None if candidates[0] in reported else candidates[0]
            else:
                position = next((p for p in candidates if p not in reported), None)
            extra = position is None
            if position is None:
                position = self._next_extra.get(run_id, 0)
                self._next_extra[run_id] = position + 1
            assert position is not None
            reported.add(position)
            rows.append(self._row(run_id, position, result, extra))
        return rows

    @staticmethod
    def _row(run_id: int, position: int, result: Result, extra: bool) -> tuple[Any, ...]:
        return (
            run_id,
            position,
            _OUTCOME_CODE[result.outcome],
            _PHASE_CODE[result.when],
            _micros(result.setup_duration),
            _micros(result.call_duration),
            _micros(result.teardown_duration),
            result.worker,
            result.longrepr,
            result.rerun_attempts,
            result.nodeid if extra else None,
            (result.file or result.nodeid.split("::")[0]) if extra else None,
        )

    def _insert_results(self, connection: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        connection.executemany(
            "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
        )

    def append_results(self, run_id: int, results: Sequence[Result]) -> None:
        if not results:
            return
        rows = self._result_rows(run_id, results)
        with self.transaction() as connection:
            self._insert_results(connection, rows)

    def finish_run(self, run_id: int, finish: RunFinish, results: Sequence[Result] = ()) -> None:
        rows = self._result_rows(run_id, results)
        with self.transaction() as connection:
            self._insert_results(connection, rows)
            counts = self._live_counts(run_id)
            assignments = ["status = ?", "exit_status = ?", "finished_at = ?", "counts = ?"]
            values: list[Any] = [
                status_from_exit(finish.exit_status),
                finish.exit_status,
                finish.finished_at,
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
        self._positions.pop(run_id, None)
        self._reported.pop(run_id, None)
        self._next_extra.pop(run_id, None)

    # -- reading --------------------------------------------------------------

    def _live_counts(self, run_id: int) -> Counts:
        connection = self._connection
        (selection_size,) = connection.execute(
            "SELECT selection_size FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
        counts = empty_counts()
        in_selection = 0
        for outcome, is_selected, number in connection.execute(
            "SELECT outcome, position < ?, count(*) FROM results WHERE run_id = ?"
            " GROUP BY outcome, position < ?",
            (selection_size, run_id, selection_size),
        ):
            counts[OUTCOMES[outcome]] += number
            if is_selected:
                in_selection += number
        counts["not_run"] += selection_size - in_selection
        return counts

    def _summary(self, row: sqlite3.Row | tuple[Any, ...]) -> RunSummary:
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
            _selection_size,
            deselected,
            missing,
            counts,
            origin,
            pruned_at,
        ) = row
        if status == "running" and process_is_gone(host, pid):
            status = "interrupted"
        return RunSummary(
            id=run_id,
            status=status,
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
            counts=json.loads(counts) if counts else self._live_counts(run_id),
            invocation=Invocation.from_dict(json.loads(invocation)),
            deselected=deselected,
            missing=json.loads(missing),
            origin=json.loads(origin) if origin else None,
            pruned_at=pruned_at,
        )

    def get_summary(self, run_id: int) -> RunSummary:
        if not 0 < run_id <= _MAX_ID:
            raise RunNotFound(f"run {run_id} not found in {self.location}")
        with self._errors("read"):
            row = self._connection.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            if row is None:
                newest = self.latest_run_id()
                hint = f"the newest is {newest}" if newest is not None else "it holds no runs"
                raise RunNotFound(f"run {run_id} not found in {self.location} ({hint})")
            return self._summary(row)

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
            (blob,) = self._connection.execute(
                "SELECT selection FROM runs WHERE id = ?", (run_id,)
            ).fetchone()
            selection = decode_selection(blob)
            size = len(selection)
            rows = self._connection.execute(query + " ORDER BY position", parameters).fetchall()
            reported: set[int] | None = None
            if outcomes is not None and "not_run" in outcomes:
                reported = {
                    position
                    for (position,) in self._connection.execute(
                        "SELECT position FROM results WHERE run_id = ? AND position < ?",
                        (run_id, size),
                    )
                }
        by_position: dict[int, Result] = {}
        extras: list[Result] = []
        all_outcomes, phases = OUTCOMES, PHASES
        for position, nodeid, outcome, phase, setup, call, teardown, *rest in rows:
            worker, longrepr, rerun_attempts, file = rest
            result = Result(
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
            )
            if position < size:
                by_position[position] = result
            else:
                extras.append(result)
        results: list[Result] = []
        for position, test in enumerate(selection):
            found = by_position.get(position)
            if found is not None:
                results.append(found)
            elif outcomes is None or (reported is not None and position not in reported):
                results.append(Result(test.nodeid, "not_run", "none"))
        results.extend(extras)
        return Run(summary=summary, selection=selection, results=results)

    def lineage(self, run_id: int) -> list[RunSummary]:
        root = self.get_summary(run_id).root_run_id
        with self._errors("read"):
            rows = self._connection.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM runs WHERE root_run_id = ? ORDER BY id",
                (root,),
            ).fetchall()
            return [self._summary(row) for row in rows]

    def import_run(self, run: Run, origin: dict[str, Any]) -> int:
        s = run.summary
        status = s.status if s.status != "running" else "interrupted"
        selection = run.selection
        size = len(selection)
        position_of: dict[str, int] = {}
        for position, test in enumerate(selection):
            position_of.setdefault(test.nodeid, position)
        with self.transaction() as connection:
            cursor = connection.execute(
                "INSERT INTO runs (status, exit_status, created_at, started_at, label, meta,"
                " invocation, host, pid, attempt, mode, reason, selection, selection_size,"
                " deselected, missing, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 'full',"
                " ?, ?, ?, ?, ?, ?)",
                (
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
                    encode_selection(selection),
                    size,
                    s.deselected,
                    json.dumps(s.missing),
                    json.dumps(origin),
                ),
            )
            run_id = cursor.lastrowid
            assert run_id is not None
            rows = []
            extra = size
            for result in run.results:
                if result.outcome == "not_run":
                    continue
                position = position_of.pop(result.nodeid, -1)
                if position < 0:
                    position, extra = extra, extra + 1
                rows.append(self._row(run_id, position, result, extra=position >= size))
            self._insert_results(connection, rows)
            connection.execute(
                "UPDATE runs SET root_run_id = id, finished_at = ?, counts = ? WHERE id = ?",
                (s.finished_at or s.created_at, json.dumps(run.summary.counts), run_id),
            )
        return run_id

    def prune(self, run_ids: Sequence[int], pruned_at: float) -> None:
        if not run_ids:
            return
        with self.transaction() as connection:
            for run_id in run_ids:
                connection.execute(
                    "UPDATE runs SET pruned_at = ?, selection = NULL"
                    " WHERE id = ? AND finished_at IS NOT NULL AND pruned_at IS NULL",
                    (pruned_at, run_id),
                )
                connection.execute(
                    "DELETE FROM results WHERE run_id = ? AND"
                    " (SELECT pruned_at FROM runs WHERE id = ?) IS NOT NULL",
                    (run_id, run_id),
                )
        with self._errors("compact"):
            self._connection.execute("VACUUM")

    def latest_run_id(self, *, finished: bool = False) -> int | None:
        """The newest run id; with ``finished``, the newest run that is not running
        (finished, or left running by a process that no longer exists)."""
        with self._errors("read"):
            rows = self._connection.execute(
                "SELECT id, finished_at, host, pid FROM runs ORDER BY id DESC"
            )
            for run_id, finished_at, host, pid in rows:
                if not finished or finished_at is not None or process_is_gone(host, pid):
                    return int(run_id)
            return None

    def list_runs(self, limit: int | None = None) -> list[RunSummary]:
        with self._errors("read"):
            rows = self._connection.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM runs ORDER BY id DESC LIMIT ?",
                (-1 if limit is None else min(limit, _MAX_ID),),
            ).fetchall()
            return [self._summary(row) for row in rows]


def _split_statements(script: str) -> Iterator[str]:
    """Split a migration into statements (``executescript`` would commit)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            if statement.strip():
                yield statement
            statement = ""
