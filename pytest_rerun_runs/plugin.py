"""pytest hooks: options, ini settings and wiring; the work is done elsewhere.

Registered through the ``pytest11`` entry point as ``rerun_runs``, so
``-p no:rerun_runs`` disables it. In the controller, :func:`pytest_cmdline_main`
checks the options, resolves a retry's source and plan (``retry_source``,
``planner``), stashes the plan and registers the recorder (``recording``) and,
for a retry, the collection narrowing (``collection``). An xdist worker gets the
plan through its workerinput and registers only the narrowing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_rerun_runs import locate

if TYPE_CHECKING:
    from collections.abc import Callable

    from pytest_rerun_runs.collection import RetryState
    from pytest_rerun_runs.recording import RecordingOptions
    from pytest_rerun_runs.retry_source import RetrySource
    from pytest_rerun_runs.store import Run

#: The workerinput key the plan travels under to xdist workers.
PLAN_KEY = "rerun_runs_plan"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rerun-runs", "run history and retries (pytest-rerun-runs)")
    group.addoption(
        "--runs-store",
        metavar="PATH|URL",
        default=None,
        help="Run store file or URL (default: <rootdir>/.pytest_runs/runs.db; also"
        f" ${locate.ENV_VAR} and the '{locate.INI_NAME}' ini option). Write it as"
        " --runs-store=PATH: a separate PATH can be taken for a test path by pytest.",
    )
    group.addoption("--run-label", metavar="TEXT", default=None, help="A label stored on the run.")
    group.addoption(
        "--run-meta",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="Metadata stored on the run (repeatable).",
    )
    group.addoption(
        "--retry-run",
        metavar="ID|last|FILE",
        default=None,
        help="Run the recorded selection of run ID ('last': the newest finished run; FILE:"
        " a run file from 'pytest-runs export') as a new run linked to it. Paths, node ids,"
        " -k and -m narrow it further.",
    )
    group.addoption(
        "--failed-only",
        action="store_true",
        default=False,
        help="With --retry-run: only the tests that failed or errored (and, if the source"
        " stopped early, those that never ran), and its collection errors.",
    )
    group.addoption(
        "--retry-reason", metavar="TEXT", default=None, help="With --retry-run: why, stored."
    )
    group.addoption(
        "--retry-order",
        choices=("recorded", "collected"),
        default=None,
        help="With --retry-run: run in the source's recorded order (default) or pytest's.",
    )
    parser.addini(
        "runs_flush_interval",
        help="Seconds of results held in memory before they are written (default: 1).",
        default="1",
    )
    parser.addini(
        "runs_stale_after",
        help="Seconds after which a running run that stopped writing reads 'interrupted'"
        " (default: 3600).",
        default=None,
    )
    parser.addini(
        locate.INI_NAME,
        help="Run store file, relative to the rootdir (default: .pytest_runs/runs.db).",
        default=None,
    )


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """Check the options and plan a retry before anything is collected or written."""
    if hasattr(config, "workerinput"):
        return None
    previewing = config.option.collectonly and config.getoption("retry_run") is not None
    if _not_a_test_session(config) and not previewing:
        _reject_retry_options_without_retry(config)
        return None
    from pytest_rerun_runs.recording import PLUGIN_NAME, RecordingPlugin

    options = recording_options(config)
    source = None
    if config.getoption("retry_run") is not None:
        from pytest_rerun_runs.store import NothingToRetry

        try:
            source = plan_retry(config, options)
        except NothingToRetry as exc:
            sys.stdout.write(f"{exc}\n")
            return int(pytest.ExitCode.NO_TESTS_COLLECTED)
    if not previewing:  # --collect-only shows what a retry would run and records nothing
        config.pluginmanager.register(RecordingPlugin(config, options, source), PLUGIN_NAME)
    return None


def pytest_configure(config: pytest.Config) -> None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        return
    from pytest_rerun_runs.worker import WorkerPlugin

    config.pluginmanager.register(WorkerPlugin(config), "rerun-runs-worker")
    plan = workerinput.get(PLAN_KEY)
    if plan is not None:
        from pytest_rerun_runs.collection import RetryState
        from pytest_rerun_runs.planner import RetryPlan

        register_narrowing(config, RetryState(RetryPlan.from_dict(plan)))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    # Only a retry imports the narrowing, and stashes its state under its key.
    collection = sys.modules.get("pytest_rerun_runs.collection")
    if collection is None:
        return
    state = node.config.stash.get(collection.retry_state_key, None)
    if state is not None:
        node.workerinput[PLAN_KEY] = state.plan.to_dict()


def register_narrowing(config: pytest.Config, state: RetryState) -> None:
    from pytest_rerun_runs.collection import PLUGIN_NAME, NarrowingPlugin, retry_state_key

    config.stash[retry_state_key] = state
    config.pluginmanager.register(NarrowingPlugin(config, state), PLUGIN_NAME)


def recording_options(config: pytest.Config) -> RecordingOptions:
    """What the options and ini settings say, checked: bad values are usage errors."""
    from pytest_rerun_runs.recording import RecordingOptions
    from pytest_rerun_runs.store import (
        DEFAULT_STALE_AFTER,
        RunsError,
        backend_for,
        clean_text,
        redact_url,
    )

    _reject_retry_options_without_retry(config)
    check_separate_path_option(config, "--runs-store")
    check_separate_path_option(config, "--retry-run")
    invocation_dir = config.invocation_params.dir
    location, default = locate.resolve_store(
        config.getoption("runs_store"),
        config.getini(locate.INI_NAME),
        invocation_dir,
        config.rootpath,
    )
    try:
        backend_for(location)
    except RunsError as exc:
        raise pytest.UsageError(f"--runs-store: {exc}") from None
    label: str | None = config.getoption("run_label")
    if label is not None and any(mark in label for mark in "\n\r\0"):
        raise pytest.UsageError(f"--run-label expects one line of text, got {label!r}")
    return RecordingOptions(
        store_location=location,
        default_store=default,
        display_location=redact_url(locate.display_path(location, invocation_dir)),
        label=None if label is None else clean_text(label),
        meta=parse_meta(config.getoption("run_meta")),
        flush_interval=parse_seconds(config, "runs_flush_interval", 1.0),
        stale_after=parse_seconds(
            config, "runs_stale_after", DEFAULT_STALE_AFTER, allow_zero=False
        ),
        notes=[],
    )


def plan_retry(config: pytest.Config, options: RecordingOptions) -> RetrySource:
    """Resolve ``--retry-run``, plan the retry and register the narrowing; writes nothing."""
    from pytest_rerun_runs import planner
    from pytest_rerun_runs.collection import RetryState
    from pytest_rerun_runs.retry_source import parse_run_reference, resolve_source
    from pytest_rerun_runs.store import RunsError
    from pytest_rerun_runs.text import summarize

    value: str = config.getoption("retry_run")
    prefix = f"--retry-run {value if len(value) <= 40 else value[:40] + '...'}"
    try:
        reference = parse_run_reference(value, base=config.invocation_params.dir)
        order: planner.RetryOrder = config.getoption("retry_order") or "recorded"
        source = resolve_source(
            reference,
            options.store_location,
            stale_after=options.stale_after,
            rootdir=str(config.rootpath),
            order=order,
            claim=None if _not_a_test_session(config) else claimer(config, options),
        )
        if source.claim is not None:  # a queued run: its plan is frozen
            if config.getoption("failed_only"):
                raise pytest.UsageError(
                    f"{prefix}: run {source.claim} is a queued retry that runs its frozen"
                    " plan; --failed-only does not apply to it"
                )
            assert source.plan is not None
            plan = source.plan
        elif source.plan is not None:  # failing: the source decides the plan
            plan = source.plan._replace(reason=config.getoption("retry_reason"))
        else:
            plan = planner.plan_retry(
                source.run,
                failed_only=config.getoption("failed_only"),
                reason=config.getoption("retry_reason"),
                order=order,
            )
    except RunsError as exc:
        from pytest_rerun_runs.store import NothingToRetry

        if isinstance(exc, NothingToRetry):
            raise
        raise pytest.UsageError(f"{prefix}: {exc}") from None
    rootdir = config.rootpath
    outside = [f for f in plan.files if not is_inside(rootdir, f)]
    if outside:
        raise pytest.UsageError(
            f"{prefix}: the plan of {source.describe()} reaches outside the rootdir"
            f" ({summarize(outside)}); nothing outside {rootdir} is collected"
        )
    if not any((rootdir / f).exists() for f in plan.files):
        raise pytest.UsageError(
            f"{prefix}: none of the {len(plan.tests)} planned tests of {source.describe()}"
            f" exist any more (missing files: {summarize(plan.files)})"
        )
    options.notes.extend(source_differences(config, source.run))
    register_narrowing(config, RetryState(plan))
    return source


def claimer(config: pytest.Config, options: RecordingOptions) -> Callable[[int], bool]:
    """Claims a queued run for this session before collection (``--retry-run=next``:
    two sessions may reach for the same run; the one that loses takes the next).
    Recording claims it again later, which for the same session changes nothing."""

    def claim(run_id: int) -> bool:
        import time

        from pytest_rerun_runs.recording import session_invocation
        from pytest_rerun_runs.store import AlreadyClaimed, open_store

        store = open_store(options.store_location, create=False, stale_after=options.stale_after)
        try:
            store.claim_run(run_id, session_invocation(config), time.time())
        except AlreadyClaimed:
            return False
        finally:
            store.close()
        return True

    return claim


def is_inside(rootdir: Path, relative: str) -> bool:
    """Whether ``relative`` names a path inside ``rootdir`` (lexically: no
    absolute paths, no ``..`` above it)."""
    import os.path

    target = os.path.normpath(os.path.join(rootdir, relative))
    return target == str(rootdir) or target.startswith(str(rootdir).rstrip(os.sep) + os.sep)


def source_differences(config: pytest.Config, source: Run) -> list[str]:
    """Notes on how the source's recorded environment differs from this session's."""
    from pytest_rerun_runs.invocation import git_info
    from pytest_rerun_runs.text import escape

    notes = []
    recorded = source.summary.invocation
    now_git = git_info(config.rootpath)
    if recorded.git.commit and now_git.commit and recorded.git.commit != now_git.commit:
        notes.append(
            f"note: run {source.id} was recorded at commit {escape(recorded.git.commit[:12])},"
            f" this is {now_git.commit[:12]}"
        )
    python = ".".join(map(str, sys.version_info[:3]))
    if recorded.python != python:
        notes.append(
            f"note: run {source.id} was recorded on Python {escape(recorded.python[:20])},"
            f" this is {python}"
        )
    return notes


def _not_a_test_session(config: pytest.Config) -> bool:
    option = config.option
    return any(
        getattr(option, name, False)
        for name in (
            "help",
            "version",
            "collectonly",
            "showfixtures",
            "show_fixtures_per_test",
            "markers",
        )
    )


def _reject_retry_options_without_retry(config: pytest.Config) -> None:
    if config.getoption("retry_run") is not None:
        return
    if config.getoption("failed_only"):
        raise pytest.UsageError(
            "--failed-only needs --retry-run (hint: --retry-run last --failed-only)"
        )
    for option in ("--retry-reason", "--retry-order"):
        if config.getoption(option.lstrip("-").replace("-", "_")) is not None:
            raise pytest.UsageError(f"{option} needs --retry-run")


def parse_meta(values: list[str]) -> dict[str, str]:
    from pytest_rerun_runs.store import clean_text

    meta: dict[str, str] = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key.strip():
            raise pytest.UsageError(f"--run-meta expects KEY=VALUE, got {value!r}")
        if any(mark in value for mark in "\n\r\0"):
            raise pytest.UsageError(f"--run-meta expects one line of text, got {value!r}")
        meta[clean_text(key.strip())] = clean_text(text)
    return meta


def parse_seconds(
    config: pytest.Config, name: str, default: float, *, allow_zero: bool = True
) -> float:
    """The ini setting ``name`` as a finite number of seconds (>= 0, or > 0)."""
    raw = config.getini(name)
    if raw is None or raw == "":
        return default
    text = str(raw)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf") or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise pytest.UsageError(f"{name} expects seconds {bound}, got {text!r}")
    return value


def check_separate_path_option(config: pytest.Config, option: str) -> None:
    """Refuse ``--option PATH`` when PATH moved the rootdir (PYTEST-NOTES 1).

    pytest picks its rootdir before plugins add their options, so an existing
    file given as a separate token counts as a test path there.
    """
    args = [str(arg) for arg in config.invocation_params.args]
    invocation_dir = config.invocation_params.dir
    for index, arg in enumerate(args[:-1]):
        if arg != option:
            continue
        value = args[index + 1]
        if (
            (invocation_dir / value).exists()
            and config.inipath is None
            and config.rootpath in invocation_dir.parents
        ):
            raise pytest.UsageError(
                f"{option} {value}: pytest took {value} for a test path and moved the"
                f" rootdir to {config.rootpath}; write {option}={value}"
            )
