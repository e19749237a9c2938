"""Unit tests of run files (``pytest_rerun_runs.exchange``): JUnit XML, JSON/YAML
export and reading run files back."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest

from pytest_rerun_runs import exchange
from pytest_rerun_runs.store import (
    GitInfo,
    Result,
    RetryMode,
    Run,
    RunStatus,
    RunSummary,
    SelectedTest,
    count_outcomes,
)
from tests.conftest import make_invocation

CREATED_AT = 1_700_000_000.25


def make_run(
    run_id: int,
    results: Sequence[Result],
    *,
    source_run_id: int | None = None,
    root_run_id: int | None = None,
    attempt: int = 1,
    commit: str | None = None,
    status: RunStatus = "failed",
    mode: RetryMode = "full",
    args: list[str] | None = None,
    created_at: float = CREATED_AT,
    duration: float = 2.5,
) -> Run:
    """The only place these tests build a Run; results with a ``file`` (collection
    errors) are left out of the selection."""
    summary = RunSummary(
        id=run_id,
        status=status,
        exit_status=0 if status == "passed" else 1,
        created_at=created_at,
        started_at=created_at,
        finished_at=created_at + duration,
        label=None,
        meta={},
        source_run_id=source_run_id,
        root_run_id=root_run_id if root_run_id is not None else run_id,
        attempt=attempt,
        mode=mode,
        reason=None,
        counts=count_outcomes(results),
        invocation=make_invocation(host="ci-7")._replace(
            args=["-q", "tests/"] if args is None else args,
            git=GitInfo(branch="main", commit=commit),
        ),
        deselected=0,
        missing=[],
    )
    selection = [
        SelectedTest(r.nodeid, r.nodeid.partition("::")[0]) for r in results if r.file is None
    ]
    return Run(summary=summary, selection=selection, results=list(results))


def mixed_run() -> Run:
    """One result of each outcome."""
    return make_run(
        7,
        [
            Result("tests/test_a.py::test_pass", "passed", "call", call_duration=0.25),
            Result(
                "tests/test_a.py::TestB::test_fail",
                "failed",
                "call",
                setup_duration=0.5,
                call_duration=1.0,
                longrepr="def test_fail():\n>       assert 1 == 2\nE       assert 1 == 2\n",
            ),
            Result("tests/test_a.py::test_error", "error", "setup", longrepr="E   fixture 'db'"),
            Result("tests/test_a.py::test_skip", "skipped", "setup", longrepr="no network"),
            Result("tests/test_a.py::test_xfail", "xfailed", "call", longrepr="known bug"),
            Result("tests/test_a.py::test_xpass", "xpassed", "call"),
            Result("tests/test_a.py::test_later", "not_run", "none"),
        ],
        commit="abc123",
    )


def outcomes(run: Run) -> list[tuple[str, str, str, float, str | None]]:
    return [(r.nodeid, r.outcome, r.when, r.duration, r.longrepr) for r in run.results]


def junit_cases(run: Run) -> dict[str, ET.Element]:
    """The testcases of the run's JUnit XML, by name."""
    root = ET.fromstring(exchange.junit_xml(run))
    return {case.attrib["name"]: case for case in root.iter("testcase")}


# junit_names


@pytest.mark.parametrize(
    ("nodeid", "expected"),
    [
        ("tests/test_a.py::test_x", ("tests.test_a", "test_x")),
        ("tests/test_a.py::TestA::test_x", ("tests.test_a.TestA", "test_x")),
        (
            "tests/test_a.py::TestA::TestInner::test_x[1-a/b]",
            ("tests.test_a.TestA.TestInner", "test_x[1-a/b]"),
        ),
        ("pkg/mod.py::pkg.mod.func", ("pkg.mod", "pkg.mod.func")),
        ("docs/README.txt::README.txt", ("docs.README.txt", "README.txt")),
        ("tests/test_broken.py", ("", "tests.test_broken")),
    ],
)
def test_junit_names_match_pytest_junitxml(nodeid: str, expected: tuple[str, str]) -> None:
    assert exchange.junit_names(nodeid) == expected


