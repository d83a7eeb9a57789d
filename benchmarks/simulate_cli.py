"""``miso simulate`` as a user runs it, on the generated 5,000-job / 64-GPU trace (issue 12).

    python benchmarks/simulate_cli.py [--condition big] [--jobs 5000] \
        [--policies nopart,static,mps,miso,oracle,miso+] [--workers N]

Writes the trace of ``benchmarks/simulate.py --suite``'s condition (``big``: 5,000 jobs on
64 A100s, paper-like arrivals per GPU; ``--jobs`` keeps a prefix) to a temporary CSV, then
times one ``miso simulate --json`` of all the policies through the command line, in a
child process, and prints the wall time, the peak resident memory of the largest process
(the command or one of its simulation processes) and each policy's mean JCT. Aim: all six
policies in under 2 minutes on a 2-core machine, under 500 MB. Requires ``../shared``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from simulate import POLICIES, _catalog, suite_trace  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "a100-40gb")
    ap.add_argument("--condition", default="big")
    ap.add_argument("--jobs", type=int, default=0, help="keep only the first N jobs")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    catalog = args.data / "catalog.csv"
    trace, gpus = suite_trace(_catalog(catalog), args.condition)
    if args.jobs:
        trace = trace[: args.jobs]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.csv"
        lines = ["job,arrival_s,workload,duration_7g_s"]
        lines += [f"{j.name},{j.arrival_s},{j.workload},{j.duration_7g_s}" for j in trace]
        path.write_text("\n".join(lines) + "\n")
        cmd = [
            sys.executable, "-m", "miso_cli", "simulate", "--json",
            "--trace", str(path), "--catalog", str(catalog),
            "--gpu", f"sim:a100-40gbx{gpus}", "--policy", args.policies,
            "--max-jobs", str(len(trace)), "--state-dir", str(Path(tmp) / "state"),
        ]  # fmt: skip
        if args.workers:
            cmd += ["--workers", str(args.workers)]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"miso simulate exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    data = json.loads(done.stdout)
    data = data.get("data", data)
    print(f"{len(trace)} jobs / {gpus} GPUs, policies {args.policies}")
    print(f"wall {wall:.1f} s, peak resident memory of one process {peak:.0f} MB")
    for r in data["results"]:
        print(f"  {r['policy']:8s} mean JCT {r['mean_jct_s']:8.0f} s")


if __name__ == "__main__":
    main()
