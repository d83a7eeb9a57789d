"""The queue file: which training jobs to run, and how to run, watch and resume each.

A versioned TOML file with one ``[[job]]`` table per job::

    version = 1

    [[job]]
    name = "resnet"
    command = ["python", "train_resnet.py", "--epochs", "3"]
    cwd = "."                  # relative to the queue file
    env = { OMP_NUM_THREADS = "4" }
    steps = 1200               # total work, when known
    progress = "auto"          # auto, tqdm, keras, hf, lightning, file, none
    progress_regex = 'step (?P<step>\\d+)/(?P<total>\\d+)'
    memory = "8GiB"            # peak GPU memory the job needs
    retries = 1
    priority = 0
    hang_timeout = "15m"
    workload = "resnet_64"     # catalog name (simulated GPUs, predictions)
    arrival = "90s"            # joins the queue this long after the run starts

    [job.checkpoint]
    signal = "SIGUSR1"         # how the job is asked to save and stop
    grace = "60s"              # how long it may take before it is killed
    resume_args = ["--resume", "{checkpoint_dir}/last.pt"]
    resume_env = { RESUME = "1" }

Validation is strict and complete before anything starts: every problem is a
:class:`~miso_cli.errors.BadInput` naming the file, the line and the key.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from miso_cli.errors import BadInput

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

QUEUE_VERSION = 1
PROGRESS_KINDS = ("auto", "tqdm", "keras", "hf", "lightning", "file", "none")
JOB_KEYS = {
    "name",
    "command",
    "shell",
    "cwd",
    "env",
    "steps",
    "progress",
    "progress_regex",
    "memory",
    "checkpoint",
    "retries",
    "priority",
    "hang_timeout",
    "workload",
    "arrival",
}
CHECKPOINT_KEYS = {"signal", "grace", "resume_args", "resume_env"}
TOP_KEYS = {"version", "job"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_GRACE_S = 30.0
DEFAULT_STOP_SIGNAL = "SIGTERM"
# Expanded in resume_args / resume_env values.
PLACEHOLDERS = ("checkpoint_dir", "job", "attempt")

_MEM_UNITS = {
    "": 1.0,  # a bare number is MiB, as NVML reports memory
    "b": 1.0 / 2**20,
    "k": 1.0 / 1024,
    "kb": 1e3 / 2**20,
    "kib": 1.0 / 1024,
    "m": 1.0,
    "mb": 1e6 / 2**20,
    "mib": 1.0,
    "g": 1024.0,
    "gb": 1e9 / 2**20,
    "gib": 1024.0,
    "t": 1024.0**2,
    "tb": 1e12 / 2**20,
    "tib": 1024.0**2,
}
_MEM_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")
_DUR_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|sec|m|min|h)?\s*$")
_DUR_UNITS = {None: 1.0, "ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


@dataclass
class CheckpointSpec:
    """How a job is asked to save and stop, and how it is started again from its save."""

    signal: str = DEFAULT_STOP_SIGNAL  # e.g. "SIGUSR1"
    grace_s: float = DEFAULT_GRACE_S
    resume_args: list[str] = field(default_factory=list)
    resume_env: dict[str, str] = field(default_factory=dict)

    @property
    def signum(self) -> int:
        return int(signal.Signals[self.signal])


@dataclass
class JobSpec:
    """One validated ``[[job]]``."""

    name: str
    command: list[str] | str  # argv, or a shell command line when ``shell``
    shell: bool = False
    cwd: str = "."
    env: dict[str, str] = field(default_factory=dict)
    steps: int | None = None
    progress: str = "auto"
    progress_regex: str | None = None
    memory_mb: float | None = None
    checkpoint: CheckpointSpec | None = None
    retries: int = 0
    priority: int = 0
    hang_timeout_s: float | None = None
    workload: str | None = None
    arrival_s: float = 0.0  # seconds after the run's start when the job joins the queue
    line: int = 0  # where its [[job]] starts, for messages

    @property
    def checkpointable(self) -> bool:
        return self.checkpoint is not None

    @property
    def stop_signal(self) -> int:
        return self.checkpoint.signum if self.checkpoint else int(signal.SIGTERM)

    @property
    def grace_s(self) -> float:
        return self.checkpoint.grace_s if self.checkpoint else DEFAULT_GRACE_S

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> JobSpec:
        data = dict(data)
        ck = data.pop("checkpoint", None)
        return JobSpec(checkpoint=CheckpointSpec(**ck) if ck else None, **data)


@dataclass
class QueueSpec:
    path: Path
    jobs: list[JobSpec]
    version: int = QUEUE_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "version": self.version,
            "jobs": [j.to_json() for j in self.jobs],
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> QueueSpec:
        return QueueSpec(
            Path(data["path"]),
            [JobSpec.from_json(j) for j in data["jobs"]],
            int(data.get("version", QUEUE_VERSION)),
        )


# ---------------------------------------------------------------- line numbers

_HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\"' -]+?)\s*(\]\]?)\s*(#.*)?$")
_KEY_RE = re.compile(r"^\s*([A-Za-z0-9_\-\"'.]+(?:\s*\.\s*[A-Za-z0-9_\-\"']+)*)\s*=")


class _Lines:
    """Where keys sit in the file: TOML parsers do not keep positions, so we scan."""

    def __init__(self, text: str) -> None:
        self.top: dict[str, int] = {}
        self.jobs: list[int] = []  # line of each [[job]]
        self.job_keys: list[dict[str, int]] = []
        section: tuple[str, ...] = ()
        in_multiline: str | None = None
        for n, raw in enumerate(text.splitlines(), start=1):
            line = raw
            if in_multiline:
                if in_multiline in line:
                    in_multiline = None
                continue
            h = _HEADER_RE.match(line)
            if h and not _KEY_RE.match(line):
                parts = tuple(p.strip().strip("\"'") for p in h.group(2).split("."))
                if h.group(1) == "[[" and parts == ("job",):
                    self.jobs.append(n)
                    self.job_keys.append({})
                    section = ("job",)
                else:
                    section = parts
                    if parts and parts[0] == "job" and self.job_keys and len(parts) > 1:
                        self.job_keys[-1].setdefault(parts[1], n)
                        self.job_keys[-1].setdefault(".".join(parts[1:]), n)
                    elif parts:
                        self.top.setdefault(parts[0], n)
                continue
            k = _KEY_RE.match(line)
            if k:
                key = ".".join(p.strip().strip("\"'") for p in k.group(1).split("."))
                if section and section[0] == "job" and self.job_keys:
                    prefix = ".".join(section[1:])
                    full = f"{prefix}.{key}" if prefix else key
                    self.job_keys[-1].setdefault(full, n)
                    self.job_keys[-1].setdefault(full.split(".")[0], n)
                elif not section:
                    self.top.setdefault(key.split(".")[0], n)
                    self.top.setdefault(key, n)
                for quote in ('"""', "'''"):
                    if line.count(quote) == 1:
                        in_multiline = quote

    def job(self, index: int, key: str | None = None) -> int:
        if index >= len(self.jobs):
            return self.top.get("job", 1)
        if key:
            keys = self.job_keys[index]
            while key:
                if key in keys:
                    return keys[key]
                key = key.rpartition(".")[0]
        return self.jobs[index]


