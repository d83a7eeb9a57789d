"""Chaos: kills, signals, driver faults and damaged files against miso's promises.

Three parts, all on the simulated GPU:

1. **Crash/resume cycles**, per policy (miso+, miso, static, mps, nopart, --layout): a
   small queue is run; at a random moment (or right after a profiling or
   reconfiguration event) miso gets kill -9, SIGINT or SIGTERM; ``miso run --resume``
   carries on, and is hit again, ``--cycles`` times; a last resume runs to the end.
   Counted: jobs lost (not finished), run twice (more than one completion in the
   log), finished early (counted finished without completing), processes leaked
   (job wrappers, jobs or MPS daemons of the state dir alive after the end), and
   resumes that failed.
2. **apply under faults and signals**: for each of 5 layout pairs, a driver fault
   (``UNKNOWN``), a kill -9 (followed by the next command's recovery) and a SIGINT at
   every mutating NVML call; each final state must be the old or the new layout,
   down to compute instances and MIG devices. ``--apply-kills`` real ``miso apply``
   processes with ``MISO_SIM_LATENCY`` are also killed with -9 at random moments.
3. **Fuzzed inputs**: ``--fuzz`` damaged files across every format miso reads
   (:mod:`miso_cli.spec.fuzzing`), counting tracebacks and hangs.

    python benchmarks/chaos.py                       # small counts, a few minutes
    python benchmarks/chaos.py --cycles 50 --fuzz 1000 --apply-kills 50   # the issue's

Prints a table per part (``--json`` for one JSON object); exits 1 if any count is
not zero.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from miso_cli.gpu.sim.simnvml import MUTATING_CALLS  # noqa: E402

SIM = ROOT / "examples" / "sim_train.py"
POLICIES = ["miso+", "miso", "static", "mps", "nopart", "--layout"]
PAIRS = [
    ("4g.20gb+2g.10gb+1g.5gb", "3g.20gb+3g.20gb"),
    ("7g.40gb", "2g.10gb+2g.10gb+3g.20gb"),
    ("3g.20gb+2g.10gb+1g.5gb+1g.5gb", "4g.20gb+1g.5gb+1g.5gb+1g.5gb"),
    ("1g.5gb+1g.5gb+1g.5gb+1g.5gb+1g.5gb+1g.5gb+1g.5gb", "7g.40gb"),
    ("4g.20gb+3g.20gb", "3g.20gb+2g.10gb+1g.5gb+1g.5gb"),
]
MUTATING = MUTATING_CALLS  # the simulated driver's own list of calls that change a GPU
TARGET_EVENTS = ("reconfiguring", "profile_level", "mps_daemon", "gpu_mode", "started")


# ------------------------------------------------------------ 1. crash/resume cycles


def _queue(path: Path, jobs: int, steps: int) -> Path:
    workloads = ["toy-mlp_32", "toy-cnn_64", "toy-bert_8", "toy-cnn_256"]
    out = ["version = 1"]
    for k in range(jobs):
        cmd = [sys.executable, str(SIM), "--workload", workloads[k % 4], "--steps", str(steps)]
        out += [
            "[[job]]",
            f'name = "j{k}"',
            f"command = {json.dumps(cmd)}",
            f"steps = {steps}",
            "[job.checkpoint]",
            'signal = "SIGUSR1"',
            'grace = "3s"',
        ]
    path.write_text("\n".join(out) + "\n")
    return path


def _miso(state: Path, args: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ, MISO_STATE_DIR=str(state), PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "miso_cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _events(state: Path) -> list[str]:
    try:
        run = (state / "runs" / "latest").read_text().strip()
        lines = (state / "runs" / run / "events.jsonl").read_text().splitlines()
    except OSError:
        return []
    out = []
    for ln in lines:
        try:
            out.append(json.loads(ln).get("event", ""))
        except ValueError:
            continue
    return out


def _leaked(state: Path) -> list[int]:
    import psutil

    mark = str(state)
    found = []
    for p in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmd = " ".join(p.info.get("cmdline") or [])
            env = p.info.get("environ") or {}
        except (psutil.Error, OSError):
            continue
        if p.pid == os.getpid():
            continue
        if (
            mark in cmd
            or env.get("MISO_STATE_DIR") == mark
            or mark in env.get("MISO_SIM_STATE", "")
        ):
            if p.status() != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
    return found


def _kill_after(
    proc: subprocess.Popen[str], state: Path, rng: random.Random, limit_s: float
) -> str:
    """Wait a random moment (or a profiling/reconfiguration event), then hit miso."""
    how = rng.choice(["kill", "SIGINT", "SIGTERM"])
    deadline = time.monotonic() + limit_s
    if rng.random() < 0.5:
        want = rng.choice(TARGET_EVENTS)
        seen = len(_events(state))
        while time.monotonic() < deadline and proc.poll() is None:
            ev = _events(state)
            if want in ev[seen:]:
                break
            time.sleep(0.05)
    else:
        time.sleep(rng.uniform(0.2, min(limit_s, 4.0)))
    if proc.poll() is not None:
        return "ended"
    if how == "kill":
        proc.kill()
    else:
        proc.send_signal(getattr(signal, how))
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return how + "-stuck"
    return how


def cycles(
    policy: str, n: int, rng: random.Random, *, jobs: int, steps: int, speedup: float
) -> dict[str, Any]:
    """``n`` kills of miso under ``policy``, in as many runs as it takes (a run that ends
    before its share of kills is followed by a fresh one); counts summed over the runs."""
    total: dict[str, Any] = {
        "policy": policy,
        "cycles": 0,
        "runs": 0,
        "hits": {},
        "jobs": 0,
        "lost": 0,
        "run_twice": 0,
        "finished_early": 0,
        "leaked": 0,
        "failed_resumes": 0,
        "last_error": [],
    }
    while total["cycles"] < n:
        r = _one_run(policy, n - total["cycles"], rng, jobs=jobs, steps=steps, speedup=speedup)
        total["runs"] += 1
        total["jobs"] += jobs
        for k in ("cycles", "lost", "run_twice", "finished_early", "leaked", "failed_resumes"):
            total[k] += r[k]
        for how, c in r["hits"].items():
            total["hits"][how] = total["hits"].get(how, 0) + c
        total["last_error"] = r["last_error"] or total["last_error"]
        if r["cycles"] == 0:  # the run ended before any kill landed: do not loop forever
            break
    return total


def _one_run(
    policy: str, n: int, rng: random.Random, *, jobs: int, steps: int, speedup: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="miso-chaos-") as tmp:
        tmpd = Path(tmp)
        state = tmpd / "state"
        q = _queue(tmpd / "queue.toml", jobs, steps)
        args = ["run", str(q), "--gpu", "sim:a100-40gb", "--speedup", str(speedup)]
        if policy == "--layout":
            args += ["--layout", "3g.20gb,2g.10gb,2g.10gb"]
        else:
            args += ["--policy", policy]
        hits: dict[str, int] = {}
        failed_resumes = 0
        proc = _miso(state, args)
        for _ in range(n):
            how = _kill_after(proc, state, rng, limit_s=6)
            hits[how] = hits.get(how, 0) + 1
            started = (state / "runs" / "latest").exists()  # killed before a run existed?
            proc = _miso(state, ["run", "--resume"] if started else args)
            if how == "ended":  # the run finished: the next kills go to a fresh run
                break
        try:
            out, err = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        if proc.returncode != 0:
            failed_resumes += 1
        time.sleep(0.5)  # let the last wrappers be reaped
        leaked = _leaked(state)
        for pid in leaked:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        lost = twice = early = 0
        try:
            run = (state / "runs" / "latest").read_text().strip()
            journal = json.loads((state / "runs" / run / "journal.json").read_text())
        except (OSError, ValueError):
            journal = {"jobs": {}}
        recs = journal.get("jobs", {})
        for name in (f"j{k}" for k in range(jobs)):
            rec = recs.get(name, {})
            try:
                log = (state / "runs" / run / "logs" / f"{name}.log").read_text(errors="replace")
            except OSError:
                log = ""
            done = log.count("sim_train: done")
            if rec.get("state") != "finished":
                lost += 1
            elif done == 0:
                early += 1
            if done > 1:
                twice += 1
        return {
            "policy": policy,
            "cycles": sum(v for k, v in hits.items() if k != "ended"),
            "hits": hits,
            "jobs": jobs,
            "lost": lost,
            "run_twice": twice,
            "finished_early": early,
            "leaked": len(leaked),
            "failed_resumes": failed_resumes,
            "last_error": (err or "").strip().splitlines()[-1:] if proc.returncode else [],
        }


# ------------------------------------------------------------ 2. apply under faults


class _Killed(BaseException):
    pass


class _Hit:
    def __init__(self, sim: Any, at: int, action: str) -> None:
        self._sim, self._at, self._action, self.n = sim, at, action, 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._sim, name)
        if name not in MUTATING:
            return attr

        def call(*a: Any, **k: Any) -> Any:
            self.n += 1
            if self.n == self._at and self._action == "kill":
                raise _Killed
            out = attr(*a, **k)
            if self.n == self._at and self._action == "SIGINT":
                os.kill(os.getpid(), signal.SIGINT)
            return out

        return call


def apply_chaos(tmp: Path) -> dict[str, Any]:
    from miso_cli.errors import MisoError
    from miso_cli.gpu import nvml as nvml_mod
    from miso_cli.gpu.apply import apply_layout, recover_unfinished, state_problems
    from miso_cli.gpu.layouts import enumerate_layouts
    from miso_cli.gpu.nvml import Driver
    from miso_cli.gpu.profiles import model
    from miso_cli.gpu.sim.simnvml import SimNvml, new_state

    lays = enumerate_layouts(model("a100-40gb"))

    def by(name: str) -> Any:
        want = sorted(name.split("+"))
        return next(x for x in lays if sorted(x.name.split("+")) == want)

    def fresh(a: Any) -> tuple[Any, Any]:
        st = new_state("a100-40gb")
        st["gpus"][0]["mig_current"] = st["gpus"][0]["mig_pending"] = True
        sim = SimNvml(nvml_mod.pynvml, state=st)
        drv = Driver(sim, simulated=True)
        apply_layout(drv, 0, a)
        return drv, sim

    def old_or_new(drv: Any, a: Any, b: Any) -> bool:
        return not state_problems(drv, 0, a) or not state_problems(drv, 0, b)

    tried = {"fault": 0, "kill": 0, "SIGINT": 0}
    wrong = {"fault": 0, "kill": 0, "SIGINT": 0}
    intent = tmp / "gpu.apply.json"
    for old, new in PAIRS:
        a, b = by(old), by(new)
        drv, sim = fresh(a)
        base = dict(sim.calls)
        sim.trace = []
        apply_layout(drv, 0, b)
        trace = list(sim.trace)
        for k, fn in enumerate(trace):  # a fault at every NVML call
            nth = base.get(fn, 0) + trace[: k + 1].count(fn)
            drv, sim = fresh(a)
            sim.inject_fault(fn, nth, "UNKNOWN")
            try:
                apply_layout(drv, 0, b, intent=intent)
            except MisoError:
                pass
            sim.clear_faults()
            tried["fault"] += 1
            wrong["fault"] += not old_or_new(drv, a, b)
        mutating = sum(1 for fn in trace if fn in MUTATING)
        for at in range(1, mutating + 1):
            drv, sim = fresh(a)
            try:
                apply_layout(Driver(_Hit(sim, at, "kill"), simulated=True), 0, b, intent=intent)
            except _Killed:
                pass
            try:
                recover_unfinished(drv, 0, intent)
            except MisoError:
                pass
            tried["kill"] += 1
            wrong["kill"] += not old_or_new(drv, a, b) or intent.exists()
            drv, sim = fresh(a)
            try:
                apply_layout(Driver(_Hit(sim, at, "SIGINT"), simulated=True), 0, b, intent=intent)
            except KeyboardInterrupt:
                pass
            tried["SIGINT"] += 1
            wrong["SIGINT"] += bool(state_problems(drv, 0, b)) or intent.exists()
    return {"pairs": len(PAIRS), "tried": tried, "wrong": wrong}


def apply_kills(n: int, rng: random.Random, latency_s: float) -> dict[str, Any]:
    """Real ``miso apply`` processes, killed with -9 mid-apply; the next one recovers."""
    from miso_cli.gpu.apply import state_problems
    from miso_cli.gpu.layouts import enumerate_layouts
    from miso_cli.gpu.nvml import open_driver
    from miso_cli.gpu.profiles import model

    lays = enumerate_layouts(model("a100-40gb"))
    wrong = recovered = 0
    with tempfile.TemporaryDirectory(prefix="miso-chaos-apply-") as tmp:
        state = Path(tmp) / "state"
        env = dict(os.environ, MISO_STATE_DIR=str(state), PYTHONPATH=str(ROOT))
        cur = lays[0]
        base = [sys.executable, "-m", "miso_cli", "apply", "--gpu", "sim:a100-40gb"]
        subprocess.run([*base, *[s.key for s in cur.slices]], env=env, capture_output=True)
        for _ in range(n):
            nxt = rng.choice(lays)
            slow = dict(env, MISO_SIM_LATENCY=str(latency_s))
            p = subprocess.Popen(
                [*base, *[s.key for s in nxt.slices]],
                env=slow,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            # Once its intent is on disk, the GPU is changing: kill it some calls later.
            deadline = time.monotonic() + 60
            while p.poll() is None and time.monotonic() < deadline:
                if any(state.glob("sim/.*.locks/*.apply.json")):
                    break
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, latency_s * 12))
            p.kill()
            p.wait()
            done = subprocess.run(
                [*base, "--json", *[s.key for s in cur.slices]],
                env=env,
                capture_output=True,
                text=True,
            )
            recovered += "interrupted" in done.stderr
            drv = open_driver("sim:a100-40gb", state)
            wrong += bool(state_problems(drv, 0, cur)) or done.returncode != 0
            drv.close()
    return {"kills": n, "recovered_by_next_command": recovered, "wrong": wrong}


# ------------------------------------------------------------ 3. fuzz


def fuzz(n: int, rng: random.Random) -> dict[str, Any]:
    from miso_cli.spec import fuzzing

    tracebacks: dict[str, int] = {}
    hangs = 0
    examples: list[str] = []
    with tempfile.TemporaryDirectory(prefix="miso-chaos-fuzz-") as tmp:
        tmpd = Path(tmp)
        seeds = fuzzing.seeds(tmpd / "seeds")
        names = list(fuzzing.TARGETS)
        for k in range(n):
            name = names[k % len(names)]
            out = fuzzing.try_input(
                fuzzing.TARGETS[name], fuzzing.mutate(seeds[name], rng), tmpd / f"{k}", budget_s=30
            )
            if not out.ok:
                hangs += out.hang
                tracebacks[name] = tracebacks.get(name, 0) + (not out.hang)
                if len(examples) < 5:
                    examples.append(f"{name}: {(out.error or '').strip().splitlines()[-1]}")
    return {
        "inputs": n,
        "tracebacks": sum(tracebacks.values()),
        "by_format": tracebacks,
        "hangs": hangs,
        "examples": examples,
    }


# ------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=2, help="kills per policy (issue: 50)")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--speedup", type=float, default=10.0)
    ap.add_argument("--fuzz", type=int, default=100, help="fuzzed inputs (issue: >= 1000)")
    ap.add_argument("--apply-kills", type=int, default=3, help="real apply processes killed")
    ap.add_argument("--latency", type=float, default=0.05, help="MISO_SIM_LATENCY for those")
    ap.add_argument("--skip", default="", help="parts to skip: cycles,apply,fuzz")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    skip = set(a.skip.split(",")) - {""}
    out: dict[str, Any] = {"seed": a.seed}
    t0 = time.monotonic()
    if "cycles" not in skip:
        out["cycles"] = []
        for pol in [p.strip() for p in a.policies.split(",") if p.strip()]:
            t = time.monotonic()
            r = cycles(pol, a.cycles, rng, jobs=a.jobs, steps=a.steps, speedup=a.speedup)
            r["seconds"] = round(time.monotonic() - t, 1)
            out["cycles"].append(r)
            print(f"  {pol}: {r}", file=sys.stderr, flush=True)
    if "apply" not in skip:
        with tempfile.TemporaryDirectory() as tmp:
            out["apply"] = apply_chaos(Path(tmp))
        out["apply_kills"] = apply_kills(a.apply_kills, rng, a.latency)
        print(f"  apply: {out['apply']} {out['apply_kills']}", file=sys.stderr, flush=True)
    if "fuzz" not in skip:
        out["fuzz"] = fuzz(a.fuzz, rng)
    out["seconds"] = round(time.monotonic() - t0, 1)
    bad = 0
    for r in out.get("cycles", []):
        bad += r["lost"] + r["run_twice"] + r["finished_early"] + r["leaked"] + r["failed_resumes"]
    if "apply" in out:
        bad += sum(out["apply"]["wrong"].values()) + out["apply_kills"]["wrong"]
    if "fuzz" in out:
        bad += out["fuzz"]["tracebacks"] + out["fuzz"]["hangs"]
    out["all_zero"] = bad == 0
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        _print(out)
    return 0 if bad == 0 else 1


def _print(out: dict[str, Any]) -> None:
    if "cycles" in out:
        print(
            f"{'policy':10} {'cycles':>6} {'lost':>5} {'twice':>6} {'early':>6} "
            f"{'leaked':>7} {'resume failed':>14} {'seconds':>8}"
        )
        for r in out["cycles"]:
            print(
                f"{r['policy']:10} {r['cycles']:>6} {r['lost']:>5} {r['run_twice']:>6} "
                f"{r['finished_early']:>6} {r['leaked']:>7} {r['failed_resumes']:>14} "
                f"{r['seconds']:>8}"
            )
    if "apply" in out:
        ap, ak = out["apply"], out["apply_kills"]
        for kind in ("fault", "kill", "SIGINT"):
            print(
                f"apply, {kind:6} at every NVML call of {ap['pairs']} layout pairs: "
                f"{ap['tried'][kind]} tried, {ap['wrong'][kind]} left neither old nor new"
            )
        print(
            f"apply, kill -9 of a real process: {ak['kills']} tried, "
            f"{ak['recovered_by_next_command']} recovered by the next command, "
            f"{ak['wrong']} wrong"
        )
    if "fuzz" in out:
        f = out["fuzz"]
        print(f"fuzzed inputs: {f['inputs']}, tracebacks: {f['tracebacks']}, hangs: {f['hangs']}")
        for e in f["examples"]:
            print(f"  {e}")
    print(f"all zero: {out['all_zero']}  ({out['seconds']} s)")


if __name__ == "__main__":
    sys.exit(main())
