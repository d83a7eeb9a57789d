"""The state directory and atomic file writes.

Everything miso keeps between invocations (journal, profiles, models, the
simulated GPUs) lives under one directory, written so that a crash at any
instant leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def default_state_dir() -> Path:
    """``$MISO_STATE_DIR``, else ``$XDG_STATE_HOME/miso``, else ``~/.local/state/miso``."""
    explicit = os.environ.get("MISO_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "miso"


def check_state_dir(path: Path) -> None:
    """Refuse a state dir that cannot be one: a file, or a path below a file.

    Nothing is created here (``miso doctor`` reports a state dir still to make).
    """
    from miso_cli.errors import UsageError

    for p in (path, *path.parents):
        if p.is_dir():
            if p == path:
                _check_owner(path)
            return
        if p.exists() or p.is_symlink():
            where = "is" if p == path else f"is below {p}, which is"
            raise UsageError(
                f"state dir {path} {where} not a directory",
                hint="point --state-dir or MISO_STATE_DIR at a folder",
            )


def _check_owner(path: Path) -> None:
    """An existing state dir must be this user's and closed to others' writes: under
    ``sudo`` a folder the invoking user owns could hold symlinks for root to follow."""
    from miso_cli.errors import PermissionDenied
    from miso_cli.safefs import UnsafePath, check_dir

    try:
        check_dir(path.resolve(), owners=(os.geteuid(),), what="state dir")
    except UnsafePath as exc:
        hint = "point --state-dir or MISO_STATE_DIR at a folder of your own"
        if os.geteuid() == 0:
            hint += " (as root, e.g. --state-dir /var/lib/miso)"
        raise PermissionDenied(str(exc), hint=hint) from None


def ensure_dir(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    return path


# A full disk (or quota) may be cleared while miso waits: a write is tried again for
# about half a minute before the error stops the command (see miso_cli.runtime.retry).
DISK_RETRIES = 6
DISK_FIRST_PAUSE_S = 1.0
_sleep = time.sleep


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same dir, fsync, rename).

    ENOSPC and EDQUOT are retried with growing pauses; then the error is raised.
    """
    from miso_cli.runtime.retry import Backoff, is_transient, retry

    retry(
        lambda: _atomic_write_once(path, data, mode),
        policy=Backoff(tries=DISK_RETRIES, first_s=DISK_FIRST_PAUSE_S, max_s=8.0),
        sleep=lambda s: _sleep(s),
        transient=lambda e: isinstance(e, OSError) and is_transient(e),
    )


def _atomic_write_once(path: Path, data: bytes, mode: int) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # name the file asked for, not its folder or a temp name
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_text(path: Path, text: str, mode: int = 0o600) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_write_json(path: Path, obj: Any, mode: int = 0o600) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", mode)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
