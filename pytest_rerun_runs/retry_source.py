"""What ``--retry-run ID|last|FILE`` and the CLI's run arguments name.

:func:`parse_run_reference` is the one parser of run references (the pytest
option and every ``pytest-runs`` argument use it); :func:`resolve_source`
turns a reference into the run to retry. Nothing here writes: a run file is
read and checked here and imported only when the retry's run is created.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_rerun_runs.store import (
    DEFAULT_STALE_AFTER,
    RETRY_OUTCOMES,
    InvalidRunFile,
    InvalidRunReference,
    Run,
    RunStore,
    StoreError,
    open_store,
)

#: The largest run id any backend can hold (a signed 64-bit integer).
MAX_RUN_ID = 2**63 - 1
LAST = "last"


@dataclass(frozen=True)
class RunReference:
    """A run named by id, by ``last`` (the newest finished run) or by a run file."""

    text: str
    run_id: int | None = None
    file: Path | None = None

    @property
    def is_last(self) -> bool:
        return self.run_id is None and self.file is None

    def __str__(self) -> str:
        return self.text


def parse_run_id(text: str) -> int | None:
    """``text`` as a run id: ASCII digits only, 1 to 2**63-1; ``None`` otherwise."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_RUN_ID)):
        return None
    value = int(text)
    return value if 0 < value <= MAX_RUN_ID else None


def parse_run_reference(text: str, *, base: Path | None = None) -> RunReference:
    """``ID`` or ``last``; with ``base``, also a run file relative to ``base``.

    Raises :class:`InvalidRunReference` for anything else.
    """
    if text == LAST:
        return RunReference(text)
    run_id = parse_run_id(text)
    if run_id is not None:
        return RunReference(text, run_id=run_id)
    if base is not None and text and (base / text).is_file():
        return RunReference(text, file=base / text)
    what = "a run id (a positive number), 'last'"
    what += " or a run file written by 'pytest-runs export'" if base is not None else ""
    shown = text if len(text) <= 40 else text[:40] + "..."
    raise InvalidRunReference(f"expected {what}, got {shown!r}", value=shown)


def run_reference_argument(text: str) -> RunReference:
    """``argparse`` ``type=`` for a run id or ``last``."""
    try:
        return parse_run_reference(text)
    except InvalidRunReference as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def resolve_run_id(store: RunStore, reference: RunReference) -> int:
    """The id a reference names in ``store`` (``last``: the newest finished run)."""
    if reference.run_id is not None:
        return reference.run_id
    run_id = store.latest_run_id(finished=True)
    if run_id is None:
        raise StoreError(f"{store.location} holds no finished run", reason="no_finished_run")
    return run_id


@dataclass(frozen=True)
class RetrySource:
    """The run a retry is made from, with the results a plan needs."""

    run: Run
    #: Set when the run comes from a run file: it is imported when the retry starts.
    file: Path | None = None
    export: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.file is None:
            return f"run {self.run.id}"
        from pytest_rerun_runs.text import escape

        return f"run {self.run.id} of {escape(self.file.name)}"


def resolve_source(
    reference: RunReference, store_location: str, *, stale_after: float = DEFAULT_STALE_AFTER
) -> RetrySource:
    """The source run ``reference`` names; reads the store or the file, writes nothing."""
    if reference.file is not None:
        from pytest_rerun_runs import exchange

        try:
            run, export = exchange.load_run_file(reference.file)
        except exchange.RunFileError as exc:
            raise InvalidRunFile(str(exc)) from None
        return RetrySource(run=run, file=reference.file, export=export)
    store = open_store(store_location, create=False, stale_after=stale_after)
    try:
        run = store.get_run(resolve_run_id(store, reference), RETRY_OUTCOMES)
    finally:
        store.close()
    return RetrySource(run=run)
