"""``pytest-runs``: read the run history."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from pytest_rerun_runs import locate
from pytest_rerun_runs.store import (
    OUTCOMES,
    Run,
    RunStore,
    RunSummary,
    StoreError,
    iso,
    open_store,
)

USAGE_ERROR = 4

EPILOG = """\
examples:
  pytest-runs list --limit 5
  pytest-runs show last
  pytest-runs show 1 --format json
  pytest-runs --store=ci/runs.db list --format json
"""


class CommandError(Exception):
    """Bad input: printed as one line, exit code 4."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pytest-runs",
        description="Read the runs recorded by pytest-rerun-runs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--store",
        metavar="PATH",
        help=f"run store (default: ${locate.ENV_VAR}, the '{locate.INI_NAME}' ini option,"
        " or <rootdir>/.pytest_runs/runs.db as pytest would find it from here)",
    )
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )

    list_parser = commands.add_parser(
        "list",
        help="list runs, newest first",
        description="List runs, newest first.",
        epilog="example:\n  pytest-runs list --limit 5 --format json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    list_parser.add_argument("--limit", type=_positive_int, default=20, metavar="N")
    list_parser.add_argument("--format", choices=("table", "json"), default="table")
    list_parser.set_defaults(handler=cmd_list)

    show_parser = commands.add_parser(
        "show",
        help="show one run with its results",
        description="Show one run: invocation, counts and per-test results.",
        epilog="examples:\n  pytest-runs show last\n  pytest-runs show 1 --format json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show_parser.add_argument("run", metavar="ID|last")
    show_parser.add_argument("--format", choices=("text", "json"), default="text")
    show_parser.set_defaults(handler=cmd_show)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive whole number, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def store_location(option: str | None, cwd: Path | None = None) -> str:
    cwd = cwd or Path.cwd()
    rootdir, ini = locate.find_rootdir(cwd)
    location, _ = locate.resolve_store(option, ini, cwd, rootdir)
    return location


def open_existing_store(option: str | None) -> RunStore:
    return open_store(store_location(option), create=False)


def parse_run_id(text: str, store: RunStore) -> int:
    """A run id from ``ID`` or ``last`` (the newest finished run)."""
    if text == "last":
        run_id = store.latest_run_id(finished=True)
        if run_id is None:
            raise CommandError(f"{store.location} holds no finished run")
        return run_id
    try:
        run_id = int(text)
    except ValueError:
        raise CommandError(f"run id must be a positive number or 'last', got {text!r}") from None
    if run_id < 1:
        raise CommandError(f"run id must be a positive number or 'last', got {text!r}")
    return run_id


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:04.1f}s"


def counts_text(counts: dict[str, int]) -> str:
    parts = [f"{counts[o]} {o.replace('_', ' ')}" for o in OUTCOMES if counts.get(o)]
    return ", ".join(parts) or "no tests"


def summary_dict(summary: RunSummary) -> dict[str, Any]:
    return {
        "id": summary.id,
        "status": summary.status,
        "exit_status": summary.exit_status,
        "created_at": iso(summary.created_at),
        "duration": None if summary.duration is None else round(summary.duration, 6),
        "counts": dict(summary.counts),
        "label": summary.label,
        "source_run_id": summary.source_run_id,
        "root_run_id": summary.root_run_id,
        "attempt": summary.attempt,
        "mode": summary.mode,
    }


def print_table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            + "\n"
        )


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    store = open_existing_store(args.store)
    try:
        summaries = store.list_runs(args.limit)
    finally:
        store.close()
    if args.format == "json":
        json.dump([summary_dict(s) for s in summaries], out, indent=2)
        out.write("\n")
        return 0
    rows = [["ID", "STATUS", "CREATED", "DURATION", "COUNTS", "LABEL", "SOURCE"]]
    for s in summaries:
        created = iso(s.created_at) or ""
        rows.append(
            [
                str(s.id),
                s.status,
                created[:19].replace("T", " "),
                format_duration(s.duration),
                counts_text(s.counts),
                s.label or "",
                "" if s.source_run_id is None else str(s.source_run_id),
            ]
        )
    print_table(rows, out)
    return 0


def cmd_show(args: argparse.Namespace, out: TextIO) -> int:
    store = open_existing_store(args.store)
    try:
        run = store.get_run(parse_run_id(args.run, store))
    finally:
        store.close()
    if args.format == "json":
        json.dump(run.to_dict(), out, indent=2, ensure_ascii=False)
        out.write("\n")
        return 0
    write_run_text(run, out)
    return 0


def write_run_text(run: Run, out: TextIO) -> None:
    s = run.summary
    inv = s.invocation
    lines = [
        f"run {s.id}: {s.status} (exit {s.exit_status if s.exit_status is not None else '-'})"
        f" in {format_duration(s.duration)}",
        f"  created   {iso(s.created_at)}",
        f"  command   pytest {' '.join(inv.args)}".rstrip(),
        f"  directory {inv.invocation_dir} (rootdir {inv.rootdir})",
        f"  python    {inv.python}, pytest {inv.pytest}, {inv.platform} on {inv.host}",
    ]
    if inv.git.branch or inv.git.commit:
        lines.append(
            f"  git       {inv.git.branch or '(detached)'} {inv.git.commit or ''}".rstrip()
        )
    if inv.ci:
        lines.append("  ci        " + ", ".join(f"{k}={v}" for k, v in inv.ci.items()))
    if s.label:
        lines.append(f"  label     {s.label}")
    for key, value in s.meta.items():
        lines.append(f"  meta      {key}={value}")
    if s.source_run_id is not None:
        lines.append(
            f"  retry of  run {s.source_run_id} (root {s.root_run_id}, attempt {s.attempt},"
            f" {s.mode}{', reason: ' + s.reason if s.reason else ''})"
        )
    lines.append(f"  counts    {counts_text(s.counts)}; {s.deselected} deselected")
    out.write("\n".join(lines) + "\n")
    for result in run.results:
        if result.outcome in ("passed",):
            continue
        out.write(f"{result.outcome.upper():8} {result.nodeid}\n")


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace, TextIO], int] = args.handler
    try:
        return handler(args, out)
    except (CommandError, StoreError) as exc:
        sys.stderr.write(f"pytest-runs: error: {exc}\n")
        return USAGE_ERROR
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
