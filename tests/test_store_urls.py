"""Choosing a backend by URL, and keeping secrets in URLs out of sight."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pytest_rerun_runs.store import BACKENDS, UnsupportedStore, open_store, redact_url
from pytest_rerun_runs.store.sqlite import SqliteStore


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://ci:s3cret@db/runs", "postgresql://ci:***@db/runs"),
        ("https://bot:tok@runs.example.org/x", "https://bot:***@runs.example.org/x"),
        ("postgresql://ci@db/runs", "postgresql://ci@db/runs"),
        ("https://h/api?token=abc&x=1", "https://h/api?token=***&x=1"),
        ("postgresql://db/runs?password=pw", "postgresql://db/runs?password=***"),
        ("https://ghp_SECRET@host/", "https://***@host/"),
        ("postgresql://ci:p@ss@db/runs", "postgresql://ci:***@db/runs"),
        (
            "https://h/x?sslpassword=a&api-key=b&x=1#token=z",
            "https://h/x?sslpassword=***&api-key=***&x=1#token=***",
        ),
        (
            "https://s3/x?X-Amz-Signature=abc&X-Amz-Date=1",
            "https://s3/x?X-Amz-Signature=***&X-Amz-Date=1",
        ),
        ("--runs-store=postgresql://u:p@h/d", "--runs-store=postgresql://u:***@h/d"),
        ("plain/path.db", "plain/path.db"),
    ],
)
def test_passwords_and_tokens_are_redacted(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("foo://bar", "foo://bar: unknown store scheme foo://"),
        ("file:///x.db", "file:///x.db: unknown store scheme file://"),
        (
            "postgresql://ci:pw@db/runs",
            "postgresql://ci:***@db/runs: postgresql:// stores need the [postgres] extra:"
            " pip install 'pytest-rerun-runs[postgres]' (missing: psycopg)",
        ),
    ],
)
def test_unknown_or_missing_backends_are_refused_and_create_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if the extra were not installed
    monkeypatch.delitem(sys.modules, "pytest_rerun_runs.store.postgres", raising=False)
    with pytest.raises(UnsupportedStore) as raised:
        open_store(url)
    assert raised.value.code == "unsupported_store"
    assert str(raised.value).startswith(message)
    assert "pw" not in str(raised.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("form", ["{path}", "sqlite://{path}"])
def test_paths_and_sqlite_urls_open_sqlite(tmp_path: Path, form: str) -> None:
    path = tmp_path / "runs.db"
    store = open_store(form.format(path=path))
    try:
        assert isinstance(store, SqliteStore)
        assert store.path == path
    finally:
        store.close()


def test_a_backend_whose_dependency_is_missing_names_its_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fake_backend.py").write_text("import not_installed_driver_x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(BACKENDS, "fakedb", ("fake_backend", "fake"))
    with pytest.raises(UnsupportedStore) as raised:
        open_store("fakedb://u:secret@h/d")
    assert str(raised.value) == (
        "fakedb://u:***@h/d: fakedb:// stores need the [fake] extra:"
        " pip install 'pytest-rerun-runs[fake]' (missing: not_installed_driver_x)"
    )
