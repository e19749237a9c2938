"""A store is the user's data: never damaged, converted or forged, by sessions or
by the CLI; damage is reported run by run."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_rerun_runs.store import Selection, open_store
from tests.conftest import make_new_run, run_cli

SUITE = "def test_ok(): pass\ndef test_bad(): assert False\n"


def session_unchanged(result: pytest.RunResult) -> None:
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, failed=1)
    assert result.stdout.str().count("rerun-runs: warning") == 1


def cli_error(*args: str, capsys: pytest.CaptureFixture[str], cwd: Path | None = None) -> str:
    capsys.readouterr()
    code, _ = run_cli(*args, cwd=cwd)
    err = capsys.readouterr().err
    assert code == 4
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture
def two_runs(pytester: pytest.Pytester, store_path: Path) -> Path:
    pytester.makepyfile(SUITE)
    pytester.runpytest()
    pytester.runpytest()
    return store_path


# -- what a file is, before anything touches it ------------------------------------


def test_read_commands_never_turn_a_file_into_a_store(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    package = pytester.mkpydir("pkg")
    init = package / "__init__.py"
    err = cli_error("--store", str(init), "list", capsys=capsys)
    assert "is not a run store (an empty file)" in err
    assert init.read_bytes() == b""
    assert sorted(p.name for p in package.iterdir()) == ["__init__.py"]


def test_a_session_never_turns_a_file_into_a_store(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SUITE)
    init = pytester.mkpydir("pkg") / "__init__.py"
    result = pytester.runpytest(f"--runs-store={init}")
    session_unchanged(result)
    result.stdout.fnmatch_lines(["rerun-runs: warning: *is not a run store (an empty file)*"])
    assert init.read_bytes() == b""


def test_an_sqlite_database_of_another_program_is_left_alone(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SUITE)
    other = pytester.path / "app.db"
    connection = sqlite3.connect(other)
    connection.execute("CREATE TABLE users (name TEXT)")
    connection.commit()
    connection.close()
    before = other.read_bytes()
    result = pytester.runpytest(f"--runs-store={other}")
    session_unchanged(result)
    result.stdout.fnmatch_lines(
        ["rerun-runs: warning: *is an SQLite database but not a run store*"]
    )
    assert other.read_bytes() == before


def test_read_commands_do_not_convert_a_delete_mode_store(
    two_runs: Path, pytester: pytest.Pytester
) -> None:
    connection = sqlite3.connect(two_runs, isolation_level=None)
    connection.execute("PRAGMA journal_mode=DELETE")
    connection.close()
    before = two_runs.read_bytes()
    for command in (["list"], ["show", "1"], ["lineage", "1"], ["diff", "1", "2"], ["flaky"]):
        code, _ = run_cli("--store", str(two_runs), *command)
        assert code == 0, command
    assert two_runs.read_bytes() == before
    assert not Path(f"{two_runs}-wal").exists()


def test_read_commands_read_an_older_schema_without_upgrading_it(tmp_path: Path) -> None:
    from tests.test_sqlite_schema import INVOCATION, old_store

    path = tmp_path / "v1.db"
    connection = old_store(path, 1)
    connection.execute(
        "INSERT INTO runs (status, created_at, invocation, finished_at, root_run_id, counts)"
        " VALUES ('passed', 1.0, ?, 2.0, 1, '{}')",
        (INVOCATION,),
    )
    connection.close()
    before = path.read_bytes()
    code, out = run_cli("--store", str(path), "list", "--format", "json")
    assert code == 0
    assert [run["status"] for run in json.loads(out)] == ["passed"]
    assert path.read_bytes() == before


@pytest.mark.skipif(not hasattr(os, "setuid"), reason="needs POSIX users")
def test_a_store_the_user_cannot_write_is_readable(two_runs: Path, tmp_path: Path) -> None:
    directory = two_runs.parent
    for path in directory.iterdir():
        path.chmod(0o444)
    directory.chmod(0o555)
    os.chmod(directory.parent, 0o755)
    # The reader runs as another user, from a copy of the package that user can
    # read (the checkout itself may sit in a private directory).
    package = tmp_path / "readable"
    shutil.copytree(
        Path(__file__).resolve().parent.parent / "pytest_rerun_runs",
        package / "pytest_rerun_runs",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for parent in [package, *package.parents]:
        if str(parent).startswith("/tmp"):
            parent.chmod(parent.stat().st_mode | stat.S_IXOTH | stat.S_IROTH)
    for path in package.rglob("*"):
        path.chmod(path.stat().st_mode | stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0))
    for parent in two_runs.parents:
        if str(parent).startswith("/tmp"):
            parent.chmod(parent.stat().st_mode | stat.S_IXOTH | stat.S_IROTH)
    as_nobody = None
    if os.geteuid() == 0:

        def as_nobody() -> None:
            os.setgid(65534)
            os.setuid(65534)

    def run(python: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [python, *args],
            capture_output=True,
            text=True,
            preexec_fn=as_nobody,
            cwd="/",
            env={**os.environ, "PYTHONPATH": str(package), "PYTHONDONTWRITEBYTECODE": "1"},
            check=False,
        )

    def can_read(python: str) -> bool:
        try:
            return run(python, "-c", "import pytest_rerun_runs.cli").returncode == 0
        except OSError:  # that user may not even execute this interpreter
            return False

    usable = [p for p in (sys.executable, "/usr/bin/python3") if can_read(p)]
    if not usable:
        pytest.skip("no Python here that an unprivileged user may run")
    reader = "import sys; from pytest_rerun_runs import cli; sys.exit(cli.main(sys.argv[1:]))"
    try:
        completed = run(usable[0], "-c", reader, "--store", str(two_runs), "show", "2")
    finally:
        directory.chmod(0o700)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("run 2: failed")


# -- damage ---------------------------------------------------------------------------


def test_a_non_numeric_schema_version_is_one_warning_or_one_line(
    two_runs: Path, pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    connection = sqlite3.connect(two_runs, isolation_level=None)
    connection.execute("UPDATE schema_version SET version = 'abc'")
    connection.close()
    before = two_runs.read_bytes()
    result = pytester.runpytest()
    session_unchanged(result)
    result.stdout.fnmatch_lines(["rerun-runs: warning: *its schema version is 'abc'*"])
    assert "its schema version is 'abc'" in cli_error(
        "--store", str(two_runs), "list", capsys=capsys
    )
    assert two_runs.read_bytes() == before


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE runs SET meta = '{not json' WHERE id = 2",
        "UPDATE runs SET invocation = '[]' WHERE id = 2",
    ],
)
def test_a_damaged_run_is_named_and_the_others_stay_readable(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str], store_path: Path, damage: str
) -> None:
    pytester.makepyfile(SUITE)
    pytester.runpytest()
    pytester.runpytest()
    connection = sqlite3.connect(store_path, isolation_level=None)
    connection.execute("DROP TRIGGER finished_runs_are_immutable")  # damage, as a disk might
    connection.execute(damage)
    connection.close()
    capsys.readouterr()
    code, out = run_cli("--store", str(store_path), "list", "--format", "json")
    assert code == 0
    assert [run["id"] for run in json.loads(out)] == [1]
    assert "run 2 in" in capsys.readouterr().err
    err = cli_error("--store", str(store_path), "show", "2", capsys=capsys)
    assert "run 2 in" in err
    assert "is damaged" in err
    code, _ = run_cli("--store", str(store_path), "show", "1")
    assert code == 0
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    assert "rerun-runs: warning" not in result.stdout.str()


def test_a_damaged_store_gets_no_new_run(pytester: pytest.Pytester, two_runs: Path) -> None:
    connection = sqlite3.connect(two_runs, isolation_level=None)
    connection.execute("PRAGMA journal_mode=DELETE")
    page_size = connection.execute("PRAGMA page_size").fetchone()[0]
    (root,) = connection.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'results'"
    ).fetchone()
    runs = connection.execute("SELECT count(*) FROM runs").fetchone()[0]
    connection.close()
    with two_runs.open("r+b") as file:
        file.seek((root - 1) * page_size)
        file.write(b"\xff" * page_size)
    result = pytester.runpytest()
    session_unchanged(result)
    connection = sqlite3.connect(two_runs)
    try:
        assert connection.execute("SELECT count(*) FROM runs").fetchone()[0] == runs
    finally:
        connection.close()


# -- dead sessions and pruning ----------------------------------------------------------


def test_prune_keep_counts_only_runs_that_can_change_no_more(
    two_runs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = open_store(str(two_runs))
    try:
        running = store.create_run(make_new_run(host="elsewhere"), Selection([]))
    finally:
        store.close()
    code, out = run_cli("--store", str(two_runs), "prune", "--keep", "1", "--format", "json")
    assert code == 0
    assert json.loads(out)["pruned"] == [1]
    shown = json.loads(
        run_cli("--store", str(two_runs), "show", str(running), "--format", "json")[1]
    )
    assert (shown["status"], shown["pruned_at"]) == ("running", None)
    assert (
        json.loads(run_cli("--store", str(two_runs), "show", "2", "--format", "json")[1])[
            "pruned_at"
        ]
        is None
    )


def test_prune_reports_the_size_it_leaves_on_disk(
    pytester: pytest.Pytester, store_path: Path
) -> None:
    pytester.makepyfile(
        "import pytest\n@pytest.mark.parametrize('n', range(300))\n"
        "def test_n(n):\n    assert False, 'x' * 5000\n"
    )
    for _ in range(3):
        pytester.runpytest("-q")
    code, out = run_cli("--store", str(store_path), "prune", "--keep", "1", "--format", "json")
    assert code == 0
    report = json.loads(out)
    wal = Path(f"{store_path}-wal")
    on_disk = store_path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    assert report["bytes_after"] == on_disk
    assert report["bytes_after"] < report["bytes_before"] / 2


# -- permissions -------------------------------------------------------------------------


def test_the_store_is_private_to_the_user(pytester: pytest.Pytester, store_path: Path) -> None:
    pytester.makepyfile(SUITE)
    pytester.runpytest()
    assert stat.S_IMODE(store_path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(store_path.stat().st_mode) == 0o600
    wal = Path(f"{store_path}-wal")
    if wal.exists():
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600


def test_an_existing_directory_keeps_its_permissions(
    pytester: pytest.Pytester, store_path: Path
) -> None:
    store_path.parent.mkdir(mode=0o755)
    store_path.parent.chmod(0o755)
    pytester.makepyfile(SUITE)
    pytester.runpytest()
    assert stat.S_IMODE(store_path.parent.stat().st_mode) == 0o755
    assert stat.S_IMODE(store_path.stat().st_mode) == 0o600


EVERY_READ = (["show", "2"], ["list"], ["flaky"], ["diff", "1", "2"])


@pytest.mark.parametrize(
    ("damage", "commands"),
    [
        ("UPDATE runs SET label = X'00ff' WHERE id = 2", EVERY_READ),
        ("UPDATE runs SET created_at = 'abc' WHERE id = 2", EVERY_READ),
        # list reads no selection: it has nothing to say about this one
        ("UPDATE runs SET selection = X'00' WHERE id = 2", EVERY_READ[:1] + EVERY_READ[2:]),
    ],
)
def test_damaged_columns_are_named_not_tracebacks(
    pytester: pytest.Pytester,
    capsys: pytest.CaptureFixture[str],
    store_path: Path,
    damage: str,
    commands: tuple[list[str], ...],
) -> None:
    pytester.makepyfile(SUITE)
    pytester.runpytest()
    pytester.runpytest()
    connection = sqlite3.connect(store_path, isolation_level=None)
    connection.execute("DROP TRIGGER finished_runs_are_immutable")
    connection.execute(damage)
    connection.close()
    for command in commands:
        capsys.readouterr()
        code, _ = run_cli("--store", str(store_path), *command)
        err = capsys.readouterr().err
        assert "Traceback" not in err, command
        assert code in (0, 4), command
        assert "run 2 in" in err, command
    result = pytester.runpytest("--retry-run=failing")
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # run 1 still says what fails


def test_a_store_made_in_an_existing_empty_file_is_private(tmp_path: Path) -> None:
    empty = tmp_path / "runs.db"
    empty.touch(mode=0o644)
    empty.chmod(0o644)
    store = open_store(str(empty))
    store.close()
    assert stat.S_IMODE(empty.stat().st_mode) == 0o600
