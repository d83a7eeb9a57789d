"""Exit codes and the errors every command may raise.

Core code raises a :class:`MisoError` subclass; the CLI layer turns it into one
line on stderr (or a JSON envelope) and the matching exit code. The codes are a
contract with shell scripts: never renumber one.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1  # an unexpected internal error
    USAGE = 2  # bad command line (also what Click/Typer use)
    BAD_INPUT = 3  # an input file (queue, plan, trace, CSV, model) is invalid
    NO_GPU = 4  # no driver, no GPU, GPU lost, or GPU not MIG-capable
    PERMISSION = 5  # the operation needs privileges the caller lacks
    STATE_DIFFERS = 6  # `--check`: the GPU is not in the wanted state
    JOBS_FAILED = 7  # one or more jobs failed
    GPU_BUSY = 8  # processes hold what would have to change
    ROLLED_BACK = 9  # a change failed and the previous state was restored
    INCONSISTENT = 10  # a change failed and the previous state could NOT be restored
    INTERRUPTED = 130  # SIGINT/SIGTERM


class MisoError(Exception):
    """An expected failure, with a stable code for JSON and an exit code for shells."""

    code: str = "ERROR"
    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        code: str | None = None,
        exit_code: ExitCode | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code is not None:
            self.code = code
        if exit_code is not None:
            self.exit_code = exit_code
        self.details = details or {}

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        if self.details:
            out["details"] = self.details
        return out


class UsageError(MisoError):
    code = "USAGE"
    exit_code = ExitCode.USAGE


class BadInput(MisoError):
    code = "BAD_INPUT"
    exit_code = ExitCode.BAD_INPUT


class NoGpu(MisoError):
    code = "NO_GPU"
    exit_code = ExitCode.NO_GPU


class PermissionDenied(MisoError):
    code = "PERMISSION"
    exit_code = ExitCode.PERMISSION


class StateDiffers(MisoError):
    code = "STATE_DIFFERS"
    exit_code = ExitCode.STATE_DIFFERS


class GpuBusy(MisoError):
    code = "GPU_BUSY"
    exit_code = ExitCode.GPU_BUSY


class RolledBack(MisoError):
    code = "ROLLED_BACK"
    exit_code = ExitCode.ROLLED_BACK


class Inconsistent(MisoError):
    code = "INCONSISTENT"
    exit_code = ExitCode.INCONSISTENT


class JobsFailed(MisoError):
    code = "JOBS_FAILED"
    exit_code = ExitCode.JOBS_FAILED


class Interrupted(MisoError):
    code = "INTERRUPTED"
    exit_code = ExitCode.INTERRUPTED
