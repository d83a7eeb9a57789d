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
from miso_cli.cli.fit import GpuModelOpt, resolve_gpu_model


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
        from miso_cli.gpu.profiles import MODELS
        from miso_cli.predict import load_predictor
        from miso_cli.predict.data import read_profile_csv
        from miso_cli.predict.features import usable_profile

        key = resolve_gpu_model(gpu_model)
        pred = load_predictor(model, key, state_dir_or_default(state_dir))
        rows = read_profile_csv(data)
        target = MODELS[key]
        slices = sorted((p.slices for p in target.standard_profiles()), reverse=True)
        usable = [r for r in rows if usable_profile(r.mps)]
        detailed = iter(pred.predict_rows(usable, gpu_model=target))
        items: list[dict[str, Any]] = []
        errors: dict[int, list[float]] = {g: [] for g in slices}
        for i, r in enumerate(rows):
            if usable_profile(r.mps):
                rel, sig, src = next(detailed)
            else:  # no profile: the model's centre, flagged by its source and spread
                p = pred.predict_one({}, memory_mb=r.memory_mb, gpu_model=target)
                rel = p.relative
                sig = {g: p.uncertainty[g] / rel[g] for g in rel}
                src = {g: ("measured" if g == max(slices) else "prior") for g in rel}
            item: dict[str, Any] = {"row": i + 1, "workload": r.workload}
            unc: dict[str, float | None] = {}
            sources: dict[str, str | None] = {}
            for g in slices:
                name = f"mig_{g}g"
                item[name] = rel.get(g)
                unc[name] = rel[g] * sig[g] if g in rel else None
                sources[name] = src.get(g)
                truth = r.ratio(g)
                if truth is not None and g in rel and g != max(slices):
                    errors[g].append(abs(rel[g] / truth - 1.0))
            item["uncertainty"] = unc
            item["source"] = sources
            items.append(item)
        result: dict[str, Any] = {
            "model": pred.metadata.get("path"),
            "source": pred.source,
            # fitted, prior or blend, and why (see miso_cli/predict/selection.py)
            "model_used": pred.metadata.get("model_used"),
            "predictor": pred.metadata.get("description"),
            "selection": pred.metadata.get("selection"),
            "gpu_model": key,
            "predictions": items,
        }
        scored = {f"mig_{g}g": (sum(e) / len(e), len(e)) for g, e in errors.items() if e}
        if scored:
            result["error_vs_file"] = {
                k: {"mape": round(v, 5), "rows": n} for k, (v, n) in scored.items()
            }
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
