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
