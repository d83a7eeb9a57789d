"""``miso fit``: fit this machine's MPS-profile-to-MIG-speed model and save it."""

from __future__ import annotations

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
    state_dir_or_default,
)

GpuModelOpt = Annotated[
    str,
    typer.Option(
        "--gpu-model",
        help="The GPU model the data was measured on (e.g. a100-40gb, h100-80gb).",
    ),
]


def command(
    data: Annotated[
        Optional[list[Path]],  # noqa: UP045 - Typer needs Optional on Python 3.10 runtimes
        typer.Option(
            "--data",
            help="Training CSV (workload, optional mix and jobs_in_mix, mps_<pct>, mig_<g>g "
            "columns); repeat for several files.",
        ),
    ] = None,
    observations: Annotated[
        bool,
        typer.Option(
            "--observations",
            help="Also train on what is stored for this GPU model: the observations of "
            "`miso run` and the pairs of `miso calibrate` (the default without --data).",
        ),
    ] = False,
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--out",
            help="Where to save the model [default: <state dir>/models/<gpu model>.joblib, "
            "which predict, plan, run and simulate use when it beats the shipped prior on "
            "held-out rows].",
        ),
    ] = None,
    gpu_model: GpuModelOpt = "a100-40gb",
    estimators: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--estimators",
            help="Candidates for the grouped cross-validation to choose from, comma-separated "
            "[default: ridge,gbr,forest,blend].",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random state of the estimators.")] = 0,
    state_dir: StateDirOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Fit a model predicting step time on each MIG slice from MPS profiles, and save it.

    The estimator for each slice size is chosen by cross-validation grouped by
    workload family (the part of the workload name before '_'), so the error
    reported is for models the fit has not seen. The model is saved with mode
    0600 and a JSON sidecar holding its metadata and training rows. It is then
    scored against the shipped prior, and the two blended, on the same held-out
    rows: predict, plan, run and simulate use whichever is best.

    $ miso fit --data ../shared/data/a100-40gb/mps_mig_pairs.csv

    $ miso fit --observations --json
    """

    def body(console: Console) -> Result:
        from miso_cli.commands.predict import fit_model, gpu_model_key
        from miso_cli.predict.fitting import parse_estimators

        key = gpu_model_key(gpu_model)
        names = parse_estimators(estimators)
        fitted = fit_model(
            state_dir_or_default(state_dir),
            key,
            data=data or [],
            observations=observations,
            estimators=names,
            out=out,
            seed=seed,
        )
        report = fitted.to_json()
        return Result(report, render=lambda c: _render(c, report))

    execute("fit", body, json_out=json_out, debug=debug)


def _render(out: Console, report: dict[str, Any]) -> None:
    from rich.table import Table

    fams = ", ".join(f"{k} {v}" for k, v in report["families"].items())
    out.print(f"Trained on {report['rows']} rows ({fams}).")
    if report["skipped_rows"]:
        out.print(f"Skipped {report['skipped_rows']} rows without an MPS profile or mig_7g.")
    table = Table(title="Cross-validated error, grouped by family (unseen families)")
    table.add_column("slice")
    table.add_column("estimator")
    table.add_column("MAPE", justify="right")
    table.add_column("training mean", justify="right")
    table.add_column("per held-out family")
    for name, rep in report["targets"].items():
        mape = rep.get("mape", {}).get(rep["estimator"])
        base = rep.get("baseline_training_mean_mape")
        fam = ", ".join(f"{f} {v:.1%}" for f, v in rep.get("per_family_mape", {}).items())
        table.add_row(
            name,
            rep["estimator"],
            f"{mape:.1%}" if mape is not None else "n/a",
            f"{base:.1%}" if base is not None else "n/a",
            fam or rep.get("cv", ""),
        )
    out.print(table)
    for name, why in report.get("not_learned", {}).items():
        out.print(f"{name}: not learned ({why}); predicted by the physical model", markup=False)
    out.print(f"Saved {report['model']}")
    _render_selection(out, report.get("selection"))


def _render_selection(out: Console, sel: dict[str, Any] | None) -> None:
    """Which model plan, run and simulate will use, with the held-out figures behind it."""
    from miso_cli.predict.selection import summary_line

    if not sel:
        return
    out.print(summary_line(sel), markup=False)
    use = {
        "prior": "the shipped prior (the fit is kept aside: it is not better)",
        "fitted": "this fitted model",
        "blend": "the shipped prior blended with this fitted model",
    }[sel["chosen"]]
    out.print(f"plan, run and simulate will use {use}.", markup=False)
    for note in sel.get("notes", []):
        out.print(f"note: {note}", markup=False)
