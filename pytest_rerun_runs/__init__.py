"""pytest-rerun-runs: every pytest session recorded as a run; retries are new runs."""

__version__ = "0.1.0"
