"""Use cases of ``miso submit``, ``miso cancel`` and ``miso priority``: requests to a run.

Each checks what it can before writing (the queue as ``miso run`` would, names
against the run's jobs), writes one request into the run's inbox
(:mod:`miso_cli.operate.inbox`) and returns what it queued. The run applies it
within about a second if a ``miso run`` drives it, else when it is resumed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from miso_cli.errors import BadInput, UsageError
from miso_cli.operate import inbox
from miso_cli.operate.runs import RunInfo, target_run
from miso_cli.spec.queue import QueueSpec, load_queue, parse_queue

COMMAND_LINE = "<command line>"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(type(value).__name__)


def command_queue_text(
    name: str,
    argv: list[str],
    *,
    priority: int | None = None,
    steps: int | None = None,
    memory: str | None = None,
    workload: str | None = None,
    retries: int | None = None,
    checkpoint_signal: str | None = None,
    grace: str | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """A one-job queue file for ``miso submit --name NAME -- COMMAND...``."""
    lines = ["version = 1", "", "[[job]]", f"name = {_toml_value(name)}"]
    lines.append(f"command = {_toml_value(list(argv))}")
    for key, value in (
        ("steps", steps),
        ("memory", memory),
        ("workload", workload),
        ("retries", retries),
        ("priority", priority),
    ):
        if value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    if env:
        pairs = ", ".join(f"{_toml_value(k)} = {_toml_value(v)}" for k, v in env.items())
        lines.append(f"env = {{ {pairs} }}")
    if checkpoint_signal is not None or grace is not None:
        lines += ["", "[job.checkpoint]"]
        if checkpoint_signal is not None:
            lines.append(f"signal = {_toml_value(checkpoint_signal)}")
        if grace is not None:
            lines.append(f"grace = {_toml_value(grace)}")
    return "\n".join(lines) + "\n"


def _withdraw_if_over(run: RunInfo, rid: str) -> None:
    """The run may have ended while the request was written: then take it back, and say so
    (a request the run took already is not withdrawn: its jobs are in the journal)."""
    from miso_cli.operate.runs import NoRun, read_run

    if read_run(run.run_dir).accepts_requests:
        return
    try:
        os.unlink(inbox.inbox_dir(run.run_dir) / f"{rid}.json")
    except FileNotFoundError:
        return  # taken by the run before it ended
    raise NoRun(
        f"run {run.run_id} ended while the request was written; nothing was added",
        hint="start a new run with: miso run QUEUE.toml",
    )


def _check_memory(run: RunInfo, queue: QueueSpec) -> None:
    """A job larger than any GPU of the run could never start: refuse it now."""
    from miso_cli.gpu.profiles import model
    from miso_cli.spec.queue import check_memory

    best, what = 0.0, ""
    for g in run.data.get("gpus") or []:
        try:
            m = model(str(g.get("model")))
        except (KeyError, ValueError):
            continue
        if m.memory_mb > best:
            best, what = float(m.memory_mb), f"a whole {m.name} of run {run.run_id}"
    if best:
        check_memory(queue, best, what)


def _check_names(run: RunInfo, queue: QueueSpec) -> None:
    taken = set(run.jobs) | inbox.submitted_names(run.run_dir)
    for job in queue.jobs:
        if job.name in taken:
            where = f"{queue.path}:{job.line}: " if job.line else ""
            raise BadInput(
                f"{where}job {job.name!r}: run {run.run_id} already has a job of that name",
                hint="rename the job (names are unique within a run)",
            )


def submit(
    state_dir: Path,
    *,
    queue_path: Path | None = None,
    queue_text: str | None = None,
    run_id: str | None = None,
    priority: int | None = None,
    euid: int | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Validate a queue (file, or text built from a command line) and queue it for the run."""
    run = target_run(state_dir, run_id)
    if queue_path is not None:
        queue = load_queue(queue_path)
        path = Path(queue_path).absolute()
        text = path.read_bytes().decode("utf-8-sig")
    else:
        assert queue_text is not None
        path = Path.cwd() / COMMAND_LINE
        text = queue_text
        queue = parse_queue(text, path)
    _check_names(run, queue)
    _check_memory(run, queue)
    payload: dict[str, Any] = {"kind": "submit", "queue_path": str(path), "queue_text": text}
    if priority is not None:
        payload["priority"] = priority  # every job of the submission, over the file's
    rid = inbox.write_request(
        run.run_dir,
        payload,
        euid=euid,
        now=now,
    )
    _withdraw_if_over(run, rid)
    return {
        "run_id": run.run_id,
        "request": rid,
        "jobs": [j.name for j in queue.jobs],
        "live": run.live,
        "run_status": run.status,
        "inbox": str(inbox.inbox_dir(run.run_dir)),
    }


def control(
    state_dir: Path,
    kind: str,
    names: list[str],
    *,
    priority: int | None = None,
    run_id: str | None = None,
    euid: int | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Queue a cancel or priority change of ``names`` for the run."""
    run = target_run(state_dir, run_id)
    known = set(run.jobs) | inbox.submitted_names(run.run_dir)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(
            f"run {run.run_id} has no job {', '.join(repr(n) for n in unknown)}",
            hint="miso status lists its jobs",
        )
    over = [n for n in names if run.jobs.get(n, {}).get("state") in _OVER]
    if over:
        state = run.jobs[over[0]]["state"]
        raise UsageError(f"job {over[0]!r} is {state} already; nothing to {kind}")
    payload: dict[str, Any] = {"kind": kind, "jobs": list(names)}
    if kind == "priority":
        payload["priority"] = priority
    rid = inbox.write_request(run.run_dir, payload, euid=euid, now=now)
    _withdraw_if_over(run, rid)
    states = {n: run.jobs.get(n, {}).get("state", "submitted") for n in names}
    return {
        "run_id": run.run_id,
        "request": rid,
        "kind": kind,
        "jobs": list(names),
        "states": states,
        "priority": priority,
        "live": run.live,
        "run_status": run.status,
    }


_OVER = ("finished", "failed", "hung", "interrupted", "cancelled")
