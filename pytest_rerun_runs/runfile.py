"""Run files are untrusted input: everything in one is checked before anything
is written.

:func:`check_run_data` validates the parsed file (types, ranges, sizes, enums,
node ids and paths) and returns it with unencodable text escaped;
:func:`load_yaml` reads YAML restricted to what JSON can say (no aliases, no
binary, dates or sets), so a small file cannot grow into a huge store.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Callable
from typing import Any

from pytest_rerun_runs.store import (
    LONGREPR_LIMIT,
    OUTCOMES,
    PHASES,
    RETRY_MODES,
    RUN_STATUSES,
    InvalidRunFile,
    clean_text,
    status_from_exit,
)

MAX_ID = 2**63 - 1
MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_TESTS = 2_000_000
MAX_NODEID = 8_192
MAX_SHORT = 1_024
MAX_META = 200
#: A test or session longer than a year is not a duration.
MAX_SECONDS = 366 * 86_400.0
_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?([+-]\d\d:\d\d|Z)?$")
_UID = re.compile(r"^[0-9A-Za-z-]{1,64}$")
_MODES = RETRY_MODES


class Invalid(InvalidRunFile):
    """One thing wrong with a run file, and where."""


def _fail(where: str, what: str) -> Invalid:
    return Invalid(f"{where}: {what}")


def _text(value: Any, where: str, limit: int = MAX_SHORT, *, line: bool = True) -> str:
    if not isinstance(value, str):
        raise _fail(where, f"expected text, got {type(value).__name__}")
    if len(value) > limit:
        raise _fail(where, f"longer than {limit:,} characters")
    if "\0" in value or (line and ("\n" in value or "\r" in value)):
        raise _fail(where, "holds a NUL or line break")
    return clean_text(value)


def _optional(check: Callable[..., Any], value: Any, where: str, *args: Any) -> Any:
    return None if value is None else check(value, where, *args)


def _integer(value: Any, where: str, low: int = 0, high: int = MAX_ID) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"expected a whole number, got {type(value).__name__}")
    if not low <= value <= high:
        raise _fail(where, f"{value} is out of range ({low} to {high})")
    return value


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(where, f"expected seconds, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or not 0 <= number <= MAX_SECONDS:
        raise _fail(where, f"{value!r} is not a duration")
    return number


def _timestamp(value: Any, where: str) -> str:
    text = _text(value, where, 64)
    if not _ISO.match(text):
        raise _fail(where, f"{text!r} is not an ISO 8601 time")
    return text


def _choice(value: Any, where: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _fail(where, f"{value!r} is not one of {', '.join(choices)}")
    return str(value)


def _nodeid(value: Any, where: str) -> str:
    return _text(value, where, MAX_NODEID)


def reaches_outside(path: str) -> bool:
    """Whether a ``/``-separated relative path leaves the directory it is relative
    to: absolute, a drive, or ``..`` above it."""
    normalized = posixpath.normpath(path.replace("\\", "/")) if path else path
    return (
        path.startswith(("/", "\\"))
        or bool(re.match(r"^[A-Za-z]:", path))
        or normalized == ".."
        or normalized.startswith("../")
    )


def _relative_path(value: Any, where: str) -> str:
    """A ``/``-separated path inside the rootdir: never absolute, never ``..``."""
    text = _text(value, where, MAX_NODEID)
    if reaches_outside(text):
        raise _fail(where, f"{text!r} reaches outside the rootdir")
    return text


def _list(value: Any, where: str, limit: int = MAX_TESTS) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(where, f"expected a list, got {type(value).__name__}")
    if len(value) > limit:
        raise _fail(where, f"more than {limit:,} entries")
    return value


def _mapping(value: Any, where: str, limit: int = MAX_META) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"expected a mapping, got {type(value).__name__}")
    if len(value) > limit:
        raise _fail(where, f"more than {limit:,} entries")
    for key in value:
        _text(key, f"{where} key")
    return value


def _text_map(value: Any, where: str) -> dict[str, str]:
    return {
        clean_text(key): _text(item, f"{where}.{key}", MAX_SHORT, line=False)
        for key, item in _mapping(value, where).items()
    }


def _plain(value: Any, where: str, depth: int = 0) -> Any:
    """JSON-like data of bounded depth (``origin``, ``export``)."""
    if depth > 8:
        raise _fail(where, "nested too deeply")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return _integer(value, where, -MAX_ID, MAX_ID)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(where, f"{value!r} is not a finite number")
        return value
    if isinstance(value, str):
        return _text(value, where, MAX_NODEID, line=False)
    if isinstance(value, list):
        return [
            _plain(item, f"{where}[{i}]", depth + 1)
            for i, item in enumerate(_list(value, where, 1000))
        ]
    return {
        clean_text(k): _plain(v, f"{where}.{k}", depth + 1)
        for k, v in _mapping(value, where, 1000).items()
    }


def _invocation(value: Any) -> dict[str, Any]:
    where = "invocation"
    data = _mapping(value, where)
    args = data.get("args")
    git = _mapping(data.get("git") or {}, f"{where}.git")
    return {
        "args": None
        if args is None
        else [
            _text(arg, f"{where}.args[{i}]", MAX_NODEID, line=False)
            for i, arg in enumerate(_list(args, f"{where}.args", 10_000))
        ],
        "invocation_dir": _text(data.get("invocation_dir", ""), f"{where}.invocation_dir", 4096),
        "rootdir": _text(data.get("rootdir", ""), f"{where}.rootdir", 4096),
        "inifile": _optional(_text, data.get("inifile"), f"{where}.inifile", 4096),
        "python": _text(data.get("python", ""), f"{where}.python", 64),
        "pytest": _text(data.get("pytest", ""), f"{where}.pytest", 64),
        "platform": _text(data.get("platform", ""), f"{where}.platform", 256),
        "host": _text(data.get("host", ""), f"{where}.host", 256),
        "pid": _integer(data.get("pid", 0), f"{where}.pid", 0, 2**32),
        "plugins": [
            _text(p, f"{where}.plugins[{i}]", 256)
            for i, p in enumerate(_list(data.get("plugins") or [], f"{where}.plugins", 1000))
        ],
        "workers": _optional(_integer, data.get("workers"), f"{where}.workers", 0, 100_000),
        "git": {
            "branch": _optional(_text, git.get("branch"), f"{where}.git.branch", 256),
            "commit": _optional(_text, git.get("commit"), f"{where}.git.commit", 256),
            "remote": _optional(_text, git.get("remote"), f"{where}.git.remote"),
        },
        "ci": _text_map(data.get("ci") or {}, f"{where}.ci"),
        "randomly_seed": _optional(
            _integer, data.get("randomly_seed"), f"{where}.randomly_seed", 0, 2**64
        ),
        "tree": _optional(_text, data.get("tree"), f"{where}.tree", 128),
    }


def _result(value: Any, where: str) -> dict[str, Any]:
    entry = _mapping(value, where, 50)
    durations = _mapping(entry.get("durations") or {}, f"{where}.durations", 3)
    return {
        "nodeid": _nodeid(entry.get("nodeid"), f"{where}.nodeid"),
        "outcome": _choice(entry.get("outcome"), f"{where}.outcome", OUTCOMES),
        "when": _choice(entry.get("when"), f"{where}.when", PHASES),
        "duration": _seconds(entry.get("duration") or 0.0, f"{where}.duration"),
        "durations": {
            phase: _seconds(durations.get(phase) or 0.0, f"{where}.durations.{phase}")
            for phase in ("setup", "call", "teardown")
        },
        "worker": _optional(_text, entry.get("worker"), f"{where}.worker", 256),
        "longrepr": None
        if entry.get("longrepr") is None
        else _text(entry["longrepr"], f"{where}.longrepr", LONGREPR_LIMIT + 200, line=False),
        "rerun_attempts": _integer(
            entry.get("rerun_attempts") or 0, f"{where}.rerun_attempts", 0, 1_000_000
        ),
        "file": _optional(_relative_path, entry.get("file"), f"{where}.file"),
    }


def check_run_data(data: Any) -> dict[str, Any]:
    """The run of a run file, checked and with text made storable; raises
    :class:`InvalidRunFile` naming the first thing wrong."""
    run = _mapping(data, "the file", 100)
    for key in ("id", "status", "created_at", "invocation", "selection", "results"):
        if key not in run:
            raise _fail("the file", f"no {key!r}: not a run file written by 'pytest-runs export'")
    selection = [
        _nodeid(n, f"selection[{i}]") for i, n in enumerate(_list(run["selection"], "selection"))
    ]
    files = run.get("selection_files")
    if files is None:
        files = [n.split("::")[0] for n in selection]
    files = [
        _relative_path(f, f"selection_files[{i}]")
        for i, f in enumerate(_list(files, "selection_files"))
    ]
    if len(files) != len(selection):
        raise _fail("selection_files", "not one file per selected test")
    counts = _mapping(run.get("counts") or {}, "counts", len(OUTCOMES))
    status = _choice(run["status"], "status", RUN_STATUSES)
    exit_status = _optional(_integer, run.get("exit_status"), "exit_status", -(2**31), 2**31)
    if exit_status is not None and status_from_exit(exit_status) != status:
        raise _fail("status", f"{status!r} contradicts exit_status {exit_status}")
    return {
        "id": _integer(run["id"], "id", 1),
        "uid": _optional(_uid, run.get("uid"), "uid"),
        "status": status,
        "exit_status": exit_status,
        "created_at": _timestamp(run["created_at"], "created_at"),
        "started_at": _optional(_timestamp, run.get("started_at"), "started_at"),
        "finished_at": _optional(_timestamp, run.get("finished_at"), "finished_at"),
        "label": _optional(_text, run.get("label"), "label"),
        "meta": _text_map(run.get("meta") or {}, "meta"),
        "source_run_id": _optional(_integer, run.get("source_run_id"), "source_run_id", 1),
        "root_run_id": _optional(_integer, run.get("root_run_id"), "root_run_id", 1),
        "attempt": _integer(run.get("attempt") or 1, "attempt", 1, 1_000_000),
        "mode": _choice(run.get("mode") or "full", "mode", _MODES),
        "reason": _optional(_text, run.get("reason"), "reason"),
        "invocation": _invocation(run["invocation"]),
        "selection": selection,
        "selection_files": files,
        "deselected": _integer(run.get("deselected") or 0, "deselected"),
        "missing": [
            _nodeid(n, f"missing[{i}]")
            for i, n in enumerate(_list(run.get("missing") or [], "missing"))
        ],
        "counts": {
            _choice(k, "counts", OUTCOMES): _integer(v, f"counts.{k}") for k, v in counts.items()
        },
        "results": [
            _result(r, f"results[{i}]")
            for i, r in enumerate(_list(run["results"], "results", 2 * MAX_TESTS))
        ],
        "origin": _optional(_plain, run.get("origin"), "origin"),
        "pruned_at": _optional(_timestamp, run.get("pruned_at"), "pruned_at"),
    }


def _uid(value: Any, where: str) -> str:
    text = _text(value, where, 64)
    if not _UID.match(text):
        raise _fail(where, f"{text!r} is not a run uid")
    return text


def load_yaml(text: str) -> Any:
    """YAML limited to what JSON can express: no aliases (no expansion bombs), no
    binary, timestamps, sets or other tags."""
    import yaml

    class JsonLikeLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None, None, "aliases are not allowed in run files", event.start_mark
                )
            return super().compose_node(parent, index)

    JsonLikeLoader.yaml_implicit_resolvers = {
        first: [(tag, pattern) for tag, pattern in resolvers if not tag.endswith(":timestamp")]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def refuse(loader: Any, node: Any) -> Any:
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"{node.tag.replace('tag:yaml.org,2002:', '!!')} values are not allowed in run files",
            node.start_mark,
        )

    for tag in ("binary", "timestamp", "set", "omap", "pairs"):
        JsonLikeLoader.add_constructor(f"tag:yaml.org,2002:{tag}", refuse)
    return yaml.load(text, Loader=JsonLikeLoader)
