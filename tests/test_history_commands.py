"""``pytest-runs`` retry, lineage, diff, flaky, export, import and prune."""

from __future__ import annotations

import io
import json
import re
import shlex
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pytest_rerun_runs import cli
from tests.conftest import RunDict, outcomes, run_cli

FLAKY_TWICE = """
from pathlib import Path

COUNTER = Path(__file__).with_name("attempts.txt")


def test_stable():
    pass


def test_passes_on_third_run():
    runs = int(COUNTER.read_text()) if COUNTER.exists() else 0
    COUNTER.write_text(str(runs + 1))
    assert runs >= 2


def test_broken():
    assert False
"""


def cli_ok(*args: str, cwd: Path | None = None) -> str:
    code, out = run_cli(*args, cwd=cwd)
    assert code == 0, out
    return out


# -- retry ------------------------------------------------------------------------


def test_retry_replays_the_recorded_arguments_in_the_recorded_directory(
    pytester: pytest.Pytester, store_path: Path, show: Callable[..., RunDict], tmp_path: Path
) -> None:
    pytester.makepyfile(test_a="def test_one(): assert False\ndef test_two(): pass\n")
    pytester.runpytest("-p", "no:cacheprovider", "--run-label=nightly", "-k", "one or two")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, out = run_cli("--store", str(store_path), "retry", "1", "--failed-only", cwd=elsewhere)
    assert code == 1
    retry = show(2)
    args = retry["invocation"]["args"]
    assert args[:4] == ["-p", "no:cacheprovider", "--run-label=nightly", "-k"]
    assert f"--runs-store={store_path}" in args
    assert args[-2:] == ["--retry-run=1", "--failed-only"]
    assert retry["invocation"]["invocation_dir"] == str(pytester.path)
    assert (retry["source_run_id"], retry["mode"], retry["label"]) == (1, "failed_only", "nightly")
    assert outcomes(retry) == {"test_a.py::test_one": "failed"}
    assert out.startswith(f"$ cd {shlex.quote(str(pytester.path))} && {sys.executable} -m pytest")
    assert "'or two'" not in out
    assert "-k 'one or two'" in out
    assert "retries of run 1 (attempt 1):\n  attempt 2: run 2, exit 1, 1 failed\n" in out
    assert "still failing at attempt 2: test_a.py::test_one" in out


