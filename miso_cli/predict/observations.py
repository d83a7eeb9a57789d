"""Observations: what jobs actually did on their slices, kept to retrain on.

Every job that ``miso run`` runs on a MIG slice adds one line to
``<state>/observations/<gpu model>.jsonl``: its MPS profile, the slice size and
its measured step time (and its step time on the whole GPU when known). Lines
are appended under an exclusive lock, so concurrent jobs never interleave; a line
torn by a crash is skipped when reading.

For training, observations of one workload are merged: the whole-GPU step time
a row lacks is taken from the same workload's other observations (median), so a
job seen once on 7g and later on 3g gives a 3g ratio.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from miso_cli.errors import BadInput
from miso_cli.predict.data import ProfileRow


def observations_path(state_dir: Path, gpu_model_key: str) -> Path:
    return Path(state_dir) / "observations" / f"{gpu_model_key}.jsonl"


def _positive(name: str, value: float | None, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BadInput(f"observation: {name} must be a number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise BadInput(f"observation: {name} must be positive, got {value!r}")
    return v


def record_observation(
    state_dir: Path,
    *,
    gpu_model_key: str,
    workload: str,
    mps: Mapping[int, float],
    jobs_in_mix: int,
    slices: int,
    step_time_s: float,
    step_time_7g_s: float | None,
    memory_mb: float | None = None,
) -> Path:
    """Append one observation (atomic per line, safe from concurrent processes)."""
    if not workload:
        raise BadInput("observation: workload is empty")
    if int(slices) < 1 or int(jobs_in_mix) < 1:
        raise BadInput("observation: slices and jobs_in_mix must be >= 1")
    record: dict[str, Any] = {
        "time": round(time.time(), 3),
        "workload": workload,
        "mps": {str(int(k)): _positive(f"mps[{k}]", v) for k, v in mps.items()},
        "jobs_in_mix": int(jobs_in_mix),
        "slices": int(slices),
        "step_time_s": _positive("step_time_s", step_time_s),
        "step_time_7g_s": _positive("step_time_7g_s", step_time_7g_s, optional=True),
        "memory_mb": _positive("memory_mb", memory_mb, optional=True),
    }
    path = observations_path(state_dir, gpu_model_key)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    line = (json.dumps(record, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    return path


def load_observations(state_dir: Path, gpu_model_key: str) -> list[dict[str, Any]]:
    """The stored observations, oldest first (torn or malformed lines skipped)."""
    path = observations_path(state_dir, gpu_model_key)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise BadInput(f"{path}: cannot read observations: {exc.strerror}") from None
    out = []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
            if isinstance(obj, dict) and "workload" in obj and "slices" in obj:
                out.append(obj)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    return out


def observation_rows(state_dir: Path, gpu_model_key: str) -> list[ProfileRow]:
    """Training rows from the observations (those whose whole-GPU time is known)."""
    obs = load_observations(state_dir, gpu_model_key)
    full: dict[str, list[float]] = defaultdict(list)
    for o in obs:
        if o.get("step_time_7g_s"):
            full[o["workload"]].append(float(o["step_time_7g_s"]))
        if int(o["slices"]) == 7:
            full[o["workload"]].append(float(o["step_time_s"]))
    path = observations_path(state_dir, gpu_model_key)
    rows = []
    for i, o in enumerate(obs, start=1):
        t7 = o.get("step_time_7g_s") or (
            statistics.median(full[o["workload"]]) if full[o["workload"]] else None
        )
        mps = {int(k): float(v) for k, v in (o.get("mps") or {}).items()}
        if t7 is None or 100 not in mps or len(mps) < 2:
            continue
        rows.append(
            ProfileRow(
                workload=str(o["workload"]),
                mps=mps,
                mig={int(o["slices"]): float(o["step_time_s"]), 7: float(t7)},
                jobs_in_mix=int(o.get("jobs_in_mix", 1)),
                mix=None,
                memory_mb=o.get("memory_mb"),
                source=f"{path}:{i}",
            )
        )
    return rows
