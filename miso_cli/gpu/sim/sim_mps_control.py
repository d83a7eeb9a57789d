"""A stand-in for ``nvidia-cuda-mps-control`` on simulated GPUs.

:mod:`miso_cli.gpu.mps` runs this program instead of the NVIDIA one when the
GPU is simulated, so the daemon code path is the same. As far as miso uses the
real program, it behaves the same way:

* ``-d`` daemonizes (the command returns once the daemon is up), writes
  ``nvidia-cuda-mps-control.pid`` and listens on the Unix socket ``control``
  in ``$CUDA_MPS_PIPE_DIRECTORY`` (default ``/tmp/nvidia-mps``), and logs to
  ``control.log`` in ``$CUDA_MPS_LOG_DIRECTORY`` (default ``/var/log/nvidia-mps``);
  a second ``-d`` on a pipe directory whose daemon lives is refused (exit 1);
* without ``-d`` it is the client: it sends the commands on stdin to the
  daemon and prints the answers; with no daemon it prints
  ``Cannot find MPS control daemon process`` and exits 1;
* commands: ``quit``, ``get_server_list``, ``get_default_active_thread_percentage``,
  ``set_default_active_thread_percentage X``, ``get_active_thread_percentage PID``;
* on ``quit`` (or SIGTERM) the pid file goes away; the socket file stays, as
  with the real daemon.

It also records itself in the simulated GPU state (``$MISO_SIM_STATE``) under
``extensions["mps"]``::

    {"daemons": [{"pid", "pipe_dir", "log_dir", "devices", "default_active_thread_percentage",
                  "started_at"}],
     "clients": [{"pid", "pipe_dir", "device_uuid", "active_thread_percentage", "workload"}]}

``devices`` is ``$CUDA_VISIBLE_DEVICES`` as UUIDs (empty: every GPU). A job
on a simulated GPU calls :func:`connect` when it opens its CUDA context, as a
CUDA client connects to the control daemon, and :func:`co_runners` to learn
with whom it shares the daemon. Records of dead processes are dropped
whenever the state is edited here.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from miso_cli.runtime.pids import pid_running

PID_FILE = "nvidia-cuda-mps-control.pid"
SOCKET = "control"
DEFAULT_PIPE_DIR = "/tmp/nvidia-mps"
DEFAULT_LOG_DIR = "/var/log/nvidia-mps"
NOT_FOUND = "Cannot find MPS control daemon process"


# ------------------------------------------------------------------ shared state
def _alive(pid: int) -> bool:
    return pid_running(pid)


def _section(state: dict[str, Any]) -> dict[str, Any]:
    mps = state.setdefault("extensions", {}).setdefault("mps", {})
    mps.setdefault("daemons", [])
    mps.setdefault("clients", [])
    mps["daemons"] = [d for d in mps["daemons"] if _alive(int(d["pid"]))]
    daemons = {d["pipe_dir"] for d in mps["daemons"]}
    # a client whose daemon died lost its server, as on the driver
    mps["clients"] = [
        c for c in mps["clients"] if _alive(int(c["pid"])) and c["pipe_dir"] in daemons
    ]
    return mps


def _pipe_dir(env: dict[str, str] | os._Environ[str] | None = None) -> str:
    env = os.environ if env is None else env
    return str(Path(env.get("CUDA_MPS_PIPE_DIRECTORY") or DEFAULT_PIPE_DIR).resolve())


def daemon_record(state_path: Path, pipe_dir: str | Path) -> dict[str, Any] | None:
    """The live daemon of ``pipe_dir`` in the simulated state, or None."""
    from miso_cli.gpu.sim.simnvml import edit_state

    key = str(Path(pipe_dir).resolve())
    with edit_state(Path(state_path)) as state:
        for d in _section(state)["daemons"]:
            if d["pipe_dir"] == key:
                return dict(d)
    return None


def connect(
    state_path: Path,
    pid: int,
    device_uuid: str,
    workload: str | None,
    env: dict[str, str] | None = None,
) -> dict[str, Any] | None:
    """Register ``pid`` as an MPS client, as CUDA does at context creation.

    Uses ``CUDA_MPS_PIPE_DIRECTORY`` and ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``
    from ``env`` (default: this process's). Returns the client record, or None
    when no daemon serves that pipe directory or ``device_uuid`` (the job then
    runs without MPS, as CUDA programs do).
    """
    from miso_cli.gpu.sim.simnvml import edit_state

    env = dict(os.environ if env is None else env)
    pipe_dir = _pipe_dir(env)
    with edit_state(Path(state_path)) as state:
        mps = _section(state)
        daemon = next((d for d in mps["daemons"] if d["pipe_dir"] == pipe_dir), None)
        if daemon is None or (daemon["devices"] and device_uuid not in daemon["devices"]):
            return None
        pct = float(daemon["default_active_thread_percentage"])
        raw = env.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
        if raw:
            try:
                pct = float(raw)
            except ValueError:
                pass  # the driver ignores a malformed value too
        pct = min(max(pct, 1.0), 100.0)
        record = {
            "pid": int(pid),
            "pipe_dir": pipe_dir,
            "device_uuid": device_uuid,
            "active_thread_percentage": pct,
            "workload": workload,
        }
        mps["clients"] = [c for c in mps["clients"] if int(c["pid"]) != int(pid)] + [record]
        return dict(record)


def disconnect(state_path: Path, pid: int) -> None:
    """Forget client ``pid`` (its context closed)."""
    from miso_cli.gpu.sim.simnvml import edit_state

    with edit_state(Path(state_path)) as state:
        mps = _section(state)
        mps["clients"] = [c for c in mps["clients"] if int(c["pid"]) != int(pid)]


def co_runners(state_path: Path, pid: int) -> list[dict[str, Any]]:
    """The other live clients sharing ``pid``'s daemon and device (their records)."""
    from miso_cli.gpu.sim.simnvml import edit_state

    with edit_state(Path(state_path)) as state:
        clients = _section(state)["clients"]
    me = next((c for c in clients if int(c["pid"]) == int(pid)), None)
    if me is None:
        return []
    return [
        dict(c)
        for c in clients
        if int(c["pid"]) != int(pid)
        and c["pipe_dir"] == me["pipe_dir"]
        and c["device_uuid"] == me["device_uuid"]
    ]


# ------------------------------------------------------------------ the daemon
class _Daemon:
    def __init__(self, pipe_dir: Path, log_dir: Path, state_path: Path | None) -> None:
        self.pipe_dir = pipe_dir
        self.log_dir = log_dir
        self.state_path = state_path
        self.default_pct = 100.0
        self.running = True

    def log(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.log_dir / "control.log", "a", encoding="utf-8") as fh:
            fh.write(f"[{stamp} Control {os.getpid()}] {text}\n")

    def _record(self, devices: list[str]) -> None:
        if self.state_path is None:
            return
        from miso_cli.gpu.sim.simnvml import edit_state

        with edit_state(self.state_path) as state:
            mps = _section(state)
            mps["daemons"] = [d for d in mps["daemons"] if d["pipe_dir"] != str(self.pipe_dir)]
            mps["daemons"].append(
                {
                    "pid": os.getpid(),
                    "pipe_dir": str(self.pipe_dir),
                    "log_dir": str(self.log_dir),
                    "devices": devices,
                    "default_active_thread_percentage": self.default_pct,
                    "started_at": time.time(),
                }
            )

    def _update(self, **fields: Any) -> None:
        if self.state_path is None:
            return
        from miso_cli.gpu.sim.simnvml import edit_state

        with edit_state(self.state_path) as state:
            for d in _section(state)["daemons"]:
                if int(d["pid"]) == os.getpid():
                    d.update(fields)

    def _forget(self) -> None:
        if self.state_path is None:
            return
        from miso_cli.gpu.sim.simnvml import edit_state

        try:
            with edit_state(self.state_path) as state:
                mps = _section(state)
                mps["daemons"] = [d for d in mps["daemons"] if int(d["pid"]) != os.getpid()]
                mps["clients"] = [c for c in mps["clients"] if c["pipe_dir"] != str(self.pipe_dir)]
        except Exception:  # noqa: BLE001 - shutting down; the record dies with the pid anyway
            pass

    def _clients(self) -> list[dict[str, Any]]:
        if self.state_path is None:
            return []
        from miso_cli.gpu.sim.simnvml import edit_state

        with edit_state(self.state_path) as state:
            return [c for c in _section(state)["clients"] if c["pipe_dir"] == str(self.pipe_dir)]

    def answer(self, line: str) -> str | None:
        words = line.split()
        if not words:
            return None
        cmd, args = words[0], words[1:]
        self.log(f"Cmd:{line}")
        if cmd == "quit":
            self.running = False
            return None
        if cmd == "get_server_list":
            # the simulated daemon is its own server once a client connected
            return str(os.getpid()) if self._clients() else None
        if cmd == "get_default_active_thread_percentage":
            return f"{self.default_pct:.1f}"
        if cmd == "set_default_active_thread_percentage" and len(args) == 1:
            try:
                value = float(args[0])
            except ValueError:
                return "Invalid percentage"
            if not 0 < value <= 100:
                return "Invalid percentage"
            self.default_pct = value
            self._update(default_active_thread_percentage=value)
            return f"{value:.1f}"
        if cmd == "get_active_thread_percentage" and len(args) == 1:
            for c in self._clients():
                if str(c["pid"]) == args[0]:
                    return f"{float(c['active_thread_percentage']):.1f}"
            return "Invalid client"
        return "Invalid command"

    def serve(self, ready_fd: int | None) -> None:
        sock_path = self.pipe_dir / SOCKET
        try:
            sock_path.unlink()
        except FileNotFoundError:
            pass
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(sock_path))
        server.listen(8)
        server.settimeout(0.5)
        devices = [
            d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()
        ]
        self._record(devices)
        (self.pipe_dir / PID_FILE).write_text(f"{os.getpid()}\n")
        self.log(f"Starting control daemon using socket {sock_path}")
        self.log(
            "To connect CUDA applications to this daemon, set env "
            f"CUDA_MPS_PIPE_DIRECTORY={self.pipe_dir}"
        )
        if ready_fd is not None:
            os.write(ready_fd, b"1")
            os.close(ready_fd)

        def on_term(signum: int, frame: Any) -> None:
            self.running = False

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        try:
            while self.running:
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                except OSError:
                    if not self.running:
                        break
                    raise
                with conn:
                    self.log("Accepting connection...")
                    conn.settimeout(5)
                    data = b""
                    try:
                        while chunk := conn.recv(4096):
                            data += chunk
                    except TimeoutError:
                        pass
                    out = []
                    for line in data.decode("utf-8", "replace").splitlines():
                        reply = self.answer(line.strip())
                        if reply is not None:
                            out.append(reply + "\n")
                        if not self.running:
                            break
                    try:
                        conn.sendall("".join(out).encode())
                    except OSError:
                        pass
        finally:
            server.close()
            self._forget()
            try:
                (self.pipe_dir / PID_FILE).unlink()
            except FileNotFoundError:
                pass
            self.log("Exit")


