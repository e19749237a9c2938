"""Recording the session as a run, in the controller process only.

:class:`RecordingPlugin` learns the selection (from ``session.items``, or from
the xdist workers' node ids), creates the run with it, feeds every report to
the :class:`~pytest_rerun_runs.recorder.Recorder` and finishes the run. For a
retry it reads the plan and what collection found from the stashed
:class:`~pytest_rerun_runs.collection.RetryState`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

from pytest_rerun_runs import locate
from pytest_rerun_runs.invocation import ci_info, git_info, tree_fingerprint
from pytest_rerun_runs.recorder import Recorder, collector_paused, relative_file
from pytest_rerun_runs.store import (
    FAILING_OUTCOMES,
    Invocation,
    NewRun,
    Outcome,
    RetryMode,
    RunFinish,
    RunsError,
    RunStore,
    SelectedTest,
    Selection,
    clean_text,
    counts_text,
    hostname,
    new_uid,
    open_store,
    redact_url,
    selected_tests,
    store_scheme,
)
from pytest_rerun_runs.text import escape, summarize
from pytest_rerun_runs.worker import DESELECTED_KEY, MISSING_KEY

if TYPE_CHECKING:
    # Only a retry needs these modules (plugin.py imports them then): every
    # session imports this one, so they are imported where they are used.
    from pytest_rerun_runs.collection import RetryState
    from pytest_rerun_runs.retry_source import RetrySource
    from pytest_rerun_runs.spool import SpoolWriter

PLUGIN_NAME = "rerun-runs-recorder"


class RecordingOptions(NamedTuple):
    """What the command line and ini settings say about recording."""

    store_location: str
    default_store: bool
    display_location: str
    label: str | None
    meta: dict[str, str]
    flush_interval: float
    stale_after: float
    #: Notes about the retry's source printed with the start lines.
    notes: list[str]


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


def session_invocation(config: pytest.Config, files: Iterable[str] = ()) -> Invocation:
    """How this session was started; store URLs in the arguments are redacted."""
    uname = os.uname() if hasattr(os, "uname") else None
    platform_name = f"{uname.sysname}-{uname.release}-{uname.machine}" if uname else sys.platform
    workers = getattr(config.option, "numprocesses", None)
    seed = getattr(config.option, "randomly_seed", None)
    git = git_info(config.rootpath)
    return Invocation(
        args=[clean_text(redact_url(str(arg))) for arg in config.invocation_params.args],
        invocation_dir=clean_text(str(config.invocation_params.dir)),
        rootdir=clean_text(str(config.rootpath)),
        inifile=clean_text(str(config.inipath)) if config.inipath else None,
        python=".".join(map(str, sys.version_info[:3])),
        pytest=pytest.__version__,
        platform=platform_name,
        host=hostname(),
        pid=os.getpid(),
        plugins=plugin_distributions(config),
        workers=workers if isinstance(workers, int) else None,
        git=git,
        ci={key: clean_text(value) for key, value in ci_info().items()},
        randomly_seed=seed if isinstance(seed, int) else None,
        tree=tree_fingerprint(config.rootpath, files, git),
    )


class RecordingPlugin:
    """Records the session as a run (controller process only)."""

    def __init__(
        self, config: pytest.Config, options: RecordingOptions, source: RetrySource | None
    ) -> None:
        self.config = config
        self.options = options
        self.source = source
        self.remote = store_scheme(options.store_location) in ("http", "https")
        self.recorder = Recorder(
            self._open_store,
            self._warn,
            flush_interval=options.flush_interval,
            # Only a retry watches results (for what passed after failing).
            on_result=self._on_result if source is not None else None,
            spool=self._spool if self.remote else None,
            on_cancel=self._cancel,
        )
        self.session: pytest.Session | None = None
        # pytest_runtest_logreport is the recorder's own method: pluggy calls it
        # three times a test, with no frame of this plugin's in between.
        self.pytest_runtest_logreport = self.recorder.add_test_report
        self.uploaded: list[tuple[str, int]] = []
        self.created_at = time.time()
        self.deselected = 0
        #: A retry's selected node ids, for its mode at the end.
        self.selected_nodeids: set[str] = set()
        self.collected = False
        self.warnings: list[str] = []
        self.worker_output_seen = False
        #: Under ``--dist each``, the collections of the workers reported so far.
        self.each_collections: list[list[str]] = []
        self.missing: list[str] = []
        self.source_failures: set[str] = set()
        if source is not None:
            self.source_failures = {
                r.nodeid for r in source.run.results if r.outcome in FAILING_OUTCOMES
            }
        #: The local id of a run file's run, once imported.
        self.imported_source_id: int | None = None
        self.passed_on_retry: list[str] = []
        #: Node ids with a result other than a pass in this retry (a node id may
        #: run more than once: --dist each, --keep-duplicates).
        self.not_passed_on_retry: set[str] = set()
        self.invocation: Invocation | None = None

    @property
    def retry(self) -> RetryState | None:
        # The state is stashed under collection.py's key, so there is none while
        # that module is not imported (it is for a retry, not for a plain session).
        collection = sys.modules.get("pytest_rerun_runs.collection")
        if collection is None:
            return None
        state: RetryState | None = self.config.stash.get(collection.retry_state_key, None)
        return state

    # -- store ------------------------------------------------------------------

    def _open_store(self) -> RunStore:
        if self.options.default_store:
            try:
                locate.prepare_default_dir(self.options.store_location)
            except OSError:
                pass  # the store itself reports why it cannot be written
        return open_store(self.options.store_location, stale_after=self.options.stale_after)

    def _warn(self, message: str) -> None:
        self.warnings.append(message)

    def _spool_directory(self) -> Path:
        from pytest_rerun_runs.spool import spool_directory

        return spool_directory(self.config.rootpath)

    def _spool(self, new_run: NewRun, selection: Selection, claimed: int | None) -> SpoolWriter:
        from pytest_rerun_runs.spool import SpoolWriter

        return SpoolWriter(
            self._spool_directory(),
            redact_url(self.options.store_location),
            new_run,
            selection,
            claimed,
        )

    def _cancel(self, run_id: int) -> None:
        """The run was cancelled through the server: stop as Ctrl-C stops pytest."""
        reason = f"run {run_id} was cancelled"
        if self.session is not None:
            self.session.shouldstop = reason
        dsession = self.config.pluginmanager.get_plugin("dsession")
        if dsession is not None:  # xdist's controller stops its workers itself
            dsession.shouldstop = reason

    def _on_result(self, nodeid: str, outcome: Outcome) -> None:
        if outcome == "passed":
            if nodeid in self.source_failures:
                self.passed_on_retry.append(nodeid)
        else:
            self.not_passed_on_retry.add(nodeid)

    # -- collection ---------------------------------------------------------------

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.created_at = time.time()
        self.session = session

    def pytest_collection_modifyitems(self) -> None:
        self.collected = True  # collection got as far as selecting items

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += len(items)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if not report.passed:
            self.recorder.add_collect_report(report)

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        # What pytest will run, in its order, exists only now: every plugin's
        # pytest_collection_modifyitems (--lf, --ff, --sw, -k, pytest-randomly,
        # wrappers whose code after yield runs after ours) is done.
        retry = self.retry
        if retry is not None:
            if retry.aborted:
                return
            self.missing = retry.missing
        if not self.collected and not self.recorder.has_pending_results:
            return  # a usage error before anything was collected: nothing to record
        with collector_paused():
            self._start(self._selected_items(session))

    def _selected_items(self, session: pytest.Session) -> list[SelectedTest]:
        rootdir = str(self.config.rootpath)
        known: dict[Any, str] = {}
        nodeids = []
        files = []
        # Items come grouped by file, sharing their file's path object: the
        # previous item's file is looked up again only when the path changes.
        last_path: Any = None
        file = ""
        for item in session.items:
            path = item.path
            if path is not last_path:
                last_path = path
                found = known.get(path)
                if found is None:
                    found = known[path] = clean_text(relative_file(path, rootdir))
                file = found
            nodeid = item.nodeid
            if not nodeid.isascii() or "\0" in nodeid:
                nodeid = clean_text(nodeid)
            nodeids.append(nodeid)
            files.append(file)
        return selected_tests(nodeids, files)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        retry = self.retry
        if self.recorder.started or self.recorder.disabled or (retry and retry.aborted):
            return
        if getattr(self.config.option, "dist", None) == "each":
            # Every worker runs every test it collected, and xdist starts them
            # once all have collected: the selection is each worker's in turn.
            self.each_collections.append(list(ids))
            dsession = self.config.pluginmanager.get_plugin("dsession")
            workers = getattr(getattr(dsession, "sched", None), "numnodes", None)
            if type(workers) is int and len(self.each_collections) < workers:
                return
            ids, self.each_collections = self._each_selection(), []
        if retry is not None:
            from pytest_rerun_runs.collection import retry_finds_anything

            if not retry_finds_anything(retry, ids):
                # The workers deselect everything; as without xdist, this is a usage
                # error and nothing is recorded (the exit code is set at the end).
                retry.aborted = True
                retry.missing = list(dict.fromkeys(t.nodeid for t in retry.plan.tests))
                return
        self._start_from_node_ids([clean_text(nodeid) for nodeid in ids])
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            for line in self._start_lines():
                reporter.write_line(line)

    def _each_selection(self) -> list[str]:
        return [nodeid for collected in self.each_collections for nodeid in collected]

    def _start_from_node_ids(self, nodeids: list[str]) -> None:
        # Under xdist the controller only learns node ids; the file of a node id
        # is the part before its first "::", as pytest builds node ids.
        with collector_paused():
            self._start(selected_tests(nodeids, [nodeid.split("::")[0] for nodeid in nodeids]))

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        output = getattr(node, "workeroutput", None) or {}
        if DESELECTED_KEY not in output or self.worker_output_seen:
            return
        # Every worker collects and deselects the same; one worker's figures count.
        self.worker_output_seen = True
        self.deselected += int(output[DESELECTED_KEY])
        self.missing = list(output.get(MISSING_KEY, []))

    def _mode(self) -> RetryMode:
        retry = self.retry
        if retry is None:
            return "full"
        from pytest_rerun_runs.planner import retry_mode

        return retry_mode(retry.plan, self.selected_nodeids, self.missing)

    def _new_run(self, store: RunStore, tests: list[SelectedTest]) -> NewRun:
        """The run this session records; a run file's run is imported first."""
        source_run_id, root_run_id, attempt, reason = None, None, 1, None
        retry = self.retry
        if retry is not None:
            plan = retry.plan
            source_run_id, root_run_id, attempt = plan.source_run_id, plan.root_run_id, plan.attempt
            reason = plan.reason
            source = self.source
            if source is not None and source.file is not None:
                from pytest_rerun_runs import exchange

                local_id = exchange.import_run(store, source.run, source.export, source.file)
                imported = store.get_summary(local_id)
                self.imported_source_id = local_id
                source_run_id, root_run_id = local_id, imported.root_run_id
                attempt = imported.attempt + 1
        files = {test.file for test in tests}
        self.invocation = session_invocation(self.config, files)
        return NewRun(
            uid=new_uid(),
            invocation=self.invocation,
            created_at=self.created_at,
            started_at=time.time(),
            label=self.options.label,
            meta=self.options.meta,
            source_run_id=source_run_id,
            root_run_id=root_run_id,
            attempt=attempt,
            mode=self._mode(),
            reason=reason,
            contributors=retry.plan.contributors if retry is not None else (),
        )

    def _start(self, tests: list[SelectedTest]) -> None:
        if self.retry is not None:
            self.selected_nodeids = {test.nodeid for test in tests}
        # One named tuple per test, which the garbage collector tracks as long as it
        # lives: nothing here keeps the selection once the run is created.
        claim = self.source.claim if self.source is not None else None
        if claim is not None and self.source is not None:
            # The queued run holds its selection: results take their positions in
            # it, and tests it does not name come after it.
            stored = Selection(tests=list(self.source.run.selection))
            try:
                self.recorder.start(lambda store: self._new_run(store, tests), stored, claim=claim)
            except RunsError as exc:  # another session claimed it first
                raise pytest.UsageError(f"--retry-run {claim}: {exc}") from None
            return
        self.recorder.start(
            lambda store: self._new_run(store, tests),
            Selection(tests=tests, deselected=self.deselected, missing=self.missing),
        )

    # -- running ------------------------------------------------------------------

    def pytest_report_collectionfinish(self) -> list[str]:
        return self._start_lines()

    def _start_lines(self) -> list[str]:
        lines: list[str] = []
        if self.config.get_verbosity() < -1:
            return lines
        retry, source = self.retry, self.source
        if retry is not None and source is not None:
            plan = retry.plan
            mode = {"full": "all tests", "failed_only": "failed-only", "failing": "failing"}.get(
                plan.mode, plan.mode
            )
            collectors = ""
            if plan.collectors:
                collectors = f" and {len(plan.collectors):,} files that failed to collect"
            imported = ""
            if self.imported_source_id is not None:
                imported = f", imported as run {self.imported_source_id}"
            lines.append(
                f"rerun-runs: retrying {source.describe()}{imported} ({mode}): {len(plan.tests):,}"
                f" of {plan.source_size:,} tests{collectors}, attempt {plan.attempt}"
            )
            lines.extend(f"rerun-runs: {note}" for note in self.options.notes)
            seed = getattr(self.config.option, "randomly_seed", None)
            if plan.order == "recorded" and seed is not None:
                recorded = source.run.summary.invocation.randomly_seed
                was = f"with seed {recorded}" if recorded is not None else "without it"
                lines.append(
                    f"rerun-runs: keeping {source.describe()}'s recorded order (pytest-randomly's"
                    f" seed {seed} reorders nothing; {source.describe()} was recorded {was})"
                )
        if self.missing:
            lines.append(self._missing_line())
        if self.recorder.run_id is not None:
            lines.append(
                f"rerun-runs: recording run {self.recorder.run_id} in"
                f" {self.options.display_location}"
            )
        return lines

    def _nothing_changed_since_source(self) -> bool:
        """Evidence for flakiness: the same working tree (and so the same commit)."""
        if self.source is None or self.invocation is None:
            return False
        recorded = self.source.run.summary.invocation.tree
        return recorded is not None and recorded == self.invocation.tree

    def _missing_line(self) -> str:
        source = self.source
        named = source.describe() if source is not None else "the source run"
        return (
            f"rerun-runs: warning: {len(self.missing)} tests of {named}"
            f" no longer exist: {summarize(self.missing)}"
        )

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        exit_status = int(session.exitstatus)
        retry = self.retry
        if retry is not None and retry.aborted:
            if exit_status != pytest.ExitCode.USAGE_ERROR:  # under xdist
                session.exitstatus = pytest.ExitCode.USAGE_ERROR
                from pytest_rerun_runs.collection import nothing_planned_exists

                sys.stderr.write(f"ERROR: {nothing_planned_exists(retry)}\n")
            return
        if exit_status == pytest.ExitCode.USAGE_ERROR and not self.recorder.started:
            return  # a usage error writes nothing
        if not self.recorder.started and self.each_collections:
            # Not every --dist each worker collected (the session stopped first).
            self._start_from_node_ids([clean_text(n) for n in self._each_selection()])
        if not self.recorder.started and self.recorder.has_pending_results:
            self._start([])
        retrying = self.retry is not None
        claimed = self.source is not None and self.source.claim is not None
        self.recorder.finish(
            RunFinish(
                exit_status=exit_status,
                finished_at=time.time(),
                deselected=self.deselected,
                mode=self._mode() if retrying and not claimed else None,
                missing=self.missing if retrying else None,
                status="cancelled" if self.recorder.cancelled else None,
            )
        )
        if self.remote and not self.recorder.spool:
            self._upload_spool()
        if self.config.pluginmanager.get_plugin("terminalreporter") is None:
            for message in self.warnings:
                sys.stderr.write(f"rerun-runs: warning: {escape(redact_url(message))}\n")

    def _upload_spool(self) -> None:
        """Upload what earlier sessions spooled for this server (this one reached it)."""
        from pytest_rerun_runs.spool import upload

        directory = self._spool_directory()
        if not directory.is_dir() or not any(directory.glob("*.jsonl")):
            return
        try:
            store = self._open_store()
            try:
                report = upload(
                    directory, store, redact_url(self.options.store_location), now=time.time()
                )
            finally:
                store.close()
        except Exception as exc:  # the next session tries again
            self._warn(f"spooled runs not uploaded: {exc}")
            return
        self.uploaded = report.uploaded
        for name, problem in report.failed:
            self._warn(f"spooled run {name} not uploaded: {problem}")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        for message in self.warnings:
            terminalreporter.write_line(
                f"rerun-runs: warning: {escape(redact_url(message))}", yellow=True
            )
        run_id = self.recorder.run_id
        if self.config.get_verbosity() < -1:
            return
        if self.missing and self.config.pluginmanager.has_plugin("dsession"):
            # Under xdist the workers report missing tests only at their end.
            terminalreporter.write_line(self._missing_line(), yellow=True)
        not_passed = self.not_passed_on_retry
        passed = [n for n in dict.fromkeys(self.passed_on_retry) if n not in not_passed]
        if passed:
            if self._nothing_changed_since_source():
                what = "passed on retry (flaky candidates)"
            else:
                what = "passed after changes (fixed, not flaky evidence)"
            terminalreporter.write_line(f"rerun-runs: {what}: {summarize(passed)}")
        if self.uploaded:
            ids = summarize([run_id for _, run_id in self.uploaded])
            terminalreporter.write_line(
                f"rerun-runs: uploaded {len(self.uploaded)} spooled run(s) to"
                f" {self.options.display_location}: {ids}"
            )
        if self.recorder.cancelled:
            terminalreporter.write_line(
                f"rerun-runs: run {run_id} was cancelled: the session stopped", yellow=True
            )
        if run_id is None or self.recorder.disabled or self.recorder.spool is not None:
            return
        terminalreporter.write_line(
            f"run {run_id} recorded: {counts_text(self.recorder.counts())}"
            f" in {self.options.display_location}"
        )
