"""The run journal: everything ``miso run`` knows, on disk, so a killed miso can resume.

One run lives in ``<state>/runs/<run id>/``::

    journal.json          the queue, job states, GPU layouts, pids, decisions (atomic)
    events.jsonl          every event, appended (started, progress, finished, ...)
    report.json           the final report
    logs/<job>.log        each job's stdout and stderr, all attempts
    jobs/<job>/exit-<n>.json    exit status of attempt n, written by the job wrapper
    jobs/<job>/progress.jsonl   MISO_PROGRESS_FILE of the job
    jobs/<job>/checkpoint/      MISO_CHECKPOINT_DIR of the job

``<state>/runs/latest`` names the newest run; ``<state>/run.lock`` is held
(``flock``) by the miso process driving a run, and released by the kernel if
that process dies, even by ``kill -9``.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from miso_cli.errors import BadInput, UsageError
from miso_cli.runtime.state import atomic_write_json, atomic_write_text, ensure_dir
from miso_cli.spec.queue import QueueSpec

JOURNAL_VERSION = 1
ACTIVE = ("starting", "running", "stopping")
TERMINAL = ("finished", "failed", "hung", "interrupted", "cancelled")  # cancelled: issue-15


@dataclass
class Attempt:
    """One start of a job, and how it ended."""

    number: int
    gpu: int | None
    slice: str | None  # profile name ("3g.20gb"), or None for a whole GPU
    slices: int  # compute slices, for utilisation
    started_at: float
    ended_at: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    outcome: str | None = None  # finished, failed, retry, stopped, hung, interrupted, lost
    resumed: bool = False


@dataclass
class JobRecord:
    name: str
    state: str = "waiting"  # waiting, starting, running, stopping, + TERMINAL
    queued_at: float = 0.0
    first_started_at: float | None = None
    started_at: float | None = None  # of the current attempt
    ended_at: float | None = None
    attempt: int = 0  # how many times started
    failures: int = 0  # non-zero exits counted against retries
    gpu: int | None = None
    slice: dict[str, Any] | None = None  # Slice.to_json-like: profile, slices, start, size
    instance_uuid: str | None = None  # what CUDA_VISIBLE_DEVICES named
    pid: int | None = None  # the job wrapper, leader of the job's process group
    create_time: float | None = None
    stop_reason: str | None = None  # requeue, migrate, hang, interrupt (when miso asked)
    stop_deadline: float | None = None
    exit_code: int | None = None
    reason: str = ""
    progress: dict[str, Any] = field(default_factory=dict)
    log_offset: int = 0
    file_offset: int = 0
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> JobRecord:
        data = dict(data)
        attempts = [Attempt(**a) for a in data.pop("attempts", [])]
        return JobRecord(attempts=attempts, **data)


class Journal:
    """The state of one run; :meth:`save` writes it atomically."""

    def __init__(self, run_dir: Path, data: dict[str, Any]) -> None:
        self.run_dir = Path(run_dir)
        self.data = data
        self.jobs: dict[str, JobRecord] = {
            name: JobRecord.from_json(rec) for name, rec in data.get("jobs", {}).items()
        }
        self._events = None

    # ------------------------------------------------------------ creation

    @staticmethod
    def create(
        state_dir: Path,
        queue: QueueSpec,
        *,
        gpu_spec: str | None,
        policy: str,
        policy_options: dict[str, Any],
        options: dict[str, Any],
        now: float | None = None,
    ) -> Journal:
        now = time.time() if now is None else now
        run_id = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + "-" + secrets.token_hex(2)
        run_dir = ensure_dir(Path(state_dir) / "runs" / run_id)
        ensure_dir(run_dir / "logs")
        ensure_dir(run_dir / "jobs")
        data: dict[str, Any] = {
            "version": JOURNAL_VERSION,
            "run_id": run_id,
            "status": "running",
            "miso_pid": os.getpid(),
            "started_at": now,
            "ended_at": None,
            "gpu_spec": gpu_spec,
            "policy": {"name": policy, "options": policy_options},
            "options": options,
            "queue": queue.to_json(),
            "gpus": [],
            "decisions": [],
            "jobs": {},
        }
        journal = Journal(run_dir, data)
        for job in queue.jobs:
            # A job with an arrival joins the queue that long after the start.
            journal.jobs[job.name] = JobRecord(job.name, queued_at=now + job.arrival_s)
        journal.save()
        atomic_write_text(Path(state_dir) / "runs" / "latest", run_id + "\n")
        return journal

    @staticmethod
    def latest_id(state_dir: Path) -> str | None:
        try:
            text = (Path(state_dir) / "runs" / "latest").read_text(encoding="utf-8").strip()
        except OSError:
            return None
        return text or None

    @staticmethod
    def open(state_dir: Path, run_id: str | None = None) -> Journal:
        """The journal of ``run_id`` (default: the latest run)."""
        run_id = run_id or Journal.latest_id(state_dir)
        if run_id is None:
            raise UsageError(
                f"--resume: no run to resume in {state_dir}",
                hint="start one with: miso run QUEUE.toml",
            )
        run_dir = Path(state_dir) / "runs" / run_id
        path = run_dir / "journal.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UsageError(f"--resume: {path} not found") from None
        except (OSError, ValueError) as exc:
            raise BadInput(f"{path}: unreadable journal: {exc}") from None
        except RecursionError:  # issue-11: nested too deeply to be a journal
            raise BadInput(f"{path}: unreadable journal: nested too deeply") from None
        if not isinstance(data, dict):
            raise BadInput(f"{path}: not a miso journal (expected an object)")
        if data.get("version") != JOURNAL_VERSION:
            raise BadInput(f"{path}: journal version {data.get('version')!r} is not supported")
        # What a resume reads, checked here: a damaged journal is named, not a KeyError.
        shapes = {"run_id": str, "status": str, "policy": dict, "queue": dict, "jobs": dict}
        for key, kind in shapes.items():
            if not isinstance(data.get(key), kind):
                what = "an object" if kind is dict else "a string"
                raise BadInput(f"{path}: damaged journal: {key!r} is missing or not {what}")
        if not isinstance(data.get("options", {}), dict):
            raise BadInput(f"{path}: damaged journal: 'options' is not an object")
        try:
            journal = Journal(run_dir, data)
            journal.queue  # noqa: B018 - parsed now so that a damaged queue fails here
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadInput(f"{path}: damaged journal ({type(exc).__name__}: {exc})") from None
        return journal

    # ------------------------------------------------------------ properties

    @property
    def run_id(self) -> str:
        return str(self.data["run_id"])

    @property
    def status(self) -> str:
        return str(self.data["status"])

    @status.setter
    def status(self, value: str) -> None:
        self.data["status"] = value

    @property
    def started_at(self) -> float:
        return float(self.data["started_at"])

    @property
    def queue(self) -> QueueSpec:
        return QueueSpec.from_json(self.data["queue"])

    # ------------------------------------------------------------ paths

    def log_path(self, job: str) -> Path:
        return self.run_dir / "logs" / f"{job}.log"

    def job_dir(self, job: str) -> Path:
        return ensure_dir(self.run_dir / "jobs" / job)

    def exit_file(self, job: str, attempt: int) -> Path:
        return self.run_dir / "jobs" / job / f"exit-{attempt}.json"

    def progress_file(self, job: str) -> Path:
        return self.run_dir / "jobs" / job / "progress.jsonl"

    def checkpoint_dir(self, job: str) -> Path:
        return self.run_dir / "jobs" / job / "checkpoint"

    @property
    def report_path(self) -> Path:
        return self.run_dir / "report.json"

    # ------------------------------------------------------------ writing

    def save(self) -> None:
        self.data["jobs"] = {name: rec.to_json() for name, rec in self.jobs.items()}
        atomic_write_json(self.run_dir / "journal.json", self.data)

    def decision(self, record: dict[str, Any]) -> None:
        """Keep a policy decision (or a driver action) with its reason."""
        self.data.setdefault("decisions", []).append(record)

    def event(self, record: dict[str, Any]) -> None:
        """Append one event line to ``events.jsonl`` (flushed, not fsynced: cheap)."""
        if self._events is None:
            self._events = open(self.run_dir / "events.jsonl", "a", encoding="utf-8")
        self._events.write(json.dumps(record, default=str) + "\n")
        self._events.flush()

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None


class RunLock:
    """``<state>/run.lock``: one miso drives the runs of a state directory at a time."""

    def __init__(self, state_dir: Path) -> None:
        self.path = ensure_dir(Path(state_dir)) / "run.lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        from miso_cli.errors import PermissionDenied
        from miso_cli.safefs import UnsafePath, check_dir, open_file

        # A state dir another user owns (or may write) could hold a planted symlink at
        # any name: refused, and the lock file itself is never followed through a link.
        try:
            check_dir(self.path.parent.resolve(), owners=(os.geteuid(),), what="the state dir")
            fd = open_file(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except UnsafePath as exc:
            raise PermissionDenied(
                str(exc), hint="use a --state-dir that belongs to you alone"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise UsageError(
                f"another miso run (pid {holder}) is using {self.path.parent}",
                hint="wait for it, or use another --state-dir",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
