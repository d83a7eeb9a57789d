"""File operations that hold when miso is root and a directory belongs to someone else.

Under ``sudo miso run`` a job's own folder (``jobs/<job>/``) is handed to the user
who started it, and that user's job can plant a symlink or a hard link there at
any moment. Everything root does in such a place goes through this module:

* files are opened with ``O_NOFOLLOW`` (a symlink is refused, never followed),
  new ones with ``O_EXCL``, relative to a directory descriptor opened with
  ``O_NOFOLLOW | O_DIRECTORY`` so that the directory cannot be swapped either;
* ownership is changed with ``fchown`` on the opened descriptor, after ``fstat``
  shows a regular file with one link (a hard link to a root file is refused);
* directories that hold a pipe, a lock or state are checked for owner and mode
  (:func:`check_dir`) before anything is created in them.

Standard library only: the job wrapper imports it and must start fast.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
DIRECTORY = getattr(os, "O_DIRECTORY", 0)
NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class UnsafePath(OSError):
    """A path that miso refuses to use: a symlink, a hard link, a foreign or open directory."""

    def __init__(self, path: str | os.PathLike[str], why: str) -> None:
        super().__init__(errno.EPERM, why, str(path))
        self.why = why

    def __str__(self) -> str:
        return f"{self.filename}: {self.why}"


def open_dir(path: str | os.PathLike[str]) -> int:
    """A descriptor of directory ``path`` itself; a symlink in its last component is refused."""
    try:
        return os.open(path, os.O_RDONLY | DIRECTORY | NOFOLLOW | CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(path, "is a symlink or not a directory; refusing to use it") from None
        raise


def open_file(
    path: str | os.PathLike[str],
    flags: int,
    mode: int = 0o600,
    *,
    dir_fd: int | None = None,
) -> int:
    """``os.open`` that never follows a symlink and refuses anything but a regular file.

    Opened non-blocking (a planted FIFO cannot hang root), then made blocking again.
    """
    try:
        fd = os.open(path, flags | NOFOLLOW | CLOEXEC | NONBLOCK, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(path, "is a symlink; refusing to follow it") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(path, "is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_new(dir_path: str | os.PathLike[str], name: str, data: bytes, mode: int = 0o644) -> None:
    """Write ``dir_path/name`` atomically, safe in a directory another user can write.

    A fresh temp file is made with ``O_EXCL | O_NOFOLLOW`` (a name planted in advance is
    skipped, never opened), filled, fsynced and renamed over ``name``; a rename replaces
    a planted symlink itself, never the file it points to.
    """
    dfd = open_dir(dir_path)
    try:
        for _ in range(16):
            tmp = f".{name}.{os.urandom(6).hex()}.tmp"
            try:
                fd = open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode, dir_fd=dfd)
            except FileExistsError:
                continue
            break
        else:  # pragma: no cover - 16 collisions of 48 random bits
            raise UnsafePath(dir_path, "cannot create a private temporary file")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
        try:
            os.fsync(dfd)
        except OSError:
            pass
    finally:
        os.close(dfd)


def touch_owned(path: str | os.PathLike[str], uid: int | None, gid: int | None) -> None:
    """Create ``path`` if missing and give it to ``uid:gid``, through the descriptor.

    A symlink at ``path`` is removed (it is the user's, and a rename or unlink never
    touches its target) and a fresh file made; a hard link (more than one link) is
    refused, since ``fchown`` on it would change a file elsewhere.
    """
    p = Path(path)
    dfd = open_dir(p.parent)
    try:
        for _ in range(4):
            try:
                fd = open_file(p.name, os.O_RDWR | os.O_CREAT, 0o644, dir_fd=dfd)
            except UnsafePath:
                st = os.stat(p.name, dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    os.unlink(p.name, dir_fd=dfd)
                    continue
                raise
            try:
                st = os.fstat(fd)
                if st.st_nlink != 1:
                    why = f"has {st.st_nlink} hard links; refusing to hand it over"
                    raise UnsafePath(path, why)
                if uid is not None and (st.st_uid, st.st_gid) != (uid, gid):
                    os.fchown(fd, uid, -1 if gid is None else gid)
            finally:
                os.close(fd)
            return
        raise UnsafePath(path, "keeps being replaced by a symlink")
    finally:
        os.close(dfd)


def chown_dir(path: str | os.PathLike[str], uid: int, gid: int) -> None:
    """Give directory ``path`` (not a symlink to one) to ``uid:gid``, through its descriptor."""
    fd = open_dir(path)
    try:
        os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


def check_dir(
    path: str | os.PathLike[str],
    *,
    owners: tuple[int, ...] | None = None,
    what: str = "directory",
) -> os.stat_result:
    """``path`` is a real directory, owned by one of ``owners`` (default: this user or root),
    that group and others cannot write (unless sticky, as /tmp). Raises :class:`UnsafePath`."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(path, f"{what} is a symlink; refusing to use it")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(path, f"{what} is not a directory")
    allowed = owners if owners is not None else tuple({os.geteuid(), 0})
    if st.st_uid not in allowed:
        raise UnsafePath(
            path,
            f"{what} is owned by uid {st.st_uid}, not by uid "
            + " or ".join(str(u) for u in allowed)
            + "; refusing to use it",
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise UnsafePath(
            path,
            f"{what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
            "refusing to use it",
        )
    return st


def private_dir(
    path: str | os.PathLike[str], mode: int = 0o700, *, what: str = "directory"
) -> Path:
    """Make ``path`` (and missing parents) and check it is ours alone (:func:`check_dir`
    with this user as the only owner)."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=mode)
    check_dir(p, owners=(os.geteuid(),), what=what)
    return p


def runtime_dir() -> Path:
    """A place for what must be shared between miso processes of one machine (GPU locks,
    short MPS pipe paths) that no other user can plant anything in.

    ``$MISO_RUNTIME_DIR`` if set; root: ``/run/miso``; others: ``$XDG_RUNTIME_DIR/miso``
    when that is theirs, else ``<tmp>/miso-<uid>``. Created mode 0700 and checked to be
    this user's alone: a directory another user made first is refused, not used.
    """
    import tempfile

    explicit = os.environ.get("MISO_RUNTIME_DIR")
    if explicit:
        base = Path(explicit)
    elif os.geteuid() == 0:
        base = Path("/run/miso")
    else:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        base = Path(tempfile.gettempdir()) / f"miso-{os.geteuid()}"
        if xdg:
            try:
                check_dir(xdg, owners=(os.geteuid(),), what="XDG_RUNTIME_DIR")
                base = Path(xdg) / "miso"
            except OSError:
                pass
    return private_dir(base, what="miso's runtime directory")
