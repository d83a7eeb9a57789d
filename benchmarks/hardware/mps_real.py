"""Measure MPS interference on a real GPU with PyTorch: jobs alone, and together at shares.

Three synthetic kernels stand for three kinds of training step:
``matmul`` (bf16 GEMMs, compute-bound), ``membw`` (large copies, memory-bound) and
``small`` (a small MLP's forward and backward, launch-bound). Each experiment
starts its jobs as separate processes (under MPS at a CUDA_MPS_ACTIVE_THREAD_PERCENTAGE,
or without MPS), waits until every one has warmed up, then counts steps in one
common window. The result is each job's step time in every mix, against the same
job alone at the same share and alone at 100%: the interference that the A100 data
cannot identify when shares sum to 100% or less.

    python benchmarks/hardware/mps_real.py --out mps.json          # orchestrator
    python benchmarks/hardware/mps_real.py --worker matmul --go F   # one job (internal)

Needs PyTorch with CUDA and ``nvidia-cuda-mps-control`` on PATH; starts its own MPS
daemon in a private pipe directory and stops it at the end. Changes no GPU setting.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(kind: str, go: Path) -> None:
    import torch

    dev = torch.device("cuda")
    if kind == "matmul":
        a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)

        def step() -> None:
            for _ in range(8):
                torch.matmul(a, b)

    elif kind == "membw":
        x = torch.empty(1 << 29, device=dev, dtype=torch.float32)  # 2 GiB
        y = torch.empty_like(x)

        def step() -> None:
            for _ in range(8):
                y.copy_(x)

    elif kind == "small":
        layers = [torch.nn.Linear(1024, 1024) for _ in range(8)]
        net = torch.nn.Sequential(*[m for lin in layers for m in (lin, torch.nn.ReLU())]).to(dev)
        opt = torch.optim.SGD(net.parameters(), lr=1e-3)
        inp = torch.randn(64, 1024, device=dev)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            net(inp).square().mean().backward()
            opt.step()

    else:
        raise SystemExit(f"unknown kind {kind}")
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    print("ready", flush=True)
    while not go.exists():
        step()
        torch.cuda.synchronize()
    t0, t1 = (float(v) for v in go.read_text().split())
    while time.time() < t0:
        step()
        torch.cuda.synchronize()
    n = 0
    start = time.time()
    while True:
        step()
        torch.cuda.synchronize()
        n += 1
        now = time.time()
        if now >= t1:
            break
    print(json.dumps({"steps": n, "window_s": now - start, "step_ms": 1000 * (now - start) / n}))


def run_mix(
    jobs: list[tuple[str, float | None]], mps_env: dict[str, str] | None, window_s: float
) -> list[dict[str, object]]:
    """Run one mix: [(kind, share or None)], all at once; return each job's step time."""
    tmp = Path(tempfile.mkdtemp(prefix="mps-go-"))
    go = tmp / "go"
    procs = []
    for kind, share in jobs:
        env = dict(os.environ)
        for k in (
            "CUDA_MPS_PIPE_DIRECTORY",
            "CUDA_MPS_LOG_DIRECTORY",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
        ):
            env.pop(k, None)
        if mps_env is not None:
            env.update(mps_env)
            if share is not None:
                env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(share)
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "--worker", kind, "--go", str(go)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    deadline = time.time() + 120
    for p in procs:
        line = p.stdout.readline() if p.stdout else ""
        if line.strip() != "ready" or time.time() > deadline:
            for q in procs:
                q.kill()
            err = p.stderr.read()[-800:] if p.stderr else ""
            raise RuntimeError(f"worker did not get ready: {line!r} {err}")
    t0 = time.time() + 0.5
    go.write_text(f"{t0} {t0 + window_s}")
    out = []
    for (kind, share), p in zip(jobs, procs, strict=True):
        stdout, stderr = p.communicate(timeout=window_s + 60)
        res = json.loads(stdout.strip().splitlines()[-1])
        res.update(kind=kind, share=share)
        out.append(res)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker")
    ap.add_argument("--go")
    ap.add_argument("--out", default="-")
    ap.add_argument("--window", type=float, default=3.0)
    ap.add_argument("--only", default="", help="comma-separated labels to run (default: all)")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, Path(args.go))
        return 0

    results: dict[str, object] = {"window_s": args.window, "experiments": []}
    exps = results["experiments"]
    assert isinstance(exps, list)

    only = {x for x in args.only.split(",") if x}

    def save() -> None:
        if args.out != "-":
            Path(args.out).write_text(json.dumps(results, indent=1))

    def record(
        label: str, jobs: list[tuple[str, float | None]], mps: dict[str, str] | None
    ) -> None:
        if only and label not in only:
            return
        t = time.time()
        try:
            rows = run_mix(jobs, mps, args.window)
            exps.append({"label": label, "mps": mps is not None, "jobs": rows})
            print(
                label,
                [(r["kind"], r["share"], round(r["step_ms"], 3)) for r in rows],
                f"({time.time() - t:.0f}s)",
                file=sys.stderr,
                flush=True,
            )
        except Exception as exc:  # noqa: BLE001 - a failed mix is a result too
            exps.append({"label": label, "mps": mps is not None, "error": str(exc)})
            print(label, "FAILED", exc, file=sys.stderr, flush=True)
        save()

    for k in ("matmul", "membw", "small"):
        record(f"solo-nomps-{k}", [(k, None)], None)

    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        results["mps_error"] = "nvidia-cuda-mps-control not on PATH"
    else:
        base = Path(tempfile.mkdtemp(prefix="miso-mps-real-"))
        mps = {
            "CUDA_MPS_PIPE_DIRECTORY": str(base / "pipe"),
            "CUDA_MPS_LOG_DIRECTORY": str(base / "log"),
        }
        (base / "pipe").mkdir()
        (base / "log").mkdir()
        env = dict(os.environ, **mps)
        r = subprocess.run([control, "-d"], env=env, capture_output=True, text=True)
        results["mps_start"] = {"rc": r.returncode, "stderr": r.stderr[-300:]}
        try:
            for k in ("matmul", "membw", "small"):
                record(f"solo-mps100-{k}", [(k, 100)], mps)
            for k in ("matmul", "membw"):
                record(f"solo-mps50-{k}", [(k, 50)], mps)
            for k in ("matmul", "membw", "small"):
                record(f"solo-mps33-{k}", [(k, 33)], mps)
            record("pair50-matmul-matmul", [("matmul", 50), ("matmul", 50)], mps)
            record("pair50-matmul-membw", [("matmul", 50), ("membw", 50)], mps)
            record("pair50-membw-membw", [("membw", 50), ("membw", 50)], mps)
            record("pair50-matmul-small", [("matmul", 50), ("small", 50)], mps)
            record(
                "triple33-matmul-membw-small", [("matmul", 33), ("membw", 33), ("small", 33)], mps
            )
            record("triple33-matmul-x3", [("matmul", 33)] * 3, mps)
            record("pair100-matmul-membw", [("matmul", 100), ("membw", 100)], mps)
            record("pair100-matmul-matmul", [("matmul", 100), ("matmul", 100)], mps)
            record("pair100-membw-membw", [("membw", 100), ("membw", 100)], mps)
            record("solo-mps14-matmul", [("matmul", 14)], mps)
            record("solo-mps14-membw", [("membw", 14)], mps)
            record(
                "triple100-matmul-membw-small",
                [("matmul", 100), ("membw", 100), ("small", 100)],
                mps,
            )
        finally:
            q = subprocess.run([control], input="quit\n", env=env, capture_output=True, text=True)
            results["mps_quit"] = {"rc": q.returncode}
            logs = base / "log" / "control.log"
            if logs.exists():
                results["mps_control_log_tail"] = logs.read_text()[-1500:]
    text = json.dumps(results, indent=1)
    if args.out == "-":
        print(text)
    else:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
