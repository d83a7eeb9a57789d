"""``miso predict``: step time on every MIG slice, relative to the whole GPU, per CSV row."""

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
from miso_cli.cli.fit import GpuModelOpt


def command(
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="CSV of MPS profiles (workload, optional mix and jobs_in_mix, mps_<pct>, "
            "optional memory_mb); mig_<g>g columns, if present, are ignored for the "
            "prediction and reported as its error.",
        ),
    ],
    model: Annotated[
        Optional[Path],  # noqa: UP045 - Typer needs Optional on Python 3.10 runtimes
        typer.Option(
            "--model",
            help="A saved model (.joblib) or a prior (.json) [default: the model fitted for "
            "--gpu-model in the state dir, else the shipped prior].",
        ),
    ] = None,
    gpu_model: GpuModelOpt = "a100-40gb",
    state_dir: StateDirOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Predict each row's step time on every MIG slice, relative to the whole GPU (7g = 1.0).

    Each value comes with its uncertainty (a standard deviation, same units) and
    its source: the fitted model, the shipped prior, or the physical model (SM
    and memory-bandwidth shares) for slice sizes the training data lacked. A
    slice the job does not fit (memory_mb above the slice's memory) is null.

    $ miso predict --data profiles.csv

    $ miso predict --model model.joblib --data ../shared/data/a100-40gb/catalog.csv --json
    """

    def body(console: Console) -> Result:
        from miso_cli.commands.predict import gpu_model_key, predict_file

        key = gpu_model_key(gpu_model)
        found = predict_file(data, model, key, state_dir_or_default(state_dir))
        result, slices = found.to_json(), found.slices
        return Result(result, render=lambda c: _render(c, result, slices))

    execute("predict", body, json_out=json_out, debug=debug)


def _render(out: Console, result: dict[str, Any], slices: list[int]) -> None:
    from rich.table import Table

    from miso_cli.cli.common import stderr_console

    stderr_console().print(f"predictor: {result['predictor']}", markup=False, soft_wrap=True)
    where = result["model"] or "shipped prior"
    table = Table(title=f"Step time relative to {max(slices)}g ({result['source']}: {where})")
    table.add_column("row", justify="right")
    table.add_column("workload")
    for g in slices:
        table.add_column(f"{g}g", justify="right")
    for item in result["predictions"]:
        cells = []
        for g in slices:
            name = f"mig_{g}g"
            v, u = item[name], item["uncertainty"][name]
            if v is None:
                cells.append("does not fit")
            elif g == max(slices):
                cells.append("1.00")
            else:
                mark = "*" if item["source"][name] == "physical" else ""
                cells.append(f"{v:.2f} ±{u:.2f}{mark}")
        table.add_row(str(item["row"]), item["workload"], *cells)
    out.print(table)
    out.print("* physical model (SM and memory-bandwidth shares): less certain")
    for name, e in result.get("error_vs_file", {}).items():
        out.print(f"{name}: {e['mape']:.1%} mean absolute error against the file's values")
