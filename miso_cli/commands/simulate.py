"""``miso simulate``: replay a job trace under several policies on simulated GPUs.

The use case behind the command: checks the request (GPUs, policies, restart costs,
layouts against the trace), builds the predictor where a policy needs one, runs
:func:`miso_cli.sim.simulator.simulate` once per policy, adds the ratios to
``nopart`` (and, with ``bound``, to the lower bound), and writes the timeline page.
Returns a typed result and never prints; progress goes to the ``progress`` callback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miso_cli.errors import UsageError

ALL_POLICIES = ("nopart", "static", "mps", "miso", "oracle", "miso+")
MAX_TRACE_JOBS = 1000  # issue-11: see --max-jobs

# What progress reports: "predictor" (which model predicts), "policy" (one starts),
# "bound" (the lower bound is being computed), "timeline" (the page is written).
Progress = Callable[[str, str], None]


@dataclass
class SimulateRequest:
    """What to simulate: ``miso simulate``'s options, parsed but not yet checked."""

    trace: Path
    catalog: Path
    gpu: str = "sim:a100-40gbx8"
    policies: Sequence[str] = ALL_POLICIES
    model: Path | None = None  # fitted predictor for miso and miso+
    seed: int = 0
    restart_cost: str = "30"  # seconds, or "paper"
    reconfig_s: float = 5.0
    profile_s: float = 30.0
    noise: float = 0.02
    static_layout: list[str] | None = None
    timeline: Path | None = None
    max_jobs: int = MAX_TRACE_JOBS
    bound: bool = False
    mps_model: str = "optimistic"
    workers: int | None = None  # policies simulated at once; None: one per CPU


@dataclass
class SimulateReport:
    """Each policy's figures on the trace, and how they were obtained."""

    request: SimulateRequest
    gpus: list[Any]  # the simulated GPUs' models, one per GPU
    jobs: int  # how many jobs the trace has
    restart_cost: str | float
    predictor: dict[str, Any] | None
    results: list[dict[str, Any]]  # per policy: its summary and the ratios
    runs: list[tuple[str, Any]] = field(default_factory=list)  # (policy, SimResult)
    bound: dict[str, Any] | None = None
    timeline: Any = None  # what the timeline page holds, when one was written

    def to_json(self) -> dict[str, Any]:
        """The data of ``miso simulate --json``."""
        req = self.request
        data: dict[str, Any] = {
            "trace": str(req.trace),
            "catalog": str(req.catalog),
            "gpus": {"model": self.gpus[0].key, "count": len(self.gpus)},
            "seed": req.seed,
            "restart_cost": self.restart_cost,
            "reconfig_s": req.reconfig_s,
            "profile_s": req.profile_s,
            "predictor": self.predictor,
            "results": self.results,
            "mps_model": req.mps_model,
        }
        if req.timeline is not None:
            data["timeline"] = self.timeline
        if self.bound is not None:
            data["bound"] = self.bound
        return data


# Below this many jobs a trace is simulated in this process: a child process costs more
# than the simulation it would take over.
PARALLEL_MIN_JOBS = 200


def parallel_workers(asked: int | None, policies: int, jobs: int) -> int:
    """How many processes simulate the policies at once (issue 12: the six policies of a
    5,000-job trace share the machine's CPUs). ``asked`` is ``--workers`` (None: one per
    CPU this process may use); never more than the policies, and 1 for a small trace,
    where the platform cannot fork, or when this process runs other threads (a forked
    child would inherit their locks)."""
    import os
    import threading

    if asked is not None and asked < 1:
        raise UsageError(f"--workers: must be at least 1, got {asked}")
    if asked is None:
        try:
            asked = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            asked = os.cpu_count() or 1
        if jobs < PARALLEL_MIN_JOBS:
            return 1
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods() or threading.active_count() > 1:
        return 1
    return max(1, min(asked, policies))


def _one_by_one(one: Callable[[int], Any], names: list[str], progress: Progress) -> list[Any]:
    out = []
    for i, name in enumerate(names):
        progress("policy", f"simulating {name} ...")
        out.append(one(i))
    return out


# The simulation a forked child runs: set just before the pool forks, so the children
# inherit the policies, trace and predictor as they are (nothing of them is pickled).
_FORKED: Callable[[int], Any] | None = None


def _run_forked(index: int) -> Any:
    assert _FORKED is not None
    return _FORKED(index)


