-- The schema of pytest-rerun-runs stores at version 1, frozen as released.
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    status TEXT NOT NULL,
    exit_status INTEGER,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    label TEXT,
    meta TEXT NOT NULL DEFAULT '{}',
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
    WHEN OLD.finished_at IS NOT NULL BEGIN SELECT RAISE(ABORT, 'pytest-rerun-runs: a finished run cannot be changed'); END;
CREATE TRIGGER finished_runs_are_kept BEFORE DELETE ON runs
    WHEN OLD.finished_at IS NOT NULL BEGIN SELECT RAISE(ABORT, 'pytest-rerun-runs: a finished run cannot be changed'); END;
CREATE TRIGGER results_are_append_only BEFORE UPDATE ON results
    BEGIN SELECT RAISE(ABORT, 'pytest-rerun-runs: a finished run cannot be changed'); END;
CREATE TRIGGER results_of_finished_runs_are_kept BEFORE DELETE ON results
    WHEN (SELECT finished_at FROM runs WHERE id = OLD.run_id) IS NOT NULL
    BEGIN SELECT RAISE(ABORT, 'pytest-rerun-runs: a finished run cannot be changed'); END;
CREATE TRIGGER results_only_for_running_runs BEFORE INSERT ON results
    WHEN (SELECT finished_at FROM runs WHERE id = NEW.run_id) IS NOT NULL
    BEGIN SELECT RAISE(ABORT, 'pytest-rerun-runs: a finished run cannot be changed'); END;
CREATE VIEW results_view AS
    SELECT run_id, position, nodeid,
        CASE outcome WHEN 0 THEN 'passed' WHEN 1 THEN 'failed' WHEN 2 THEN 'error' WHEN 3 THEN 'skipped' WHEN 4 THEN 'xfailed' WHEN 5 THEN 'xpassed' WHEN 6 THEN 'not_run' END
            AS outcome,
        CASE phase WHEN 0 THEN 'setup' WHEN 1 THEN 'call' WHEN 2 THEN 'teardown' WHEN 3 THEN 'collect' WHEN 4 THEN 'crash' WHEN 5 THEN 'none' END
            AS phase,
        (setup_us + call_us + teardown_us) / 1e6 AS duration,
        worker, longrepr, rerun_attempts
    FROM results;

