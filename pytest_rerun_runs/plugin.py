"""pytest hooks: options, ini settings and wiring of the recorder and the retry.

Registered through the ``pytest11`` entry point as ``rerun_runs``, so
``-p no:rerun_runs`` disables it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from pytest_rerun_runs import locate
from pytest_rerun_runs.invocation import ci_info, git_info
from pytest_rerun_runs.planner import (
    RETRY_SOURCE_OUTCOMES,
    NothingToRetry,
    PlanMatcher,
    RetryPlan,
    RetryRefused,
    plan_retry,
    retry_mode,
    summarize_ids,
)
from pytest_rerun_runs.recorder import Recorder, relative_file
from pytest_rerun_runs.store import (
    Invocation,
    NewRun,
    Result,
    RetryMode,
    Run,
    RunFinish,
    RunStore,
    SelectedTest,
    Selection,
    StoreError,
    counts_text,
    hostname,
    open_store,
)

PLUGIN_NAME = "rerun-runs-recorder"
WORKERINPUT_KEY = "rerun_runs_plan"
recording_key = pytest.StashKey["RecordingPlugin"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rerun-runs", "run history and retries (pytest-rerun-runs)")
    group.addoption(
        "--runs-store",
        metavar="PATH",
        default=None,
        help="Run store file (default: <rootdir>/.pytest_runs/runs.db; also"
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
        metavar="ID",
        default=None,
        help="Run the recorded selection of run ID ('last': the newest finished run) as a"
        " new run linked to it. Paths, node ids, -k and -m narrow it further.",
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
        locate.INI_NAME,
        help="Run store file, relative to the rootdir (default: .pytest_runs/runs.db).",
        default=None,
    )


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """Validate the options and plan a retry before anything is collected or written."""
    if hasattr(config, "workerinput"):
        return None
    previewing = config.option.collectonly and config.getoption("retry_run") is not None
    if _not_a_test_session(config) and not previewing:
        _reject_retry_options_without_retry(config)
        return None
    try:
        plugin = RecordingPlugin(config)
    except NothingToRetry as exc:
        sys.stdout.write(f"{exc}\n")
        return int(pytest.ExitCode.NO_TESTS_COLLECTED)
    if not previewing:  # --collect-only shows what a retry would run and records nothing
        config.stash[recording_key] = plugin
        config.pluginmanager.register(plugin, PLUGIN_NAME)
    if plugin.retry is not None:
        retry_plugin = RetryPlugin(config, plugin.retry.to_workerinput())
        config.pluginmanager.register(retry_plugin, "rerun-runs-retry")
    return None


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        return
    config.pluginmanager.register(WorkerPlugin(config), "rerun-runs-worker")
    plan = config.workerinput.get(WORKERINPUT_KEY)
    if plan is not None:
        config.pluginmanager.register(RetryPlugin(config, plan), "rerun-runs-retry")


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
    meta: dict[str, str] = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key.strip():
            raise pytest.UsageError(f"--run-meta expects KEY=VALUE, got {value!r}")
        meta[key.strip()] = text
    return meta


def parse_flush_interval(config: pytest.Config) -> float:
    text = str(config.getini("runs_flush_interval"))
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise pytest.UsageError(f"runs_flush_interval expects seconds >= 0, got {text!r}")
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


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def plugin_distributions(config: pytest.Config) -> list[str]:
    """``name-version`` of every installed distribution that provides a pytest plugin.

    Parsing each distribution's METADATA costs about a millisecond, so the name and
    version are read from its ``.dist-info`` directory name where there is one
    (``importlib.metadata``'s private ``_path``, checked on CPython 3.10 to 3.13),
    and from the metadata otherwise.
    """
    found = set()
    for _, dist in config.pluginmanager.list_plugin_distinfo():
        directory = getattr(getattr(dist, "_dist", None), "_path", None)
        name = str(getattr(directory, "name", ""))
        stem = name.removesuffix(".dist-info")
        if stem != name and stem.count("-") == 1:
            found.add(stem.replace("_", "-"))
        else:
            found.add(f"{dist.project_name}-{dist.version}")
    return sorted(found)


def user_gave_paths(config: pytest.Config) -> bool:
    """Whether the collection arguments came from the command line (or addopts)."""
    return bool(config.args_source == pytest.Config.ArgsSource.ARGS)


class RecordingPlugin:
    """Records the session as a run (controller process only); applies a retry plan."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        _reject_retry_options_without_retry(config)
        check_separate_path_option(config, "--runs-store")
        check_separate_path_option(config, "--retry-run")
        self.meta = parse_meta(config.getoption("run_meta"))
        self.label: str | None = config.getoption("run_label")
        invocation_dir = config.invocation_params.dir
        self.store_location, self.default_store = locate.resolve_store(
            config.getoption("runs_store"),
            config.getini(locate.INI_NAME),
            invocation_dir,
            config.rootpath,
        )
        self.display_location = locate.display_path(self.store_location, invocation_dir)
        self.recorder = Recorder(
            self._open_store,
            self._warn,
            flush_interval=parse_flush_interval(config),
            on_result=self._on_result,
        )
        self.created_at = time.time()
        self.deselected = 0
        self.selection: list[SelectedTest] | None = None
        self.warnings: list[str] = []
        self.notes: list[str] = []
        self.worker_output_seen = False
        self.missing: list[str] = []
        self.source_failures: set[str] = set()
        self.passed_on_retry: list[str] = []
        self.retry: RetryPlan | None = None
        retry_option = config.getoption("retry_run")
        if retry_option is not None:
            self.retry = self._plan(retry_option)

    # -- retry planning ---------------------------------------------------------

    def _plan(self, value: str) -> RetryPlan:
        config = self.config
        file = config.invocation_params.dir / value
        from_file = value != "last" and not _is_number(value) and file.is_file()
        try:
            if from_file:
                source = self._import_source(value, file)
            else:
                store = open_store(self.store_location, create=False)
                try:
                    source = self._load_source(store, value)
                finally:
                    store.close()
            plan = self._checked_plan(value, source)
        except StoreError as exc:
            raise pytest.UsageError(f"--retry-run {value}: {exc}") from None
        failing = ("failed", "error")
        self.source_failures = {r.nodeid for r in source.results if r.outcome in failing}
        self._note_differences(source)
        return plan

    def _checked_plan(self, value: str, source: Run) -> RetryPlan:
        config = self.config
        try:
            plan = plan_retry(
                source,
                failed_only=config.getoption("failed_only"),
                reason=config.getoption("retry_reason"),
                order=config.getoption("retry_order") or "recorded",
            )
        except RetryRefused as exc:
            raise pytest.UsageError(f"--retry-run {value}: {exc}") from None
        rootdir = config.rootpath
        if not any((rootdir / f).exists() for f in plan.files):
            raise pytest.UsageError(
                f"--retry-run {value}: none of the {len(plan.tests)} planned tests of run"
                f" {source.id} exist any more (missing files: {summarize_ids(plan.files)})"
            )
        return plan

    def _import_source(self, value: str, file: Path) -> Run:
        """The run of an export file, checked, then imported into this store."""
        from pytest_rerun_runs import exchange

        try:
            run, export = exchange.load_run_file(file)
        except exchange.RunFileError as exc:
            raise pytest.UsageError(f"--retry-run {value}: {exc}") from None
        self._checked_plan(value, run)  # nothing is written for a file that cannot be retried
        store = self._open_store()
        try:
            return store.get_run(exchange.import_run(store, run, export, file))
        finally:
            store.close()

    def _load_source(self, store: RunStore, value: str) -> Run:
        if value == "last":
            run_id = store.latest_run_id(finished=True)
            if run_id is None:
                raise StoreError(f"{store.location} holds no finished run to retry")
            return store.get_run(run_id, RETRY_SOURCE_OUTCOMES)
        run_id = int(value) if _is_number(value) else 0
        if run_id < 1:
            raise pytest.UsageError(
                "--retry-run expects a run id (a positive number), 'last' or a run file"
                f" written by 'pytest-runs export', got {value!r}"
            )
        return store.get_run(run_id, RETRY_SOURCE_OUTCOMES)

    def _note_differences(self, source: Run) -> None:
        recorded = source.summary.invocation
        now_git = git_info(self.config.rootpath)
        if recorded.git.commit and now_git.commit and recorded.git.commit != now_git.commit:
            self.notes.append(
                f"note: run {source.id} was recorded at commit {recorded.git.commit[:12]},"
                f" this is {now_git.commit[:12]}"
            )
        python = ".".join(map(str, sys.version_info[:3]))
        if recorded.python != python:
            self.notes.append(
                f"note: run {source.id} was recorded on Python {recorded.python}, this is {python}"
            )

    # -- store ------------------------------------------------------------------

    def _open_store(self) -> RunStore:
        if self.default_store:
            try:
                locate.prepare_default_dir(self.store_location)
            except OSError:
                pass  # the store itself reports why it cannot be written
        return open_store(self.store_location)

    def _warn(self, message: str) -> None:
        self.warnings.append(message)

    def _on_result(self, result: Result) -> None:
        if result.outcome == "passed" and result.nodeid in self.source_failures:
            self.passed_on_retry.append(result.nodeid)

    # -- collection ---------------------------------------------------------------

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.created_at = time.time()

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, items: list[pytest.Item]
    ) -> Generator[None]:
        yield
        rootdir = str(self.config.rootpath)
        files: dict[Any, str] = {}
        selection = []
        for item in items:
            path = item.path
            file = files.get(path)
            if file is None:
                file = files[path] = relative_file(path, rootdir)
            selection.append(SelectedTest(item.nodeid, file))
        self.selection = selection

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += len(items)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if not report.passed:
            self.recorder.add_collect_report(report)

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        retry = self.config.pluginmanager.get_plugin("rerun-runs-retry")
        if isinstance(retry, RetryPlugin):
            if retry.aborted:
                return
            self.missing = retry.missing
        if self.selection is not None or self.recorder.has_pending_results:
            self._start(self.selection or [])

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        if self.retry is not None:
            node.workerinput[WORKERINPUT_KEY] = self.retry.to_workerinput()

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        if self.recorder.started or self.recorder.disabled:
            return
        # Under xdist the controller only learns node ids; the file of a node id
        # is the part before its first "::", as pytest builds node ids.
        self._start([SelectedTest(nodeid, nodeid.split("::")[0]) for nodeid in ids])
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            for line in self._start_lines():
                reporter.write_line(line)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        output = getattr(node, "workeroutput", None) or {}
        if "rerun_runs_deselected" not in output or self.worker_output_seen:
            return
        # Every worker collects and deselects the same; one worker's figures count.
        self.worker_output_seen = True
        self.deselected += int(output["rerun_runs_deselected"])
        self.missing = list(output.get("rerun_runs_missing", []))

    def _invocation(self) -> Invocation:
        config = self.config
        uname = os.uname() if hasattr(os, "uname") else None
        platform_name = (
            f"{uname.sysname}-{uname.release}-{uname.machine}" if uname else sys.platform
        )
        workers = getattr(config.option, "numprocesses", None)
        return Invocation(
            args=[str(arg) for arg in config.invocation_params.args],
            invocation_dir=str(config.invocation_params.dir),
            rootdir=str(config.rootpath),
            inifile=str(config.inipath) if config.inipath else None,
            python=".".join(map(str, sys.version_info[:3])),
            pytest=pytest.__version__,
            platform=platform_name,
            host=hostname(),
            pid=os.getpid(),
            plugins=plugin_distributions(config),
            workers=workers if isinstance(workers, int) else None,
            git=git_info(config.rootpath),
            ci=ci_info(),
        )

    def _mode(self) -> RetryMode:
        if self.retry is None:
            return "full"
        selected = {test.nodeid for test in self.selection or []}
        return retry_mode(self.retry, selected, self.missing)

    def _start(self, tests: list[SelectedTest]) -> None:
        self.selection = tests
        retry = self.retry
        new_run = NewRun(
            invocation=self._invocation(),
            created_at=self.created_at,
            started_at=time.time(),
            label=self.label,
            meta=self.meta,
            source_run_id=retry.source_run_id if retry else None,
            root_run_id=retry.root_run_id if retry else None,
            attempt=retry.attempt if retry else 1,
            mode=self._mode(),
            reason=retry.reason if retry else None,
        )
        self.recorder.start(
            new_run, Selection(tests=tests, deselected=self.deselected, missing=self.missing)
        )

    # -- running ------------------------------------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.recorder.add_test_report(report)

    def pytest_report_collectionfinish(self) -> list[str]:
        return self._start_lines()

    def _start_lines(self) -> list[str]:
        lines: list[str] = []
        if self.config.get_verbosity() < -1:
            return lines
        retry = self.retry
        if retry is not None:
            mode = {"full": "all tests", "failed_only": "failed-only"}[retry.mode]
            planned = len(retry.tests) + len(retry.collectors)
            lines.append(
                f"rerun-runs: retrying run {retry.source_run_id} ({mode}): {planned:,} of"
                f" {retry.source_size:,} tests, attempt {retry.attempt}"
            )
            lines.extend(f"rerun-runs: {note}" for note in self.notes)
        if self.missing:
            lines.append(self._missing_line())
        if self.recorder.run_id is not None:
            lines.append(
                f"rerun-runs: recording run {self.recorder.run_id} in {self.display_location}"
            )
        return lines

    def _missing_line(self) -> str:
        assert self.retry is not None
        return (
            f"rerun-runs: warning: {len(self.missing)} tests of run {self.retry.source_run_id}"
            f" no longer exist: {summarize_ids(self.missing)}"
        )

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        exit_status = int(session.exitstatus)
        if not self.recorder.started and self.recorder.has_pending_results:
            self._start([])
        self.recorder.finish(
            RunFinish(
                exit_status=exit_status,
                finished_at=time.time(),
                deselected=self.deselected,
                mode=self._mode() if self.retry is not None else None,
                missing=self.missing if self.retry is not None else None,
            )
        )
        if self.config.pluginmanager.get_plugin("terminalreporter") is None:
            for message in self.warnings:
                sys.stderr.write(f"rerun-runs: warning: {message}\n")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for message in self.warnings:
            terminalreporter.write_line(f"rerun-runs: warning: {message}", yellow=True)
        run_id = self.recorder.run_id
        if self.config.get_verbosity() < -1:
            return
        if self.missing and self.config.pluginmanager.has_plugin("dsession"):
            # Under xdist the workers report missing tests only at their end.
            terminalreporter.write_line(self._missing_line(), yellow=True)
        if self.passed_on_retry:
            terminalreporter.write_line(
                f"rerun-runs: passed on retry (flaky candidates): "
                f"{summarize_ids(self.passed_on_retry)}"
            )
        if run_id is None or self.recorder.disabled:
            return
        terminalreporter.write_line(
            f"run {run_id} recorded: {counts_text(self.recorder.counts())}"
            f" in {self.display_location}"
        )


