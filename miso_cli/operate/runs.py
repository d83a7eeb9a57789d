"""The runs of a state directory, read from their journals without taking them over.

Nothing here takes the run lock or writes a journal: ``miso status``, ``miso runs``,
``miso logs`` and ``miso report`` look at a run while ``miso run`` drives it. A
journal is replaced atomically, so a reader sees the old or the new one, never
a torn one.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miso_cli.errors import BadInput, MisoError, PermissionDenied, UsageError

ACTIVE = ("starting", "running", "stopping")
DONE_STATUSES = ("finished", "failed")


class NoRun(UsageError):
    """There is no run to act on (none started, or the last one is over).

    Exit code 2 (USAGE) with ``details.reason == "no_run"`` in the JSON error, so a
    script can tell it from a mistyped option.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint, details={"reason": "no_run"})


@dataclass
class RunInfo:
    """One run as a reader sees it."""

    run_id: str
    run_dir: Path
    data: dict[str, Any]
    live: bool  # a miso process drives it now

    @property
    def status(self) -> str:
        """The journal's status, with ``stopped`` for a run nobody drives any more."""
        s = str(self.data.get("status", "?"))
        if s == "running" and not self.live:
            return "stopped"
        return s

    @property
    def accepts_requests(self) -> bool:
        return str(self.data.get("status")) not in DONE_STATUSES

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        jobs = self.data.get("jobs")
        return jobs if isinstance(jobs, dict) else {}

    @property
    def policy(self) -> str:
        pol = self.data.get("policy")
        return str(pol.get("name", "?")) if isinstance(pol, dict) else "?"


def runs_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "runs"


def pid_alive(pid: Any) -> bool:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process (root's run seen by a user)
    except OSError:
        return False
    return True


def read_run(run_dir: Path) -> RunInfo:
    """One run's journal, read leniently (a damaged one is BAD_INPUT naming it)."""
    path = Path(run_dir) / "journal.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"no run {Path(run_dir).name} ({path} not found)") from None
    except PermissionError:
        raise PermissionDenied(
            f"{path}: not readable by this user (the run belongs to another user)",
            hint="a run started with 'sudo miso run' is seen and changed with sudo miso ...",
        ) from None
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path}: unreadable journal: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("run_id"), str):
        raise BadInput(f"{path}: not a miso journal")
    live = data.get("status") == "running" and pid_alive(data.get("miso_pid"))
    return RunInfo(str(data["run_id"]), Path(run_dir), data, live)


def list_runs(state_dir: Path) -> list[RunInfo]:
    """Every run of the state dir, oldest first; unreadable ones are skipped."""
    base = runs_dir(state_dir)
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        d = base / n
        if n.startswith(".") or not (d / "journal.json").is_file():
            continue
        try:
            out.append(read_run(d))
        except (MisoError, OSError):
            continue
    out.sort(key=lambda r: (float(r.data.get("started_at") or 0.0), r.run_id))
    return out


def latest_id(state_dir: Path) -> str | None:
    try:
        text = (runs_dir(state_dir) / "latest").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text or None


def open_run(state_dir: Path, run_id: str | None = None) -> RunInfo:
    """The run ``run_id`` (a unique prefix will do), else the latest run."""
    if run_id is None:
        rid = latest_id(state_dir)
        if rid is None:
            raise NoRun(
                f"no run in {state_dir}",
                hint="start one with: miso run QUEUE.toml",
            )
        return read_run(runs_dir(state_dir) / rid)
    if "/" in run_id or run_id in (".", "..") or not run_id:
        raise UsageError(f"--run {run_id!r}: not a run id", hint="miso runs lists them")
    exact = runs_dir(state_dir) / run_id
    if (exact / "journal.json").is_file():
        return read_run(exact)
    matches = [r for r in list_runs(state_dir) if r.run_id.startswith(run_id)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(f"no run {run_id!r} in {state_dir}", hint="miso runs lists them")
    raise UsageError(
        f"run id {run_id!r} is ambiguous: {', '.join(r.run_id for r in matches)}",
    )


def target_run(state_dir: Path, run_id: str | None = None) -> RunInfo:
    """The run to send requests to: the given one, else the latest, if it is not over."""
    try:
        run = open_run(state_dir, run_id)
    except NoRun:
        raise NoRun(
            f"no run in {state_dir} to add to",
            hint="start one with: miso run QUEUE.toml (then add jobs with miso submit)",
        ) from None
    if not run.accepts_requests:
        raise NoRun(
            f"run {run.run_id} is over ({run.status}); there is no running run to add to",
            hint="start one with: miso run QUEUE.toml",
        )
    return run


def job_rows(run: RunInfo, now: float | None = None) -> list[dict[str, Any]]:
    """Per job: state, GPU, slice, progress, step time, ETA (aged to ``now``)."""
    now = time.time() if now is None else now
    order = [j.get("name") for j in run.data.get("queue", {}).get("jobs", [])]
    prio = {j.get("name"): j.get("priority", 0) for j in run.data.get("queue", {}).get("jobs", [])}
    names = [n for n in order if n in run.jobs] + [n for n in run.jobs if n not in order]
    modes = {
        g.get("index"): g.get("mode") for g in run.data.get("gpus") or [] if isinstance(g, dict)
    }
    rows = []
    for name in names:
        rec = run.jobs[name]
        p = rec.get("progress") or {}
        state = str(rec.get("state", "?"))
        active = state in ACTIVE
        sl = rec.get("slice") or {}
        gpu = rec.get("gpu") if active else None
        where = None
        if active and gpu is not None:
            where = sl.get("profile") or ("MPS" if modes.get(gpu) == "mps" else "whole")
        attempts = rec.get("attempts") or []
        if not active and attempts and isinstance(attempts[-1], dict):
            gpu = attempts[-1].get("gpu")  # where it ran last
            where = attempts[-1].get("slice") or ("whole" if gpu is not None else None)
        eta = p.get("eta_s") if active else None
        if eta is not None and p.get("updated_at") is not None:
            eta = max(0.0, float(eta) - max(0.0, now - float(p["updated_at"])))
        if not run.live and active:
            state = f"{state} (unwatched)"
            eta = None
        fraction = p.get("fraction")
        if rec.get("state") == "finished":
            fraction = 1.0
        rows.append(
            {
                "name": name,
                "state": state,
                "priority": prio.get(name, 0),
                "gpu": gpu,
                "slice": where,
                "step": p.get("step"),
                "total_steps": p.get("total"),
                "fraction": fraction,
                "step_time_s": p.get("step_time_s"),
                "eta_s": eta,
                "attempt": rec.get("attempt", 0),
                "reason": rec.get("reason") or "",
            }
        )
    return rows


def counts(run: RunInfo) -> dict[str, int]:
    out: dict[str, int] = {}
    for rec in run.jobs.values():
        s = str(rec.get("state", "?"))
        out[s] = out.get(s, 0) + 1
    return out


def outcome(run: RunInfo) -> str:
    """A short account: ``finished: 4 finished``, ``running: 2 running, 1 waiting``."""
    c = counts(run)
    parts = ", ".join(f"{n} {s}" for s, n in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{run.status}: {parts}" if parts else run.status
