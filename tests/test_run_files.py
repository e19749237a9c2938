"""A run file is untrusted input: checked whole before anything is written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli

SUITE = "def test_ok(): pass\ndef test_bad(): assert False\n"


@pytest.fixture
def exported(pytester: pytest.Pytester, store_path: Path, tmp_path: Path) -> dict[str, Any]:
    pytester.makepyfile(test_m=SUITE)
    pytester.runpytest()
    target = tmp_path / "run.json"
    code, _ = run_cli(
        "--store", str(store_path), "export", "1", "--format", "json", "-o", str(target)
    )
    assert code == 0
    data: dict[str, Any] = json.loads(target.read_text())
    return data


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    target: Any = data
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value


HOSTILE: list[tuple[str, Any, str]] = [
    ("selection", "test_m.py::test_ok", "selection: expected a list, got str"),
    ("id", 2**64, "id: 18446744073709551616 is out of range"),
    ("id", 0, "id: 0 is out of range"),
    ("results.0.durations.call", float("nan"), "results[0].durations.call: nan is not a duration"),
    ("results.0.duration", float("inf"), "results[0].duration: inf is not a duration"),
    (
        "results.0.rerun_attempts",
        10**30,
        "results[0].rerun_attempts: 1000000000000000000000000000000 is out of range",
    ),
    ("selection.0", "test_m.py::a\0b", "selection[0]: holds a NUL or line break"),
    ("selection.1", "test_m.py::a\nb", "selection[1]: holds a NUL or line break"),
    ("status", "exploded", "status: 'exploded' is not one of"),
    ("results.1.when", "later", "results[1].when: 'later' is not one of"),
    ("label", "x" * 100_000, "label: longer than 1,024 characters"),
    ("label", 7, "label: expected text, got int"),
    ("meta", {"k": ["list"]}, "meta.k: expected text, got list"),
    ("created_at", "yesterday", "created_at: 'yesterday' is not an ISO 8601 time"),
    (
        "selection_files",
        ["/etc/test_m.py", "test_m.py"],
        "selection_files[0]: '/etc/test_m.py' reaches outside the rootdir",
    ),
    (
        "selection_files",
        ["../../elsewhere/test_m.py", "x.py"],
        "selection_files[0]: '../../elsewhere/test_m.py' reaches outside the rootdir",
    ),
    ("selection_files", ["test_m.py"], "selection_files: not one file per selected test"),
    ("invocation.args", "-p evil", "invocation.args: expected a list, got str"),
    (
        "results.0.file",
        "a/../../x.py",
        "results[0].file: 'a/../../x.py' reaches outside the rootdir",
    ),
]


@pytest.mark.parametrize(("path", "value", "message"), HOSTILE)
def test_an_invalid_run_file_is_one_line_and_writes_nothing(
    exported: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *,
    path: str,
    value: Any,
    message: str,
) -> None:
    set_path(exported, path, value)
    hostile = tmp_path / "hostile.json"
    hostile.write_text(json.dumps(exported))
    store = tmp_path / "fresh.db"
    capsys.readouterr()
    code, _ = run_cli("--store", str(store), "import", str(hostile))
    err = capsys.readouterr().err
    assert code == 4
    assert err.count("\n") == 1
    assert message in err
    assert not store.exists()


def yaml_of(data: dict[str, Any]) -> str:
    import yaml

    return str(yaml.safe_dump(data, sort_keys=False))


YAML_ATTACKS: list[tuple[Callable[[str], str], str]] = [
    (lambda text: text.replace("label: null", "label: !!binary aGVsbG8="), "!!binary"),
    (
        lambda text: (
            "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a]\n" + text
        ),
        "aliases are not allowed in run files",
    ),
    (lambda text: text.replace("label: null", "label: !!set {a, b}"), "!!set"),
]


@pytest.mark.parametrize(("attack", "message"), YAML_ATTACKS)
def test_yaml_is_limited_to_what_json_can_say(
    exported: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    attack: Callable[[str], str],
    message: str,
) -> None:
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text(attack(yaml_of(exported)))
    store = tmp_path / "fresh.db"
    capsys.readouterr()
    code, _ = run_cli("--store", str(store), "import", str(hostile))
    err = capsys.readouterr().err
    assert code == 4
    assert err.count("\n") == 1
    assert message in err
    assert not store.exists()


def test_a_yaml_date_is_text_not_a_crash(
    exported: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = yaml_of(exported).replace(
        f"created_at: '{exported['created_at']}'", "created_at: 2024-01-01"
    )
    hostile = tmp_path / "dated.yaml"
    hostile.write_text(text)
    capsys.readouterr()
    code, _ = run_cli("--store", str(tmp_path / "fresh.db"), "import", str(hostile))
    assert code == 4
    assert "created_at: '2024-01-01' is not an ISO 8601 time" in capsys.readouterr().err


def test_a_plan_never_reaches_outside_the_rootdir(
    exported: dict[str, Any], pytester: pytest.Pytester, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "conftest.py").write_text("raise SystemExit('imported from outside')\n")
    (outside / "test_m.py").write_text(SUITE)
    exported["selection_files"] = ["../outside/test_m.py"] * 2
    hostile = tmp_path / "hostile.json"
    hostile.write_text(json.dumps(exported))
    other = tmp_path / "other.db"
    result = pytester.runpytest(f"--runs-store={other}", f"--retry-run={hostile}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --retry-run *: *reaches outside the rootdir*"])
    assert "imported from outside" not in result.stdout.str() + result.stderr.str()
    assert not other.exists()


def test_a_stored_plan_never_reaches_outside_the_rootdir(
    pytester: pytest.Pytester, store_path: Path
) -> None:
    from pytest_rerun_runs.store import Result, RunFinish, SelectedTest, Selection, open_store
    from tests.conftest import make_new_run

    pytester.makepyfile(test_m=SUITE)
    store = open_store(str(store_path))
    try:
        run_id = store.create_run(
            make_new_run(),
            Selection([SelectedTest("../outside/test_m.py::test_bad", "../outside/test_m.py")]),
        )
        store.finish_run(
            run_id,
            RunFinish(1, 2.0),
            [Result("../outside/test_m.py::test_bad", "failed", "call", position=0)],
        )
    finally:
        store.close()
    before = store_path.read_bytes()
    result = pytester.runpytest(f"--retry-run={run_id}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --retry-run 1: the plan of run 1 reaches outside the rootdir"
            " (../outside/test_m.py)*"
        ]
    )
    assert store_path.read_bytes() == before


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_an_integer_too_long_to_parse_is_one_line(
    exported: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    text = json.dumps(exported).replace('"deselected": 0', '"deselected": ' + "9" * 5000)
    hostile = tmp_path / f"huge{suffix}"
    hostile.write_text(text)
    capsys.readouterr()
    code, _ = run_cli("--store", str(tmp_path / "fresh.db"), "import", str(hostile))
    err = capsys.readouterr().err
    assert code == 4
    assert err.count("\n") == 1
    assert not (tmp_path / "fresh.db").exists()


def test_a_status_that_contradicts_the_exit_status_is_refused(
    exported: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exported["status"], exported["exit_status"] = "passed", 1
    hostile = tmp_path / "forged.json"
    hostile.write_text(json.dumps(exported))
    capsys.readouterr()
    code, _ = run_cli("--store", str(tmp_path / "fresh.db"), "import", str(hostile))
    assert code == 4
    assert "status: 'passed' contradicts exit_status 1" in capsys.readouterr().err


def test_imported_counts_come_from_the_results(exported: dict[str, Any], tmp_path: Path) -> None:
    exported["counts"] = {"passed": 9}
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(exported))
    store = tmp_path / "fresh.db"
    code, _ = run_cli("--store", str(store), "import", str(forged))
    assert code == 0
    shown = json.loads(run_cli("--store", str(store), "show", "1", "--format", "json")[1])
    assert (shown["counts"]["passed"], shown["counts"]["failed"]) == (1, 1)


def test_a_run_reference_too_long_for_a_file_name_is_a_usage_error(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_m=SUITE)
    pytester.runpytest()
    result = pytester.runpytest("--retry-run=" + "7" * 300)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "Traceback" not in result.stderr.str()
    result.stderr.fnmatch_lines(["ERROR: --retry-run 7777*: expected a run id*"])
