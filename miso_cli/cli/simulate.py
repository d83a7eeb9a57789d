"""``miso simulate``: replay a job trace under several policies on simulated GPUs.

Parses the options, calls :func:`miso_cli.commands.simulate.simulate_trace`, renders
its report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from miso_cli.cli.common import DebugOpt, JsonOpt, Result, StateDirOpt, execute
from miso_cli.commands.simulate import ALL_POLICIES, MAX_TRACE_JOBS


def command(
    trace: Annotated[
        Path, typer.Option("--trace", help="Job trace CSV: job,arrival_s,workload,duration_7g_s.")
    ],
    catalog: Annotated[
        Path,
        typer.Option("--catalog", help="Workload catalog CSV: step times per slice and MPS share."),
    ],
    gpu: Annotated[
        str, typer.Option("--gpu", help="Simulated GPUs, e.g. sim:a100-40gbx8 (8 GPUs).")
    ] = "sim:a100-40gbx8",
    policy: Annotated[
        str,
        typer.Option(
            "--policy", help="Comma-separated policies to compare (first is not special)."
        ),
    ] = ",".join(ALL_POLICIES),
    model: Annotated[
        Optional[Path],  # noqa: UP045 - Typer needs Optional on Python 3.10
        typer.Option(
            "--model",
            help="Fitted predictor for miso and miso+ [default: the state dir's, else the prior].",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the measurement noise.")] = 0,
    restart_cost: Annotated[
        str,
        typer.Option(
            "--restart-cost",
            help="Checkpoint/restart seconds per job, or 'paper' for the MISO paper's "
            "per-family costs.",
        ),
    ] = "30",
    reconfig_s: Annotated[
        float, typer.Option("--reconfig-s", min=0.0, help="Seconds to create MIG instances.")
    ] = 5.0,
    profile_s: Annotated[
        float,
        typer.Option("--profile-s", min=1.0, help="Length of an MPS profiling phase (seconds)."),
    ] = 30.0,
    noise: Annotated[
        float,
        typer.Option(
            "--noise", min=0.0, max=0.5, help="Relative noise of measured MPS step times."
        ),
    ] = 0.02,
    static_layout: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--static-layout",
            help="Layout of the static policy, e.g. 3g.20gb,2g.10gb,2g.10gb [default: the paper's "
            "3g+2g+2g on 7-slice GPUs, 2g+1g+1g on the A30].",
        ),
    ] = None,
    # issue-15: the timeline page
    timeline: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--timeline",
            help="Write each policy's timeline (GPU lanes, layouts, jobs on their instances, "
            "reconfigurations, profiling) as one self-contained HTML page.",
        ),
    ] = None,
    max_jobs: Annotated[  # issue-11: bounded work for any trace
        int,
        typer.Option(
            "--max-jobs",
            min=1,
            help="Refuse a trace of more jobs than this (the work grows faster than the "
            "number of jobs waiting at once).",
        ),
    ] = MAX_TRACE_JOBS,
    bound: Annotated[  # issue-12: the lower bound (miso_cli/planning/bound.py)
        bool,
        typer.Option(
            "--bound",
            help="Also compute a lower bound on mean JCT (a fluid LP relaxation) and each "
            "policy's distance to it.",
        ),
    ] = False,
    mps_model: Annotated[  # issue-12: miso_cli/gpu/sim/simmps.py
        str,
        typer.Option(
            "--mps-model",
            help="MPS interference when shares sum to 100% or less: optimistic (none), "
            "pessimistic (no better than MIG) or measured (fitted to H200 mixes); see "
            "miso_cli/gpu/sim/simmps.py.",
        ),
    ] = "optimistic",
    workers: Annotated[  # issue-12: the policies of a large trace share the CPUs
        Optional[int],  # noqa: UP045
        typer.Option(
            "--workers",
            min=1,
            help="Simulate this many policies at once, each in its own process "
            "[default: one per CPU, for traces of 200 jobs or more].",
        ),
    ] = None,
    state_dir: StateDirOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Compare scheduling policies on a job trace, on a virtual clock."""

    def body(console: Console) -> Result:
        from miso_cli.cli.common import state_dir_or_default, stderr_console
        from miso_cli.commands.simulate import SimulateRequest, simulate_trace

        req = SimulateRequest(
            trace=trace,
            catalog=catalog,
            gpu=gpu,
            policies=policy.split(","),
            model=model,
            seed=seed,
            restart_cost=restart_cost,
            reconfig_s=reconfig_s,
            profile_s=profile_s,
            noise=noise,
            static_layout=[p.strip() for p in static_layout.split(",")] if static_layout else None,
            timeline=timeline,
            max_jobs=max_jobs,
            bound=bound,
            mps_model=mps_model,
            workers=workers,
        )
        stderr = stderr_console()

        def progress(kind: str, text: str) -> None:
            style = "dim" if kind in ("policy", "bound") else None
            stderr.print(text, style=style, markup=False, soft_wrap=kind == "predictor")

        report = simulate_trace(req, lambda: state_dir_or_default(state_dir), progress)
        return Result(report.to_json(), lambda out: _render(out, report))

    execute("simulate", body, json_out=json_out, debug=debug)


def _render(out: Console, report: Any) -> None:
    from rich import box
    from rich.table import Table

    results, lower, gpus = report.results, report.bound, report.gpus
    table = Table(
        title=f"{report.jobs} jobs on {len(gpus)} x {gpus[0].key} (times in s; "
        "x = ratio to nopart)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
    )
    heads = ("policy", "JCT", "x", "p95", "queue", "makespan", "x")
    heads += ("reconf", "migr", "util")
    rows = [
        (
            r["policy"],
            _num(r["mean_jct_s"]),
            _ratio(r["mean_jct_vs_nopart"]),
            _num(r["p95_jct_s"]),
            _num(r["mean_queue_s"]),
            _num(r["makespan_s"]),
            _ratio(r["makespan_vs_nopart"]),
            str(r["reconfigurations"]),
            str(r["migrations"]),
            "-" if r["slice_utilisation"] is None else f"{r['slice_utilisation']:.0%}",
        )
        for r in results
    ]
    for k, col in enumerate(heads):
        width = max([len(col)] + [len(row[k]) for row in rows])
        table.add_column(col, justify="left" if k == 0 else "right", min_width=width, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    out.print(table)
    if lower is not None:  # issue-12
        out.print(
            f"lower bound on mean JCT: {_num(lower['mean_jct_s'])} s (no schedule does "
            "better; "
            + ", ".join(f"{r['policy']} {_ratio(r['mean_jct_vs_bound'])}" for r in results)
            + ")"
        )


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v + 0.0:,.0f}".replace("-0", "0")


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"