# junit_xml


def test_junit_xml_suite_counts_each_outcome() -> None:
    root = ET.fromstring(exchange.junit_xml(mixed_run()))

    assert root.tag == "testsuites"
    [suite] = list(root)
    assert {k: suite.attrib[k] for k in ("name", "tests", "failures", "errors", "skipped")} == {
        "name": "pytest run 7",
        "tests": "7",
        "failures": "1",
        "errors": "1",
        "skipped": "3",
    }
    assert suite.attrib["time"] == "2.500"
    assert suite.attrib["hostname"] == "ci-7"
    assert suite.attrib["timestamp"] == "2023-11-14T22:13:20.250000+00:00"
    assert len(suite.findall("testcase")) == 7


def test_junit_xml_records_run_identity_as_properties() -> None:
    run = make_run(
        9,
        [Result("t.py::a", "passed", "call")],
        source_run_id=7,
        root_run_id=7,
        attempt=2,
        mode="failed_only",
        status="passed",
        commit="abc123",
    )
    root = ET.fromstring(exchange.junit_xml(run))

    assert [(p.attrib["name"], p.attrib["value"]) for p in root.iter("property")] == [
        ("run_id", "9"),
        ("status", "passed"),
        ("attempt", "2"),
        ("mode", "failed_only"),
        ("source_run_id", "7"),
        ("git_commit", "abc123"),
    ]


def test_junit_xml_omits_properties_that_are_unknown() -> None:
    run = make_run(1, [Result("t.py::a", "passed", "call")], status="passed")
    root = ET.fromstring(exchange.junit_xml(run))

    assert [p.attrib["name"] for p in root.iter("property")] == [
        "run_id",
        "status",
        "attempt",
        "mode",
    ]


def test_junit_xml_failure_carries_the_error_line_and_full_text() -> None:
    case = junit_cases(mixed_run())["test_fail"]

    assert case.attrib == {
        "classname": "tests.test_a.TestB",
        "name": "test_fail",
        "time": "1.500000",
    }
    [failure] = list(case)
    assert failure.tag == "failure"
    assert failure.attrib == {"message": "assert 1 == 2"}
    assert failure.text == "def test_fail():\n>       assert 1 == 2\nE       assert 1 == 2\n"


def test_junit_xml_error_message_names_the_phase() -> None:
    [error] = list(junit_cases(mixed_run())["test_error"])

    assert error.tag == "error"
    assert error.attrib == {"message": "setup: fixture 'db'"}
    assert error.text == "E   fixture 'db'"


def test_junit_xml_marks_skipped_xfailed_and_not_run_tests_skipped() -> None:
    cases = junit_cases(mixed_run())

    assert {
        name: [(child.tag, child.attrib["message"]) for child in cases[name]]
        for name in ("test_skip", "test_xfail", "test_later")
    } == {
        "test_skip": [("skipped", "skipped: no network")],
        "test_xfail": [("skipped", "xfailed: known bug")],
        "test_later": [("skipped", "not run: the session stopped first")],
    }


def test_junit_xml_passed_and_xpassed_tests_have_no_child_elements() -> None:
    cases = junit_cases(mixed_run())

    assert list(cases["test_pass"]) == []
    assert list(cases["test_xpass"]) == []
    assert cases["test_pass"].attrib["time"] == "0.250000"


# export_dict, dump_json, dump_yaml


