"""Errors of the store contract and the planner, each with a stable ``code``.

The CLI prints ``message``, the plugin turns it into a usage error or a warning,
and the server renders ``{code, message, details}``: one error, one text. Messages
name runs and stores, never command-line flags.
"""

from __future__ import annotations

from typing import Any


class RunsError(Exception):
    """Base of every error the contract defines."""

    code = "runs_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": dict(self.details)}


class StoreError(RunsError):
    """The store cannot be read or written; the message names the store."""

    code = "store_unavailable"


class RunDamaged(StoreError):
    """One run's stored data cannot be read; the others can."""

    code = "run_damaged"


class StoreNotFound(StoreError):
    code = "store_not_found"


class StoreTooNew(StoreError):
    """The store was written by a newer schema than this plugin knows."""

    code = "store_too_new"


class UnsupportedStore(RunsError):
    """The store URL names a scheme no installed backend serves."""

    code = "unsupported_store"


class InvalidRunReference(RunsError):
    """Not a run id, ``last`` or a run file."""

    code = "invalid_run_reference"


class RunNotFound(RunsError):
    code = "run_not_found"


class InputsNotRetained(RunsError):
    """The run's selection and results were pruned."""

    code = "inputs_not_retained"

    def __init__(self, run_id: int) -> None:
        super().__init__(
            f"run {run_id}'s selection and results are no longer retained (pruned)", run_id=run_id
        )


class RunInProgress(RunsError):
    code = "run_in_progress"


class RunFinished(RunsError):
    """A write that would change a finished run."""

    code = "run_finished"


class NothingToRetry(RunsError):
    code = "nothing_to_retry"


class ConflictingSelection(RunsError):
    """A run uid created again with another selection."""

    code = "conflicting_selection"


class AlreadyClaimed(RunsError):
    code = "already_claimed"


class NotClaimed(RunsError):
    """A write to a queued run that no session has claimed."""

    code = "not_claimed"


class NotQueued(RunsError):
    """A claim of a run that was never queued."""

    code = "not_queued"


class InvalidRunFile(RunsError):
    code = "invalid_run_file"


class InvalidResult(RunsError):
    """A result without a valid position in its run."""

    code = "invalid_result"


class UnknownTests(RunsError):
    """A retry of tests its source did not select."""

    code = "unknown_tests"


class TokenNotFound(RunsError):
    code = "token_not_found"


class InvalidLineage(RunsError):
    """A new run whose source or root is not a run of this store."""

    code = "invalid_lineage"
