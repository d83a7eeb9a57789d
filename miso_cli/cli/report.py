"""``miso report``: how a run (or a simulation) went, whether partitioning paid, a timeline."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from miso_cli.cli.common import (
    DebugOpt,
    JsonOpt,
    Result,
    StateDirOpt,
    execute,
    require_finite,
    state_dir_or_default,
)

PriceOpt = Annotated[
    Optional[float],  # noqa: UP045 - Typer needs Optional on Python 3.10 runtimes
    typer.Option(
        "--price",
        min=0.0,
        help="Price of one GPU-hour, for the cost [default: price_per_gpu_hour in "
        "<state dir>/config.toml].",
    ),
]


def command(
    run: Annotated[
        Optional[str],  # noqa: UP045
        typer.Argument(
            help="The run (an id or a unique prefix) [default: the latest].", show_default=False
        ),
    ] = None,
    sim: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--sim", help="Report on the output of 'miso simulate --json' instead."),
    ] = None,
    price: PriceOpt = None,
    html: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--html",
            help="Write the timeline as one self-contained HTML page (no network, printable).",
        ),
    ] = None,
    timeline: Annotated[
        bool, typer.Option("--timeline", help="Print a compact text timeline too.")
    ] = False,
    state_dir: StateDirOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Report a run, finished or running: mean JCT, makespan, slice utilisation,
    GPU-hours, reconfigurations, migrations, restart overhead, profiling time; the time
    and GPU-hours saved against one job per whole GPU, estimated from each job's measured
    speed (the method is printed); the cost at --price per GPU-hour.

    With --sim, the same for each policy of a 'miso simulate --json' file, against its
    simulated nopart result.

    $ miso report --price 2.5

    $ miso report --html run.html

    $ miso simulate --trace t.csv --catalog c.csv --json > sim.json; miso report --sim sim.json
    """

    def body(console: Console) -> Result:
        from miso_cli.commands import report as use

        require_finite(price=price)
        state = state_dir_or_default(state_dir)
        per_hour, currency = use.price(state, price)
        if sim is not None:
            use.check_report_request(run, sim, html, timeline)
            data = use.report_simulation(sim, per_hour=per_hour, currency=currency)
            return Result(data=data, render=lambda out: render_sim(out, data))
        width = None
        if timeline:
            cols = console.width if console.is_terminal else shutil.get_terminal_size().columns
            width = max(60, cols)
        rep = use.report_run(
            state, run, per_hour=per_hour, currency=currency, html=html, timeline_width=width
        )
        data, text = rep.to_json(), rep.timeline
        return Result(data=data, render=lambda out: render_run(out, data, text))

    execute("report", body, json_out=json_out, debug=debug)


def _pairs(out: Console, pairs: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in pairs)
    for k, v in pairs:
        out.print(f"  {k:<{width}}  {v}", markup=False, highlight=False, soft_wrap=True)


def render_run(out: Console, data: dict[str, Any], text: list[str] | None) -> None:
    from miso_cli.operate.accounting import summary_pairs

    out.print(
        f"run {data['run_id']}: policy {data['policy']}, {data['status']}"
        + (f", on {data['gpu_spec']}" if data.get("gpu_spec") else ""),
        markup=False,
        soft_wrap=True,
    )
    _pairs(out, summary_pairs(data))
    base = data["baseline"]
    out.print(f"  how the baseline was estimated: {base['method']}.", markup=False, soft_wrap=True)
    for j in base["jobs"]:
        from miso_cli.operate.timeline import fmt_s

        secs = "?" if j["whole_gpu_s"] is None else fmt_s(j["whole_gpu_s"])
        out.print(
            f"    {j['name']}: {secs} on a whole GPU ({j['basis']})", markup=False, soft_wrap=True
        )
    if base["left_out"]:
        out.print(
            f"  left out of the baseline (no step time): {', '.join(base['left_out'])}",
            markup=False,
            soft_wrap=True,
        )
    if text:
        out.print()
        for line in text:
            out.print(line, markup=False, highlight=False, soft_wrap=True)
    if data.get("html"):
        out.print(f"timeline: {data['html']}", markup=False, soft_wrap=True)


def render_sim(out: Console, data: dict[str, Any]) -> None:
    from miso_cli.operate.accounting import summary_pairs

    gpus = data.get("gpus") or {}
    out.print(
        f"simulation of {data.get('trace')} on {gpus.get('count')} x {gpus.get('model')}; "
        f"baseline: {data['baseline']['method']}",
        markup=False,
        soft_wrap=True,
    )
    for row in data["policies"]:
        out.print(f"{row['policy']}:", markup=False)
        report = {**row, "baseline": {"estimated": False, **_base(data, row)}}
        _pairs(out, summary_pairs(report))


def _base(data: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    nopart = next((p for p in data["policies"] if p["policy"] == "nopart"), None)
    if nopart is None:
        return {}
    s = nopart["summary"]
    return {"makespan_s": s.get("makespan_s"), "mean_jct_s": s.get("mean_jct_s")}