def _child_ignores_interrupts() -> None:
    """A simulation process leaves Ctrl-C to the command, which stops it (a child that
    took the interrupt itself would leave its pool waiting for it for ever)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _in_processes(one: Callable[[int], Any], count: int, workers: int) -> list[Any]:
    """``[one(0), ..., one(count - 1)]``, computed by ``workers`` forked processes; the
    simulations are seeded and independent, so the results are those of one process.
    Interrupted (Ctrl-C, SIGTERM turned into an exception) or failing, the processes are
    stopped before the exception goes on."""
    import multiprocessing
    import signal
    import threading

    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # as Ctrl-C: the processes are stopped, exit code 130

    global _FORKED
    _FORKED = one
    ctx = multiprocessing.get_context("fork")
    pool = ctx.Pool(workers, initializer=_child_ignores_interrupts)
    before = None
    if threading.current_thread() is threading.main_thread():
        before = signal.signal(signal.SIGTERM, terminated)
    try:
        out = list(pool.imap(_run_forked, range(count)))
        pool.close()
        return out
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
        _FORKED = None
        if before is not None:
            signal.signal(signal.SIGTERM, before)


def simulated_gpus(spec: str) -> list[Any]:
    """The GPU models of ``sim:MODEL[xN]``, one per GPU; anything else is a UsageError."""
    from miso_cli.gpu.profiles import model
    from miso_cli.gpu.sim.simnvml import SimSpecError, parse_spec

    if not spec.startswith("sim:"):
        raise UsageError(
            f"--gpu {spec}: simulate needs simulated GPUs",
            hint="e.g. --gpu sim:a100-40gbx8",
        )
    try:
        key, count = parse_spec(spec)
    except SimSpecError as exc:
        raise UsageError(f"--gpu: {exc}") from None
    return [model(key)] * count


def restart_costs(text: str) -> str | float:
    """``--restart-cost``: seconds per restart, or ``paper`` for the paper's per-family costs."""
    if text == "paper":
        return "paper"
    try:
        value = float(text)
    except ValueError:
        raise UsageError(
            f"--restart-cost: {text!r} is neither seconds nor 'paper'",
        ) from None
    if not value >= 0:
        raise UsageError(f"--restart-cost: must be >= 0 seconds, got {text}")
    return value


def check_layouts(
    names: list[str], policies: list[Any], gpus: list[Any], given: bool, jobs: list[Any], cat: Any
) -> None:
    """Before any simulation runs: a fixed-layout policy's layout must fit the simulated GPUs,
    and every job of the trace must fit one of its instances (else it would wait forever)."""
    from miso_cli.gpu.layouts import LayoutError
    from miso_cli.policy.core import GpuView
    from miso_cli.policy.simple import FixedLayout

    for name, pol in zip(names, policies, strict=True):
        if not isinstance(pol, FixedLayout):
            continue
        for i, gpu_model in enumerate(gpus):
            where = "--static-layout" if given else f"policy {name}: its default layout"
            try:
                layout = pol.layout_for(GpuView(index=i, model=gpu_model))
            except LayoutError as exc:
                raise UsageError(
                    f"{where}: {exc}",
                    hint=f"'miso layouts --model {gpu_model.key}' lists what fits; "
                    f"or leave {name} out of --policy",
                ) from None
            if layout is None:
                continue
            sizes = {s.slices for s in layout.slices}
            for job in jobs:
                if not any(cat[job.workload].fits(g) for g in sizes):
                    raise UsageError(
                        f"{where}: trace job {job.name} ({job.workload}) fits no instance of "
                        f"{layout.name} on {gpu_model.key}, so it would wait forever",
                        hint=f"give a layout with a larger instance, or leave {name} out of "
                        "--policy",
                    )


def make_policy(name: str, static_layout: list[str] | None, profile_s: float) -> Any:
    """The policy ``name`` from the registry, with the options that apply to it."""
    from miso_cli.policy import registry

    if name == "static" and static_layout:
        return registry.get(name, layout=static_layout)
    if name in ("miso", "miso+"):
        return registry.get(name, profile_s=profile_s)
    return registry.get(name)


