"""``miso simulate``: replay a job trace under several policies on simulated GPUs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from miso_cli.cli.common import DebugOpt, JsonOpt, Result, StateDirOpt, execute
from miso_cli.errors import UsageError

ALL_POLICIES = ("nopart", "static", "mps", "miso", "oracle", "miso+")


MAX_TRACE_JOBS = 1000  # issue-11: see --max-jobs


def _gpus(spec: str) -> list[Any]:
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


def _restart_costs(text: str) -> str | float:
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


def _check_layouts(
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


def _policy(name: str, static_layout: list[str] | None, profile_s: float) -> Any:
    from miso_cli.policy import registry

    if name == "static" and static_layout:
        return registry.get(name, layout=static_layout)
    if name in ("miso", "miso+"):
        return registry.get(name, profile_s=profile_s)
    return registry.get(name)


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
    state_dir: StateDirOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Compare scheduling policies on a job trace, on a virtual clock."""

    def body(console: Console) -> Result:
        from miso_cli.cli.common import require_finite, state_dir_or_default, stderr_console
        from miso_cli.sim.simulator import SimConfig, load_trace, make_predict, simulate
        from miso_cli.spec.catalog import load_catalog

        require_finite(reconfig_s=reconfig_s, profile_s=profile_s, noise=noise)
        names = [p.strip() for p in policy.split(",") if p.strip()]
        if not names:
            raise UsageError("--policy: name at least one policy")
        if len(set(names)) != len(names):
            raise UsageError("--policy: a policy is named twice")
        gpus = _gpus(gpu)
        costs = _restart_costs(restart_cost)
        layout = [p.strip() for p in static_layout.split(",")] if static_layout else None
        policies = [_policy(n, layout, profile_s) for n in names]
        cat = load_catalog(catalog)
        jobs = load_trace(trace, cat)
        if len(jobs) > max_jobs:  # issue-11: a clear limit, not a simulation of hours
            raise UsageError(
                f"{trace}: {len(jobs)} jobs; simulate takes at most {max_jobs}",
                hint="pass --max-jobs N to allow more (a 500-job burst takes about half a "
                "minute per policy), or split the trace",
            )
        _check_layouts(names, policies, gpus, given=layout is not None, jobs=jobs, cat=cat)
        predict = None
        predictor_meta: dict[str, Any] | None = None
        if any(getattr(p, "knowledge", "none") == "profile" for p in policies):
            predict, predictor_meta = make_predict(model, gpus[0], state_dir_or_default(state_dir))
            from miso_cli.predict import predictor_line  # issue-15b: say which model predicts

            stderr_console().print(predictor_line(predictor_meta), markup=False, soft_wrap=True)
        from miso_cli.gpu.sim.simmps import MPS_MODELS  # issue-12

        if mps_model not in MPS_MODELS:  # issue-12
            raise UsageError(f"--mps-model: {mps_model!r} is not one of {', '.join(MPS_MODELS)}")
        config = SimConfig(
            mps_model=mps_model,  # issue-12
            restart_costs=costs,
            reconfig_s=reconfig_s,
            profile_noise=noise,
            seed=seed,
        )
        progress = stderr_console()
        results = []
        sims = []  # issue-15: kept for --timeline
        for name, pol in zip(names, policies, strict=True):
            progress.print(f"simulating {name} ...", style="dim", markup=False)
            res = simulate(jobs, cat, gpus, pol, predict=predict, config=config)
            sims.append((name, res))
            row = res.summary()
            row["policy"] = name
            results.append(row)
        base = next((r for r in results if r["policy"] == "nopart"), None)
        for r in results:
            for key in ("mean_jct_s", "makespan_s"):
                ratio = None
                if base and base[key] and r[key] is not None:
                    ratio = r[key] / base[key]
                r[key.replace("_s", "") + "_vs_nopart"] = ratio
        # issue-12: the lower bound on mean JCT and each policy's ratio to it.
        lower = None
        if bound:
            from miso_cli.planning.bound import trace_bound

            progress.print("computing the lower bound ...", style="dim", markup=False)
            lower = trace_bound(
                jobs, cat, len(gpus), oversubscribed=True, mps_model=mps_model
            ).to_json()
            lower["mps_model"] = mps_model
            for r in results:
                ok = r["mean_jct_s"] is not None and lower["mean_jct_s"]
                r["mean_jct_vs_bound"] = r["mean_jct_s"] / lower["mean_jct_s"] if ok else None
        data: dict[str, Any] = {
            "trace": str(trace),
            "catalog": str(catalog),
            "gpus": {"model": gpus[0].key, "count": len(gpus)},
            "seed": seed,
            "restart_cost": costs,
            "reconfig_s": reconfig_s,
            "profile_s": profile_s,
            "predictor": predictor_meta,
            "results": results,
            "mps_model": mps_model,  # issue-12
        }
        if timeline is not None:  # issue-15: the timeline page
            from miso_cli.operate.html import write_simulation

            data["timeline"] = write_simulation(timeline, sims, gpus, [j.name for j in jobs], data)
            progress.print(f"timeline: {timeline}", markup=False)
        if lower is not None:  # issue-12
            data["bound"] = lower

        def render(out: Console) -> None:
            table = Table(
                title=f"{len(jobs)} jobs on {len(gpus)} x {gpus[0].key} (times in s; "
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
                table.add_column(
                    col, justify="left" if k == 0 else "right", min_width=width, no_wrap=True
                )
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

        return Result(data, render)

    execute("simulate", body, json_out=json_out, debug=debug)


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v + 0.0:,.0f}".replace("-0", "0")


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"
