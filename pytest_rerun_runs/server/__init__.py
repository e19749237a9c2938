"""``pytest-runs serve``: the HTTP API over a run store (the ``[server]`` extra).

Nothing here is imported by the pytest plugin.
"""

from __future__ import annotations

from pytest_rerun_runs.server.app import ServerConfig, create_app

__all__ = ["ServerConfig", "create_app", "serve"]


def serve(config: ServerConfig, *, host: str, port: int, workers: int) -> None:
    """Serve ``config`` with uvicorn until interrupted."""
    import os

    import uvicorn

    os.environ["PYTEST_RUNS_SERVER_CONFIG"] = config.to_json()
    uvicorn.run(
        "pytest_rerun_runs.server.app:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        proxy_headers=False,
        server_header=False,
    )
