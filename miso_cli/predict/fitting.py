"""Fit a model from profile rows and save it: what ``miso fit`` and ``miso calibrate`` share."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from miso_cli.errors import BadInput, UsageError
from miso_cli.predict.data import ProfileRow
from miso_cli.predict.estimators import CANDIDATES, SliceRatioModel
from miso_cli.predict.features import usable_profile
from miso_cli.predict.persist import save_model


def parse_estimators(text: str | None) -> tuple[str, ...]:
    """``"ridge,gbr"`` -> ("ridge", "gbr"); unknown names are a usage error."""
    if not text:
        return CANDIDATES
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in CANDIDATES]
    if bad or not names:
        raise UsageError(
            f"--estimators: unknown {', '.join(bad) or '(empty)'}",
            hint=f"choose from {', '.join(CANDIDATES)}",
        )
    return names


def fit_rows(
    rows: Sequence[ProfileRow],
    out: Path,
    *,
    gpu_model_key: str,
    estimators: Sequence[str] = CANDIDATES,
    random_state: int = 0,
    driver: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Select, fit and save a model; returns the report ``miso fit`` prints."""
    usable = [r for r in rows if usable_profile(r.mps) and 7 in r.mig]
    skipped = len(rows) - len(usable)
    if not usable:
        raise BadInput(
            "no training row has both an MPS profile (mps_100 and a lower level) and mig_7g",
            hint="training data needs mps_* and mig_* columns (see `miso fit --help`)",
        )
    model = SliceRatioModel(estimators=estimators, random_state=random_state).fit(usable)
    if not model.targets_:
        raise BadInput(
            f"too little data to learn any slice size: need at least {model.min_target_rows} "
            f"rows with mig_7g and another mig_<g>g, from {model.min_target_families} or more "
            "workload families",
        )
    from miso_cli.predict.selection import compare

    # A fit never silently replaces a better model: score it against the shipped prior
    # (and the two blended) on the same held-out rows; the sidecar records the choice.
    selection = compare(usable, model, gpu_model_key=gpu_model_key, random_state=random_state)
    extra = {**(extra or {}), "selection": selection}
    meta = save_model(out, model, usable, gpu_model_key=gpu_model_key, driver=driver, extra=extra)
    return {
        "model": str(out),
        "gpu_model": gpu_model_key,
        "rows": len(usable),
        "skipped_rows": skipped,
        "families": meta["training_data"]["families"],
        "features": meta["features"]["names"],
        "targets": {f"mig_{g}g": rep for g, rep in model.cv_.items()},
        # Slice sizes the data has but the model does not learn: physical model.
        "not_learned": {f"mig_{g}g": why for g, why in getattr(model, "not_learned_", {}).items()},
        "sklearn_version": meta["sklearn_version"],
        # Which model plan, run, simulate and predict will use, and the figures behind it.
        "selection": selection,
    }
