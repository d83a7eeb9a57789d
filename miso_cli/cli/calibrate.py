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

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"


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
        from miso_cli.errors import BadInput, ExitCode, UsageError
        from miso_cli.gpu.nvml import open_driver
        from miso_cli.predict.calibrate import (
            CalibrationSettings,
            calibrate,
            calibration_files,
            synthetic_jobs,
        )
        from miso_cli.predict.data import read_many
        from miso_cli.predict.fitting import fit_rows, parse_estimators
        from miso_cli.predict.observations import observation_rows
        from miso_cli.predict.persist import default_model_path

        require_finite(speedup=speedup, max_level_s=max_level_s)
        names = parse_estimators(estimators)
        sdir = state_dir_or_default(state_dir)
        drv = open_driver(gpu, sdir)
        try:
            if queue is not None:
                from miso_cli.spec.queue import load_queue

                jobs = load_queue(queue).jobs
            elif drv.is_simulated:
                jobs = synthetic_jobs(
                    catalog or EXAMPLES / "catalog.csv", EXAMPLES / "sim_train.py"
                )
            else:
                raise UsageError(
                    "--queue: a real GPU needs real calibration jobs",
                    hint="write a queue file of training jobs with workload names, "
                    "e.g. examples/pytorch.toml",
                )
            err = stderr_console()
            settings = CalibrationSettings(
                speedup=speedup,
                min_steps=min_steps,
                max_level_s=max_level_s,
                mixes=not no_mixes,
            )
            res = calibrate(
                drv,
                gpu_index,
                sdir,
                jobs,
                settings,
                progress=lambda line: err.print(f"calibrate: {line}", markup=False),
            )
            key = drv.gpu_model(gpu_index).key
            driver = drv.driver_version()
        finally:
            drv.close()
        data: dict[str, Any] = {
            "gpu_index": gpu_index,
            "gpu_model": key,
            "pairs": str(res.csv_path),
            "rows": len(res.rows),
            "restored": res.restored,
            "original_layout": res.original_layout,
            "jobs": res.statuses,
            "notes": res.notes,
            "fit": None,
        }
        errors = []
        if not no_fit:
            rows = read_many(calibration_files(sdir, key)) + observation_rows(sdir, key)
            try:
                data["fit"] = fit_rows(
                    rows,
                    default_model_path(sdir, key),
                    gpu_model_key=key,
                    estimators=names,
                    driver=driver,
                    extra={"calibrated_on": {"gpu_index": gpu_index, "driver": driver}},
                )
            except BadInput as exc:  # the pairs are stored: say why there is no model yet
                exc.hint = "the pairs are kept; calibrate with more workloads, then miso fit"
                errors.append(exc.as_dict())
        return Result(
            data,
            render=lambda c: _render(c, data),
            errors=errors,
            exit_code=ExitCode.BAD_INPUT if errors else ExitCode.OK,
        )

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
