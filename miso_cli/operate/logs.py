"""A job's log across its attempts: ``<run dir>/logs/<job>.log``, read or followed.

miso starts each attempt with a ``=== miso: JOB attempt N on ... ===`` line, so
the one file tells the whole story of a job that was stopped, moved and resumed.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from miso_cli.errors import UsageError
from miso_cli.operate.runs import RunInfo, read_run
from miso_cli.spec.queue import NAME_RE

TERMINAL = ("finished", "failed", "hung", "interrupted", "cancelled")
_HEADER = re.compile(rb"^\n?=== miso: \S+ attempt (\d+) ", re.M)


def log_path(run: RunInfo, job: str) -> Path:
    if not NAME_RE.match(job):
        raise UsageError(f"{job!r} is not a job name")
    if job not in run.jobs:
        raise UsageError(
            f"run {run.run_id} has no job {job!r}",
            hint="miso status lists its jobs (a job just submitted has no log yet)",
        )
    return run.run_dir / "logs" / f"{job}.log"


def read_log(path: Path, attempt: int | None = None) -> bytes:
    """The log (empty if the job has not started), or only the part of one attempt."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return b""
    if attempt is None:
        return data
    starts = [(int(m.group(1)), m.start()) for m in _HEADER.finditer(data)]
    for i, (n, at) in enumerate(starts):
        if n == attempt:
            end = starts[i + 1][1] if i + 1 < len(starts) else len(data)
            return data[at:end]
    raise UsageError(
        f"{path.name}: no attempt {attempt}",
        hint=f"attempts in the log: {', '.join(str(n) for n, _ in starts) or 'none'}",
    )


def follow(
    path: Path,
    write: Callable[[bytes], None],
    *,
    done: Callable[[], bool],
    offset: int = 0,
    poll_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Write what the log gains until ``done()`` and nothing more is left; the end offset.

    ``done`` is asked after each read, so the last lines a job wrote before it ended
    are never lost to the race between its exit and the last look.
    """
    while True:
        finished = done()
        try:
            with open(path, "rb") as fh:
                if os.fstat(fh.fileno()).st_size < offset:
                    offset = 0  # the log was replaced: start again
                fh.seek(offset)
                while chunk := fh.read(65536):
                    write(chunk)
                    offset += len(chunk)
        except FileNotFoundError:
            pass
        if finished:
            return offset
        sleep(poll_s)


def job_over(run_dir: Path, job: str) -> Callable[[], bool]:
    """``done`` for :func:`follow`: the job ended, or its run is over or nobody drives it."""

    def check() -> bool:
        try:
            run = read_run(run_dir)
        except Exception:  # noqa: BLE001 - a run dir that vanished: nothing more will come
            return True
        state = str(run.jobs.get(job, {}).get("state", ""))
        return state in TERMINAL or not run.live

    return check
