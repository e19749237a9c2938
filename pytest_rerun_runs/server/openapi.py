"""Write the API's OpenAPI document: ``python -m pytest_rerun_runs.server.openapi``
updates ``docs/openapi.json`` (a test keeps the two equal)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pytest_rerun_runs.server.app import ServerConfig, create_app


def document() -> str:
    return json.dumps(create_app(ServerConfig(":memory:")).openapi(), indent=2) + "\n"


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/openapi.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(document(), encoding="utf-8")
    print(f"wrote {target}")
