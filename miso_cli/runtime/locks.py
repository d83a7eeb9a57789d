"""One lock per physical GPU, and signals held back while a GPU is half-changed.

Every command that changes a GPU (``apply``, ``run``, ``profile``, ``calibrate``)
holds :class:`GpuLock` for it. The lock is keyed by the GPU's UUID, not by the
state directory, because two state directories still share one GPU: a real GPU's
lock lives in miso's runtime directory (``/run/miso/gpu`` as root, see
:func:`miso_cli.safefs.runtime_dir`); a simulated GPU's beside its state file,
since that file is the GPU. The lock is an ``flock`` on a file, released by the
kernel when its holder dies, even by ``kill -9``; the file names the holder (pid,
command, user, since when) so that a second command can say who it waits for.

A second command waits up to a bounded time, then refuses with GPU_BUSY naming
the holder. The lock also carries an ``apply`` intent record (see
:mod:`miso_cli.gpu.apply`): whoever takes the lock first finishes or rolls back
an apply that a killed command left, before doing anything else.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miso_cli.errors import GpuBusy, PermissionDenied
from miso_cli.runtime.retry import unwrap
from miso_cli.safefs import UnsafePath, open_file, private_dir, runtime_dir


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def lock_key(uuid: str | None, index: int) -> str:
    """A file name for a GPU: its UUID, made safe for a path."""
    raw = uuid or f"index-{index}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", raw)[:120]


def lock_dir(drv: Any) -> Path:
    """Where the locks of ``drv``'s GPUs live (created, checked to be this user's alone)."""
    try:
        sim_path = getattr(drv, "sim_state_path", None) if getattr(drv, "is_simulated", 0) else None
        if sim_path is not None:
            p = Path(sim_path)
            return private_dir(p.parent / f".{p.name}.locks", what="simulated GPU lock folder")
        return private_dir(runtime_dir() / "gpu", what="GPU lock folder")
    except UnsafePath as exc:
        raise PermissionDenied(
            str(exc), hint="remove it (it is not miso's), or set MISO_RUNTIME_DIR"
        ) from None


@dataclass
class GpuLock:
    """The lock of one GPU (``with GpuLock(dir, key, "apply"): ...``)."""

    directory: Path
    key: str
    command: str
    index: int | None = None
    fd: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.directory / f"{self.key}.lock"

    @property
    def intent_path(self) -> Path:
        """Where an ``apply`` on this GPU writes its intent before touching it."""
        return self.directory / f"{self.key}.apply.json"

    def holder(self) -> dict[str, Any] | None:
        """Who holds (or last held) the lock, as its file says."""
        try:
            fd = open_file(self.path, os.O_RDONLY)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as fh:
            try:
                data = json.loads(fh.read(4096).decode("utf-8", errors="replace") or "null")
            except ValueError:
                return None
        return data if isinstance(data, dict) else None

    def _try(self) -> bool:
        assert self.fd is not None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def acquire(
        self,
        wait_s: float = 0.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        poll_s: float = 0.1,
    ) -> GpuLock:
        """Take the lock, waiting at most ``wait_s``; GpuBusy names the holder if not."""
        try:
            self.fd = open_file(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except UnsafePath as exc:
            raise PermissionDenied(str(exc), hint="remove it; it is not miso's") from None
        deadline = clock() + max(0.0, wait_s)
        while not self._try():
            if clock() >= deadline:
                who = self.holder() or {}
                os.close(self.fd)
                self.fd = None
                raise GpuBusy(
                    describe_busy(self, who, wait_s),
                    hint=_hint(who),
                    details={
                        "gpu": self.index,
                        "gpu_key": self.key,
                        "holder": who,
                    },
                )
            sleep(poll_s)
        record = {
            "pid": os.getpid(),
            "command": self.command,
            "argv": sys.argv[:8],
            "uid": os.geteuid(),
            "user": _user(os.geteuid()),
            "since": time.time(),
        }
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, (json.dumps(record) + "\n").encode(), 0)
        return self

    def release(self) -> None:
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def __enter__(self) -> GpuLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def describe_busy(lock: GpuLock, who: dict[str, Any], wait_s: float) -> str:
    gpu = f"GPU {lock.index}" if lock.index is not None else f"GPU {lock.key}"
    if who:
        since = who.get("since")
        age = ""
        if isinstance(since, (int, float)):
            age = f", for {max(0.0, time.time() - float(since)):.0f} s"
        pid, user = who.get("pid", "?"), who.get("user", "?")
        by = f"miso {who.get('command', '?')} (pid {pid}, user {user}{age})"
    else:
        by = "another miso"
    waited = f" after waiting {wait_s:g} s" if wait_s > 0 else ""
    return f"{gpu} is being changed by {by}{waited}"


def _hint(who: dict[str, Any]) -> str:
    if who.get("command") == "run":
        return "wait for the run to end, or stop it (Ctrl-C) first; --wait S waits longer"
    return "wait for it to finish, or pass --wait SECONDS"


def gpu_lock(drv: Any, index: int, command: str) -> GpuLock:
    """The (untaken) lock of GPU ``index`` of ``drv``."""
    try:
        uuid = drv.gpu(index).uuid
    except Exception:  # a GPU that cannot be read is still locked, by index
        uuid = None
    return GpuLock(lock_dir(drv), lock_key(uuid, index), command, index)


@contextlib.contextmanager
def hold_gpus(
    drv: Any,
    indices: list[int],
    command: str,
    *,
    wait_s: float = 0.0,
    recover: bool = True,
    note: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[dict[int, GpuLock]]:
    """Hold the locks of ``indices`` (taken in UUID order, so two commands never deadlock).

    With ``recover``, an apply that a killed miso left unfinished on one of these GPUs
    is finished or rolled back first, and ``note`` is told what was done.
    """
    locks = sorted((gpu_lock(drv, i, command) for i in sorted(set(indices))), key=lambda k: k.key)
    taken: list[GpuLock] = []
    try:
        for lk in locks:
            lk.acquire(wait_s, sleep=sleep, clock=clock)
            taken.append(lk)
            _HELD[(id(unwrap(drv)), lk.index)] = lk
        if recover:
            from miso_cli.gpu.apply import recover_unfinished

            for lk in taken:
                assert lk.index is not None
                msg = recover_unfinished(drv, lk.index, lk.intent_path)
                if msg and note is not None:
                    note(msg)
        yield {lk.index: lk for lk in taken if lk.index is not None}
    finally:
        for lk in reversed(taken):
            _HELD.pop((id(unwrap(drv)), lk.index), None)
            lk.release()


# The locks this process holds, by (driver, GPU index): an apply under one of them
# writes its intent beside it without being told where.
_HELD: dict[tuple[int, int | None], GpuLock] = {}


def held_lock(drv: Any, index: int) -> GpuLock | None:
    """The lock of GPU ``index`` that this process holds through ``drv``, if any."""
    return _HELD.get((id(unwrap(drv)), index))


def holds_any() -> bool:
    """Whether this process holds the lock of some GPU."""
    return bool(_HELD)


def _stderr_note(msg: str) -> None:
    print(f"miso: {msg}", file=sys.stderr, flush=True)


def hold_all(
    stack: contextlib.ExitStack,
    drv: Any,
    command: str,
    *,
    wait_s: float = 0.0,
    note: Callable[[str], None] = _stderr_note,
) -> dict[int, GpuLock]:
    """Take the locks of every GPU of ``drv`` into ``stack`` (released when it closes).

    The one call a long command (``run``) makes once its driver is open.
    """
    return stack.enter_context(
        hold_gpus(drv, list(range(drv.device_count())), command, wait_s=wait_s, note=note)
    )


# ------------------------------------------------------------ signals


@contextlib.contextmanager
def deferred_signals(
    signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM),
) -> Iterator[list[int]]:
    """Hold SIGINT and SIGTERM back inside the block, then deliver them, once, in order.

    Used while a GPU is half-changed: the change finishes (or is rolled back) first.
    Only the main thread can own signal handlers; elsewhere this does nothing.
    """
    pending: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return

    def hold(signum: int, frame: object) -> None:
        if signum not in pending:
            pending.append(signum)

    old = {s: signal.signal(s, hold) for s in signals}
    try:
        yield pending
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for s in pending:
            signal.raise_signal(s)
