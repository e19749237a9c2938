"""Run files: export a run as JSON, YAML or JUnit XML; read JSON/YAML run files back.

A JSON or YAML run file is the ``show --format json`` contract plus
``selection_files`` (the file of each selected test) and ``export`` (format
version, source store, time). ``pyyaml`` is imported only when YAML is used.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from pytest_rerun_runs.planner import is_below
from pytest_rerun_runs.store import InvalidRunFile, Result, Run, RunStore, count_outcomes, iso

EXPORT_FORMAT_VERSION = 1


class RunFileError(InvalidRunFile):
    """The file is not a readable run export."""


def export_dict(run: Run, store_location: str, *, omit_args: bool = False) -> dict[str, Any]:
    data = run.to_dict()
    if omit_args:
        data["invocation"]["args"] = None
    data["selection_files"] = [test.file for test in run.selection]
    data["export"] = {
        "format": EXPORT_FORMAT_VERSION,
        "store": store_location,
        "exported_at": iso(time.time()),
    }
    return data


def dump_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def dump_yaml(data: dict[str, Any]) -> str:
    import yaml

    return str(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def load_run_file(path: Path) -> tuple[Run, dict[str, Any]]:
    """The run in a JSON or YAML export and the export's own metadata, checked
    as the untrusted input it is (see :mod:`pytest_rerun_runs.runfile`)."""
    from pytest_rerun_runs import runfile

    try:
        if path.stat().st_size > runfile.MAX_FILE_BYTES:
            raise RunFileError(f"{path} is larger than a run file can be")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RunFileError(f"cannot read run file {path}: {exc}") from None
    data: Any
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        import yaml

        try:
            data = runfile.load_yaml(text)
        except (yaml.YAMLError, RecursionError, ValueError) as exc:
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "not allowed in run files" in str(exc):
                problem = next(line for line in str(exc).splitlines() if "not allowed" in line)
                raise RunFileError(f"{path} is not a valid run file: {problem}") from None
            data = None
    if not isinstance(data, dict) or "selection" not in data or "results" not in data:
        raise RunFileError(f"{path} is not a run file written by 'pytest-runs export'")
    try:
        checked = runfile.check_run_data(data)
        run = Run.from_dict(checked)
    except InvalidRunFile as exc:
        raise RunFileError(f"{path} is not a valid run file: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise RunFileError(f"{path} is not a valid run file: {exc}") from None
    export = data.get("export")
    return run, export if isinstance(export, dict) else {}


def import_run(store: RunStore, run: Run, export: dict[str, Any], file: Path) -> int:
    """Store ``run`` (read from ``file``), keeping its provenance; the run's uid
    makes a second import of the same run return the first one's id."""
    s = run.summary
    origin = {
        "run_id": s.id,
        "store": export.get("store"),
        "exported_at": export.get("exported_at"),
        "file": str(file.resolve()),
        "source_run_id": s.source_run_id,
        "root_run_id": s.root_run_id,
        "attempt": s.attempt,
        "mode": s.mode,
    }
    return store.import_run(run, origin)


def junit_names(nodeid: str) -> tuple[str, str]:
    """(classname, name) as pytest's junitxml derives them from a node id (``::``
    inside a parameter id stays in the name)."""
    head, bracket, params = nodeid.partition("[")
    path, _, rest = head.partition("::")
    parts = rest.split("::") if rest else []
    module = path.removesuffix(".py").replace("/", ".")
    if not parts:
        return "", module + bracket + params
    return ".".join([module, *parts[:-1]]), parts[-1] + bracket + params


#: Characters XML 1.0 cannot hold at all, even escaped.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def xml_text(text: str) -> str:
    """``text`` as XML can hold it: the characters it cannot are shown escaped, as
    pytest's junitxml does."""
    return _NOT_XML.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def _message(result: Result) -> str:
    """The line pytest's summary shows: the ``E`` line of a failure, else its last."""
    lines = [line.strip() for line in (result.longrepr or "").splitlines() if line.strip()]
    errors = [line[1:].strip() for line in lines if line.startswith("E ")]
    return xml_text(errors[0] if errors else lines[-1] if lines else result.outcome)


