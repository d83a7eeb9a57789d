"""The JSON envelope every command prints with ``--json``.

One object on stdout::

    {"schema_version": 1, "command": "status", "status": "ok",
     "hostname": "gpu-node-1", "time": "2026-11-30T01:02:03Z",
     "data": {...}, "errors": [{"code": "NO_GPU", "message": "...", "hint": "..."}]}

``hostname`` and ``time`` (UTC, ISO 8601) say where and when the output was made, for
tools that gather it from a fleet (as gpustat's JSON carries its hostname and query
time). The JSON Schema of each command's envelope is in ``schemas/``.

``status`` is ``ok`` or ``error``. ``data`` is the command's payload (documented
per command in the README); it may be present alongside errors, e.g. a run
report whose jobs partly failed. Error codes are the names in
:class:`miso_cli.errors.ExitCode`. Bump ``SCHEMA_VERSION`` only for a change
that breaks existing readers.
"""

from __future__ import annotations

import json
import math
import socket
from datetime import datetime, timezone
from typing import Any

SCHEMA_VERSION = 1


def _clean(obj: Any) -> Any:
    """Make ``obj`` JSON-safe: NaN/inf become null (missing values are data)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def utc_timestamp(now: datetime | None = None) -> str:
    """``2026-11-30T01:02:03Z``: an instant in UTC, to the second."""
    now = now or datetime.now(timezone.utc)
    return now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def envelope(
    command: str,
    data: Any = None,
    errors: list[dict[str, Any]] | None = None,
    *,
    now: datetime | None = None,
    hostname: str | None = None,
) -> dict[str, Any]:
    errors = errors or []
    return {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "status": "error" if errors else "ok",
        "hostname": hostname if hostname is not None else socket.gethostname(),
        "time": utc_timestamp(now),
        "data": _clean(data) if data is not None else {},
        "errors": _clean(errors),
    }


def dumps(obj: Any) -> str:
    return json.dumps(_clean(obj), sort_keys=False, allow_nan=False)
