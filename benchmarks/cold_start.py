"""Cold start of ``miso --help`` and ``miso status`` against ``python -c pass``.

Shell scripts call miso often; its start-up must stay close to the interpreter's.
Each command runs in a fresh process, ``--repeat`` times, after one warm-up run
(which fills the page cache and the bytecode cache, as on a machine in use).
Prints the median and best wall time of each and the ratio to ``python -c pass``,
then the slowest imports of ``miso status`` (``python -X importtime``) and any
heavy library (numpy, scikit-learn, scipy, joblib) that a command loaded.

    python benchmarks/cold_start.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("numpy", "sklearn", "scipy", "joblib", "pandas", "torch")


def miso_argv() -> list[str]:
    """The installed console script if there is one beside this Python, else the module."""
    script = Path(sys.executable).with_name("miso")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "miso_cli"]


def timed(argv: list[str], env: dict[str, str], repeat: int) -> list[float]:
    subprocess.run(argv, env=env, capture_output=True, check=False)  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = subprocess.run(argv, env=env, capture_output=True, check=False)
        times.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.decode()[-500:]}")
    return times


def heavy_modules(code: str, env: dict[str, str]) -> list[str]:
    probe = (
        "import sys\n"
        f"{code}\n"
        f"found = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
        "print('HEAVY:' + ' '.join(found), file=sys.stderr)"
    )
    r = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False
    )
    for line in r.stderr.splitlines():
        if line.startswith("HEAVY:"):
            return line[len("HEAVY:") :].split()
    raise SystemExit(f"probe failed: {r.stderr[-500:]}")


def slowest_imports(argv: list[str], env: dict[str, str], top: int = 8) -> list[tuple[int, str]]:
    r = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    rows = []
    for line in r.stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line[len("import time:") :].split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue  # the header line
        name = parts[2]
        if name.startswith(" ") and not name.startswith("  "):  # imported by the script itself
            rows.append((int(parts[1]), name.strip()))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, MISO_STATE_DIR=tmp, NO_COLOR="1")
        env.pop("MISO_GPU", None)
        miso = miso_argv()
        cases = [
            ("python -c pass", [sys.executable, "-c", "pass"]),
            ("miso --help", [*miso, "--help"]),
            ("miso --version", [*miso, "--version"]),
            ("miso status --gpu sim:a100-40gb", [*miso, "status", "--gpu", "sim:a100-40gb"]),
        ]
        results = {name: timed(argv, env, args.repeat) for name, argv in cases}
        base = statistics.median(results["python -c pass"])
        print(f"cold start, {args.repeat} runs each ({' '.join(miso)}), wall time:")
        print(f"  {'command':36} {'median':>9} {'best':>9} {'x python':>9}")
        for name, times in results.items():
            med = statistics.median(times)
            print(f"  {name:36} {med * 1000:7.1f}ms {min(times) * 1000:7.1f}ms {med / base:8.1f}x")
        status_code = (
            "from miso_cli.cli import app\n"
            "try:\n    app(['status', '--gpu', 'sim:a100-40gb'])\n"
            "except SystemExit:\n    pass"
        )
        for label, code in (
            ("miso --help", "import miso_cli.cli"),
            ("miso status", status_code),
        ):
            heavy = heavy_modules(code, env)
            print(f"heavy libraries loaded by {label}: {', '.join(heavy) or 'none'}")
        print("slowest top-level imports of miso status (cumulative):")
        for us, name in slowest_imports(
            ["-m", "miso_cli", "status", "--gpu", "sim:a100-40gb"], env
        ):
            print(f"  {us / 1000:7.1f}ms  {name}")


if __name__ == "__main__":
    main()
