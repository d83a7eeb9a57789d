"""Whether a process is there, without psutil."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from miso_cli.runtime.pids import is_zombie, pid_exists, pid_running


def test_a_live_process_an_unreaped_one_and_a_gone_one() -> None:
    assert pid_running(os.getpid()) and not pid_exists(0) and not pid_exists(-5)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while not is_zombie(child.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    # exited, not yet reaped: the pid still exists, but the process is not running
    assert pid_exists(child.pid) and is_zombie(child.pid) and not pid_running(child.pid)
    child.wait()
    assert not pid_exists(child.pid)
