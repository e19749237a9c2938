"""A flaky test, made deterministic: it fails on its first run in a fresh
checkout and passes afterwards, through the marker file it leaves behind."""

from pathlib import Path

MARKER = Path(__file__).with_name(".flaky-has-run")


def test_cache_warms_up():
    first_run = not MARKER.exists()
    MARKER.touch()
    assert not first_run, "cold cache on first run (flaky on purpose; passes on retry)"