# ---------------------------------------------------------------- value parsers


def parse_memory_mb(value: Any) -> float:
    """``"8GiB"``, ``"20 GB"``, ``"512MiB"`` or a number of MiB -> MiB. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError('expected a size such as "8GiB" or a number of MiB')
    if isinstance(value, (int, float)):
        mb = float(value)
    elif isinstance(value, str):
        m = _MEM_RE.match(value)
        unit = m.group(2).lower() if m else ""
        if not m or unit not in _MEM_UNITS:
            raise ValueError(f'{value!r} is not a size (e.g. "8GiB", "20GB", "512MiB")')
        mb = float(m.group(1)) * _MEM_UNITS[unit]
    else:
        raise ValueError('expected a size such as "8GiB" or a number of MiB')
    if not math.isfinite(mb) or mb <= 0:
        raise ValueError("must be a positive size")
    return mb


def parse_duration_s(value: Any) -> float:
    """``"30s"``, ``"10m"``, ``"1.5h"``, ``"250ms"`` or a number of seconds. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError('expected a duration such as "30s" or a number of seconds')
    if isinstance(value, (int, float)):
        secs = float(value)
    elif isinstance(value, str):
        m = _DUR_RE.match(value)
        if not m:
            raise ValueError(f'{value!r} is not a duration (e.g. "30s", "10m", "1h")')
        secs = float(m.group(1)) * _DUR_UNITS[m.group(2)]
    else:
        raise ValueError('expected a duration such as "30s" or a number of seconds')
    if not math.isfinite(secs) or secs < 0:
        raise ValueError("must be a non-negative duration")
    return secs


