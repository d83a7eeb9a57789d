"""``miso predict`` and ``miso fit``: the predictor's use cases.

``predict_file`` predicts each row of a CSV of MPS profiles on every MIG slice size,
scored against the file's own MIG columns where it has them; ``fit_model`` gathers
the training rows (files, calibration pairs, a run's observations) and fits. Both
return typed results and never print.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def gpu_model_key(key: str) -> str:
    """``--gpu-model``: a known GPU model's key (any case); else a UsageError listing them."""
    from miso_cli.errors import UsageError
    from miso_cli.gpu.profiles import MODELS

    if key.lower() not in MODELS:
        raise UsageError(
            f"--gpu-model: unknown GPU model {key!r}", hint="known: " + ", ".join(sorted(MODELS))
        )
    return key.lower()


@dataclass
class Predictions:
    """Each row's predicted step time per slice size, relative to the whole GPU."""

    model: str | None  # the model file, None for the shipped prior
    source: str  # fitted, prior or blend
    model_used: Any  # which one, and why (see miso_cli/predict/selection.py)
    predictor: str | None  # a line naming it, for people
    selection: Any
    gpu_model: str
    slices: list[int]  # slice sizes, largest first
    predictions: list[dict[str, Any]]  # per row: value, uncertainty and source per slice
    error_vs_file: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The data of ``miso predict --json``."""
        data: dict[str, Any] = {
            "model": self.model,
            "source": self.source,
            "model_used": self.model_used,
            "predictor": self.predictor,
            "selection": self.selection,
            "gpu_model": self.gpu_model,
            "predictions": self.predictions,
        }
        if self.error_vs_file:
            data["error_vs_file"] = self.error_vs_file
        return data


def predict_file(data: Path, model: Path | None, gpu_model: str, state_dir: Path) -> Predictions:
    """Predict every row of ``data`` for ``gpu_model`` (a key) with ``model`` (None: the
    state dir's fitted model, else the shipped prior).

    A row without a usable MPS profile gets the model's centre, its source saying so.
    """
    from miso_cli.gpu.profiles import MODELS
    from miso_cli.predict import load_predictor
    from miso_cli.predict.data import read_profile_csv
    from miso_cli.predict.features import usable_profile

    pred = load_predictor(model, gpu_model, state_dir)
    rows = read_profile_csv(data)
    target = MODELS[gpu_model]
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
    scored = {f"mig_{g}g": (sum(e) / len(e), len(e)) for g, e in errors.items() if e}
    return Predictions(
        model=pred.metadata.get("path"),
        source=pred.source,
        model_used=pred.metadata.get("model_used"),
        predictor=pred.metadata.get("description"),
        selection=pred.metadata.get("selection"),
        gpu_model=gpu_model,
        slices=slices,
        predictions=items,
        error_vs_file={k: {"mape": round(v, 5), "rows": n} for k, (v, n) in scored.items()},
    )


@dataclass
class FitReport:
    """A fitted model: the fitting report, and how many rows came from the state dir."""

    report: dict[str, Any]  # miso_cli.predict.fitting.fit_rows's report
    observation_rows: int = 0  # from runs' observations
    calibration_rows: int = 0  # from `miso calibrate`

    def to_json(self) -> dict[str, Any]:
        """The data of ``miso fit --json``."""
        data = dict(self.report)
        data["observation_rows"] = self.observation_rows
        data["calibration_rows"] = self.calibration_rows
        return data


def fit_model(
    state_dir: Path,
    gpu_model: str,
    *,
    data: Sequence[Path] = (),
    observations: bool = False,
    estimators: Sequence[str] | None = None,
    out: Path | None = None,
    seed: int = 0,
) -> FitReport:
    """Fit a predictor for ``gpu_model`` (a key) and save it (``out``, else the state dir's).

    Training rows: the ``data`` files; with ``observations`` (or no files), also the
    state dir's calibration pairs and runs' observations. No rows at all is BadInput.
    """
    from miso_cli.errors import BadInput
    from miso_cli.predict.calibrate import calibration_files
    from miso_cli.predict.data import read_many
    from miso_cli.predict.fitting import fit_rows, parse_estimators
    from miso_cli.predict.observations import observation_rows, observations_path
    from miso_cli.predict.persist import default_model_path

    rows = read_many(list(data))
    n_obs = n_cal = 0
    if observations or not data:
        obs = observation_rows(state_dir, gpu_model)
        cal = read_many(calibration_files(state_dir, gpu_model))
        n_obs, n_cal = len(obs), len(cal)
        if not obs and not cal and not data:
            raise BadInput(
                f"no training data: no --data given, no usable observations in "
                f"{observations_path(state_dir, gpu_model)} and no calibration pairs",
                hint="pass --data FILE.csv, run `miso calibrate`, or run jobs with "
                "`miso run` first",
            )
        rows.extend(cal)
        rows.extend(obs)
    target = out if out is not None else default_model_path(state_dir, gpu_model)
    names = tuple(estimators) if estimators is not None else parse_estimators(None)
    report = fit_rows(rows, target, gpu_model_key=gpu_model, estimators=names, random_state=seed)
    return FitReport(report, n_obs, n_cal)
