"""The small parent of every job.

``python -m miso_cli.runtime.jobwrap --exit-file F [...] -- CMD...``

It leads the job's process group, starts the command (as another user when
asked), forwards the signals it gets to the command, waits for it, and writes
the exit status to ``F`` atomically. Because it, not miso, waits for the job, a
job that ends while miso is down still leaves its exit status for
``miso run --resume``. Standard library only: it starts in milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCONT,
)
USAGE = (
    "usage: python -m miso_cli.runtime.jobwrap --exit-file PATH [--tag TAG] [--shell] "
    "[--uid N --gid N --groups N,N] -- COMMAND..."
)


def _write_exit(path: str, record: dict[str, object]) -> None:
    # The job's folder may belong to the job's user while this wrapper is root: a
    # symlink planted at any name there must never be followed (see miso_cli.safefs).
    from miso_cli.safefs import write_new

    folder, name = os.path.split(os.path.abspath(path))
    try:
        write_new(folder, name, json.dumps(record).encode("utf-8"))
    except OSError as exc:
        print(f"miso: cannot write the exit status to {path}: {exc}", file=sys.stderr)


def main(argv: list[str]) -> int:
    opts: dict[str, str] = {}
    shell = False
    i = 0
    while i < len(argv) and argv[i] != "--":
        arg = argv[i]
        if arg == "--shell":
            shell = True
            i += 1
        elif arg in ("--exit-file", "--tag", "--uid", "--gid", "--groups") and i + 1 < len(argv):
            opts[arg[2:]] = argv[i + 1]
            i += 2
        else:
            print(f"jobwrap: unknown argument {arg!r}\n{USAGE}", file=sys.stderr)
            return 2
    command = argv[i + 1 :]
    if "exit-file" not in opts or not command:
        print(USAGE, file=sys.stderr)
        return 2

    pending: list[int] = []
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, frame: object) -> None:
        if child is None:
            pending.append(signum)
        else:
            try:
                child.send_signal(signum)
            except ProcessLookupError:
                pass

    for sig in FORWARDED:
        signal.signal(sig, forward)

    kwargs: dict[str, object] = {}
    if "uid" in opts:
        kwargs["user"] = int(opts["uid"])
        kwargs["group"] = int(opts.get("gid", opts["uid"]))
        groups = [int(g) for g in opts.get("groups", "").split(",") if g]
        kwargs["extra_groups"] = groups
    started = time.time()
    try:
        child = subprocess.Popen(
            command[0] if shell else command,
            shell=shell,
            stdin=subprocess.DEVNULL,
            **kwargs,  # type: ignore[arg-type]
        )
    except OSError as exc:
        print(f"miso: cannot start {command[0]!r}: {exc.strerror or exc}", file=sys.stderr)
        _write_exit(
            opts["exit-file"],
            {
                "exit_code": 127,
                "signal": None,
                "started_at": started,
                "ended_at": time.time(),
                "error": str(exc),
            },
        )
        return 127
    for sig in pending:
        forward(sig, None)
    while True:
        try:
            rc = child.wait()
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
    record = {
        "exit_code": rc if rc >= 0 else None,
        "signal": -rc if rc < 0 else None,
        "pid": child.pid,
        "started_at": started,
        "ended_at": time.time(),
    }
    _write_exit(opts["exit-file"], record)
    return rc if rc >= 0 else 128 - rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
