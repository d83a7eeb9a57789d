"""``miso plan``: choose each GPU's MIG layout and the job on each instance, from profiles."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from miso_cli.cli.common import DebugOpt, GpuOpt, JsonOpt, Result, StateDirOpt, execute
from miso_cli.cli.profile import ResetLayoutOpt, layout_consent


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
    reset_layout: ResetLayoutOpt = False,
    state_dir: StateDirOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Plan layouts and assignments for a queue from its jobs' profiles and predictions.

    Predicted times are seconds of GPU time at the profiled speed; on a simulated GPU
    they are the catalog's seconds, which synthetic jobs run --speedup times faster.
    The predictor used (fitted here, the shipped prior, or both blended) is named on
    stderr and in the JSON's "predictor".
    """

    def body(console: Console) -> Result:
        from miso_cli.cli.common import require_finite, state_dir_or_default
        from miso_cli.commands.plan import queue_plan
        from miso_cli.spec.queue import load_queue

        require_finite(risk=risk)
        spec = load_queue(queue)
        sdir = state_dir_or_default(state_dir)
        if profile:  # here, so that an idle split GPU can be offered back whole (and restored)
            _profile_missing(spec, gpu, sdir, layout_consent(reset_layout, json_out))
        planned = queue_plan(
            spec,
            gpu,
            sdir,
            model=model,
            objective=objective,
            risk=risk,
            fifo=fifo,
            profile=profile,
        )
        data, result, by_name = planned.data, planned.result, planned.jobs
        simulated = bool(gpu and gpu.strip().lower().startswith("sim:"))
        pr = data["predicted"]
        # Seconds of GPU time at the profiled speed. On a simulated GPU those are the
        # catalog's seconds: a run of synthetic jobs takes 1/--speedup of them in wall time.
        pr["time_base"] = "catalog" if simulated else "gpu"
        pr["unknown_reason"] = (
            _unknown_reason(spec, result, by_name) if pr["mean_jct_s"] is None else None
        )
        predictor = data.get("predictor") or {}

        def render(out: Console) -> None:
            from miso_cli.cli.common import stderr_console

            if predictor.get("description"):
                stderr_console().print(
                    f"predictor: {predictor['description']}", markup=False, soft_wrap=True
                )
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
            unit = "s of catalog time" if simulated else "s"
            if pr["mean_jct_s"] is not None and pr["nopart_mean_jct_s"]:
                out.print(
                    f"predicted mean completion {pr['mean_jct_s']:,.0f} {unit} vs "
                    f"{pr['nopart_mean_jct_s']:,.0f} {unit} with one job per whole GPU "
                    f"({pr['mean_jct_s'] / pr['nopart_mean_jct_s']:.2f}x)",
                    markup=False,
                )
                if simulated:
                    out.print(
                        "  (simulated GPU: synthetic jobs run --speedup times faster than the "
                        f"catalog, so miso run at the default x10 takes about "
                        f"{pr['mean_jct_s'] / 10:,.1f} s of wall time)",
                        markup=False,
                    )
            else:
                out.print(f"predicted mean completion: unknown ({pr['unknown_reason']})")

        return Result(data, render)

    execute("plan", body, json_out=json_out, debug=debug)


def _profile_missing(spec: Any, gpu: str | None, sdir: Path, consent: Any) -> None:
    """Profile (co-located, 100/50/14 %) the jobs without a fresh stored profile."""
    from miso_cli.cli.profile import _ProgressView
    from miso_cli.commands.profile import profile_queue
    from miso_cli.gpu.nvml import open_driver
    from miso_cli.runtime.profiler import ProfileSettings
    from miso_cli.spec.profiles_store import fresh_profiles

    levels = (100.0, 50.0, 14.0)
    drv = open_driver(gpu, sdir)
    try:
        if not drv.device_count():
            return
        fresh = fresh_profiles(
            sdir,
            spec.jobs,
            gpu_model=drv.gpu_model(0).key,
            driver_version=drv.driver_version(),
            levels=levels,
        )
        missing = [j for j in spec.jobs if j.name not in fresh]
        if not missing:
            return
        settings = ProfileSettings(mode="colocated", levels=levels)
        with _ProgressView(len(levels), settings.min_steps) as view:
            profile_queue(drv, missing, sdir, settings, sink=view.sink, consent=consent)
    finally:
        drv.close()


def short_list(names: Sequence[str], limit: int = 5) -> str:
    """``a, b, c, d, e, ... (7 in all)``: a list cut short says so."""
    shown = ", ".join(names[:limit])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > limit else shown


def _unknown_reason(spec: Any, result: Any, jobs: dict[str, Any]) -> str:
    """Why the plan has no predicted completion time, naming the jobs."""
    no_steps = [j.name for j in spec.jobs if not j.steps]
    if no_steps:
        verb = "has" if len(no_steps) == 1 else "have"
        return f"give each job 'steps': {short_list(no_steps)} {verb} none"
    stuck = [
        n
        for n in result.waiting
        if not any(jobs[n].fits(g.model, s.slices) for g in result.gpus for s in g.layout.slices)
    ]
    if stuck:
        return (
            f"no instance of this layout fits waiting {short_list(stuck)}: it starts after a "
            "re-plan, which this estimate does not cover"
        )
    return "a waiting job fits no instance that frees up in this layout"