def test_export_dict_adds_selection_files_and_export_metadata() -> None:
    run = make_run(
        3,
        [
            Result("tests/test_a.py::test_x", "passed", "call"),
            Result("tests/sub/test_b.py::TestB::test_y", "failed", "call"),
            Result("tests/test_broken.py", "error", "collect", file="tests/test_broken.py"),
        ],
    )

    data = exchange.export_dict(run, "/srv/runs.db")

    assert data["selection"] == ["tests/test_a.py::test_x", "tests/sub/test_b.py::TestB::test_y"]
    assert data["selection_files"] == ["tests/test_a.py", "tests/sub/test_b.py"]
    assert data["export"]["format"] == exchange.EXPORT_FORMAT_VERSION
    assert data["export"]["store"] == "/srv/runs.db"
    assert data["invocation"]["args"] == ["-q", "tests/"]


def test_export_dict_can_omit_the_arguments() -> None:
    run = make_run(3, [Result("t.py::a", "passed", "call")])

    data = exchange.export_dict(run, "runs.db", omit_args=True)

    assert data["invocation"]["args"] is None
    assert run.summary.invocation.args == ["-q", "tests/"]


@pytest.mark.parametrize(
    ("name", "dump"), [("run.json", exchange.dump_json), ("run.yaml", exchange.dump_yaml)]
)
def test_run_file_round_trips_selection_and_outcomes(
    tmp_path: Path, name: str, dump: Callable[[dict[str, Any]], str]
) -> None:
    run = mixed_run()
    path = tmp_path / name
    path.write_text(dump(exchange.export_dict(run, "/srv/runs.db")), encoding="utf-8")

    loaded, export = exchange.load_run_file(path)

    assert loaded.selection == run.selection
    assert outcomes(loaded) == outcomes(run)
    assert loaded.summary.counts == run.summary.counts
    assert (loaded.id, loaded.summary.status, loaded.summary.created_at) == (
        7,
        "failed",
        CREATED_AT,
    )
    assert loaded.summary.invocation == run.summary.invocation
    assert (export["format"], export["store"]) == (1, "/srv/runs.db")


def test_load_run_file_without_export_metadata_returns_empty_metadata(tmp_path: Path) -> None:
    data = mixed_run().to_dict()
    path = tmp_path / "show.json"
    path.write_text(json.dumps(data), encoding="utf-8")

    loaded, export = exchange.load_run_file(path)

    assert export == {}
    assert [test.file for test in loaded.selection] == ["tests/test_a.py"] * 7


# load_run_file errors


@pytest.mark.parametrize("name", [".", "missing.json"])
def test_load_run_file_rejects_a_path_that_is_not_a_readable_file(
    tmp_path: Path, name: str
) -> None:
    with pytest.raises(exchange.RunFileError, match="cannot read run file"):
        exchange.load_run_file(tmp_path / name)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{not: [valid",
        "just some text\n",
        "[1, 2, 3]",
        '{"selection": []}',
    ],
)
def test_load_run_file_rejects_text_that_is_not_a_run_export(tmp_path: Path, text: str) -> None:
    path = tmp_path / "run.json"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(exchange.RunFileError, match="is not a run file written by"):
        exchange.load_run_file(path)


def test_load_run_file_rejects_a_run_missing_required_keys(tmp_path: Path) -> None:
    data = exchange.export_dict(mixed_run(), "runs.db")
    del data["invocation"]
    path = tmp_path / "run.json"
    path.write_text(exchange.dump_json(data), encoding="utf-8")

    with pytest.raises(
        exchange.RunFileError, match=r"is not a valid run file: the file: no 'invocation'"
    ):
        exchange.load_run_file(path)


def test_load_run_file_rejects_an_unknown_outcome(tmp_path: Path) -> None:
    data = exchange.export_dict(mixed_run(), "runs.db")
    data["results"][0]["outcome"] = "exploded"
    path = tmp_path / "run.yaml"
    path.write_text(exchange.dump_yaml(data), encoding="utf-8")

    with pytest.raises(
        exchange.RunFileError,
        match=r"results\[0\]\.outcome: 'exploded' is not one of passed, failed",
    ):
        exchange.load_run_file(path)
