"""What pytest-runs prints: escaped, copy-pasteable, and never running arguments
from elsewhere without the user's say."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import RunDict, run_cli

ROOT = Path(__file__).resolve().parent.parent


def cli_out(*args: str, cwd: Path | None = None) -> str:
    code, out = run_cli(*args, cwd=cwd)
    assert code == 0
    return out


def test_control_characters_are_shown_escaped(pytester: pytest.Pytester, store_path: Path) -> None:
    pytester.makepyfile(
        "import pytest\n"
        "@pytest.mark.parametrize('v', ['\\x1b[2J'])\n"
        "def test_v(v): assert False, 'boom\\x1b[31m'\n"
    )
    pytester.runpytest("--run-label=\x1b[2Jcleared", "--run-meta=k=\x07bell")
    for command in (["list"], ["show", "1"], ["flaky"], ["lineage", "1"], ["diff", "1", "1"]):
        out = cli_out("--store", str(store_path), *command)
        assert "\x1b" not in out, command
        assert "\x07" not in out, command
    shown = cli_out("--store", str(store_path), "show", "1")
    assert "label     \\e[2Jcleared" in shown
    assert "meta      k=\\x07bell" in shown
    # pytest itself writes the escape into the node id; the failure text is ours to escape
    assert "test_control_characters_are_shown_escaped.py::test_v[\\x1b[2J]" in shown
    assert "AssertionError: boom\\e[31m" in shown


def test_show_names_each_failure_and_skip(pytester: pytest.Pytester, store_path: Path) -> None:
    pytester.makepyfile(
        test_s="import pytest\n"
        "def test_ok(): pass\n"
        "def test_bad(): assert 1 == 2, 'numbers differ'\n"
        "@pytest.mark.skip(reason='not today')\n"
        "def test_skip(): pass\n"
    )
    pytester.runpytest()
    shown = cli_out("--store", str(store_path), "show", "1")
    assert "FAILED   test_s.py::test_bad - AssertionError: numbers differ\n" in shown
    assert "SKIPPED  test_s.py::test_skip - not today\n" in shown


def test_show_of_a_plain_pytest_says_pytest(tmp_path: Path) -> None:
    from pytest_rerun_runs.store import RunFinish, Selection, open_store
    from tests.conftest import make_new_run

    store = open_store(str(tmp_path / "runs.db"))
    try:
        run_id = store.create_run(make_new_run(), Selection([]))
        store.finish_run(run_id, RunFinish(5, 2.0))
    finally:
        store.close()
    shown = cli_out("--store", str(tmp_path / "runs.db"), "show", "1")
    assert "  command   pytest\n" in shown


def test_show_counts_reruns(pytester: pytest.Pytester, store_path: Path) -> None:
    pytester.makepyfile(
        "import pytest\nruns = []\n"
        "@pytest.mark.flaky(reruns=2)\n"
        "def test_flaky():\n    runs.append(1)\n    assert len(runs) > 1\n"
    )
    pytester.runpytest("-p", "rerunfailures")
    shown = cli_out("--store", str(store_path), "show", "1")
    assert "PASSED   test_show_counts_reruns.py::test_flaky (1 reruns)" in shown


@pytest.fixture
def imported(pytester: pytest.Pytester, store_path: Path, tmp_path: Path) -> Path:
    """A store holding a run imported from another store, arguments and all."""
    pytester.makepyfile(test_a="def test_one(): assert False\n")
    pytester.runpytest("-p", "no:cacheprovider")
    exported = tmp_path / "run.json"
    cli_out("--store", str(store_path), "export", "1", "--format", "json", "-o", str(exported))
    other = tmp_path / "other.db"
    cli_out("--store", str(other), "import", str(exported))
    return other


def test_arguments_from_another_store_are_not_run_without_a_yes(
    imported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    completed = subprocess.run(
        [sys.executable, "-m", "pytest_rerun_runs", "--store", str(imported), "retry", "1"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert completed.returncode == 4
    assert completed.stdout == ""
    assert completed.stderr.count("\n") == 1
    assert "was imported from" in completed.stderr
    assert "-p no:cacheprovider" in completed.stderr
    assert "pass --yes to run them" in completed.stderr
    runs = json.loads(cli_out("--store", str(imported), "list", "--format", "json"))
    assert len(runs) == 1


def test_yes_runs_arguments_from_another_store(
    imported: Path, show: Callable[..., RunDict]
) -> None:
    code, _ = run_cli("--store", str(imported), "retry", "1", "--yes")
    assert code == 1
    assert show(2, store=imported)["source_run_id"] == 1


def test_retry_replays_the_randomly_seed(
    pytester: pytest.Pytester, store_path: Path, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile("import random\ndef test_r():\n    assert random.random() < 0\n")
    pytester.runpytest("-p", "randomly")
    seed = show(1)["invocation"]["randomly_seed"]
    assert isinstance(seed, int)
    code, out = run_cli("--store", str(store_path), "retry", "1")
    assert code == 1
    command = shlex.split(out.splitlines()[0].split(" && ", 1)[1])
    assert f"--randomly-seed={seed}" in command
    assert show(2)["invocation"]["randomly_seed"] == seed
    drawn = [
        next(line for line in r["longrepr"].splitlines() if line.startswith("E       assert"))
        for r in (show(1)["results"][0], show(2)["results"][0])
    ]
    assert drawn[0] == drawn[1]  # the same seed drew the same number


def pytest_runs(*args: str, cwd: Path, shell_suffix: str = "") -> subprocess.CompletedProcess[str]:
    command = shlex.join([sys.executable, "-m", "pytest_rerun_runs", *args]) + shell_suffix
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prune", "--older-than", "9" * 400 + "d"], "--older-than: expected an age such as"),
        (["prune", "--older-than", "99999999999w"], "expected an age from 1s to 1000 years"),
        (["list", "--limit", "9" * 5000], "argument --limit: expected a positive whole number"),
        (["flaky", "--last", "1e3"], "argument --last: expected a positive whole number"),
        (["retry", "1", "--attempts", "100000"], "at most 100 attempts, got 100000"),
        (["show", "9" * 5000], "expected a run id (a positive number), 'last'"),
    ],
)
def test_numbers_out_of_range_are_one_line(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    pytester.makepyfile("def test_a(): pass\n")
    pytester.runpytest()
    completed = pytest_runs(*args, cwd=pytester.path)
    assert completed.returncode == 4
    assert completed.stderr.count("\n") == 1, completed.stderr
    assert message in completed.stderr


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        (" > /dev/full", "pytest-runs: error: cannot write output: No space left on device\n"),
        (" >&-", "pytest-runs: error: cannot write output: standard output is closed\n"),
    ],
)
def test_output_that_cannot_be_written_is_one_line(
    pytester: pytest.Pytester, suffix: str, message: str
) -> None:
    pytester.makepyfile("def test_a(): pass\n")
    pytester.runpytest()
    completed = pytest_runs("show", "1", cwd=pytester.path, shell_suffix=suffix)
    assert completed.returncode == 4
    assert completed.stderr == message


def test_the_echoed_retry_command_is_escaped(pytester: pytest.Pytester, store_path: Path) -> None:
    pytester.makepyfile("def test_a(): assert False\n")
    pytester.runpytest("--run-label=x\x1b[2J")
    code, out = run_cli("--store", str(store_path), "retry", "1")
    assert code == 1
    first = out.splitlines()[0]
    assert "\x1b" not in first
    assert "x\\e[2J" in first
