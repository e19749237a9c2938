"""Where the run store is: option, environment variable, ini setting, default.

The plugin asks pytest for the rootdir and ini value; the CLI has no pytest
session, so :func:`find_rootdir` looks for the same ini files pytest reads.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV_VAR = "PYTEST_RUNS_STORE"
INI_NAME = "runs_store"
DEFAULT_DIR = ".pytest_runs"
DEFAULT_FILE = "runs.db"

_GITIGNORE = "# Created by pytest-rerun-runs: the run store is local history, not source.\n*\n"


def resolve_store(
    option: str | None,
    ini: str | None,
    invocation_dir: Path,
    rootdir: Path,
    environ: dict[str, str] | os._Environ[str] = os.environ,
) -> tuple[str, bool]:
    """The store location and whether it is the default one.

    Precedence: the command-line option, then ``PYTEST_RUNS_STORE``, then the
    ini option (relative to the rootdir), then ``<rootdir>/.pytest_runs/runs.db``.
    """
    for value, base in ((option, invocation_dir), (environ.get(ENV_VAR), invocation_dir)):
        if value:
            return _resolve(value, base), False
    if ini:
        return _resolve(os.path.expandvars(ini), rootdir), False
    return str(rootdir / DEFAULT_DIR / DEFAULT_FILE), True


def _resolve(value: str, base: Path) -> str:
    if "://" in value:
        return value
    return str(base / Path(value).expanduser())


def prepare_default_dir(store_path: str) -> None:
    """Create the default store's directory with a ``.gitignore`` so it is never committed."""
    directory = Path(store_path).parent
    if directory.is_dir():
        return
    # Private to the user: failure texts often hold what tests printed, secrets too.
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    (directory / ".gitignore").write_text(_GITIGNORE, encoding="utf-8")


def display_path(location: str, invocation_dir: Path) -> str:
    """``location`` relative to the invocation directory when it is below it."""
    try:
        return str(Path(location).relative_to(invocation_dir))
    except ValueError:
        return location


#: The ini settings of ours that the CLI reads (it has no pytest session).
CLI_SETTINGS = (INI_NAME, "runs_stale_after")
_CONFIG_NAMES = ("pytest.ini", ".pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg")


def find_rootdir(start: Path) -> tuple[Path, dict[str, str]]:
    """The rootdir pytest would choose when run from ``start`` without arguments,
    and our settings in its configuration file.

    As pytest (8.1 and later) does: the first configuration file found upwards
    (a ``pyproject.toml`` without a pytest table counts only when nothing else
    is found), else the nearest ``setup.py``, else ``start``.
    """
    bare_pyproject: Path | None = None
    for directory in (start, *start.parents):
        for name in _CONFIG_NAMES:
            path = directory / name
            if not path.is_file():
                continue
            if name == "pyproject.toml" and bare_pyproject is None:
                bare_pyproject = directory
            found, values = _read_ini(path)
            if found:
                return directory, values
    if bare_pyproject is not None:
        return bare_pyproject, {}
    for directory in (start, *start.parents):
        if (directory / "setup.py").is_file():
            return directory, {}
    return start, {}


def nearest_store(start: Path) -> Path | None:
    """The default store of the nearest ancestor of ``start`` that has one."""
    for directory in (start, *start.parents):
        candidate = directory / DEFAULT_DIR / DEFAULT_FILE
        if candidate.is_file():
            return candidate
    return None


def _read_ini(path: Path) -> tuple[bool, dict[str, str]]:
    """Whether ``path`` is a pytest configuration file, and our settings in it."""
    import configparser

    try:
        if path.suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - pytest depends on tomli there
                import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
            data = tomllib.loads(path.read_text(encoding="utf-8")).get("tool", {})
            section = data.get("pytest")
            if not isinstance(section, dict):
                return False, {}
            options = section.get("ini_options", section)
            return True, {k: str(options[k]) for k in CLI_SETTINGS if options.get(k) is not None}
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(path, encoding="utf-8")
    except (OSError, ValueError, configparser.Error):
        return False, {}
    section_name = "tool:pytest" if path.name == "setup.cfg" else "pytest"
    if parser.has_section(section_name):
        section = parser[section_name]
        return True, {k: section[k] for k in CLI_SETTINGS if k in section}
    return path.name in ("pytest.ini", ".pytest.ini"), {}