def parse_signal(value: Any) -> str:
    """``"SIGUSR1"``, ``"USR1"`` or a number -> the canonical name. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError('expected a signal name such as "SIGUSR1"')
    if isinstance(value, int):
        try:
            sig = signal.Signals(value)
        except ValueError:
            raise ValueError(f"{value} is not a signal number") from None
    elif isinstance(value, str):
        name = value.strip().upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        try:
            sig = signal.Signals[name]
        except KeyError:
            raise ValueError(f'{value!r} is not a signal name (e.g. "SIGUSR1")') from None
    else:
        raise ValueError('expected a signal name such as "SIGUSR1"')
    if sig in (signal.SIGKILL, signal.SIGSTOP):
        raise ValueError(f"{sig.name} cannot be caught, so a job cannot save on it")
    return sig.name


def compile_progress_regex(pattern: str) -> re.Pattern[str]:
    """A per-job progress pattern: named group ``step`` (or the first group), optional ``total``."""
    try:
        rx = re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    if "step" not in rx.groupindex and rx.groups < 1:
        raise ValueError("needs a group for the step, e.g. (?P<step>\\d+)")
    return rx


# ---------------------------------------------------------------- the loader


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


_PYTHON_RE = re.compile(r"^python[0-9.]*$")


def _script_of(argv: list[str]) -> str | None:
    """The script a ``python [opts] script.py`` command runs (None for -m/-c or none)."""
    if not argv or not _PYTHON_RE.match(os.path.basename(argv[0])):
        return None
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg in ("-m", "-c") or arg.startswith(("-m", "-c")) and len(arg) > 2:
            return None
        if arg in ("-W", "-X", "-Q"):
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        return arg
    return None


class _Checker:
    def __init__(self, path: Path, lines: _Lines) -> None:
        self.path = path
        self.lines = lines

    def fail(self, index: int | None, key: str | None, message: str, hint: str | None = None):
        if index is None:
            line = self.lines.top.get(key or "", 1) if key else 1
            where = f"{self.path}:{line}: {key}: " if key else f"{self.path}:{line}: "
        else:
            line = self.lines.job(index, key)
            where = f"{self.path}:{line}: job #{index + 1}" + (f" {key}" if key else "") + ": "
        raise BadInput(where + message, hint=hint)

    def job(self, index: int, raw: Any, base: Path) -> JobSpec:
        if not isinstance(raw, dict):
            self.fail(index, None, f"expected a table, got {_type_name(raw)}")
        for key in raw:
            if key not in JOB_KEYS:
                self.fail(
                    index, key, "unknown key", hint=f"known keys: {', '.join(sorted(JOB_KEYS))}"
                )
        name = raw.get("name")
        if name is None:
            self.fail(index, None, "missing key 'name'")
        if not isinstance(name, str):
            self.fail(index, "name", f"expected a string, got {_type_name(name)}")
        if not NAME_RE.match(name):
            self.fail(
                index,
                "name",
                f"{name!r} is not a job name",
                hint="use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            )
        spec = JobSpec(name=name, command=[], line=self.lines.job(index))

        def want(key: str, kind: type | tuple[type, ...], what: str) -> Any:
            value = raw[key]
            if isinstance(value, bool) and kind is not bool:
                self.fail(index, key, f"expected {what}, got a boolean")
            if not isinstance(value, kind):
                self.fail(index, key, f"expected {what}, got {_type_name(value)}")
            return value

        if "shell" in raw:
            spec.shell = want("shell", bool, "true or false")
        if "command" not in raw:
            self.fail(index, None, f"job {name!r}: missing key 'command'")
        command = raw["command"]
        if spec.shell:
            if not isinstance(command, str) or not command.strip():
                self.fail(index, "command", "with shell = true, expected a non-empty string")
            spec.command = command
        else:
            if isinstance(command, str):
                self.fail(
                    index,
                    "command",
                    "expected an array of arguments",
                    hint='write command = ["python", "train.py"], or set shell = true',
                )
            if not isinstance(command, list) or not command:
                self.fail(index, "command", "expected a non-empty array of strings")
            for arg in command:
                if not isinstance(arg, str):
                    self.fail(index, "command", f"arguments must be strings, got {_type_name(arg)}")
            if not command[0]:
                self.fail(index, "command", "the program is an empty string")
            spec.command = list(command)

        if "cwd" in raw:
            spec.cwd = want("cwd", str, "a directory path")
        cwd = (base / os.path.expanduser(spec.cwd)).resolve()
        if not _is(cwd.is_dir):
            self.fail(index, "cwd" if "cwd" in raw else None, f"directory {str(cwd)!r} not found")
        spec.cwd = str(cwd)

        if "env" in raw:
            env = want("env", dict, 'a table of NAME = "value"')
            spec.env = self._env(index, "env", env)

        self._check_program(index, spec, cwd)

        if "steps" in raw:
            steps = want("steps", int, "a positive integer")
            if steps <= 0:
                self.fail(index, "steps", f"must be a positive integer, got {steps}")
            spec.steps = steps
        if "progress" in raw:
            progress = want("progress", str, "a string")
            if progress not in PROGRESS_KINDS:
                self.fail(
                    index,
                    "progress",
                    f"unknown progress source {progress!r}",
                    hint=f"one of: {', '.join(PROGRESS_KINDS)}",
                )
            spec.progress = progress
        if "progress_regex" in raw:
            pattern = want("progress_regex", str, "a regular expression")
            try:
                compile_progress_regex(pattern)
            except ValueError as exc:
                self.fail(index, "progress_regex", str(exc))
            spec.progress_regex = pattern
        if "memory" in raw:
            try:
                spec.memory_mb = parse_memory_mb(raw["memory"])
            except ValueError as exc:
                self.fail(index, "memory", str(exc))
        if "retries" in raw:
            retries = want("retries", int, "a non-negative integer")
            if not 0 <= retries <= 1000:
                self.fail(index, "retries", f"must be between 0 and 1000, got {retries}")
            spec.retries = retries
        if "priority" in raw:
            priority = want("priority", int, "an integer")
            if abs(priority) > 10**9:
                self.fail(index, "priority", "must be between -1e9 and 1e9")
            spec.priority = priority
        if "hang_timeout" in raw:
            try:
                spec.hang_timeout_s = parse_duration_s(raw["hang_timeout"])
            except ValueError as exc:
                self.fail(index, "hang_timeout", str(exc))
            if spec.hang_timeout_s == 0:
                self.fail(index, "hang_timeout", "must be positive")
        if "workload" in raw:
            workload = want("workload", str, "a workload name")
            if not workload:
                self.fail(index, "workload", "is empty")
            spec.workload = workload
        if "arrival" in raw:
            try:
                spec.arrival_s = parse_duration_s(raw["arrival"])
            except ValueError as exc:
                self.fail(index, "arrival", str(exc))
            if spec.arrival_s > 366 * 86400:
                self.fail(index, "arrival", "must be at most a year after the start")
        if "checkpoint" in raw:
            spec.checkpoint = self._checkpoint(index, raw["checkpoint"])
        return spec

    def _env(self, index: int, key: str, env: dict[str, Any]) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in env.items():
            if not k or "=" in k or "\0" in k:
                self.fail(index, key, f"{k!r} is not an environment variable name")
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                self.fail(index, f"{key}.{k}", f"expected a string, got {_type_name(v)}")
            text = str(v)
            if "\0" in text:
                self.fail(index, f"{key}.{k}", "contains a NUL character")
            out[k] = text
        return out

    def _check_program(self, index: int, spec: JobSpec, cwd: Path) -> None:
        """The program must exist, and so must the script of ``python script.py``."""
        if spec.shell:
            try:
                argv = shlex.split(str(spec.command))
            except ValueError as exc:
                self.fail(index, "command", f"cannot parse the shell command: {exc}")
            # Only a plain "program args" line can be checked; leave shell syntax alone.
            if not argv or any(c in str(spec.command) for c in "|;&$`()<>{}*?~"):
                return
            if "=" in argv[0]:
                return
        else:
            argv = list(spec.command)
        program = argv[0]
        if "\0" in "".join(argv):
            self.fail(index, "command", "contains a NUL character")
        if os.sep in program:
            exe = (cwd / os.path.expanduser(program)).resolve()
            if not _is(exe.exists):
                self.fail(index, "command", f"program {str(exe)!r} not found")
        else:
            search = spec.env.get("PATH", os.environ.get("PATH", os.defpath))
            if shutil.which(program, path=search) is None:
                self.fail(index, "command", f"program {program!r} not found on PATH")
        script = _script_of(argv)
        if script is not None:
            target = (cwd / os.path.expanduser(script)).resolve()
            if not _is(target.exists):
                self.fail(
                    index,
                    "command",
                    f"script {str(target)!r} not found",
                    hint="paths are relative to the job's cwd (default: the queue file's folder)",
                )

    def _checkpoint(self, index: int, raw: Any) -> CheckpointSpec:
        if not isinstance(raw, dict):
            self.fail(index, "checkpoint", f"expected a table, got {_type_name(raw)}")
        for key in raw:
            if key not in CHECKPOINT_KEYS:
                self.fail(
                    index,
                    f"checkpoint.{key}",
                    "unknown key",
                    hint=f"known keys: {', '.join(sorted(CHECKPOINT_KEYS))}",
                )
        ck = CheckpointSpec()
        if "signal" in raw:
            try:
                ck.signal = parse_signal(raw["signal"])
            except ValueError as exc:
                self.fail(index, "checkpoint.signal", str(exc))
        if "grace" in raw:
            try:
                ck.grace_s = parse_duration_s(raw["grace"])
            except ValueError as exc:
                self.fail(index, "checkpoint.grace", str(exc))
        if "resume_args" in raw:
            args = raw["resume_args"]
            if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
                self.fail(index, "checkpoint.resume_args", "expected an array of strings")
            for a in args:
                self._placeholders(index, "checkpoint.resume_args", a)
            ck.resume_args = list(args)
        if "resume_env" in raw:
            env = raw["resume_env"]
            if not isinstance(env, dict):
                self.fail(
                    index, "checkpoint.resume_env", f"expected a table, got {_type_name(env)}"
                )
            ck.resume_env = self._env(index, "checkpoint.resume_env", env)
            for v in ck.resume_env.values():
                self._placeholders(index, "checkpoint.resume_env", v)
        return ck

    def _placeholders(self, index: int, key: str, text: str) -> None:
        try:
            expand(text, checkpoint_dir="", job="", attempt=1)
        except (KeyError, ValueError, IndexError):
            self.fail(
                index,
                key,
                f"bad placeholder in {text!r}",
                hint="known: {checkpoint_dir}, {job}, {attempt}; write {{ and }} for braces",
            )


def expand(text: str, **values: Any) -> str:
    """Fill ``{checkpoint_dir}``, ``{job}``, ``{attempt}`` in a resume argument."""
    allowed = {k: v for k, v in values.items() if k in PLACEHOLDERS}
    return text.format_map(_Strict(allowed))


class _Strict(dict):  # type: ignore[type-arg]
    def __missing__(self, key: str) -> Any:
        raise KeyError(key)


def _is(check: Any) -> bool:
    """A path test that answers False where the OS refuses the question (a name too long,
    a loop of links), so the queue's error names the key instead of a traceback."""
    try:
        return bool(check())
    except (OSError, ValueError):
        return False


