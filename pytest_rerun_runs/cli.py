"""``pytest-runs``: read, compare, retry, export, import and prune run history."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from pytest_rerun_runs import locate
from pytest_rerun_runs.analysis import (
    LineageNode,
    RunOutcomes,
    diff_runs,
    flaky_report,
    lineage_tree,
    parse_age,
    replayable_args,
    runs_to_prune,
)
from pytest_rerun_runs.retry_source import (
    MAX_RUN_ID,
    RunReference,
    parse_run_id,
    resolve_run_id,
    run_reference_argument,
)
from pytest_rerun_runs.store import (
    DEFAULT_STALE_AFTER,
    FAILING_OUTCOMES,
    OPEN_STATUSES,
    RETRY_OUTCOMES,
    SCOPES,
    InputsNotRetained,
    Result,
    Run,
    RunDamaged,
    RunsError,
    RunStore,
    RunSummary,
    counts_text,
    hostname,
    iso,
    open_store,
    redact_url,
    store_scheme,
)
from pytest_rerun_runs.text import escape, summarize

USAGE_ERROR = 4
MAX_ATTEMPTS = 100

EXAMPLES = {
    "list": ["pytest-runs list --limit 5", "pytest-runs list --format json"],
    "show": ["pytest-runs show last", "pytest-runs show 1 --format json"],
    "retry": [
        "pytest-runs retry last --failed-only --attempts 2",
        "pytest-runs retry 1 --reason 'flaky network' -- -x",
    ],
    "lineage": ["pytest-runs lineage 1", "pytest-runs lineage last --format json"],
    "diff": ["pytest-runs diff 1 2", "pytest-runs diff 1 last --format json"],
    "flaky": ["pytest-runs flaky --last 50", "pytest-runs flaky --format json"],
    "export": [
        "pytest-runs export last --format junit --merged -o junit.xml",
        "pytest-runs export 1 --format json -o run-1.json",
    ],
    "import": ["pytest-runs import run-1.json"],
    "prune": ["pytest-runs prune --keep 100 --dry-run", "pytest-runs prune --older-than 30d"],
    "sync": ["pytest-runs sync --store https://runs.example.org"],
    "copy": [
        "pytest-runs copy --from .pytest_runs/runs.db --to postgresql://ci@db.example.org/runs",
    ],
    "serve": [
        "pytest-runs serve --port 8765",
        "pytest-runs serve --store=/srv/runs.db --host 0.0.0.0 --workers 4",
    ],
    "token": [
        "pytest-runs token create --scope runs:read --scope runs:write --name ci --expires 90d",
        "pytest-runs token list",
        "pytest-runs token revoke 1",
    ],
}


class CommandError(Exception):
    """Bad input: printed as one line, exit code 4."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def _examples(*commands: str) -> str:
    lines = ["examples:"]
    for command in commands:
        lines.extend(f"  {example}" for example in EXAMPLES[command])
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pytest-runs",
        description="Run history recorded by pytest-rerun-runs.",
        epilog=_examples(*EXAMPLES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    store_help = (
        f"run store (default: ${locate.ENV_VAR}, the '{locate.INI_NAME}' ini option, or"
        " <rootdir>/.pytest_runs/runs.db as pytest would find it from here)"
    )
    parser.add_argument("--store", metavar="PATH|URL", help=store_help)
    common = _Parser(add_help=False)
    common.add_argument("--store", metavar="PATH|URL", default=argparse.SUPPRESS, help=store_help)
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )

    def command(name: str, summary: str, formats: Sequence[str] = ()) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=summary,
            description=summary[0].upper() + summary[1:] + ".",
            epilog=_examples(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common],
        )
        if formats:
            sub.add_argument("--format", choices=formats, default=formats[0])
        return sub

    sub = command("list", "list runs, newest first", ("table", "json"))
    sub.add_argument("--limit", type=_positive_int, default=20, metavar="N")
    sub.add_argument("--label", metavar="TEXT", help="only runs with this label")
    sub.set_defaults(handler=cmd_list)

    sub = command("show", "show one run with its results", ("text", "json"))
    sub.add_argument("run", metavar="ID|last", type=run_reference_argument)
    sub.set_defaults(handler=cmd_show)

    sub = command(
        "retry",
        "run pytest again with a run's recorded arguments, as a new run (--retry-run)",
        ("text", "json"),
    )
    sub.add_argument("run", metavar="ID|last", type=run_reference_argument)
    sub.add_argument("--failed-only", action="store_true", help="only what failed or never ran")
    sub.add_argument("--reason", metavar="TEXT", help="stored on the new run(s)")
    sub.add_argument(
        "--attempts",
        type=_attempts,
        default=1,
        metavar="N",
        help="retry the newest attempt's failures until all pass or N attempts are spent",
    )
    sub.add_argument(
        "--yes",
        action="store_true",
        help="run the recorded arguments of a run imported from another store without asking",
    )
    sub.add_argument("pytest_args", nargs="*", metavar="-- PYTEST ARGS", help=argparse.SUPPRESS)
    sub.set_defaults(handler=cmd_retry)

    sub = command("lineage", "the tree of a root run and all its retries", ("text", "json"))
    sub.add_argument("run", metavar="ID|last", type=run_reference_argument)
    sub.set_defaults(handler=cmd_lineage)

    sub = command(
        "diff", "tests that broke, were fixed, still fail, appeared, disappeared", ("text", "json")
    )
    sub.add_argument("before", metavar="A", type=run_reference_argument)
    sub.add_argument("after", metavar="B", type=run_reference_argument)
    sub.set_defaults(handler=cmd_diff)

    sub = command(
        "flaky", "tests that failed and passed with nothing changed in between", ("table", "json")
    )
    sub.add_argument("--last", type=_positive_int, default=50, metavar="N", help="runs to read")
    sub.set_defaults(handler=cmd_flaky)

    sub = command("export", "write a run as JSON, YAML or JUnit XML")
    sub.add_argument("run", metavar="ID|last", type=run_reference_argument)
    sub.add_argument("--format", choices=("json", "yaml", "junit"), required=True)
    sub.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    sub.add_argument(
        "--omit-args", action="store_true", help="leave the recorded pytest arguments out"
    )
    sub.add_argument(
        "--merged",
        action="store_true",
        help="JUnit only: one testcase per test of the lineage's root run, with its final"
        " outcome across all retries (earlier failures as flakyFailure/rerunFailure)",
    )
    sub.set_defaults(handler=cmd_export)

    sub = command(
        "import", "add a JSON or YAML run file to this store under a new id", ("text", "json")
    )
    sub.add_argument("file", metavar="FILE")
    sub.set_defaults(handler=cmd_import)

    sub = command(
        "prune",
        "drop the per-test results of old runs (summaries and lineage stay)",
        ("text", "json"),
    )
    which = sub.add_mutually_exclusive_group(required=True)
    which.add_argument("--keep", type=_positive_int, metavar="N", help="keep the newest N runs")
    which.add_argument("--older-than", metavar="AGE", help="runs older than AGE: 30d, 12h, 2w")
    sub.add_argument("--dry-run", action="store_true", help="only say what would be pruned")
    sub.set_defaults(handler=cmd_prune)

    sub = command(
        "copy",
        "copy the finished runs of one store into another (idempotent; ids kept as origin)",
        ("text", "json"),
    )
    sub.add_argument("--from", dest="source", required=True, metavar="PATH|URL")
    sub.add_argument("--to", dest="target", required=True, metavar="PATH|URL")
    sub.set_defaults(handler=cmd_copy)

    sub = command(
        "sync",
        "upload the runs spooled while the server was unreachable (.pytest_runs/spool/)",
        ("text", "json"),
    )
    sub.set_defaults(handler=cmd_sync)

    sub = command("serve", "serve the store over HTTP: the API of the [server] extra")
    sub.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    sub.add_argument("--port", type=_port, default=8765, help="port to listen on (8765)")
    sub.add_argument("--workers", type=_positive_int, default=1, metavar="N", help="processes")
    sub.add_argument(
        "--rate-limit",
        type=_rate_limit,
        default="600/minute",
        metavar="N/UNIT",
        help="requests per token: 600/minute (second, minute, hour, day)",
    )
    sub.add_argument("--webhook", metavar="URL", help="POST run.queued and run.finished here")
    sub.add_argument(
        "--webhook-secret",
        metavar="SECRET",
        default=os.environ.get("PYTEST_RUNS_WEBHOOK_SECRET"),
        help="sign webhook bodies with HMAC-SHA256 (default: $PYTEST_RUNS_WEBHOOK_SECRET)",
    )
    sub.set_defaults(handler=cmd_serve)

    token = command("token", "create, list and revoke the server's API tokens")
    actions = token.add_subparsers(
        dest="action", metavar="ACTION", required=True, parser_class=_Parser
    )
    sub = actions.add_parser(
        "create", help="a new token, printed once", parents=[common], epilog=_examples("token")
    )
    sub.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        required=True,
        choices=SCOPES,
        help="what it may do (repeat): " + ", ".join(SCOPES),
    )
    sub.add_argument("--name", metavar="NAME", help="what it is for")
    sub.add_argument("--expires", metavar="AGE", help="expires after AGE: 30d, 12h, 2w")
    sub.add_argument("--format", choices=("text", "json"), default="text")
    sub.set_defaults(handler=cmd_token_create)
    sub = actions.add_parser("list", help="every token, never its secret", parents=[common])
    sub.add_argument("--format", choices=("table", "json"), default="table")
    sub.set_defaults(handler=cmd_token_list)
    sub = actions.add_parser("revoke", help="revoke a token by id", parents=[common])
    sub.add_argument("id", type=_positive_int, metavar="ID")
    sub.add_argument("--format", choices=("text", "json"), default="text")
    sub.set_defaults(handler=cmd_token_revoke)
    return parser


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return int(text)


