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
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ".gitignore").write_text(_GITIGNORE, encoding="utf-8")


def display_path(location: str, invocation_dir: Path) -> str:
    """``location`` relative to the invocation directory when it is below it."""
    try:
        return str(Path(location).relative_to(invocation_dir))
    except ValueError:
        return location


def find_rootdir(start: Path) -> tuple[Path, str | None]:
    """The rootdir pytest would find from ``start`` (without arguments) and the
    ``runs_store`` ini value found there."""
    for directory in (start, *start.parents):
        for name in ("pytest.ini", ".pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg"):
            path = directory / name
            if not path.is_file():
                continue
            found, value = _read_ini(path)
            if found:
                return directory, value
    return start, None


def _read_ini(path: Path) -> tuple[bool, str | None]:
    """Whether ``path`` is a pytest configuration file, and its ``runs_store``."""
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
                return False, None
            options = section.get("ini_options", section)
            value = options.get(INI_NAME)
            return True, None if value is None else str(value)
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(path, encoding="utf-8")
    except (OSError, ValueError, configparser.Error):
        return False, None
    section_name = "tool:pytest" if path.name == "setup.cfg" else "pytest"
    if parser.has_section(section_name):
        return True, parser.get(section_name, INI_NAME, fallback=None)
    return path.name in ("pytest.ini", ".pytest.ini"), None