class RetryPlugin:
    """Keeps what a retry plan selects, in the plan's order, and deselects the rest.

    Runs where collection happens: in the controller, or on each xdist worker.
    """

    def __init__(self, config: pytest.Config, plan: dict[str, Any]) -> None:
        self.config = config
        self.matcher = PlanMatcher(plan["tests"], plan["collectors"])
        self.planned: list[SelectedTest] = [SelectedTest(*test) for test in plan["tests"]]
        self.order: str = plan["order"]
        self.missing: list[str] = []
        self.aborted = False
        rootdir = config.rootpath
        files = [rootdir / file for file in plan_files(plan)]
        # Only the files holding planned tests, and the directories on the way
        # to them, are collected; every other path is ignored before pytest
        # walks into it or imports it.
        self.wanted = {*files, *(p for f in files for p in f.parents)}
        self.wanted_trees = [
            rootdir / c[1] for c in plan["collectors"] if (rootdir / c[1]).is_dir()
        ]
        if not user_gave_paths(config):
            config.args = [str(d) for d in collection_roots(files)]

    @pytest.hookimpl(tryfirst=True)
    def pytest_ignore_collect(self, collection_path: Path) -> bool | None:
        if collection_path in self.wanted:
            return None
        if any(tree in collection_path.parents for tree in self.wanted_trees):
            return None
        return True

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        rank = self.matcher.rank
        ranked = [(rank(item.nodeid), index, item) for index, item in enumerate(items)]
        kept = [entry for entry in ranked if entry[0] is not None]
        dropped = [item for position, _, item in ranked if position is None]
        collected = {item.nodeid for item in items}
        self.missing = self._missing(collected)
        if not kept and self.missing and not hasattr(config, "workerinput"):
            self.aborted = True
            raise pytest.UsageError(
                f"none of the {len(self.planned)} planned tests exist any more"
                f" (not found: {summarize_ids(self.missing)})"
            )
        if self.order == "recorded":
            kept.sort(key=lambda entry: (entry[0], entry[1]))
        if dropped:
            config.hook.pytest_deselected(items=dropped)
        items[:] = [item for _, _, item in kept]

    def _missing(self, collected: set[str]) -> list[str]:
        rootdir = self.config.rootpath
        if user_gave_paths(self.config):
            # Paths and node ids narrow collection on purpose: only a test whose
            # file is gone is known to be missing.
            return [t.nodeid for t in self.planned if not (rootdir / t.file).exists()]
        return [t.nodeid for t in self.planned if t.nodeid not in collected]

    def pytest_sessionfinish(self) -> None:
        workeroutput = getattr(self.config, "workeroutput", None)
        if workeroutput is not None:
            workeroutput["rerun_runs_missing"] = self.missing


def plan_files(plan: dict[str, Any]) -> list[str]:
    """The files (relative to the rootdir) of a plan's tests and collectors."""
    return list(dict.fromkeys(entry[1] for entry in (*plan["tests"], *plan["collectors"])))


def collection_roots(paths: list[Path]) -> list[Path]:
    """The directories to give pytest for ``paths``: each existing path's directory
    (a directory itself for a directory), without those inside another."""
    directories = sorted({p if p.is_dir() else p.parent for p in paths if p.exists()})
    roots: list[Path] = []
    for directory in directories:
        if not any(root == directory or root in directory.parents for root in roots):
            roots.append(directory)
    return roots


class WorkerPlugin:
    """On an xdist worker: never touches the store; reports what it deselected."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.deselected = 0

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += len(items)

    def pytest_sessionfinish(self) -> None:
        self.config.workeroutput["rerun_runs_deselected"] = self.deselected  # type: ignore[attr-defined]
