"""pytest hooks: options, ini settings and wiring of the recorder.

Registered through the ``pytest11`` entry point as ``rerun_runs``, so
``-p no:rerun_runs`` disables it.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Generator
from typing import Any

import pytest

from pytest_rerun_runs import locate
from pytest_rerun_runs.invocation import ci_info, git_info
from pytest_rerun_runs.recorder import Recorder, relative_file
from pytest_rerun_runs.store import (
    Invocation,
    NewRun,
    RunFinish,
    RunStore,
    SelectedTest,
    Selection,
    open_store,
)

PLUGIN_NAME = "rerun-runs-recorder"
recording_key = pytest.StashKey["RecordingPlugin"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rerun-runs", "run history (pytest-rerun-runs)")
    group.addoption(
        "--runs-store",
        metavar="PATH",
        default=None,
        help="Run store file (default: <rootdir>/.pytest_runs/runs.db; also"
        f" ${locate.ENV_VAR} and the '{locate.INI_NAME}' ini option). Write it as"
        " --runs-store=PATH: a separate PATH can be taken for a test path by pytest.",
    )
    group.addoption(
        "--run-label",
        metavar="TEXT",
        default=None,
        help="A label stored on this session's run.",
    )
    group.addoption(
        "--run-meta",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="Metadata stored on this session's run (repeatable).",
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


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        config.pluginmanager.register(WorkerPlugin(config), "rerun-runs-worker")
        return
    if _not_a_test_session(config):
        return
    plugin = RecordingPlugin(config)
    config.stash[recording_key] = plugin
    config.pluginmanager.register(plugin, PLUGIN_NAME)


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
    for index, arg in enumerate(args[:-1]):
        if arg != option:
            continue
        value = args[index + 1]
        path = config.invocation_params.dir / value
        invocation_dir = config.invocation_params.dir
        if (
            path.exists()
            and config.inipath is None
            and config.rootpath != invocation_dir
            and config.rootpath in invocation_dir.parents
        ):
            raise pytest.UsageError(
                f"{option} {value}: pytest took {value} for a test path and moved the"
                f" rootdir to {config.rootpath}; write {option}={value}"
            )


class RecordingPlugin:
    """Records the session as a run (controller process only)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        check_separate_path_option(config, "--runs-store")
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
            self._open_store, self._warn, flush_interval=parse_flush_interval(config)
        )
        self.created_at = time.time()
        self.deselected = 0
        self.selection: list[SelectedTest] | None = None
        self.warnings: list[str] = []
        self.xdist_controller = False
        self.worker_deselected_seen = False

    # -- store ----------------------------------------------------------------

    def _open_store(self) -> RunStore:
        if self.default_store:
            try:
                locate.prepare_default_dir(self.store_location)
            except OSError:
                pass  # the store itself reports why it cannot be written
        return open_store(self.store_location)

    def _warn(self, message: str) -> None:
        self.warnings.append(message)

    # -- collection -----------------------------------------------------------

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.created_at = time.time()
        self.xdist_controller = self.config.pluginmanager.has_plugin("dsession")

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
        if self.selection is not None or self.recorder.has_pending_results:
            self._start(self.selection or [])

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        if self.recorder.started or self.recorder.disabled:
            return
        # Under xdist the controller only learns node ids; the file of a node id
        # is the part before its first "::", as pytest builds node ids.
        self._start([SelectedTest(nodeid, nodeid.split("::")[0]) for nodeid in ids])
        self._write_start_line()

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        output = getattr(node, "workeroutput", None) or {}
        if "rerun_runs_deselected" in output and not self.worker_deselected_seen:
            self.worker_deselected_seen = True
            self.deselected += int(output["rerun_runs_deselected"])

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
            host=socket.gethostname(),
            pid=os.getpid(),
            plugins=sorted(
                {
                    f"{dist.project_name}-{dist.version}"
                    for _, dist in config.pluginmanager.list_plugin_distinfo()
                }
            ),
            workers=workers if isinstance(workers, int) else None,
            git=git_info(config.rootpath),
            ci=ci_info(),
        )

    def _start(self, tests: list[SelectedTest]) -> None:
        self.selection = tests
        new_run = NewRun(
            invocation=self._invocation(),
            created_at=self.created_at,
            started_at=time.time(),
            label=self.label,
            meta=self.meta,
        )
        self.recorder.start(new_run, Selection(tests=tests, deselected=self.deselected))

    # -- running --------------------------------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.recorder.add_test_report(report)

    def pytest_report_collectionfinish(self) -> str | None:
        return self._start_line()

    def _start_line(self) -> str | None:
        if self.recorder.run_id is None or self.config.get_verbosity() < -1:
            return None
        return f"rerun-runs: recording run {self.recorder.run_id} in {self.display_location}"

    def _write_start_line(self) -> None:
        line = self._start_line()
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if line and reporter is not None:
            reporter.write_line(line)

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
            )
        )
        self.exit_status = exit_status
        if self.config.pluginmanager.get_plugin("terminalreporter") is None:
            for message in self.warnings:
                sys.stderr.write(f"rerun-runs: warning: {message}\n")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for message in self.warnings:
            terminalreporter.write_line(f"rerun-runs: warning: {message}", yellow=True)
        run_id = self.recorder.run_id
        if run_id is None or self.recorder.disabled or self.config.get_verbosity() < -1:
            return
        terminalreporter.write_line(
            f"run {run_id} recorded: {self._counts_text()} in {self.display_location}"
        )

    def _counts_text(self) -> str:
        counts = self.recorder.counts()
        parts = [f"{number} {name.replace('_', ' ')}" for name, number in counts.items() if number]
        return ", ".join(parts) or "no tests"


class WorkerPlugin:
    """On an xdist worker: never touches the store; reports what it deselected."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.deselected = 0

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += len(items)

    def pytest_sessionfinish(self) -> None:
        self.config.workeroutput["rerun_runs_deselected"] = self.deselected  # type: ignore[attr-defined]
