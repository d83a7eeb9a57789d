"""``miso calibrate``: measure calibration workloads under MPS and on each MIG slice, then fit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from miso_cli.cli.common import (
    DebugOpt,
    GpuOpt,
    JsonOpt,
    Result,
    StateDirOpt,
    execute,
    require_finite,
    state_dir_or_default,
    stderr_console,
)


def command(
    gpu: GpuOpt = None,
    gpu_index: Annotated[
        int, typer.Option("--gpu-index", "-i", help="The GPU to calibrate.", min=0)
    ] = 0,
    queue: Annotated[
        Optional[Path],  # noqa: UP045 - Typer needs Optional on Python 3.10 runtimes
        typer.Option(
            "--queue",
            help="Calibration jobs as a queue file (give each a workload name "
            "'<family>_<variant>') [default on a simulated GPU: one synthetic job per "
            "workload of examples/catalog.csv].",
            dir_okay=False,
        ),
    ] = None,
    catalog: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--catalog",
            help="Simulated GPUs: the catalog whose workloads the synthetic jobs run "
            "[default: examples/catalog.csv].",
            dir_okay=False,
        ),
    ] = None,
    speedup: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            "--speedup",
            help="Simulated GPUs: run the synthetic jobs this many times faster.",
            min=1,
        ),
    ] = None,
    min_steps: Annotated[
        int, typer.Option("--min-steps", help="Steps to measure per level and slice.", min=2)
    ] = 10,
    max_level_s: Annotated[
        float,
        typer.Option("--max-level-s", help="Longest to wait for one measurement, seconds.", min=1),
    ] = 30.0,
    no_mixes: Annotated[
        bool, typer.Option("--no-mixes", help="Profile each job alone only, not co-located.")
    ] = False,
    no_fit: Annotated[
        bool, typer.Option("--no-fit", help="Store the measured pairs, do not fit.")
    ] = False,
    estimators: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--estimators", help="Candidates for the fit, comma-separated."),
    ] = None,
    state_dir: StateDirOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Measure calibration jobs under MPS and on every MIG slice size, restore, then fit.

    Needs a MIG-capable, idle GPU (and root on a real one: MIG is reconfigured).
    The original layout is restored afterwards, whatever happens. The pairs are
    stored under <state dir>/calibration/ and a model is fitted on all of them and
    the stored observations, saved as this GPU model's model in the state dir. It
    replaces the shipped prior only if better on held-out workload families (else
    the two blended, or the prior, are used; the figures are printed).

    $ miso calibrate --gpu sim:a100-40gb --speedup 50

    $ sudo miso calibrate --queue calibration.toml
    """

    def body(console: Console) -> Result:
        from miso_cli.commands.calibrate import calibrate_gpu
        from miso_cli.predict.fitting import parse_estimators

        require_finite(speedup=speedup, max_level_s=max_level_s)
        names = parse_estimators(estimators)
        err = stderr_console()
        report = calibrate_gpu(
            gpu,
            state_dir_or_default(state_dir),
            gpu_index=gpu_index,
            queue=queue,
            catalog=catalog,
            speedup=speedup,
            min_steps=min_steps,
            max_level_s=max_level_s,
            mixes=not no_mixes,
            fit=not no_fit,
            estimators=names,
            progress=lambda line: err.print(f"calibrate: {line}", markup=False),
        )
        data = report.to_json()
        return Result(data, lambda c: _render(c, data), report.exit_code, report.errors)

    execute("calibrate", body, json_out=json_out, debug=debug)


def _render(out: Console, data: dict[str, Any]) -> None:
    out.print(
        f"Measured {data['rows']} pairs on GPU {data['gpu_index']} ({data['gpu_model']}); "
        f"stored in {data['pairs']}."
    )
    out.print(f"Restored the original layout: {data['original_layout']}.")
    bad = {j: s for j, st in data["jobs"].items() for w, s in st.items() if s != "ok"}
    if bad:
        out.print(
            f"Not measured everywhere: {', '.join(sorted(bad))} (out of memory = does not fit)."
        )
    fit = data.get("fit")
    if fit:
        for name, rep in fit["targets"].items():
            mape = rep.get("mape", {}).get(rep["estimator"])
            shown = f"{mape:.1%}" if mape is not None else "n/a"
            out.print(f"  {name}: {rep['estimator']}, grouped-CV error {shown}")
        out.print(f"Saved {fit['model']}")
        from miso_cli.cli.fit import _render_selection

        _render_selection(out, fit.get("selection"))