def parse_queue(text: str, path: Path | str) -> QueueSpec:
    """Validate queue ``text`` as read from ``path`` (relative paths resolve from its folder)."""
    path = Path(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        line = m.group(1) if m else "1"
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg) or "invalid TOML"
        raise BadInput(f"{path}:{line}: not valid TOML: {msg}") from None
    except (RecursionError, ValueError) as exc:
        raise BadInput(f"{path}:1: not valid TOML: {exc}") from None
    lines = _Lines(text)
    check = _Checker(path, lines)
    for key in data:
        if key not in TOP_KEYS:
            check.fail(
                None, key, "unknown key", hint="a queue file has 'version' and [[job]] tables"
            )
    if "version" not in data:
        check.fail(None, None, "missing 'version = 1' at the top of the queue file")
    version = data["version"]
    if isinstance(version, bool) or not isinstance(version, int):
        check.fail(None, "version", f"expected an integer, got {_type_name(version)}")
    if version != QUEUE_VERSION:
        check.fail(
            None,
            "version",
            f"unsupported queue version {version}",
            hint=f"this miso reads version {QUEUE_VERSION}",
        )
    jobs_raw = data.get("job")
    if jobs_raw is None:
        check.fail(None, None, "no [[job]] tables: the queue is empty")
    if not isinstance(jobs_raw, list):
        check.fail(None, "job", "expected [[job]] tables (an array of tables)")
    if not jobs_raw:
        check.fail(None, "job", "the queue is empty")
    base = path.parent if str(path.parent) else Path(".")
    jobs: list[JobSpec] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(jobs_raw):
        job = check.job(i, raw, base)
        if job.name in seen:
            check.fail(
                i, "name", f"duplicate job name {job.name!r} (first at line {seen[job.name]})"
            )
        seen[job.name] = job.line
        jobs.append(job)
    return QueueSpec(path, jobs, version)


def load_queue(path: Path | str) -> QueueSpec:
    """Read and validate a queue file; every problem is a :class:`BadInput`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise BadInput(f"{path}: is a directory, not a queue file") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read the queue file: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")  # editors on Windows may start the file with a BOM
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_queue(text, path.absolute())


def check_memory(queue: QueueSpec, capacity_mb: float, what: str) -> None:
    """Every job's memory need must fit ``capacity_mb`` (the largest instance it may get)."""
    lines: _Lines | None = None
    for i, job in enumerate(queue.jobs):
        if job.memory_mb is not None and job.memory_mb > capacity_mb:
            if lines is None:
                try:
                    lines = _Lines(queue.path.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError):
                    lines = _Lines("")
            line = lines.job(i, "memory") if lines.jobs else job.line
            raise BadInput(
                f"{queue.path}:{line}: job {job.name!r} memory: needs {job.memory_mb:.0f} MiB, "
                f"but {what} holds {capacity_mb:.0f} MiB",
                hint="choose a layout with a larger instance, or lower the job's memory",
            )
