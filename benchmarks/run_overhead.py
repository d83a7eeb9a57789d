"""What miso itself costs while it watches jobs: CPU and memory of the ``miso run`` process.

Fourteen synthetic jobs on two simulated A100s, each partitioned into seven 1g.5gb
instances, watched for a minute (``--seconds`` for less). The figures are those of
the miso process alone (not its jobs): CPU as a percentage of one core, and peak
RSS. miso's stderr is a pseudo-terminal, so the live view is drawn as for a person
(``--plain`` measures the plain-lines mode instead). Aim: under 2 % of a core and 150 MB.

    python benchmarks/run_overhead.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def _drain(fd: int) -> None:
    """Read what miso draws on its terminal, as a terminal would."""
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long to watch")
    ap.add_argument("--jobs", type=int, default=14)
    ap.add_argument("--plain", action="store_true", help="no terminal: plain lines")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="miso-bench-") as tmp:
        state = Path(tmp) / "state"
        queue = Path(tmp) / "queue.toml"
        sim = ROOT / "examples" / "sim_train.py"
        body = ["version = 1"]
        for i in range(args.jobs):
            cmd = [sys.executable, str(sim), "--workload", "toy-mlp_32", "--steps", "1000000"]
            body += [
                "[[job]]",
                f'name = "job{i:02d}"',
                f"command = {json.dumps(cmd)}",
                "steps = 1000000",
                "[job.checkpoint]",
                'signal = "SIGUSR1"',
                'grace = "5s"',
            ]
        queue.write_text("\n".join(body) + "\n")
        env = dict(os.environ, MISO_STATE_DIR=str(state))
        layout = ",".join(["1g.5gb"] * 7)
        if args.plain:
            err_fd, master = subprocess.DEVNULL, None
        else:
            master, err_fd = pty.openpty()
            threading.Thread(target=_drain, args=(master,), daemon=True).start()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "miso_cli",
                "run",
                str(queue),
                "--gpu",
                "sim:a100-40gbx2",
                "--layout",
                layout,
                "--speedup",
                "1",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        me = psutil.Process(proc.pid)
        deadline = time.time() + 60
        started = 0
        while time.time() < deadline:
            started = 0
            for ev in state.glob("runs/*/events.jsonl"):
                started = sum('"event": "started"' in ln for ln in ev.read_text().splitlines())
            if started >= args.jobs:
                break
            time.sleep(0.5)
        if started < args.jobs:
            print(f"only {started} of {args.jobs} jobs started", file=sys.stderr)
            proc.kill()
            return 1
        time.sleep(2.0)  # past start-up
        t0, c0 = time.monotonic(), me.cpu_times()
        peak_rss = 0
        while time.monotonic() - t0 < args.seconds:
            peak_rss = max(peak_rss, me.memory_info().rss)
            time.sleep(1.0)
        t1, c1 = time.monotonic(), me.cpu_times()
        cpu = (c1.user + c1.system - c0.user - c0.system) / (t1 - t0) * 100
        running = sum(
            1 for c in me.children() if "miso_cli.runtime.jobwrap" in " ".join(c.cmdline())
        )
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        view = "plain lines" if args.plain else "live view on a terminal"
        print(f"jobs watched:        {running} (2 GPUs x 7 x 1g.5gb), {view}")
        print(f"watched for:         {t1 - t0:.1f} s")
        print(f"miso CPU:            {cpu:.2f} % of one core (aim < 2 %)")
        print(f"miso peak RSS:       {peak_rss / 2**20:.1f} MB (aim < 150 MB)")
        print(f"exit after Ctrl-C:   {proc.returncode} (130 = interrupted, jobs checkpointed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