def test_retry_passes_extra_pytest_arguments(
    pytester: pytest.Pytester, store_path: Path, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(test_a="def test_one(): assert False\n")
    pytester.runpytest()
    code, _ = run_cli("--store", str(store_path), "retry", "last", "--reason", "why", "--", "-x")
    assert code == 1
    retry = show(2)
    assert retry["invocation"]["args"][-2:] == ["--retry-reason=why", "-x"]
    assert retry["reason"] == "why"


def test_attempts_until_a_test_passes(
    pytester: pytest.Pytester, store_path: Path, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(test_flaky=FLAKY_TWICE)
    pytester.runpytest()
    code, out = run_cli(
        "--store", str(store_path), "retry", "1", "--failed-only", "--attempts", "3"
    )
    assert code == 1  # test_broken never passes: the last attempt's exit code
    assert [show(n)["attempt"] for n in (2, 3, 4)] == [2, 3, 4]
    assert [show(n)["source_run_id"] for n in (2, 3, 4)] == [1, 2, 3]
    assert "passed on attempt 3: test_flaky.py::test_passes_on_third_run" in out
    assert "still failing at attempt 4: test_flaky.py::test_broken" in out
    # each attempt retries the newest attempt's failures only
    assert show(4)["selection"] == ["test_flaky.py::test_broken"]


def test_retry_summary_as_json(
    pytester: pytest.Pytester, store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytester.makepyfile(test_flaky=FLAKY_TWICE)
    pytester.runpytest()
    capsys.readouterr()
    code, out = run_cli(
        "--store",
        str(store_path),
        "retry",
        "1",
        "--failed-only",
        "--attempts",
        "2",
        "--format",
        "json",
    )
    assert code == 1
    report = json.loads(out)
    assert report["source_run_id"] == 1
    assert report["exit_status"] == 1
    assert [a["run_id"] for a in report["attempts"]] == [2, 3]
    assert [a["attempt"] for a in report["attempts"]] == [2, 3]
    assert [a["passed"] for a in report["attempts"]] == [
        [],
        ["test_flaky.py::test_passes_on_third_run"],
    ]
    assert report["still_failing"] == ["test_flaky.py::test_broken"]


def test_attempts_stop_when_everything_passes(
    pytester: pytest.Pytester, store_path: Path, show: Callable[..., RunDict]
) -> None:
    pytester.makepyfile(test_flaky=FLAKY_TWICE.replace("assert runs >= 2", "assert runs >= 1"))
    pytester.runpytest("-k", "not broken")
    code, out = run_cli(
        "--store", str(store_path), "retry", "1", "--failed-only", "--attempts", "5"
    )
    assert code == 0
    assert "passed on attempt 2: test_flaky.py::test_passes_on_third_run" in out
    assert len(json.loads(cli_ok("--store", str(store_path), "list", "--format", "json"))) == 2


def test_retry_without_recorded_arguments_is_refused(
    pytester: pytest.Pytester, store_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytester.makepyfile(test_a="def test_one(): assert False\n")
    pytester.runpytest()
    exported = tmp_path / "run.json"
    cli_ok(
        "--store",
        str(store_path),
        "export",
        "1",
        "--format",
        "json",
        "--omit-args",
        "-o",
        str(exported),
    )
    other = tmp_path / "other.db"
    cli_ok("--store", str(other), "import", str(exported))
    capsys.readouterr()
    code, _ = run_cli("--store", str(other), "retry", "1")
    assert code == 4
    assert capsys.readouterr().err == (
        "pytest-runs: error: run 1 has no recorded arguments to replay (exported without"
        " them); run pytest --retry-run=1 with the options it needs\n"
    )


# -- lineage, diff, flaky ---------------------------------------------------------------


@pytest.fixture
def family(pytester: pytest.Pytester, store_path: Path) -> Path:
    """Run 1; retries 2 (of 1, failed-only), 3 (of 2), 4 (of 1, full)."""
    pytester.makepyfile(test_flaky=FLAKY_TWICE)
    pytester.runpytest()
    pytester.runpytest("--retry-run=1", "--failed-only", "--retry-reason=ci flake")
    pytester.runpytest("--retry-run=2", "--failed-only")
    pytester.runpytest("--retry-run=1")
    return store_path


def test_lineage_tree(family: Path) -> None:
    out = cli_ok("--store", str(family), "lineage", "3")
    assert out.splitlines() == [
        "run 1  failed  attempt 1  full  1 passed, 2 failed",
        "├── run 2  failed  attempt 2  failed_only  2 failed  reason: ci flake",
        "│   └── run 3  failed  attempt 3  failed_only  1 passed, 1 failed",
        "└── run 4  failed  attempt 2  full  2 passed, 1 failed",
    ]


def test_lineage_json(family: Path) -> None:
    tree = json.loads(cli_ok("--store", str(family), "lineage", "1", "--format", "json"))
    assert tree["id"] == 1
    assert [child["id"] for child in tree["children"]] == [2, 4]
    assert tree["children"][0]["children"][0]["id"] == 3
    assert tree["children"][0]["reason"] == "ci flake"


def test_diff(pytester: pytest.Pytester, store_path: Path) -> None:
    pytester.makepyfile(
        test_d="def test_breaks(): pass\ndef test_fixed(): assert False\n"
        "def test_still(): assert False\ndef test_gone(): pass\n"
    )
    pytester.runpytest()
    pytester.makepyfile(
        test_d="def test_breaks(): assert False\ndef test_fixed(): pass\n"
        "def test_still(): assert False\ndef test_new(): pass\n"
    )
    pytester.runpytest()
    diff = json.loads(cli_ok("--store", str(store_path), "diff", "1", "2", "--format", "json"))
    assert diff == {
        "before": 1,
        "after": 2,
        "broke": ["test_d.py::test_breaks"],
        "fixed": ["test_d.py::test_fixed"],
        "still_failing": ["test_d.py::test_still"],
        "changed": [],
        "appeared": ["test_d.py::test_new"],
        "disappeared": ["test_d.py::test_gone"],
    }
    text = cli_ok("--store", str(store_path), "diff", "1", "last")
    assert "broke (1)\n  test_d.py::test_breaks\n" in text


def test_diff_of_a_partial_retry_compares_what_it_ran(
    pytester: pytest.Pytester, store_path: Path
) -> None:
    pytester.makepyfile(
        test_d="import pytest\n@pytest.mark.parametrize('n', range(50))\n"
        "def test_n(n): assert n not in (3, 7)\n"
    )
    pytester.runpytest()
    pytester.makepyfile(
        test_d="import pytest\n@pytest.mark.parametrize('n', range(50))\n"
        "def test_n(n): assert n != 7\n"
    )
    pytester.runpytest("--retry-run=1", "--failed-only")
    diff = json.loads(cli_ok("--store", str(store_path), "diff", "1", "2", "--format", "json"))
    assert (diff["fixed"], diff["still_failing"]) == (
        ["test_d.py::test_n[3]"],
        ["test_d.py::test_n[7]"],
    )
    assert diff["disappeared"] == []
    assert len(diff["not_retried"]) == 48
    text = cli_ok("--store", str(store_path), "diff", "1", "2")
    assert "not retried (48): run 2 ran failed_only, 2 tests\n" in text
    assert "test_d.py::test_n[0]" not in text


def test_flaky_report(family: Path) -> None:
    flaky = json.loads(cli_ok("--store", str(family), "flaky", "--format", "json"))
    assert [f["nodeid"] for f in flaky] == ["test_flaky.py::test_passes_on_third_run"]
    (entry,) = flaky
    assert entry["passed_on_retry"] == [
        {"failed_in": 1, "passed_in": 4},
        {"failed_in": 2, "passed_in": 3},
    ]
    assert (entry["failed_in"], entry["passed_in"]) == ([1, 2], [3, 4])
    table = cli_ok("--store", str(family), "flaky")
    assert "test_flaky.py::test_passes_on_third_run" in table
    assert "1->4, 2->3" in table


def test_flaky_needs_the_same_commit(pytester: pytest.Pytester, store_path: Path) -> None:
    git = pytester.path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text("a" * 40)
    pytester.makepyfile(test_x="def test_x(): assert False\n")
    pytester.runpytest()
    (git / "refs" / "heads" / "main").write_text("b" * 40)
    pytester.makepyfile(test_x="def test_x(): pass\n")
    pytester.runpytest("--retry-run=1")
    assert json.loads(cli_ok("--store", str(store_path), "flaky", "--format", "json")) == []


# -- export / import ------------------------------------------------------------------------


@pytest.fixture
def mixed(pytester: pytest.Pytester, store_path: Path) -> Path:
    pytester.makepyfile(
        test_m="""
        import pytest

        class TestThing:
            def test_ok(self):
                pass

        def test_fail():
            assert 1 == 2

        @pytest.fixture
        def broken():
            raise RuntimeError("no")

        def test_error(broken):
            pass

        @pytest.mark.skip(reason="later")
        def test_skip():
            pass
        """
    )
    pytester.runpytest()
    return store_path


def test_export_json_is_the_show_contract(mixed: Path) -> None:
    shown = json.loads(cli_ok("--store", str(mixed), "show", "1", "--format", "json"))
    exported = json.loads(cli_ok("--store", str(mixed), "export", "1", "--format", "json"))
    assert {k: v for k, v in exported.items() if k in shown} == shown
    assert exported["selection_files"] == ["test_m.py"] * 4
    assert exported["export"]["store"] == str(mixed)


def test_export_yaml_round_trips(mixed: Path, tmp_path: Path) -> None:
    target = tmp_path / "run.yaml"
    cli_ok("--store", str(mixed), "export", "last", "--format", "yaml", "-o", str(target))
    shown = json.loads(cli_ok("--store", str(mixed), "show", "1", "--format", "json"))
    loaded = yaml.safe_load(target.read_text())
    assert {k: v for k, v in loaded.items() if k in shown} == shown


def test_export_junit_reads_with_a_junit_parser(mixed: Path, tmp_path: Path) -> None:
    junitparser = pytest.importorskip("junitparser")
    target = tmp_path / "junit.xml"
    cli_ok("--store", str(mixed), "export", "1", "--format", "junit", "-o", str(target))
    xml = junitparser.JUnitXml.fromfile(str(target))
    (suite,) = list(xml)
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (4, 1, 1, 1)
    cases = {(case.classname, case.name): case for case in suite}
    assert set(cases) == {
        ("test_m.TestThing", "test_ok"),
        ("test_m", "test_fail"),
        ("test_m", "test_error"),
        ("test_m", "test_skip"),
    }
    (failure,) = cases[("test_m", "test_fail")].result
    assert isinstance(failure, junitparser.Failure)
    assert "assert 1 == 2" in failure.text
    (error,) = cases[("test_m", "test_error")].result
    assert isinstance(error, junitparser.Error)
    assert cases[("test_m.TestThing", "test_ok")].is_passed


def test_round_trip_export_import_retry_on_another_store(
    mixed: Path, tmp_path: Path, pytester: pytest.Pytester
) -> None:
    exported = tmp_path / "run-1.json"
    cli_ok("--store", str(mixed), "export", "1", "--format", "json", "-o", str(exported))
    other = tmp_path / "laptop" / "runs.db"
    result = pytester.runpytest(f"--runs-store={other}", f"--retry-run={exported}", "--failed-only")
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "rerun-runs: retrying run 1 of run-1.json, imported as run 1 (failed-only):"
            " 2 of 4 tests, attempt 2"
        ]
    )
    imported = json.loads(cli_ok("--store", str(other), "show", "1", "--format", "json"))
    original = json.loads(cli_ok("--store", str(mixed), "show", "1", "--format", "json"))
    assert imported["results"] == original["results"]
    assert imported["origin"]["run_id"] == 1
    assert imported["origin"]["store"] == str(mixed)
    retry = json.loads(cli_ok("--store", str(other), "show", "2", "--format", "json"))
    assert (retry["source_run_id"], retry["root_run_id"], retry["mode"]) == (1, 1, "failed_only")


def test_a_run_file_retried_twice_is_imported_once(
    mixed: Path, tmp_path: Path, pytester: pytest.Pytester
) -> None:
    exported = tmp_path / "run-1.json"
    cli_ok("--store", str(mixed), "export", "1", "--format", "json", "-o", str(exported))
    other = tmp_path / "laptop" / "runs.db"
    for _ in range(2):
        pytester.runpytest(f"--runs-store={other}", f"--retry-run={exported}", "--failed-only")
    runs = json.loads(cli_ok("--store", str(other), "list", "--format", "json"))
    assert [(r["id"], r["source_run_id"], r["attempt"]) for r in runs] == [
        (3, 1, 2),
        (2, 1, 2),
        (1, None, 1),
    ]


def test_a_run_file_is_not_imported_by_a_preview_or_a_refused_retry(
    mixed: Path, tmp_path: Path, pytester: pytest.Pytester
) -> None:
    exported = tmp_path / "run-1.json"
    cli_ok("--store", str(mixed), "export", "1", "--format", "json", "-o", str(exported))
    other = tmp_path / "laptop" / "runs.db"
    preview = pytester.runpytest(f"--runs-store={other}", f"--retry-run={exported}", "--co")
    assert preview.ret == pytest.ExitCode.OK
    (pytester.path / "test_m.py").write_text("def test_renamed(): pass\n")
    refused = pytester.runpytest(f"--runs-store={other}", f"--retry-run={exported}")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    assert not other.parent.exists()


def test_import_gives_a_new_id_and_keeps_provenance(mixed: Path, tmp_path: Path) -> None:
    exported = tmp_path / "run.yaml"
    other = tmp_path / "other.db"
    cli_ok("--store", str(mixed), "export", "1", "--format", "yaml", "-o", str(exported))
    cli_ok("--store", str(mixed), "export", "1", "--format", "json", "-o", str(tmp_path / "j"))
    cli_ok("--store", str(other), "import", str(tmp_path / "j"))
    out = cli_ok("--store", str(other), "import", str(exported))
    assert out == f"run 1 is already in {other} as run 1\n"
    again = json.loads(cli_ok("--store", str(other), "show", "1", "--format", "json"))
    original = json.loads(cli_ok("--store", str(mixed), "show", "1", "--format", "json"))
    assert again["origin"]["run_id"] == 1
    assert again["uid"] == original["uid"]
    assert again["counts"] == original["counts"]
    assert len(json.loads(cli_ok("--store", str(other), "list", "--format", "json"))) == 1


def test_importing_a_run_into_its_own_store_changes_nothing(mixed: Path, tmp_path: Path) -> None:
    exported = tmp_path / "run.json"
    cli_ok("--store", str(mixed), "export", "1", "--format", "json", "-o", str(exported))
    before = mixed.read_bytes()
    out = cli_ok("--store", str(mixed), "import", str(exported))
    assert out == f"run 1 is already in {mixed} as run 1\n"
    assert mixed.read_bytes() == before


@pytest.mark.parametrize("content", ["not json or yaml: [", '{"id": 1}', "- a list\n"])
def test_import_rejects_what_is_not_a_run_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    code, _ = run_cli("--store", str(tmp_path / "s.db"), "import", str(bad))
    assert code == 4
    err = capsys.readouterr().err
    assert err.startswith("pytest-runs: error: ")
    assert err.count("\n") == 1
    assert not (tmp_path / "s.db").exists()


def test_retry_run_of_a_bad_run_file_is_a_usage_error(pytester: pytest.Pytester) -> None:
    (pytester.path / "bad.json").write_text("{}")
    pytester.makepyfile("def test_a(): pass\n")
    result = pytester.runpytest("--retry-run=bad.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --retry-run bad.json: *bad.json is not a run file written by 'pytest-runs export'"]
    )
    assert not (pytester.path / ".pytest_runs").exists()


# -- prune -------------------------------------------------------------------------------


@pytest.fixture
def three_runs(pytester: pytest.Pytester, store_path: Path) -> Path:
    pytester.makepyfile(
        "import pytest\n@pytest.mark.parametrize('n', range(400))\n"
        "def test_n(n):\n    assert n % 100, 'x' * 2000\n"
    )
    pytester.runpytest()
    pytester.runpytest("--retry-run=1", "--failed-only")
    pytester.runpytest()
    return store_path


def test_prune_keeps_summaries_and_lineage(
    three_runs: Path, pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    before_show = json.loads(cli_ok("--store", str(three_runs), "show", "1", "--format", "json"))
    size_before = three_runs.stat().st_size
    dry = cli_ok("--store", str(three_runs), "prune", "--keep", "1", "--dry-run")
    assert dry == "would prune 2 runs: 1, 2\n"
    assert three_runs.stat().st_size == size_before
    out = cli_ok("--store", str(three_runs), "prune", "--keep", "1")
    assert out.startswith("pruned 2 runs: 1, 2\n")
    assert three_runs.stat().st_size < size_before
    pruned = json.loads(cli_ok("--store", str(three_runs), "show", "1", "--format", "json"))
    assert (pruned["selection"], pruned["results"]) == ([], [])
    assert pruned["counts"] == before_show["counts"]
    assert pruned["pruned_at"] is not None
    lineage = json.loads(cli_ok("--store", str(three_runs), "lineage", "2", "--format", "json"))
    assert (lineage["id"], lineage["children"][0]["id"]) == (1, 2)
    kept = json.loads(cli_ok("--store", str(three_runs), "show", "3", "--format", "json"))
    assert len(kept["results"]) == 400
    result = pytester.runpytest("--retry-run=1", "--failed-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --retry-run 1: run 1's selection and results are no longer retained (pruned)"]
    )
    capsys.readouterr()
    code, _ = run_cli("--store", str(three_runs), "retry", "1")
    assert code == 4
    assert "no longer retained" in capsys.readouterr().err


def test_pruned_runs_stay_immutable(three_runs: Path) -> None:
    cli_ok("--store", str(three_runs), "prune", "--keep", "2")
    connection = sqlite3.connect(three_runs)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            connection.execute("UPDATE runs SET status = 'passed' WHERE id = 1")
        with pytest.raises(sqlite3.IntegrityError):
            connection.execute("UPDATE runs SET pruned_at = NULL WHERE id = 1")
        with pytest.raises(sqlite3.IntegrityError):
            connection.execute("DELETE FROM results WHERE run_id = 2")
    finally:
        connection.close()


def test_prune_older_than(three_runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_ok("--store", str(three_runs), "prune", "--older-than", "30d") == "pruned 0 runs\n"
    code, _ = run_cli("--store", str(three_runs), "prune", "--older-than", "30 days")
    assert code == 4
    assert capsys.readouterr().err == (
        "pytest-runs: error: --older-than: expected an age such as 30d, 12h or 2w, got '30 days'\n"
    )
    code, _ = run_cli("--store", str(three_runs), "prune")
    assert code == 4


# -- the schema moves forward -----------------------------------------------------------------


# -- presentation -------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_without_no_color(
    mixed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    terminal = FakeTerminal()
    assert cli.main(["--store", str(mixed), "list"], out=terminal) == 0
    assert "\033[31mfailed\033[0m" in terminal.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    terminal = FakeTerminal()
    cli.main(["--store", str(mixed), "list"], out=terminal)
    assert "\033[" not in terminal.getvalue()
    assert "\033[" not in cli_ok("--store", str(mixed), "list")


def test_every_help_example_runs_and_is_in_the_readme(
    pytester: pytest.Pytester,
    store_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytester.makepyfile(test_flaky=FLAKY_TWICE)
    pytester.runpytest()
    pytester.runpytest("--retry-run=1", "--failed-only")
    monkeypatch.setenv("PYTEST_RUNS_STORE", str(store_path))
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    order = ["list", "show", "lineage", "diff", "flaky", "export", "import", "prune", "retry"]
    order += ["token", "serve", "sync", "copy"]
    assert sorted(order) == sorted(cli.EXAMPLES)
    for command in order:
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        help_text = capsys.readouterr().out
        for example in cli.EXAMPLES[command]:
            assert example in help_text
        for example in cli.EXAMPLES[command]:
            assert example in readme, example
            if command in ("serve", "sync", "copy"):
                continue  # a server of their own: tests/test_server.py, test_http_recording.py
            args = re.findall(r"'[^']*'|\S+", example)[1:]
            args = [a.strip("'") for a in args]
            code, _ = run_cli(*args, cwd=pytester.path)
            assert code in (0, 1), example  # a retry of failing tests exits 1


def test_merged_junit_has_each_root_test_once_with_its_final_outcome(
    family: Path, tmp_path: Path
) -> None:
    import xml.etree.ElementTree as ET

    target = tmp_path / "merged.xml"
    cli_ok(
        "--store", str(family), "export", "3", "--format", "junit", "--merged", "-o", str(target)
    )
    (suite,) = ET.parse(target).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "0")
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert set(cases) == {"test_stable", "test_passes_on_third_run", "test_broken"}
    flaky = cases["test_passes_on_third_run"]
    assert [child.tag for child in flaky] == ["flakyFailure", "flakyFailure"]
    assert "assert 0 >= 2" in (flaky[0].findtext("stackTrace") or "")
    broken = cases["test_broken"]
    assert [child.tag for child in broken] == [
        "failure",
        "rerunFailure",
        "rerunFailure",
        "rerunFailure",
    ]
    assert list(cases["test_stable"]) == []


def test_merged_needs_junit(family: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run_cli("--store", str(family), "export", "1", "--format", "json", "--merged")
    assert code == 4
    assert "--merged goes with --format junit" in capsys.readouterr().err


@pytest.fixture
def fixed_collection(
    pytester: pytest.Pytester, store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Run 1: test_c.py fails to collect; run 2, its failed-only retry, collects it."""
    pytester.makepyfile(
        test_ok="def test_ok(): pass\n",
        test_c="import os\nif not os.environ.get('OK'):\n    raise ImportError('not yet')\n"
        "def test_c1(): pass\ndef test_c2(): pass\n",
    )
    pytester.runpytest()
    monkeypatch.setenv("OK", "1")
    pytester.runpytest("--retry-run=1", "--failed-only")
    return store_path


def test_diff_compares_a_fixed_collection_error_with_its_tests(fixed_collection: Path) -> None:
    diff = json.loads(
        cli_ok("--store", str(fixed_collection), "diff", "1", "2", "--format", "json")
    )
    assert diff["fixed"] == ["test_c.py::test_c1", "test_c.py::test_c2"]
    assert diff["changed"] == ["test_ok.py::test_ok"]  # not run (the session stopped), now run
    assert (diff["appeared"], diff["disappeared"], diff["not_retried"]) == ([], [], [])


def test_merged_junit_reports_a_fixed_collection_error_as_flaky(
    fixed_collection: Path, tmp_path: Path
) -> None:
    import xml.etree.ElementTree as ET

    target = tmp_path / "merged.xml"
    cli_ok(
        "--store",
        str(fixed_collection),
        "export",
        "2",
        "--format",
        "junit",
        "--merged",
        "-o",
        str(target),
    )
    (suite,) = ET.parse(target).getroot()
    assert (suite.get("tests"), suite.get("errors"), suite.get("failures")) == ("3", "0", "0")
    cases = {case.get("name"): [child.tag for child in case] for case in suite.iter("testcase")}
    assert cases == {"test_ok": [], "test_c1": ["flakyError"], "test_c2": ["flakyError"]}


def test_diff_across_a_lineage_compares_what_the_retry_ran(family: Path) -> None:
    diff = json.loads(cli_ok("--store", str(family), "diff", "1", "3", "--format", "json"))
    assert diff["disappeared"] == []
    assert diff["not_retried"] == ["test_flaky.py::test_stable"]
