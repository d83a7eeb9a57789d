"""Stored MPS profiles: one file per job, reused while fresh.

A job is known by a fingerprint of what decides how it runs: its command (and
whether it is a shell line), its working directory and the environment the
queue gives it. Renaming a job keeps its profile; changing its batch size
argument does not. Each profile records the GPU model and driver version it
was measured on, the mode, the levels, the step times, the peak memory and
when it was taken, under ``<state dir>/profiles/<fingerprint>.json``.

A profile is fresh for a request when it was taken on the same GPU model and
driver, in the same mode, at every requested level with status ``ok``, not
longer ago than ``max_age_s`` (a week by default), and, for a co-located
profile, together with the same co-runners (interference depends on the mix).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miso_cli.errors import BadInput
from miso_cli.runtime.state import atomic_write_json
from miso_cli.spec.queue import JobSpec

STORE_VERSION = 1
DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0


def fingerprint(job: JobSpec) -> str:
    """A stable id of how ``job`` runs: command, shell, working directory, queue env."""
    cwd = str(Path(job.cwd).expanduser().resolve())
    key = {
        "command": job.command,
        "shell": bool(job.shell),
        "cwd": cwd,
        "env": dict(sorted(job.env.items())),
    }
    blob = json.dumps(key, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def store_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "profiles"


@dataclass
class StoredProfile:
    """One job's profile as stored: the measurement plus where and when it was taken."""

    fingerprint: str
    job: str
    command: list[str] | str
    cwd: str
    env: dict[str, str]
    gpu_model: str | None
    gpu_name: str | None
    driver_version: str | None
    mode: str
    co_runners: list[str]  # fingerprints of the jobs profiled alongside (co-located mode)
    levels: list[dict[str, Any]]  # LevelResult.to_json() items
    started_at: float
    finished_at: float
    simulated: bool = False
    version: int = STORE_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "fingerprint": self.fingerprint,
            "job": self.job,
            "command": self.command,
            "cwd": self.cwd,
            "env": self.env,
            "gpu_model": self.gpu_model,
            "gpu_name": self.gpu_name,
            "driver_version": self.driver_version,
            "simulated": self.simulated,
            "mode": self.mode,
            "co_runners": self.co_runners,
            "levels": self.levels,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> StoredProfile:
        return StoredProfile(
            fingerprint=str(data["fingerprint"]),
            job=str(data["job"]),
            command=data["command"],
            cwd=str(data["cwd"]),
            env=dict(data.get("env") or {}),
            gpu_model=data.get("gpu_model"),
            gpu_name=data.get("gpu_name"),
            driver_version=data.get("driver_version"),
            mode=str(data["mode"]),
            co_runners=list(data.get("co_runners") or []),
            levels=list(data["levels"]),
            started_at=float(data["started_at"]),
            finished_at=float(data["finished_at"]),
            simulated=bool(data.get("simulated", False)),
            version=int(data.get("version", STORE_VERSION)),
        )

    def level(self, pct: float) -> dict[str, Any] | None:
        for item in self.levels:
            if abs(float(item["level"]) - float(pct)) < 1e-6:
                return item
        return None

    def step_time_s(self, pct: float) -> float | None:
        """Measured step time at ``pct`` active threads (None: not measured or not ok)."""
        item = self.level(pct)
        if item is None or item.get("status") != "ok":
            return None
        value = item.get("step_time_s")
        return float(value) if value is not None else None

    def step_times_s(self) -> dict[float, float | None]:
        return {float(i["level"]): self.step_time_s(float(i["level"])) for i in self.levels}

    def peak_memory_mb(self) -> float | None:
        values = [i.get("peak_memory_mb") for i in self.levels if i.get("peak_memory_mb")]
        return max(float(v) for v in values) if values else None

    def age_s(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.finished_at

    def is_fresh(
        self,
        *,
        gpu_model: str | None,
        driver_version: str | None,
        mode: str | None = None,
        levels: Sequence[float] | None = None,
        co_runners: Iterable[str] | None = None,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        now: float | None = None,
    ) -> bool:
        """Whether this profile may stand in for a new measurement (see the module doc)."""
        if self.gpu_model != gpu_model or self.driver_version != driver_version:
            return False
        if mode is not None and self.mode != mode:
            return False
        if self.age_s(now) > max_age_s:
            return False
        wanted = levels if levels is not None else [float(i["level"]) for i in self.levels]
        if not wanted or any(self.step_time_s(p) is None for p in wanted):
            return False
        if self.mode == "colocated" and co_runners is not None:
            if sorted(co_runners) != sorted(self.co_runners):
                return False
        return True


def _path(state_dir: Path, fp: str) -> Path:
    return store_dir(state_dir) / f"{fp}.json"


def save(state_dir: Path, profile: StoredProfile) -> Path:
    """Write (replace) the profile of ``profile.fingerprint`` atomically."""
    path = _path(state_dir, profile.fingerprint)
    atomic_write_json(path, profile.to_json())
    return path


def load(state_dir: Path, fp: str) -> StoredProfile | None:
    """The stored profile of fingerprint ``fp``, or None; a damaged file is BadInput."""
    path = _path(state_dir, fp)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read profile: {exc.strerror}") from None
    try:
        data = json.loads(text)
        if int(data.get("version", 0)) > STORE_VERSION:
            raise BadInput(
                f"{path}: profile format version {data['version']} is newer than this miso's "
                f"({STORE_VERSION})",
                hint="upgrade miso, or run 'miso profile --refresh'",
            )
        return StoredProfile.from_json(data)
    except BadInput:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInput(
            f"{path}: damaged profile ({type(exc).__name__}: {exc})",
            hint="run 'miso profile --refresh' to measure again, or delete the file",
        ) from None


def for_job(state_dir: Path, job: JobSpec) -> StoredProfile | None:
    """The stored profile of ``job`` (by fingerprint), fresh or not."""
    return load(state_dir, fingerprint(job))


def fresh_profiles(
    state_dir: Path,
    jobs: Sequence[JobSpec],
    *,
    gpu_model: str | None,
    driver_version: str | None,
    mode: str | None = None,
    levels: Sequence[float] | None = None,
    max_age_s: float = DEFAULT_MAX_AGE_S,
) -> dict[str, StoredProfile]:
    """Job name -> its fresh stored profile, for the jobs that have one (for ``plan``/``run``).

    Co-runners are not compared here: a planner reads whatever fresh profile a
    job has; ``miso profile`` is stricter when deciding to measure again.
    """
    out: dict[str, StoredProfile] = {}
    for job in jobs:
        prof = for_job(state_dir, job)
        if prof is not None and prof.is_fresh(
            gpu_model=gpu_model,
            driver_version=driver_version,
            mode=mode,
            levels=levels,
            max_age_s=max_age_s,
        ):
            out[job.name] = prof
    return out