def _suite(run: Run, tests: int, counts: dict[str, int], name: str) -> ET.Element:
    s = run.summary
    suite = ET.Element(
        "testsuite",
        {
            "name": name,
            "tests": str(tests),
            "failures": str(counts.get("failed", 0)),
            "errors": str(counts.get("error", 0)),
            "skipped": str(
                counts.get("skipped", 0) + counts.get("xfailed", 0) + counts.get("not_run", 0)
            ),
            "time": f"{s.duration or 0.0:.3f}",
            "timestamp": iso(s.created_at) or "",
            "hostname": xml_text(s.invocation.host),
        },
    )
    properties = ET.SubElement(suite, "properties")
    for key, value in (
        ("run_id", s.id),
        ("status", s.status),
        ("attempt", s.attempt),
        ("mode", s.mode),
        ("source_run_id", s.source_run_id),
        ("git_commit", s.invocation.git.commit),
    ):
        if value is not None:
            ET.SubElement(properties, "property", {"name": key, "value": xml_text(str(value))})
    return suite


def _testcase(suite: ET.Element, result: Result) -> ET.Element:
    classname, name = junit_names(result.nodeid)
    case = ET.SubElement(
        suite,
        "testcase",
        {
            "classname": xml_text(classname),
            "name": xml_text(name),
            "time": f"{result.duration:.6f}",
        },
    )
    text = xml_text(result.longrepr or "")
    message = _message(result)
    if result.outcome == "failed":
        ET.SubElement(case, "failure", {"message": message}).text = text
    elif result.outcome == "error":
        ET.SubElement(case, "error", {"message": f"{result.when}: {message}"}).text = text
    elif result.outcome in ("skipped", "xfailed"):
        ET.SubElement(case, "skipped", {"message": f"{result.outcome}: {text}".strip()})
    elif result.outcome == "not_run":
        ET.SubElement(case, "skipped", {"message": "not run: the session stopped first"})
    return case


def _document(suite: ET.Element) -> str:
    suites = ET.Element("testsuites")
    suites.append(suite)
    ET.indent(suites)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
    )


def junit_xml(run: Run) -> str:
    """JUnit XML that CI dashboards read: one testcase per result."""
    suite = _suite(run, len(run.results), count_outcomes(run.results), f"pytest run {run.id}")
    for result in run.results:
        _testcase(suite, result)
    return _document(suite)


def junit_xml_merged(root: Run, retries: Sequence[Run]) -> str:
    """One testcase per test of the lineage's root run, with its final outcome
    across every attempt; earlier failures of a test that passed in the end are
    ``<flakyFailure>``/``<flakyError>``, later failures of one that still fails
    ``<rerunFailure>``/``<rerunError>``: the format Maven Surefire writes for
    reruns, which Jenkins and other CI dashboards read."""
    attempts: dict[str, list[Result]] = {result.nodeid: [result] for result in root.results}
    broken = {r.nodeid: r for r in root.results if r.when == "collect" and r.outcome == "error"}
    for run in sorted(retries, key=lambda run: run.id):
        for result in run.results:
            if result.outcome == "not_run":
                continue
            if result.nodeid not in attempts:
                # A test of a file that failed to collect in the root: its first
                # attempt is that collection error.
                collector = next((c for c in broken if is_below(result.nodeid, c)), None)
                if collector is None:
                    continue
                attempts[result.nodeid] = [broken[collector]]
                attempts.pop(collector, None)
            attempts[result.nodeid].append(result)
    finals = [history[-1] for history in attempts.values()]
    suite = _suite(
        root, len(finals), count_outcomes(finals), f"pytest run {root.id} and its retries"
    )
    for history in attempts.values():
        final = history[-1]
        earlier = [r for r in history[:-1] if r.outcome in ("failed", "error")]
        if final.outcome in ("failed", "error"):
            first = next(r for r in history if r.outcome in ("failed", "error"))
            case = _testcase(
                suite,
                first._replace(
                    nodeid=final.nodeid,
                    setup_duration=final.setup_duration,
                    call_duration=final.call_duration,
                    teardown_duration=final.teardown_duration,
                ),
            )
            later = [r for r in history if r is not first and r.outcome in ("failed", "error")]
            prefix = "rerun"
        else:
            case = _testcase(suite, final)
            later, prefix = earlier, "flaky"
        for attempt in later:
            kind = "Failure" if attempt.outcome == "failed" else "Error"
            element = ET.SubElement(
                case, f"{prefix}{kind}", {"message": _message(attempt), "type": attempt.when}
            )
            ET.SubElement(element, "stackTrace").text = xml_text(attempt.longrepr or "")
    return _document(suite)