def simulate_trace(
    req: SimulateRequest,
    state_dir: Callable[[], Path],
    progress: Progress = lambda kind, text: None,
) -> SimulateReport:
    """Simulate ``req.trace`` under each of ``req.policies``; the figures, compared.

    ``state_dir`` gives the state directory (asked only when a policy needs the
    predictor: its fitted model is kept there). Bad options are UsageErrors named by
    option, bad files BadInput naming the file.
    """
    from miso_cli.commands import require_finite
    from miso_cli.sim.simulator import SimConfig, load_trace, make_predict, simulate
    from miso_cli.spec.catalog import load_catalog

    require_finite(reconfig_s=req.reconfig_s, profile_s=req.profile_s, noise=req.noise)
    names = [p.strip() for p in req.policies if p.strip()]
    if not names:
        raise UsageError("--policy: name at least one policy")
    if len(set(names)) != len(names):
        raise UsageError("--policy: a policy is named twice")
    gpus = simulated_gpus(req.gpu)
    costs = restart_costs(req.restart_cost)
    layout = req.static_layout
    policies = [make_policy(n, layout, req.profile_s) for n in names]
    cat = load_catalog(req.catalog)
    jobs = load_trace(req.trace, cat)
    if len(jobs) > req.max_jobs:  # issue-11: a clear limit, not a simulation of hours
        raise UsageError(
            f"{req.trace}: {len(jobs)} jobs; simulate takes at most {req.max_jobs}",
            hint="pass --max-jobs N to allow more (a 500-job burst takes about half a "
            "minute per policy), or split the trace",
        )
    check_layouts(names, policies, gpus, given=layout is not None, jobs=jobs, cat=cat)
    predict = None
    predictor_meta: dict[str, Any] | None = None
    if any(getattr(p, "knowledge", "none") == "profile" for p in policies):
        predict, predictor_meta = make_predict(req.model, gpus[0], state_dir())
        from miso_cli.predict import predictor_line  # issue-15b: say which model predicts

        progress("predictor", predictor_line(predictor_meta))
    from miso_cli.gpu.sim.simmps import MPS_MODELS  # issue-12

    if req.mps_model not in MPS_MODELS:  # issue-12
        raise UsageError(f"--mps-model: {req.mps_model!r} is not one of {', '.join(MPS_MODELS)}")
    config = SimConfig(
        mps_model=req.mps_model,  # issue-12
        restart_costs=costs,
        reconfig_s=req.reconfig_s,
        profile_noise=req.noise,
        seed=req.seed,
    )
    report = SimulateReport(req, gpus, len(jobs), costs, predictor_meta, [])

    def one(index: int) -> Any:
        return simulate(jobs, cat, gpus, policies[index], predict=predict, config=config)

    workers = parallel_workers(req.workers, len(names), len(jobs))
    if workers > 1:
        progress("policy", f"simulating {', '.join(names)} in {workers} processes ...")
        runs = _in_processes(one, len(names), workers)
    else:
        runs = _one_by_one(one, names, progress)
    for name, res in zip(names, runs, strict=True):
        report.runs.append((name, res))  # issue-15: kept for the timeline
        row = res.summary()
        row["policy"] = name
        report.results.append(row)
    base = next((r for r in report.results if r["policy"] == "nopart"), None)
    for r in report.results:
        for key in ("mean_jct_s", "makespan_s"):
            ratio = None
            if base and base[key] and r[key] is not None:
                ratio = r[key] / base[key]
            r[key.replace("_s", "") + "_vs_nopart"] = ratio
    # issue-12: the lower bound on mean JCT and each policy's ratio to it.
    if req.bound:
        from miso_cli.planning.bound import trace_bound

        progress("bound", "computing the lower bound ...")
        lower = trace_bound(
            jobs, cat, len(gpus), oversubscribed=True, mps_model=req.mps_model
        ).to_json()
        lower["mps_model"] = req.mps_model
        for r in report.results:
            ok = r["mean_jct_s"] is not None and lower["mean_jct_s"]
            r["mean_jct_vs_bound"] = r["mean_jct_s"] / lower["mean_jct_s"] if ok else None
        report.bound = lower
    if req.timeline is not None:  # issue-15: the timeline page
        from miso_cli.operate.html import write_simulation

        data = report.to_json()  # the page carries the figures as they are so far
        data.pop("timeline", None)
        data.pop("bound", None)
        report.timeline = write_simulation(
            req.timeline, report.runs, gpus, [j.name for j in jobs], data
        )
        progress("timeline", f"timeline: {req.timeline}")
    return report
