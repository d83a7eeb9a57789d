"""Cold start of ``miso --help`` and ``miso status`` against ``python -c pass``.

Shell scripts call miso often; its start-up must stay close to the interpreter's.
Each command runs in a fresh process, ``--repeat`` times, after one warm-up run
(which fills the page cache and the bytecode cache, as on a machine in use).
Prints the median and best wall time of each, the median CPU time (user + system,
which a busy machine disturbs less than wall time) and the ratio to ``python -c pass``,
then the slowest imports of ``miso status`` (``python -X importtime``) and any
heavy library (numpy, scikit-learn, scipy, joblib) that a command loaded.

``--against DIR`` compares with another source tree (an older commit, say): the two
trees' commands run in turn, each as ``python -m miso_cli`` with its own tree first on
``PYTHONPATH``, so that load from other processes falls on both alike.

    python benchmarks/cold_start.py [--repeat 20]
    git worktree add /tmp/miso-before HEAD~5
    python benchmarks/cold_start.py --against /tmp/miso-before
"""

from __future__ import annotations

import argparse
import os
import resource
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


ROOT = Path(__file__).resolve().parent.parent


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(argv: list[str], env: dict[str, str], cwd: str | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of ``argv``."""
    cpu0, t0 = _children_cpu(), time.perf_counter()
    r = subprocess.run(argv, env=env, capture_output=True, check=False, cwd=cwd)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.decode()[-500:]}")
    return wall, cpu


def timed(argv: list[str], env: dict[str, str], repeat: int) -> list[tuple[float, float]]:
    subprocess.run(argv, env=env, capture_output=True, check=False)  # warm-up
    return [run_once(argv, env) for _ in range(repeat)]


def compare(against: Path, env: dict[str, str], repeat: int) -> None:
    """This tree's commands against ``against``'s, run in turn; medians and ratios."""
    trees = {"this": ROOT, "against": against.resolve()}
    envs = {k: dict(env, PYTHONPATH=str(v)) for k, v in trees.items()}
    # Not from a source tree: `python -m` puts the working directory first on sys.path.
    cwd = env["MISO_STATE_DIR"]
    cases = [
        ("miso --help", ["--help"]),
        ("miso --version", ["--version"]),
        ("miso status --gpu sim:a100-40gb", ["status", "--gpu", "sim:a100-40gb"]),
    ]
    print(f"cold start, {repeat} runs each, in turn: this tree ({ROOT}) against {against}")
    print(f"  {'command':34} {'this wall':>10} {'cpu':>8} {'against':>10} {'cpu':>8} {'wall x':>7}")
    for name, args in cases:
        argv = [sys.executable, "-m", "miso_cli", *args]
        got: dict[str, list[tuple[float, float]]] = {k: [] for k in trees}
        for k in trees:  # warm-up: page cache and bytecode of both trees
            subprocess.run(argv, env=envs[k], capture_output=True, check=False, cwd=cwd)
        for _ in range(repeat):
            for k in trees:
                got[k].append(run_once(argv, envs[k], cwd))
        wall = {k: statistics.median(w for w, _ in v) for k, v in got.items()}
        cpu = {k: statistics.median(c for _, c in v) for k, v in got.items()}
        print(
            f"  {name:34} {wall['this'] * 1000:8.1f}ms {cpu['this'] * 1000:6.0f}ms "
            f"{wall['against'] * 1000:8.1f}ms {cpu['against'] * 1000:6.0f}ms "
            f"{wall['this'] / wall['against']:6.2f}x"
        )


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
    ap.add_argument(
        "--against",
        type=Path,
        help="another source tree of miso (e.g. a git worktree of an older commit) to "
        "compare with, run in turn with this one",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, MISO_STATE_DIR=tmp, NO_COLOR="1")
        env.pop("MISO_GPU", None)
        if args.against is not None:
            compare(args.against, env, args.repeat)
            return
        miso = miso_argv()
        cases = [
            ("python -c pass", [sys.executable, "-c", "pass"]),
            ("miso --help", [*miso, "--help"]),
            ("miso --version", [*miso, "--version"]),
            ("miso status --gpu sim:a100-40gb", [*miso, "status", "--gpu", "sim:a100-40gb"]),
        ]
        results = {name: timed(argv, env, args.repeat) for name, argv in cases}
        base = statistics.median(w for w, _ in results["python -c pass"])
        print(f"cold start, {args.repeat} runs each ({' '.join(miso)}), wall time:")
        print(f"  {'command':36} {'median':>9} {'best':>9} {'cpu':>9} {'x python':>9}")
        for name, runs in results.items():
            walls = [w for w, _ in runs]
            med, cpu = statistics.median(walls), statistics.median(c for _, c in runs)
            print(
                f"  {name:36} {med * 1000:7.1f}ms {min(walls) * 1000:7.1f}ms "
                f"{cpu * 1000:7.1f}ms {med / base:8.1f}x"
            )
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
