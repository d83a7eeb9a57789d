"""``miso report``: how a run (or a simulation) went, whether partitioning paid, a timeline."""

from __future__ import annotations

import json
import shutil
import time
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
from miso_cli.errors import BadInput, UsageError

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
        from miso_cli.operate import accounting

        require_finite(price=price)
        state = state_dir_or_default(state_dir)
        per_hour, currency = (price, "") if price is not None else (None, "")
        if price is None:
            per_hour, currency = accounting.price_from_config(state)
        if sim is not None:
            if run is not None:
                raise UsageError("give a RUN or --sim, not both")
            if html is not None or timeline:
                raise UsageError(
                    "--html/--timeline need a run: for a simulation use "
                    "miso simulate --timeline out.html"
                )
            data = accounting.sim_report(_read_sim(sim), price=per_hour, currency=currency)
            return Result(data=data, render=lambda out: render_sim(out, data))
        from miso_cli.operate.runs import open_run
        from miso_cli.operate.timeline import from_run

        r = open_run(state, run)
        events = accounting.read_events(r.run_dir)
        now = time.time()
        data = accounting.run_report(r.data, events, price=per_hour, currency=currency, now=now)
        data["status"] = r.status
        tl = from_run(r.data, events, r.run_dir, now=now)
        tl.summary = accounting.summary_pairs(data)
        tl.notes = ["Baseline: " + data["baseline"]["method"] + "."]
        if html is not None:
            from miso_cli.operate.html import render_html
            from miso_cli.runtime.state import atomic_write_text

            atomic_write_text(html, render_html(tl), mode=0o644)
            data["html"] = str(html)
        text = None
        if timeline:
            from miso_cli.operate.timeline import render_text

            width = console.width if console.is_terminal else shutil.get_terminal_size().columns
            text = render_text(tl, width=max(60, width))
            data["timeline"] = text
        return Result(data=data, render=lambda out: render_run(out, data, text))

    execute("report", body, json_out=json_out, debug=debug)


def _read_sim(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise BadInput(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not UTF-8 text") from None
    lines = [ln for ln in raw.splitlines() if ln.strip()]
    if not lines:
        raise BadInput(f"{path}: empty")
    try:
        doc = json.loads(lines[-1])  # the envelope is the last line
    except ValueError:
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise BadInput(f"{path}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("command", "simulate") != "simulate":
        raise BadInput(f"{path}: not the output of 'miso simulate --json'")
    try:
        return doc
    finally:
        pass


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