def _running_pid(pipe_dir: Path) -> int | None:
    try:
        pid = int((pipe_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and _alive(pid) else None


def _start_daemon() -> int:
    pipe_dir = Path(_pipe_dir())
    log_dir = Path(os.environ.get("CUDA_MPS_LOG_DIRECTORY") or DEFAULT_LOG_DIR).resolve()
    try:
        pipe_dir.mkdir(parents=True, exist_ok=True)
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"Cannot create MPS directories: {exc}", file=sys.stderr)
        return 1
    if _running_pid(pipe_dir) is not None:
        print("An instance of this daemon is already running", file=sys.stderr)
        return 1
    raw_state = os.environ.get("MISO_SIM_STATE")
    state_path = Path(raw_state) if raw_state else None
    read_fd, write_fd = os.pipe()
    if os.fork() > 0:  # the caller: wait until the daemon is up
        os.close(write_fd)
        ok = os.read(read_fd, 1) == b"1"
        os.close(read_fd)
        return 0 if ok else 1
    os.close(read_fd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    daemon = _Daemon(pipe_dir, log_dir, state_path)
    code = 0
    try:
        daemon.serve(write_fd)
    except BaseException as exc:  # noqa: BLE001 - a daemon's last words go to its log
        try:
            daemon.log(f"Fatal: {type(exc).__name__}: {exc}")
        except OSError:
            pass
        code = 1
    os._exit(code)


def _client() -> int:
    pipe_dir = Path(_pipe_dir())
    if _running_pid(pipe_dir) is None:
        print(NOT_FOUND)
        return 1
    text = sys.stdin.read()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(pipe_dir / SOCKET))
            sock.sendall(text.encode())
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
    except OSError:
        print(NOT_FOUND)
        return 1
    sys.stdout.write(data.decode("utf-8", "replace"))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["-d"]:
        return _start_daemon()
    if argv:
        print(f"usage: nvidia-cuda-mps-control [-d]  (got {' '.join(argv)})", file=sys.stderr)
        return 1
    return _client()


if __name__ == "__main__":
    sys.exit(main())
