"""``miso plan``: choose each GPU's MIG layout and the job on each instance, from profiles."""

from __future__ import annotations

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
        from miso_cli.commands.plan import plan_queue
        from miso_cli.spec.queue import load_queue

        require_finite(risk=risk)
        spec = load_queue(queue)
        sdir = state_dir_or_default(state_dir)
        if profile:  # here, so that an idle split GPU can be offered back whole (and restored)
            _profile_missing(spec, gpu, sdir, layout_consent(reset_layout, json_out))
        planned = plan_queue(
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
        simulated = planned.simulated
        pr = data["predicted"]
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
    from miso_cli.commands.profile import missing_profile_settings, profile_missing

    settings = missing_profile_settings()
    with _ProgressView(len(settings.levels), settings.min_steps) as view:
        profile_missing(gpu, spec.jobs, sdir, sink=view.sink, consent=consent)
