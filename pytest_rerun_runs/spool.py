"""The local spool of runs a server did not take: ``<rootdir>/.pytest_runs/spool/``.

When a server is unreachable, rejects the token or fails mid-session, the
recorder goes on writing the run here, one JSON line per write (the run and its
selection, then batches of results, then how it finished). The next session
against the same server, or ``pytest-runs sync``, uploads it: every write is
idempotent (the run's uid, the results' positions), so uploading twice, or a
spool that repeats what the server already has, stores everything once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pytest_rerun_runs.store import (
    Invocation,
    NewRun,
    Result,
    RunFinish,
    RunFinished,
    RunsError,
    RunStore,
    SelectedTest,
    Selection,
)
from pytest_rerun_runs.store.model import process_alive

SPOOL_DIR = "spool"
FORMAT = 1


def spool_directory(rootdir: Path) -> Path:
    return rootdir / ".pytest_runs" / SPOOL_DIR


def _new_run_record(
    new_run: NewRun, selection: Selection, store: str, claimed: int | None
) -> dict[str, Any]:
    data = new_run._asdict()
    data["invocation"] = new_run.invocation.to_dict()
    data["contributors"] = list(new_run.contributors)
    return {
        "format": FORMAT,
        "store": store,
        "claimed": claimed,
        "new_run": data,
        "selection": [list(test) for test in selection.tests],
        "deselected": selection.deselected,
        "missing": list(selection.missing),
    }


class SpoolWriter:
    """Appends one run's writes to its spool file."""

    def __init__(
        self,
        directory: Path,
        store: str,
        new_run: NewRun,
        selection: Selection,
        claimed: int | None = None,
    ) -> None:
        from pytest_rerun_runs.locate import prepare_default_dir

        # .pytest_runs/ with its .gitignore: failure texts must not be committed.
        prepare_default_dir(str(directory.parent / "runs.db"))
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = directory / f"{new_run.uid}.jsonl"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file: IO[str] = os.fdopen(fd, "a", encoding="utf-8")
        self._write(_new_run_record(new_run, selection, store, claimed))

    def _write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=True) + "\n")
        self._file.flush()

    def add_results(self, results: Sequence[Result]) -> None:
        if results:
            self._write({"results": [r._asdict() for r in results]})

    def finish(self, finish: RunFinish, results: Sequence[Result]) -> None:
        self.add_results(results)
        self._write({"finish": finish._asdict()})
        self._file.close()

    def close(self) -> None:
        self._file.close()


@dataclass
class SpooledRun:
    path: Path
    store: str
    new_run: NewRun
    selection: Selection
    results: list[Result] = field(default_factory=list)
    finish: RunFinish | None = None
    #: A queued run the session claimed: its rest goes there, no run is created.
    claimed: int | None = None


def read_spooled(path: Path) -> SpooledRun:
    """One spool file; ``ValueError`` if it is not one (a torn last line is fine)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise ValueError("empty")
    head = json.loads(lines[0])
    if head.get("format") != FORMAT:
        raise ValueError(f"unknown spool format {head.get('format')!r}")
    data = dict(head["new_run"])
    data["invocation"] = Invocation.from_dict(dict(data["invocation"]))
    data["contributors"] = tuple(data.get("contributors") or ())
    spooled = SpooledRun(
        path=path,
        store=str(head["store"]),
        new_run=NewRun(**data),
        selection=Selection(
            [SelectedTest(str(n), str(f)) for n, f in head["selection"]],
            int(head["deselected"]),
            [str(n) for n in head["missing"]],
        ),
        claimed=None if head.get("claimed") is None else int(head["claimed"]),
    )
    for number, line in enumerate(lines[1:], start=2):
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):
                break  # the process was killed while writing it
            raise
        if "results" in record:
            spooled.results.extend(Result(**r) for r in record["results"])
        elif "finish" in record:
            spooled.finish = RunFinish(**record["finish"])
    return spooled


@dataclass
class SyncReport:
    uploaded: list[tuple[str, int]] = field(default_factory=list)
    still_running: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def upload(directory: Path, store: RunStore, location: str, *, now: float) -> SyncReport:
    """Upload every spooled run recorded for ``location`` into ``store``; a run whose
    session is gone without finishing is finished as interrupted. Uploaded files
    are removed; a file that cannot be uploaded stays for the next time."""
    report = SyncReport()
    if not directory.is_dir():
        return report
    for path in sorted(directory.glob("*.jsonl")):
        try:
            spooled = read_spooled(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            report.failed.append((path.name, f"not a spool file: {exc}"))
            continue
        if spooled.store != location:
            continue
        finish = spooled.finish
        inv = spooled.new_run.invocation
        if finish is None:
            if process_alive(inv.host, inv.pid) is not False:
                report.still_running.append(spooled.new_run.uid)
                continue
            finish = RunFinish(exit_status=2, finished_at=now)
        try:
            if spooled.claimed is not None:
                run_id = spooled.claimed
            else:
                run_id = store.create_run(spooled.new_run, spooled.selection)
            store.finish_run(run_id, finish, spooled.results)
        except RunFinished as exc:
            # The store sealed the run before its rest arrived (its session was
            # gone for longer than the store waits): it stays as sealed.
            path.rename(path.with_suffix(".rejected"))
            report.failed.append((path.name, f"{exc}; kept as {path.with_suffix('.rejected')}"))
            continue
        except RunsError as exc:
            report.failed.append((path.name, str(exc)))
            continue
        path.unlink(missing_ok=True)
        report.uploaded.append((spooled.new_run.uid, run_id))
    return report
