-- Migration 2 of pytest-rerun-runs stores, frozen as released.
ALTER TABLE runs ADD COLUMN origin TEXT;
ALTER TABLE runs ADD COLUMN pruned_at REAL;
DROP TRIGGER finished_runs_are_immutable;
CREATE TRIGGER finished_runs_are_immutable BEFORE UPDATE ON runs
    WHEN OLD.finished_at IS NOT NULL AND NOT (
        OLD.pruned_at IS NULL AND NEW.pruned_at IS NOT NULL AND NEW.selection IS NULL
        AND NEW.id IS OLD.id AND NEW.status IS OLD.status AND NEW.exit_status IS OLD.exit_status AND NEW.created_at IS OLD.created_at AND NEW.started_at IS OLD.started_at AND NEW.finished_at IS OLD.finished_at AND NEW.label IS OLD.label AND NEW.meta IS OLD.meta AND NEW.invocation IS OLD.invocation AND NEW.host IS OLD.host AND NEW.pid IS OLD.pid AND NEW.source_run_id IS OLD.source_run_id AND NEW.root_run_id IS OLD.root_run_id AND NEW.attempt IS OLD.attempt AND NEW.mode IS OLD.mode AND NEW.reason IS OLD.reason AND NEW.selection_size IS OLD.selection_size AND NEW.deselected IS OLD.deselected AND NEW.missing IS OLD.missing AND NEW.counts IS OLD.counts AND NEW.origin IS OLD.origin
    ) BEGIN SELECT RAISE(ABORT, 'pytest-rerun-runs: a finished run cannot be changed'); END;
DROP TRIGGER results_of_finished_runs_are_kept;
CREATE TRIGGER results_of_finished_runs_are_kept BEFORE DELETE ON results
    WHEN (SELECT finished_at IS NOT NULL AND pruned_at IS NULL FROM runs WHERE id = OLD.run_id)
    BEGIN SELECT RAISE(ABORT, 'pytest-rerun-runs: a finished run cannot be changed'); END;

