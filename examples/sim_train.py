"""A synthetic training job for the simulated GPU: runs on CPU, paced like a real workload.

It learns which device miso gave it (``CUDA_VISIBLE_DEVICES`` and the simulated
GPU state in ``MISO_SIM_STATE``), registers as a process on it, and sleeps each
step for the catalog's step time of its workload on that MIG slice (or whole
GPU, or MPS share), divided by a speed-up factor. Under MPS
(``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` and a live daemon at
``CUDA_MPS_PIPE_DIRECTORY``) it connects as a client of the simulated daemon and
looks up its co-runners about twice a second: the simulated GPU's MPS model
slows it by their shares, as sharing the SMs does. A slice too small for the
workload fails the way CUDA does when memory runs out. On miso's checkpoint
signal it saves its step and exits; started again, it resumes from the save.

    python examples/sim_train.py --workload toy-cnn_64 --steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from miso_cli import report  # noqa: E402
from miso_cli.spec.catalog import load_catalog  # noqa: E402

DEFAULT_SPEEDUP = 10.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", required=True, help="a workload of the catalog")
    ap.add_argument("--steps", type=int, required=True, help="training steps to run")
    ap.add_argument("--catalog", default=str(HERE / "catalog.csv"), help="step-time catalog")
    ap.add_argument(
        "--speedup",
        type=float,
        default=None,
        help=f"run this many times faster than the catalog (default: $MISO_SIM_SPEEDUP "
        f"or {DEFAULT_SPEEDUP:g})",
    )
    ap.add_argument(
        "--checkpoint", default=None, help="checkpoint file (default: in $MISO_CHECKPOINT_DIR)"
    )
    ap.add_argument("--memory-mb", type=int, default=None, help="GPU memory to report as used")
    ap.add_argument("--fail-at", type=int, default=None, help="crash at this step (tests)")
    ap.add_argument(
        "--fail-attempts", type=int, default=1, help="crash only in the first N attempts"
    )
    ap.add_argument("--hang-at", type=int, default=None, help="stop making progress here (tests)")
    ap.add_argument("--print-every", type=int, default=0, help="also print a progress line")
    args = ap.parse_args(argv)
    if args.steps <= 0:
        ap.error("--steps must be positive")
    return args


def step_time_s(
    workload, device: str | None, state: str | None, memory_mb: float | None = None
) -> tuple[float | None, str]:
    """Seconds per step on the device miso gave us, alone (None: the workload does not fit).

    Whether it fits is decided by the device's real memory against the job's need
    (``--memory-mb``, else what the catalog's empty cells imply on the A100 it was
    measured on), so a job that misses an A100's 2g.10gb runs on an H100's 2g.20gb.
    """
    pct = os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
    if not device or not state:
        return workload.step_time_ms(7) / 1000.0, "no simulated GPU: pacing as a whole GPU"
    from miso_cli.gpu.sim import simnvml

    info = simnvml.lookup_device(Path(state), device)
    where = info["profile"] or f"whole GPU {info['gpu_index']}"
    if pct:
        return mps_step_time_ms(workload, float(pct), []) / 1000.0, f"{where} under MPS at {pct}%"
    ms = slice_step_time_ms(workload, info, memory_mb)
    return (ms / 1000.0 if ms is not None else None), where


def slice_step_time_ms(workload, info: dict, memory_mb: float | None) -> float | None:
    """Catalog step time on a simulated device (``lookup_device``); None: out of memory."""
    return workload.step_time_on(int(info["slices"]), float(info["memory_mb"]), memory_mb)


def mps_step_time_ms(workload, pct: float, co_runners: list) -> float:
    """Step time under MPS at ``pct`` beside ``co_runners`` ((workload, pct) pairs)."""
    try:
        from miso_cli.gpu.sim import simmps
    except ImportError:  # the solo curve when the interference model is not installed
        return workload.mps_step_time_ms(pct)
    return simmps.step_time_ms(workload, pct, co_runners)


class MpsClient:
    """This process as a client of the simulated MPS daemon: who shares the GPU with it."""

    # On a GPU, co-runners slow a job the moment they start; profiling levels last about
    # a second of wall time here, so look again often (a small locked JSON read).
    REFRESH_S = 0.1

    def __init__(self, state: Path, device: str, workload, catalog) -> None:
        from miso_cli.gpu.sim import sim_mps_control

        self.control = sim_mps_control
        self.state, self.workload, self.catalog = state, workload, catalog
        record = sim_mps_control.connect(state, os.getpid(), device, workload.name)
        self.connected = record is not None
        self.pct = float(record["active_thread_percentage"]) if record else 100.0
        self._checked = 0.0
        self._per_step_s = mps_step_time_ms(workload, self.pct, []) / 1000.0

    def per_step_s(self) -> float:
        """The current step time, refreshing the co-runners every REFRESH_S."""
        now = time.monotonic()
        if now - self._checked >= self.REFRESH_S:
            self._checked = now
            co = []
            for c in self.control.co_runners(self.state, os.getpid()):
                name = c.get("workload")
                # the model needs only their share; an unknown workload still takes its share
                other = self.catalog[name] if name in self.catalog else self.workload
                co.append((other, float(c["active_thread_percentage"])))
            self._per_step_s = mps_step_time_ms(self.workload, self.pct, co) / 1000.0
        return self._per_step_s

    def close(self) -> None:
        if self.connected:
            self.control.disconnect(self.state, os.getpid())
            self.connected = False


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    catalog = load_catalog(args.catalog)
    if args.workload not in catalog:
        print(f"sim_train: unknown workload {args.workload!r} in {args.catalog}", file=sys.stderr)
        return 2
    workload = catalog[args.workload]
    speedup = args.speedup or float(os.environ.get("MISO_SIM_SPEEDUP") or DEFAULT_SPEEDUP)
    device = (os.environ.get("CUDA_VISIBLE_DEVICES") or "").split(",")[0].strip() or None
    state = os.environ.get("MISO_SIM_STATE")
    try:
        per_step, where = step_time_s(workload, device, state, args.memory_mb)
    except KeyError as exc:
        print(
            f"RuntimeError: CUDA error: no CUDA-capable device is detected ({exc})", file=sys.stderr
        )
        return 1
    if per_step is None:
        need = args.memory_mb or workload.memory_need_mb()
        print(
            f"torch.OutOfMemoryError: CUDA out of memory. {args.workload} needs about "
            f"{need:.0f} MiB and does not fit on {where}.",
            file=sys.stderr,
        )
        return 1

    ckpt_dir = os.environ.get("MISO_CHECKPOINT_DIR")
    ckpt = (
        Path(args.checkpoint)
        if args.checkpoint
        else (Path(ckpt_dir) / "sim_train.json" if ckpt_dir else None)
    )
    start = 0
    if ckpt is not None and ckpt.exists():
        try:
            start = int(json.loads(ckpt.read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            start = 0
    stop = {"requested": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["requested"] = True

    sig_name = os.environ.get("MISO_CHECKPOINT_SIGNAL", "SIGTERM")
    for name in {sig_name, "SIGTERM"}:
        try:
            signal.signal(signal.Signals[name], on_signal)
        except (KeyError, ValueError):
            pass

    attached = False
    if device and state:
        from miso_cli.gpu.sim import simnvml

        simnvml.attach_process(Path(state), device, os.getpid(), args.memory_mb)
        attached = True
    client = None
    if device and state and os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"):
        client = MpsClient(Path(state), device, workload, catalog)
        if client.connected:
            per_step = client.per_step_s()
        else:
            # no daemon serves this pipe directory: CUDA runs the job without MPS
            info = simnvml.lookup_device(Path(state), device)
            ms = slice_step_time_ms(workload, info, args.memory_mb)
            if ms is not None:
                per_step = ms / 1000.0
            where = (info["profile"] or f"whole GPU {info['gpu_index']}") + " (no MPS daemon)"
    attempt = report.attempt()
    print(
        f"sim_train: {args.workload} on {where}: {per_step * 1000:.1f} ms/step "
        f"(catalog /{speedup:g}), steps {start}/{args.steps}",
        flush=True,
    )
    code = 0
    # Pace by deadlines, not by sleeping a step's time after each step's own work:
    # otherwise the bookkeeping per step adds up and the job runs slower than the catalog.
    next_at = time.monotonic()
    try:
        for i in range(start, args.steps):
            if stop["requested"]:
                break
            if args.hang_at is not None and i == args.hang_at:
                while not stop["requested"]:
                    time.sleep(0.05)
                break
            if args.fail_at is not None and i == args.fail_at and attempt <= args.fail_attempts:
                print(f"RuntimeError: simulated failure at step {i}", file=sys.stderr, flush=True)
                code = 1
                break
            if client is not None and client.connected:
                per_step = client.per_step_s()
            interval = per_step / speedup
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -interval:
                next_at = time.monotonic()  # fell behind (a loaded host): never burst to catch up
            done = i + 1
            report.step(done, args.steps)
            if args.print_every and done % args.print_every == 0:
                print(f"step {done}/{args.steps}", flush=True)
            start = done
        report.done()
        if ckpt is not None and stop["requested"]:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            tmp = ckpt.with_suffix(".tmp")
            tmp.write_text(json.dumps({"step": start, "workload": args.workload}))
            os.replace(tmp, ckpt)
            print(f"sim_train: checkpoint saved at step {start}", flush=True)
        elif ckpt is not None and start >= args.steps and ckpt.exists():
            ckpt.unlink()
    finally:
        if client is not None:
            client.close()
        if attached:
            simnvml.detach_process(Path(state), os.getpid())
    if code == 0 and start >= args.steps:
        print(f"sim_train: done, {args.steps} steps", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
