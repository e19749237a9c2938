"""Choosing a backend by URL, and keeping secrets in URLs out of sight."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_rerun_runs.store import UnsupportedStore, open_store, redact_url
from pytest_rerun_runs.store.sqlite import SqliteStore


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://ci:s3cret@db/runs", "postgresql://ci:***@db/runs"),
        ("https://bot:tok@runs.example.org/x", "https://bot:***@runs.example.org/x"),
        ("postgresql://ci@db/runs", "postgresql://ci@db/runs"),
        ("https://h/api?token=abc&x=1", "https://h/api?token=***&x=1"),
        ("postgresql://db/runs?password=pw", "postgresql://db/runs?password=***"),
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
            " pip install 'pytest-rerun-runs[postgres]'",
        ),
    ],
)
def test_unknown_or_missing_backends_are_refused_and_create_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
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