def _rate_limit(text: str) -> Any:
    from pytest_rerun_runs.access import parse_rate_limit

    try:
        return parse_rate_limit(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    """A whole number from 1 to 2**63-1, ASCII digits only."""
    value = parse_run_id(text) if text.isascii() else None
    if value is None:
        shown = text if len(text) <= 24 else text[:24] + "..."
        raise argparse.ArgumentTypeError(
            f"expected a positive whole number up to {MAX_RUN_ID}, got {shown!r}"
        )
    return value


def _attempts(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_ATTEMPTS:
        raise argparse.ArgumentTypeError(f"at most {MAX_ATTEMPTS} attempts, got {value}")
    return value


# -- shared helpers -------------------------------------------------------------


def store_location(option: str | None, cwd: Path | None = None) -> str:
    """The store a command reads: as pytest would find it from here, or the
    nearest ancestor's ``.pytest_runs/runs.db`` when that default does not exist."""
    cwd = cwd or Path.cwd()
    rootdir, settings = locate.find_rootdir(cwd)
    location, default = locate.resolve_store(option, settings.get(locate.INI_NAME), cwd, rootdir)
    if default and not Path(location).exists():
        nearest = locate.nearest_store(cwd)
        if nearest is not None:
            return str(nearest)
    return location


def stale_after(cwd: Path | None = None) -> float:
    """The ``runs_stale_after`` ini setting of the project here."""
    _, settings = locate.find_rootdir(cwd or Path.cwd())
    text = settings.get("runs_stale_after")
    if text is None:
        return DEFAULT_STALE_AFTER
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise CommandError(f"runs_stale_after expects seconds > 0, got {text!r}")
    return value


def open_existing_store(option: str | None, *, write: bool = False) -> RunStore:
    """The store to read (opened read-only: it is never changed, and a store the
    user cannot write is readable), or with ``write`` to change."""
    return open_store(
        store_location(option), create=False, read_only=not write, stale_after=stale_after()
    )


def run_id_of(reference: RunReference, store: RunStore) -> int:
    """The run id ``reference`` names in ``store``."""
    return resolve_run_id(store, reference)


class Style:
    """ANSI colour, only on a terminal and never with ``NO_COLOR`` set."""

    COLORS = {"passed": "32", "failed": "31", "error": "31", "interrupted": "33", "running": "36"}

    def __init__(self, out: TextIO) -> None:
        self.enabled = out.isatty() and not os.environ.get("NO_COLOR")

    def status(self, text: str) -> str:
        code = self.COLORS.get(text)
        return f"\033[{code}m{text}\033[0m" if self.enabled and code else text


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:04.1f}s"


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


def print_table(rows: Sequence[Sequence[str]], out: TextIO, style: Style | None = None) -> None:
    """Aligned columns; ``style`` colours the second column (a status)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for number, row in enumerate(rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        if style is not None and number > 0:
            cells[1] = style.status(row[1]) + " " * (widths[1] - len(row[1]))
        out.write("  ".join(cells).rstrip() + "\n")


def write_json(data: object, out: TextIO) -> None:
    json.dump(data, out, indent=2, ensure_ascii=False)
    out.write("\n")


# -- commands -------------------------------------------------------------------


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    store = open_existing_store(args.store)
    try:
        summaries = store.list_runs(args.limit, label=args.label)
    finally:
        store.close()
    warn_damaged(store)
    if args.format == "json":
        write_json([summary_dict(s) for s in summaries], out)
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
                counts_text(s.counts) + (" (pruned)" if s.pruned_at else ""),
                escape(s.label or ""),
                "" if s.source_run_id is None else str(s.source_run_id),
            ]
        )
    print_table(rows, out, Style(out))
    return 0


def load_run(store_option: str | None, run: RunReference) -> tuple[Run, str]:
    """The run named by ``ID``/``last`` and the location of its store."""
    store = open_existing_store(store_option)
    try:
        return store.get_run(run_id_of(run, store)), store.location
    finally:
        store.close()


def cmd_show(args: argparse.Namespace, out: TextIO) -> int:
    run, _ = load_run(args.store, args.run)
    if args.format == "json":
        write_json(run.to_dict(), out)
        return 0
    write_run_text(run, out, Style(out))
    return 0


def result_message(result: Result, width: int = 100) -> str:
    """The line pytest's short summary shows for a result: the error line of a
    failure, the reason of a skip."""
    text = result.longrepr or ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if result.outcome in ("skipped", "xfailed", "xpassed") and lines:
        # "path:line: reason" as pytest writes skips: the reason is the message.
        message = re.sub(r"^.*?:\d+: (Skipped: )?", "", lines[0])
    else:
        errors = [line[1:].strip() for line in lines if line.startswith("E ")]
        message = errors[0] if errors else (lines[-1] if lines else "")
    message = escape(message)
    return message if len(message) <= width else message[: width - 3] + "..."


def write_run_text(run: Run, out: TextIO, style: Style) -> None:
    s = run.summary
    inv = s.invocation
    exit_text = s.exit_status if s.exit_status is not None else "-"
    command = (
        "(arguments not recorded: exported without them)"
        if inv.args is None
        else redact_url(shlex.join(["pytest", *inv.args]))
    )
    lines = [
        f"run {s.id}: {style.status(s.status)} (exit {exit_text}) in {format_duration(s.duration)}",
        f"  created   {iso(s.created_at)}",
        f"  command   {escape(command)}",
        f"  directory {escape(inv.invocation_dir)} (rootdir {escape(inv.rootdir)})",
        f"  python    {escape(inv.python)}, pytest {escape(inv.pytest)},"
        f" {escape(inv.platform)} on {escape(inv.host)}",
    ]
    if inv.git.branch or inv.git.commit:
        git = f"{inv.git.branch or '(detached)'} {inv.git.commit or ''}".rstrip()
        lines.append(f"  git       {escape(git)}")
    if inv.ci:
        lines.append("  ci        " + escape(", ".join(f"{k}={v}" for k, v in inv.ci.items())))
    if inv.randomly_seed is not None:
        lines.append(f"  randomly  seed {inv.randomly_seed}")
    if s.label:
        lines.append(f"  label     {escape(s.label)}")
    lines.extend(f"  meta      {escape(key)}={escape(value)}" for key, value in s.meta.items())
    if s.source_run_id is not None:
        reason = f", reason: {escape(s.reason)}" if s.reason else ""
        lines.append(
            f"  retry of  run {s.source_run_id} (root {s.root_run_id}, attempt {s.attempt},"
            f" {s.mode}{reason})"
        )
    if s.contributors:
        lines.append(f"  failing   the failing tests of runs {summarize(s.contributors, 20)}")
    if s.origin:
        where = redact_url(str(s.origin.get("store") or "?"))
        lines.append(f"  imported  run {s.origin.get('run_id')} of {escape(where)}")
    if s.missing:
        lines.append(f"  missing   {len(s.missing)} planned tests no longer existed")
    lines.append(f"  counts    {counts_text(s.counts)}; {s.deselected} deselected")
    if s.pruned_at:
        lines.append(f"  pruned    {iso(s.pruned_at)}: per-test results are no longer retained")
    out.write("\n".join(lines) + "\n")
    for result in run.results:
        reruns = f" ({result.rerun_attempts} reruns)" if result.rerun_attempts else ""
        if result.outcome == "passed":
            if reruns:
                out.write(f"{style.status('passed').upper():8} {escape(result.nodeid)}{reruns}\n")
            continue
        message = result_message(result)
        out.write(
            f"{style.status(result.outcome).upper():8} {escape(result.nodeid)}{reruns}"
            f"{' - ' + message if message else ''}\n"
        )


def _replayable_source(store: RunStore, run_id: int) -> RunSummary:
    summary = store.get_summary(run_id)
    inv = summary.invocation
    if summary.pruned_at is not None:
        raise InputsNotRetained(run_id)
    if inv.args is None:
        raise CommandError(
            f"run {run_id} has no recorded arguments to replay (exported without them);"
            f" run pytest --retry-run={run_id} with the options it needs"
        )
    if not Path(inv.invocation_dir).is_dir():
        raise CommandError(
            f"run {run_id} was started in {inv.invocation_dir}, which does not exist here;"
            f" run pytest --retry-run={run_id} from your checkout"
        )
    return summary


def _retry_of(store: RunStore, source_run_id: int, after: int) -> RunSummary | None:
    for summary in store.list_runs(None):
        if summary.id <= after:
            break
        if summary.source_run_id == source_run_id:
            return summary
    return None


def retry_command(
    source: RunSummary,
    store: str,
    run_id: int,
    *,
    failed_only: bool,
    reason: str | None,
    extra: Sequence[str],
) -> list[str]:
    """The pytest command that retries ``run_id`` with the source's recorded arguments."""
    inv = source.invocation
    assert inv.args is not None
    command = [sys.executable, "-m", "pytest", *replayable_args(inv.args)]
    seed = inv.randomly_seed
    if (
        seed is not None
        and not any(
            arg.startswith("--randomly-seed") or arg.endswith("no:randomly")
            for arg in (*inv.args, *extra)
        )
        and importlib.util.find_spec("pytest_randomly") is not None
    ):
        command.append(f"--randomly-seed={seed}")  # the tests see the same random data
    command += [f"--runs-store={store}", f"--retry-run={run_id}"]
    if failed_only:
        command.append("--failed-only")
    if reason:
        command.append(f"--retry-reason={reason}")
    return [*command, *extra]


def shell_line(directory: str, command: Sequence[str]) -> str:
    """A command as one copy-pasteable, shell-quoted line (secrets redacted)."""
    return redact_url(f"$ cd {shlex.quote(directory)} && {shlex.join(command)}")


def confirm_foreign_arguments(
    source: RunSummary, line: str, *, assume_yes: bool, shared: bool = False
) -> None:
    """Arguments recorded elsewhere run only with the user's say: a run imported
    from another store, one read from a shared store (a server, PostgreSQL: any
    client with write access recorded it), or one recorded on another host."""
    if assume_yes:
        return
    if source.origin is not None:
        where = str(source.origin.get("store") or source.origin.get("file") or "elsewhere")
        what = f"was imported from {escape(redact_url(where))}"
    elif shared:
        what = "was read from a shared store"
    elif source.invocation.host != hostname():
        what = f"was recorded on {escape(source.invocation.host)}"
    else:
        return
    question = f"run {source.id} {what}: its recorded arguments would run as {escape(line)}"
    if not sys.stdin or not sys.stdin.isatty():
        raise CommandError(f"{question}; pass --yes to run them")
    sys.stderr.write(f"{question}\nRun it? [y/N] ")
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise CommandError("not confirmed; nothing was run")


def cmd_retry(args: argparse.Namespace, out: TextIO) -> int:
    store = open_existing_store(args.store)
    try:
        source_id = run_id_of(args.run, store)
        source = _replayable_source(store, source_id)
    finally:
        store.close()
    directory = source.invocation.invocation_dir
    location = store_location(args.store)
    attempts: list[tuple[RunSummary, int]] = []
    current, failed_only, code = source_id, args.failed_only, 0
    for number in range(args.attempts):
        command = retry_command(
            source,
            location,
            current,
            failed_only=failed_only,
            reason=args.reason,
            extra=args.pytest_args,
        )
        shown = redact_url(shell_line(directory, command))  # a token in the store URL
        if number == 0:
            shared = store_scheme(location) != "sqlite"
            confirm_foreign_arguments(source, shown, assume_yes=args.yes, shared=shared)
        # With --format json, stdout carries only the summary: pytest talks to stderr.
        talk = sys.stderr if args.format == "json" else out
        talk.write(escape(shown) + "\n")
        talk.flush()
        store = open_existing_store(args.store)
        try:
            newest = store.latest_run_id() or 0
        finally:
            store.close()
        code = _run_pytest(command, directory, to_stderr=args.format == "json")
        store = open_existing_store(args.store)
        try:
            retry = _retry_of(store, current, newest)
        finally:
            store.close()
        if retry is None:
            break
        attempts.append((retry, code))
        current, failed_only = retry.id, True
        if code == 0:
            break
    report = _attempts_report(args.store, source_id, attempts, code)
    if args.format == "json":
        write_json(report, out)
    elif attempts:
        out.write(f"\nretries of run {source_id} (attempt {source.attempt}):\n")
        for attempt in report["attempts"]:
            number = attempt["attempt"]
            out.write(
                f"  attempt {number}: run {attempt['run_id']}, exit {attempt['exit_status']},"
                f" {counts_text(attempt['counts'])}\n"
            )
            for nodeid in attempt["passed"]:
                out.write(f"    passed on attempt {number}: {escape(nodeid)}\n")
        last = report["attempts"][-1]["attempt"]
        for nodeid in report["still_failing"]:
            out.write(f"  still failing at attempt {last}: {escape(nodeid)}\n")
    return code


def _run_pytest(command: list[str], cwd: str, *, to_stderr: bool) -> int:
    if not to_stderr:
        return subprocess.run(command, cwd=cwd, check=False).returncode
    try:
        target = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a stderr without a file (captured)
        finished = subprocess.run(command, cwd=cwd, stdout=subprocess.PIPE, text=True, check=False)
        sys.stderr.write(finished.stdout)
        return finished.returncode
    return subprocess.run(command, cwd=cwd, stdout=target, check=False).returncode


def _attempts_report(
    store_option: str | None, source_id: int, attempts: list[tuple[RunSummary, int]], code: int
) -> dict[str, Any]:
    """Which of the source's failures passed on which attempt, and which still fail."""
    store = open_existing_store(store_option)
    try:
        source = store.get_run(source_id)
        runs = [store.get_run(summary.id) for summary, _ in attempts]
    finally:
        store.close()
    bad = RETRY_OUTCOMES
    pending = [r.nodeid for r in source.results if r.outcome in bad]
    report: list[dict[str, Any]] = []
    for run, (_, exit_status) in zip(runs, attempts, strict=True):
        outcome = {r.nodeid: r.outcome for r in run.results}
        report.append(
            {
                "attempt": run.summary.attempt,
                "run_id": run.id,
                "exit_status": exit_status,
                "counts": dict(run.summary.counts),
                "passed": [nodeid for nodeid in pending if outcome.get(nodeid) == "passed"],
            }
        )
        pending = [nodeid for nodeid in pending if outcome.get(nodeid) in bad]
    return {
        "source_run_id": source_id,
        "exit_status": code,
        "attempts": report,
        "still_failing": pending if attempts else [],
    }


def cmd_lineage(args: argparse.Namespace, out: TextIO) -> int:
    store = open_existing_store(args.store)
    try:
        tree = lineage_tree(store.lineage(run_id_of(args.run, store)))
    finally:
        store.close()
    if args.format == "json":
        write_json(tree.to_dict(), out)
        return 0
    style = Style(out)

    def write(node: LineageNode, prefix: str, tail: str) -> None:
        s = node.summary
        reason = f"  reason: {escape(s.reason)}" if s.reason else ""
        out.write(
            f"{prefix}{tail}run {s.id}  {style.status(s.status)}  attempt {s.attempt}"
            f"  {s.mode}  {counts_text(s.counts)}{reason}\n"
        )
        child_prefix = prefix + ("    " if tail == "└── " else "│   " if tail else "")
        for index, child in enumerate(node.children):
            write(child, child_prefix, "└── " if index == len(node.children) - 1 else "├── ")

    write(tree, "", "")
    return 0


def cmd_diff(args: argparse.Namespace, out: TextIO) -> int:
    store = open_existing_store(args.store)
    try:
        before = store.get_run(run_id_of(args.before, store))
        after = store.get_run(run_id_of(args.after, store))
    finally:
        store.close()
    diff = diff_runs(before, after)
    if args.format == "json":
        write_json({"before": before.id, "after": after.id, **diff}, out)
        return 0
    out.write(f"run {before.id} -> run {after.id}\n")
    not_retried = diff.pop("not_retried", None)
    for name, nodeids in diff.items():
        out.write(f"{name.replace('_', ' ')} ({len(nodeids)})\n")
        for nodeid in nodeids:
            out.write(f"  {escape(nodeid)}\n")
    if not_retried is not None:
        out.write(
            f"not retried ({len(not_retried)}): run {after.id} ran {after.summary.mode},"
            f" {len(after.selection)} tests\n"
        )
    return 0


def flaky_outcomes(store: RunStore, last: int) -> tuple[list[RunOutcomes], dict[int, RunOutcomes]]:
    """The outcomes flaky detection needs from the newest ``last`` runs (and the
    older runs they retried), read in two passes so that memory holds failures,
    not whole runs: first what failed in each run, then only those tests'
    outcomes where they could have passed."""
    summaries = [
        s for s in store.list_runs(last) if s.pruned_at is None and s.status not in OPEN_STATUSES
    ]

    def failing(run_id: int) -> frozenset[str]:
        return frozenset(r.nodeid for r in store.get_run(run_id, FAILING_OUTCOMES).results)

    failed: dict[int, frozenset[str]] = {}
    readable = []
    for summary in summaries:
        try:
            failed[summary.id] = failing(summary.id)
        except RunDamaged as exc:  # one damaged run does not hide the others
            sys.stderr.write(f"pytest-runs: warning: {escape(str(exc))}\n")
            continue
        readable.append(summary)
    summaries = readable
    sources: dict[int, RunOutcomes] = {}
    for summary in summaries:
        source = summary.source_run_id
        if source is None or source in failed:
            continue
        try:
            failed[source] = failing(source)
            sources[source] = RunOutcomes(store.get_summary(source), failed[source], frozenset())
        except RunsError:
            continue  # pruned or gone: no evidence
    failing_with_tree: dict[str, set[str]] = defaultdict(set)
    for summary in summaries:
        if summary.invocation.tree is not None:
            failing_with_tree[summary.invocation.tree] |= failed[summary.id]
    runs = []
    for summary in summaries:
        wanted = set(failing_with_tree.get(summary.invocation.tree or "", ()))
        if summary.source_run_id is not None:
            wanted |= failed.get(summary.source_run_id, frozenset())
        wanted -= failed[summary.id]
        passed = frozenset(
            store.get_outcomes(summary.id, wanted, only=("passed",)) if wanted else ()
        )
        runs.append(RunOutcomes(summary, failed[summary.id], passed))
    return runs, sources


def cmd_flaky(args: argparse.Namespace, out: TextIO) -> int:
    store = open_existing_store(args.store)
    try:
        runs, sources = flaky_outcomes(store, args.last)
    finally:
        store.close()
    warn_damaged(store)
    report = flaky_report(runs, sources)
    if args.format == "json":
        write_json([f.to_dict() for f in report.flaky], out)
        return 0
    if not report.flaky:
        out.write(f"no flaky tests in the last {len(runs)} runs\n")
    else:
        rows = [["TEST", "FAILED", "PASSED", "RETRY PASSES", "COMMIT", "EVIDENCE"]]
        for f in report.flaky:
            evidence = ", ".join(f"{a}->{b}" for a, b in f.passed_on_retry) or (
                f"failed in {summarize(f.failed_in, 6)}; passed in {summarize(f.passed_in, 6)}"
            )
            rows.append(
                [
                    escape(f.nodeid),
                    str(len(f.failed_in)),
                    str(len(f.passed_in)),
                    str(len(f.passed_on_retry)),
                    (f.commit or "-")[:12],
                    evidence,
                ]
            )
        print_table(rows, out)
    if report.fixed:
        out.write(f"passed after changes (fixed, not flaky evidence): {len(report.fixed)}\n")
        for fixed in report.fixed:
            out.write(
                f"  {escape(fixed.nodeid)}: failed in run {fixed.failed_in},"
                f" passed in its retry {fixed.passed_in}\n"
            )
    return 0


def cmd_export(args: argparse.Namespace, out: TextIO) -> int:
    from pytest_rerun_runs import exchange

    run, location = load_run(args.store, args.run)
    if run.summary.pruned_at is not None and args.format != "junit":
        raise InputsNotRetained(run.id)
    if args.merged and args.format != "junit":
        raise CommandError("--merged goes with --format junit")
    if args.format == "junit" and args.merged:
        store = open_existing_store(args.store)
        try:
            lineage = store.lineage(run.id)
            root = store.get_run(lineage[0].id)
            retries = [store.get_run(s.id) for s in lineage[1:] if s.pruned_at is None]
        finally:
            store.close()
        text = exchange.junit_xml_merged(root, retries)
    elif args.format == "junit":
        text = exchange.junit_xml(run)
    else:
        data = exchange.export_dict(run, location, omit_args=args.omit_args)
        text = exchange.dump_json(data) if args.format == "json" else exchange.dump_yaml(data)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {args.output}: {exc.strerror}") from None
    else:
        out.write(text)
    return 0


def cmd_import(args: argparse.Namespace, out: TextIO) -> int:
    from pytest_rerun_runs import exchange

    try:
        run, export = exchange.load_run_file(Path(args.file))
    except exchange.RunFileError as exc:
        raise CommandError(str(exc)) from None
    store = open_store(store_location(args.store))
    known = run.summary.uid is not None and store.find_run(run.summary.uid) is not None
    try:
        new_id = exchange.import_run(store, run, export, Path(args.file))
    finally:
        store.close()
    if args.format == "json":
        write_json(
            {"id": new_id, "original_id": run.id, "store": store.location, "new": not known}, out
        )
    elif known:
        out.write(f"run {run.id} is already in {store.location} as run {new_id}\n")
    else:
        out.write(f"imported run {run.id} as run {new_id} in {store.location}\n")
    return 0


def warn_damaged(store: RunStore) -> None:
    """One line for each run the store left out because it could not read it."""
    for damaged in getattr(store, "damaged", ()):
        sys.stderr.write(f"pytest-runs: warning: {escape(str(damaged))}\n")


def store_size(store: RunStore) -> int | None:
    """Bytes the store takes on this machine, where it is a local file."""
    size: Callable[[], int] | None = getattr(store, "size", None)
    return None if size is None else size()


def cmd_prune(args: argparse.Namespace, out: TextIO) -> int:
    try:
        older_than = parse_age(args.older_than) if args.older_than else None
    except ValueError as exc:
        raise CommandError(f"--older-than: {exc}") from None
    store = open_existing_store(args.store, write=not args.dry_run)
    try:
        now = time.time()
        doomed = runs_to_prune(
            store.list_runs(None), keep=args.keep, older_than=older_than, now=now
        )
        ids = sorted(s.id for s in doomed)
        size_before = store_size(store)
        if not args.dry_run:
            store.prune(ids, now)
        size_after = store_size(store)
    finally:
        store.close()
    if args.format == "json":
        write_json(
            {
                "pruned": ids,
                "dry_run": args.dry_run,
                "bytes_before": size_before,
                "bytes_after": size_after,
            },
            out,
        )
        return 0
    verb = "would prune" if args.dry_run else "pruned"
    out.write(f"{verb} {len(ids)} runs{': ' + summarize(ids, 20) if ids else ''}\n")
    if not args.dry_run and ids and size_before is not None and size_after is not None:
        out.write(f"store {store.location}: {size_before:,} -> {size_after:,} bytes\n")
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, extra = argv[:split], argv[split + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    if extra:
        if args.command != "retry":
            parser.error(f"'-- PYTEST ARGS' only goes with retry, not {args.command}")
        args.pytest_args = [*args.pytest_args, *extra]
    handler: Callable[[argparse.Namespace, TextIO], int] = args.handler
    if out is None:  # stdout closed (">&-")
        sys.stderr.write("pytest-runs: error: cannot write output: standard output is closed\n")
        return USAGE_ERROR
    try:
        code = handler(args, out)
        out.flush()
    except (CommandError, RunsError) as exc:
        sys.stderr.write(f"pytest-runs: error: {escape(redact_url(str(exc)))}\n")
        return USAGE_ERROR
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except OSError as exc:  # stdout full ("> /dev/full") or gone
        _silence_stdout()
        sys.stderr.write(f"pytest-runs: error: cannot write output: {exc.strerror or exc}\n")
        return USAGE_ERROR
    return code


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    try:
        import uvicorn  # noqa: F401

        from pytest_rerun_runs.server import ServerConfig, serve
    except ImportError as exc:
        raise CommandError(
            "pytest-runs serve needs the [server] extra:"
            f" pip install 'pytest-rerun-runs[server]' (missing: {exc.name})"
        ) from None
    location = store_location(args.store)
    limit = stale_after()
    store = open_store(location, stale_after=limit)  # created and migrated before serving
    store.close()
    config = ServerConfig(
        location, args.rate_limit, limit, webhook=args.webhook, webhook_secret=args.webhook_secret
    )
    shown = "localhost" if args.host in ("127.0.0.1", "::1") else args.host
    out.write(
        f"pytest-runs: serving {redact_url(store.location)} at http://{shown}:{args.port}"
        f" (API {'/api/v1'}, {args.workers} worker(s), {args.rate_limit} per token)\n"
    )
    out.flush()
    serve(config, host=args.host, port=args.port, workers=args.workers)
    return 0


def cmd_copy(args: argparse.Namespace, out: TextIO) -> int:
    """Every finished run of ``--from`` into ``--to``, oldest first, keyed by uid:
    copying again copies nothing twice. Lineage and ids travel as ``origin``."""
    source = open_store(args.source, create=False, read_only=True, stale_after=stale_after())
    copied: list[tuple[int, int]] = []
    known: list[int] = []
    skipped: list[tuple[int, str]] = []
    try:
        target = open_store(args.target, stale_after=stale_after())
        try:
            for summary in reversed(source.list_runs(None)):
                if summary.status in OPEN_STATUSES:
                    skipped.append((summary.id, summary.status))
                    continue
                if summary.pruned_at is not None:
                    skipped.append((summary.id, "pruned"))
                    continue
                already = summary.uid is not None and target.find_run(summary.uid) is not None
                run = source.get_run(summary.id)
                origin = {
                    "run_id": summary.id,
                    "store": redact_url(source.location),
                    "source_run_id": summary.source_run_id,
                    "root_run_id": summary.root_run_id,
                    "attempt": summary.attempt,
                    "mode": summary.mode,
                    **({"origin": summary.origin} if summary.origin else {}),
                }
                new_id = target.import_run(run, origin)
                if already:
                    known.append(new_id)
                else:
                    copied.append((summary.id, new_id))
        finally:
            target.close()
    finally:
        source.close()
    if args.format == "json":
        write_json(
            {
                "copied": [{"from": a, "to": b} for a, b in copied],
                "already_there": known,
                "skipped": [{"run_id": a, "why": b} for a, b in skipped],
            },
            out,
        )
        return 0
    out.write(
        f"copied {len(copied)} run(s) from {redact_url(source.location)} to"
        f" {redact_url(target.location)}; {len(known)} already there"
    )
    if skipped:
        out.write(f"; skipped {len(skipped)} (running, queued or pruned)")
    out.write("\n")
    return 0


def cmd_sync(args: argparse.Namespace, out: TextIO) -> int:
    from pytest_rerun_runs.spool import spool_directory, upload

    location = store_location(args.store)
    rootdir, _ = locate.find_rootdir(Path.cwd())
    directory = spool_directory(rootdir)
    store = open_store(location, stale_after=stale_after())
    try:
        report = upload(directory, store, redact_url(location), now=time.time())
    finally:
        store.close()
    if args.format == "json":
        write_json(
            {
                "uploaded": [{"uid": uid, "run_id": run_id} for uid, run_id in report.uploaded],
                "still_running": report.still_running,
                "failed": [{"file": name, "error": error} for name, error in report.failed],
            },
            out,
        )
    else:
        ids = ", ".join(str(run_id) for _, run_id in report.uploaded)
        out.write(
            f"uploaded {len(report.uploaded)} spooled run(s) to {redact_url(location)}"
            f"{': ' + ids if ids else ''}\n"
        )
        if report.still_running:
            out.write(f"left {len(report.still_running)} run(s) whose session still runs\n")
        for name, error in report.failed:
            sys.stderr.write(
                f"pytest-runs: warning: {escape(name)} not uploaded: {escape(error)}\n"
            )
    return USAGE_ERROR if report.failed else 0


def _access_store(option: str | None) -> Any:
    """The store holding the server's tokens (created if it does not exist yet)."""
    store = open_store(store_location(option), stale_after=stale_after())
    if not hasattr(store, "add_token"):
        store.close()
        raise CommandError(
            f"{redact_url(store.location)} does not hold tokens: manage them on the server's store"
        )
    return store


def cmd_token_create(args: argparse.Namespace, out: TextIO) -> int:
    from pytest_rerun_runs.access import hash_token, new_token

    expires_in = None
    if args.expires:
        try:
            expires_in = parse_age(args.expires)
        except ValueError as exc:
            raise CommandError(f"--expires: {exc}") from None
    secret = new_token()
    now = time.time()
    store = _access_store(args.store)
    try:
        token = store.add_token(
            args.name,
            hash_token(secret),
            list(dict.fromkeys(args.scopes)),
            now,
            None if expires_in is None else now + expires_in,
        )
    finally:
        store.close()
    if args.format == "json":
        write_json({**token.to_dict(), "token": secret}, out)
        return 0
    out.write(
        f"token {token.id} ({', '.join(token.scopes)})"
        f"{', expires ' + (iso(token.expires_at) or '') if token.expires_at else ''}:\n"
        f"{secret}\nIt is shown only now; the store keeps only its hash.\n"
    )
    return 0


def cmd_token_list(args: argparse.Namespace, out: TextIO) -> int:
    store = _access_store(args.store)
    try:
        tokens = store.list_tokens()
    finally:
        store.close()
    if args.format == "json":
        write_json([t.to_dict() for t in tokens], out)
        return 0
    now = time.time()
    rows = [["ID", "NAME", "SCOPES", "CREATED", "EXPIRES", "STATE"]]
    for t in tokens:
        state = "revoked" if t.revoked_at else "active" if t.usable(now) else "expired"
        rows.append(
            [
                str(t.id),
                escape(t.name or ""),
                ",".join(t.scopes),
                (iso(t.created_at) or "")[:19].replace("T", " "),
                (iso(t.expires_at) or "-")[:19].replace("T", " "),
                state,
            ]
        )
    print_table(rows, out)
    return 0


def cmd_token_revoke(args: argparse.Namespace, out: TextIO) -> int:
    store = _access_store(args.store)
    try:
        token = store.revoke_token(args.id, time.time())
    finally:
        store.close()
    if args.format == "json":
        write_json(token.to_dict(), out)
    else:
        out.write(f"token {token.id} revoked\n")
    return 0


def _silence_stdout() -> None:
    """Send what is still buffered for stdout nowhere, so that exiting is quiet."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):
        pass
