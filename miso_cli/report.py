"""Tell miso how far a training job is: ``from miso_cli import report; report.step(i, total)``.

Standard library only and cheap to import, so any training script can use it.
Outside ``miso run`` (no ``MISO_PROGRESS_FILE`` in the environment) every call
is a no-op. Writes are JSON lines ``{"t": ..., "step": ..., "total": ...}``
appended to the progress file, at most a few per second whatever the step rate.

It also carries miso's checkpoint request to the job::

    for i in range(start, total):
        train_step()
        report.step(i + 1, total)
        if report.stop_requested():   # miso sent the checkpoint signal
            save(report.checkpoint_dir() + "/last.pt", i + 1)
            break
"""

from __future__ import annotations

import os
import signal
import time

__all__ = ["step", "done", "stop_requested", "checkpoint_dir", "attempt"]

_MIN_INTERVAL_S = 0.25
_fh = None
_path: str | None = None
_last_write = 0.0
_pending: tuple[float, float, float | None] | None = None
_stop = False
_handler_installed = False


def _file():  # type: ignore[no-untyped-def]
    global _fh, _path
    path = os.environ.get("MISO_PROGRESS_FILE")
    if not path:
        return None
    if _fh is None or path != _path:
        try:
            _fh = open(path, "a", encoding="utf-8", buffering=1)
        except OSError:
            return None
        _path = path
    return _fh


def _write(t: float, i: float, total: float | None) -> None:
    fh = _file()
    if fh is None:
        return
    tot = "null" if total is None else repr(float(total))
    try:
        fh.write(f'{{"t": {t!r}, "step": {float(i)!r}, "total": {tot}}}\n')
    except (OSError, ValueError):
        pass


def step(i: float, total: float | None = None) -> None:
    """Report that ``i`` steps are done (of ``total``, when known)."""
    global _last_write, _pending
    now = time.time()
    finished = total is not None and i >= total
    if finished or now - _last_write >= _MIN_INTERVAL_S:
        _write(now, i, total)
        _last_write = now
        _pending = None
    else:
        _pending = (now, i, total)
    if not _handler_installed:
        _install()


def done() -> None:
    """Flush the last step reported (call before exiting)."""
    global _pending
    if _pending is not None:
        _write(*_pending)
        _pending = None


def _on_signal(signum: int, frame: object) -> None:
    global _stop
    _stop = True


def _install() -> None:
    """Catch miso's checkpoint signal (``MISO_CHECKPOINT_SIGNAL``) to set a flag."""
    global _handler_installed
    _handler_installed = True
    name = os.environ.get("MISO_CHECKPOINT_SIGNAL")
    if not name:
        return
    try:
        signum = signal.Signals[name]
        if signal.getsignal(signum) in (signal.SIG_DFL, signal.SIG_IGN, None):
            signal.signal(signum, _on_signal)
    except (KeyError, ValueError, OSError):
        pass  # not the main thread, or an unknown name: the job handles signals itself


def stop_requested() -> bool:
    """True once miso asked the job to checkpoint and stop."""
    if not _handler_installed:
        _install()
    return _stop


def checkpoint_dir() -> str | None:
    """Where this job may keep its checkpoints (``MISO_CHECKPOINT_DIR``), under miso."""
    return os.environ.get("MISO_CHECKPOINT_DIR")


def attempt() -> int:
    """1 for the first start, 2 and up for restarts (retries or resumes)."""
    try:
        return int(os.environ.get("MISO_ATTEMPT", "1"))
    except ValueError:
        return 1
