"""``miso plan``: choose each GPU's MIG layout and the job on each instance, from profiles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from miso_cli.cli.common import DebugOpt, GpuOpt, JsonOpt, Result, StateDirOpt, execute
from miso_cli.errors import UsageError

LEVELS = (100, 50, 14)


def _slots(model: Any, layout: Any, assignment: dict[str, Any]) -> str:
    """The GPU's memory slots, each showing the instance (and job) that sits there."""
    cells = ["  ."] * model.memory_slots
    owner = {s: j for j, s in assignment.items()}
    for sl in layout.slices:
        label = f"{sl.slices}g"
        for k in range(sl.start, sl.start + sl.size):
            cells[k] = f"{label:>3}"
        if sl in owner:
            cells[sl.start] = f"{label:>3}"
    return "|" + "|".join(cells) + "|"


def command(
    queue: Annotated[Path, typer.Argument(help="Queue file (TOML) with the jobs to place.")],
    gpu: GpuOpt = None,
    model: Annotated[
        Optional[Path],  # noqa: UP045 - Typer needs Optional on Python 3.10
        typer.Option(
            "--model", help="Fitted predictor [default: the state dir's, else the prior]."
        ),
    ] = None,
    objective: Annotated[
        str,
        typer.Option(
            "--objective", help="miso (mean slowdown), throughput, or jct (completion time)."
        ),
    ] = "jct",
    risk: Annotated[
        float,
        typer.Option("--risk", min=0.0, help="Count predictions as mean + RISK x std. dev."),
    ] = 0.5,
    fifo: Annotated[
        bool, typer.Option("--fifo/--backfill", help="Strict queue order, or let jobs pass.")
    ] = False,
    profile: Annotated[
        bool,
        typer.Option(
            "--profile",
            help="Profile jobs without a fresh stored profile now (runs them under MPS).",
        ),
    ] = False,
    state_dir: StateDirOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Plan layouts and assignments for a queue from its jobs' profiles and predictions."""

    def body(console: Console) -> Result:
        from miso_cli.cli.common import state_dir_or_default
        from miso_cli.gpu.nvml import open_driver
        from miso_cli.planner import (
            OBJECTIVES,
            PlanGpu,
            PlanJob,
            estimate_mean_jct,
            estimate_nopart_mean_jct,
            plan,
        )
        from miso_cli.predict import load_predictor
        from miso_cli.profiles_store import fresh_profiles
        from miso_cli.queue import load_queue

        if objective not in OBJECTIVES:
            raise UsageError(f"--objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
        sdir = state_dir_or_default(state_dir)
        spec = load_queue(queue)
        drv = open_driver(gpu, sdir)
        try:
            count = drv.device_count()
            gpus = []
            for i in range(count):
                info = drv.gpu(i)
                m = drv.gpu_model(i)
                current = drv.current_layout(i) if info.mig_current else None
                gpus.append(PlanGpu(i, m, current or PlanGpu(i, m).layout))
            driver_version = drv.driver_version()
            key = gpus[0].model.key if gpus else None
            stored = fresh_profiles(sdir, spec.jobs, gpu_model=key, driver_version=driver_version)
            measured: dict[str, tuple[dict[int, float], int, float | None]] = {}
            for name, prof in stored.items():
                times = {lv: prof.step_time_s(lv) for lv in LEVELS}
                if all(t for t in times.values()):
                    n_mix = 1 + len(prof.co_runners)
                    measured[name] = (
                        {k: float(v) for k, v in times.items()},
                        n_mix,
                        prof.peak_memory_mb,
                    )
            missing = [j for j in spec.jobs if j.name not in measured]
            if missing and profile:
                from miso_cli.profiler import Profiler, ProfileSettings

                settings = ProfileSettings(mode="colocated", levels=tuple(map(float, LEVELS)))
                for prof in Profiler(drv, sdir, settings).profile(missing):
                    times = {lv: prof.step_time_s(lv) for lv in LEVELS}
                    if all(t for t in times.values()):
                        measured[prof.job] = (
                            {k: float(v) for k, v in times.items()},  # type: ignore[arg-type]
                            1 + len(prof.co_runners),
                            prof.peak_memory_mb,
                        )
                missing = [j for j in spec.jobs if j.name not in measured]
        finally:
            close = getattr(drv, "close", None)
            if close:
                close()
        if missing:
            names = ", ".join(j.name for j in missing[:5])
            raise UsageError(
                f"{queue}: no fresh profile for {len(missing)} job(s) ({names})",
                hint=f"run 'miso profile {queue}' first, or pass --profile to profile them now",
            )
        pred = load_predictor(model, key or "a100-40gb", sdir)
        jobs: list[PlanJob] = []
        for j in spec.jobs:
            mps, n_mix, peak = measured[j.name]
            memory = j.memory_mb if j.memory_mb is not None else peak
            p = pred.predict_one(mps, jobs_in_mix=n_mix, memory_mb=memory, gpu_model=gpus[0].model)
            remaining = j.steps * mps[100] if j.steps else None
            jobs.append(
                PlanJob(
                    j.name,
                    dict(p.relative),
                    dict(p.uncertainty),
                    memory_mb=memory,
                    remaining_s=remaining,
                )
            )
        result = plan(gpus, jobs, objective=objective, fifo=fifo, risk=risk)
        by_name = {j.name: j for j in jobs}
        slowdowns = [
            by_name[n].relative[s.slices] for g in result.gpus for n, s in g.assignment.items()
        ]
        data: dict[str, Any] = {
            "gpus": [g.to_json(by_name) for g in result.gpus],
            "waiting": result.waiting,
            "objective": objective,
            "policy": "miso+",
            "predicted": {
                "mean_slowdown": sum(slowdowns) / len(slowdowns) if slowdowns else None,
                "mean_jct_s": estimate_mean_jct(result, jobs),
                "nopart_mean_jct_s": estimate_nopart_mean_jct(len(gpus), jobs),
            },
            "predictor": dict(getattr(pred, "metadata", {}) or {}),
        }

        def render(out: Console) -> None:
            for g in result.gpus:
                out.print(f"GPU {g.index} ({g.model.key}): {g.layout.name}", markup=False)
                out.print("  slots " + _slots(g.model, g.layout, g.assignment), markup=False)
                for name, sl in sorted(g.assignment.items(), key=lambda kv: kv[1]):
                    rel = by_name[name].relative[sl.slices]
                    out.print(
                        f"  {sl.profile}@{sl.start:<2} {name:<24} predicted step time "
                        f"{rel:.2f}x of a whole GPU",
                        markup=False,
                    )
            if result.waiting:
                out.print("waiting: " + ", ".join(result.waiting), markup=False)
            pr = data["predicted"]
            if pr["mean_jct_s"] is not None and pr["nopart_mean_jct_s"]:
                out.print(
                    f"predicted mean completion {pr['mean_jct_s']:,.0f} s vs "
                    f"{pr['nopart_mean_jct_s']:,.0f} s with one job per whole GPU "
                    f"({pr['mean_jct_s'] / pr['nopart_mean_jct_s']:.2f}x)",
                    markup=False,
                )
            else:
                out.print("predicted mean completion: unknown (give each job 'steps')")

        return Result(data, render)

    execute("plan", body, json_out=json_out, debug=debug)
