"""Write schemas/<command>.schema.json for every miso command (and `version`).

Each is the envelope (envelope.schema.json) with its command name fixed and, where the
payload is pinned down here, the keys its data always has when the command succeeds.
Run: python schemas/generate.py (tests/test_schemas.py fails when a file is stale).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Keys each command's data always has on success (checked against real output in tests).
DATA_REQUIRED: dict[str, list[str]] = {
    "version": ["miso", "nvidia-ml-py", "driver", "nvml"],
    "status": ["gpus", "simulated"],
    "layouts": ["model", "name", "source", "count", "layouts", "profiles"],
    "export": ["format", "source", "gpus", "configs", "node_config", "files", "warnings",
               "validated"],
    "doctor": ["checks", "ready"],
}  # fmt: skip


def schema(command: str) -> dict:
    data: dict = {"type": "object"}
    if command in DATA_REQUIRED:
        data["required"] = DATA_REQUIRED[command]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://github.com/miso-cli/miso/schemas/{command}.schema.json",
        "title": f"miso {command} --json",
        "allOf": [{"$ref": "envelope.schema.json"}],
        "properties": {"command": {"const": command}},
        "if": {"properties": {"status": {"const": "ok"}}},
        "then": {"properties": {"data": data}},
    }


def commands() -> list[str]:
    sys.path.insert(0, str(HERE.parent))
    from miso_cli.cli import COMMANDS

    # `miso man` prints a page, never an envelope.
    return ["version"] + [name for name, _ in COMMANDS if name != "man"]


def render(command: str) -> str:
    return json.dumps(schema(command), indent=2) + "\n"


def main() -> int:
    for command in commands():
        (HERE / f"{command}.schema.json").write_text(render(command), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
