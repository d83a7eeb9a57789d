"""Whether a process exists, without psutil (simulated-GPU code runs inside jobs too)."""

from __future__ import annotations

import os


def pid_exists(pid: int) -> bool:
    """True while ``pid`` names a process, ours or another user's (signal 0 probes it)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, but belongs to someone else
        return True
    except OSError:
        return False
    return True


def is_zombie(pid: int) -> bool:
    """An exited process its parent has not reaped yet (e.g. a daemon re-parented to init)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def pid_running(pid: int) -> bool:
    """``pid`` exists and has not exited (a zombie has)."""
    return pid_exists(pid) and not is_zombie(pid)


def process_uid(pid: int) -> int | None:
    """The real uid a process runs as (None when it is gone or /proc cannot tell)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None
