"""Run files: export a run as JSON, YAML or JUnit XML; read JSON/YAML run files back.

A JSON or YAML run file is the ``show --format json`` contract plus
``selection_files`` (the file of each selected test) and ``export`` (format
version, source store, time). ``pyyaml`` is imported only when YAML is used.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from pytest_rerun_runs.store import InvalidRunFile, Run, RunStore, iso

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
        except (yaml.YAMLError, RecursionError) as exc:
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
    """(classname, name) as pytest's junitxml derives them from a node id."""
    path, _, rest = nodeid.partition("::")
    parts = rest.split("::") if rest else []
    module = path.removesuffix(".py").replace("/", ".")
    if not parts:
        return "", module
    return ".".join([module, *parts[:-1]]), parts[-1]


def junit_xml(run: Run) -> str:
    """JUnit XML that CI dashboards read: one testcase per result."""
    s = run.summary
    counts = s.counts
    suite = ET.Element(
        "testsuite",
        {
            "name": f"pytest run {s.id}",
            "tests": str(len(run.results)),
            "failures": str(counts["failed"]),
            "errors": str(counts["error"]),
            "skipped": str(counts["skipped"] + counts["xfailed"] + counts["not_run"]),
            "time": f"{s.duration or 0.0:.3f}",
            "timestamp": iso(s.created_at) or "",
            "hostname": s.invocation.host,
        },
    )
    properties = ET.SubElement(suite, "properties")
    for name, value in (
        ("run_id", s.id),
        ("status", s.status),
        ("attempt", s.attempt),
        ("mode", s.mode),
        ("source_run_id", s.source_run_id),
        ("git_commit", s.invocation.git.commit),
    ):
        if value is not None:
            ET.SubElement(properties, "property", {"name": name, "value": str(value)})
    for result in run.results:
        classname, name = junit_names(result.nodeid)
        case = ET.SubElement(
            suite,
            "testcase",
            {"classname": classname, "name": name, "time": f"{result.duration:.6f}"},
        )
        text = result.longrepr or ""
        message = text.strip().splitlines()[-1] if text.strip() else result.outcome
        if result.outcome == "failed":
            ET.SubElement(case, "failure", {"message": message}).text = text
        elif result.outcome == "error":
            ET.SubElement(case, "error", {"message": f"{result.when}: {message}"}).text = text
        elif result.outcome in ("skipped", "xfailed"):
            ET.SubElement(case, "skipped", {"message": f"{result.outcome}: {text}".strip()})
        elif result.outcome == "not_run":
            ET.SubElement(case, "skipped", {"message": "not run: the session stopped first"})
    suites = ET.Element("testsuites")
    suites.append(suite)
    ET.indent(suites)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
    )
