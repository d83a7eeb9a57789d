"""Saved models: a joblib file and a JSON sidecar, both private to the user who fitted them.

``MODEL.joblib`` holds the fitted :class:`SliceRatioModel`; ``MODEL.joblib.json``
holds the metadata (scikit-learn version, GPU model, driver, features, training
data summary, the cross-validation report) and the training rows themselves.

A pickle is code, so loading refuses a model file (or its sidecar) that another
user owns or that group or others may write. When the scikit-learn that saved the
model is not the one running, the pickle is not opened at all: the model is refitted
from the rows in the sidecar with the saved estimator choice, and saved again.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from miso_cli.errors import BadInput, MisoError, PermissionDenied
from miso_cli.predict.data import ProfileRow, summarize
from miso_cli.predict.estimators import SliceRatioModel
from miso_cli.runtime.state import atomic_write_bytes, atomic_write_text

MODEL_FORMAT = "miso-slice-model/1"


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def default_model_path(state_dir: Path, gpu_model_key: str) -> Path:
    return Path(state_dir) / "models" / f"{gpu_model_key}.joblib"


def sklearn_version() -> str:
    import sklearn

    return str(sklearn.__version__)


def check_private(path: Path) -> None:
    """Refuse files another user owns or that group/others may write (a pickle runs code)."""
    read_private(path, limit=0)


def read_private(path: Path, *, limit: int = 1 << 30) -> bytes:
    """The bytes of ``path`` (at most ``limit``), after the checks of :func:`check_private`.

    Opened once, without following a symlink, and checked through the open descriptor:
    what is read is what was checked, even if the path is swapped in between.
    """
    from miso_cli.safefs import UnsafePath, open_file

    try:
        fd = open_file(path, os.O_RDONLY)
    except FileNotFoundError:
        raise BadInput(f"{path}: no such model file", hint="fit one with: miso fit") from None
    except UnsafePath as exc:
        raise PermissionDenied(f"{path}: {exc.why}", hint="give the model file itself") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if st.st_uid != os.getuid():
            raise PermissionDenied(
                f"{path}: owned by uid {st.st_uid}, not by you (uid {os.getuid()}); "
                "refusing to load",
                hint="a model file is code: fit your own with `miso fit`",
            )
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise PermissionDenied(
                f"{path}: writable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
                "refusing to load",
                hint=f"if you trust it: chmod 600 {path}",
            )
        if st.st_size > limit:
            if limit == 0:
                return b""
            raise BadInput(f"{path}: {st.st_size} bytes; too large for a miso model")
        try:
            return fh.read(limit + 1)[:limit]
        except OSError as exc:
            raise BadInput(f"{path}: cannot read: {exc.strerror}") from None


def save_model(
    path: Path,
    model: SliceRatioModel,
    rows: Sequence[ProfileRow],
    *,
    gpu_model_key: str,
    driver: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the model and its sidecar (mode 0600, atomically); return the metadata."""
    import joblib

    path = Path(path)
    meta: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sklearn_version": sklearn_version(),
        "gpu_model": gpu_model_key,
        "driver": driver,
        "features": model.spec_.to_json(),
        "params": model.get_params(),
        "estimators": {f"mig_{g}g": n for g, n in model.chosen_.items()},
        "cv": {f"mig_{g}g": r for g, r in model.cv_.items()},
        "not_learned": {f"mig_{g}g": w for g, w in getattr(model, "not_learned_", {}).items()},
        "training_data": summarize(rows),
    }
    if extra:
        meta.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    buf = io.BytesIO()
    joblib.dump(model, buf)
    doc = {"metadata": meta, "rows": [r.to_json() for r in rows]}
    # Sidecar first: a model file without its sidecar is never left behind.
    atomic_write_text(sidecar(path), json.dumps(doc) + "\n", mode=0o600)
    atomic_write_bytes(path, buf.getvalue(), mode=0o600)
    return meta


def read_sidecar(path: Path) -> tuple[dict[str, Any], list[ProfileRow]]:
    side = sidecar(path)
    raw = read_private(side, limit=1 << 28)
    try:
        doc = json.loads(raw.decode("utf-8"))
        meta = doc["metadata"]
        if not isinstance(meta, dict):
            raise TypeError("metadata is not an object")
        rows = [ProfileRow.from_json(r) for r in doc["rows"]]
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        OverflowError,
        RecursionError,
    ) as exc:
        raise BadInput(
            f"{side}: unreadable model metadata ({type(exc).__name__})",
            hint="fit the model again: miso fit",
        ) from None
    if meta.get("format") != MODEL_FORMAT:
        raise BadInput(f"{side}: format {meta.get('format')!r}, expected {MODEL_FORMAT!r}")
    return meta, rows


def load_model(path: Path) -> tuple[SliceRatioModel, dict[str, Any]]:
    """Load a saved model after the ownership checks; refit on a scikit-learn mismatch."""
    path = Path(path)
    check_private(path)  # refuse a foreign model before anything else is looked at
    meta, rows = read_sidecar(path)
    meta = dict(meta)
    if meta.get("sklearn_version") != sklearn_version():
        try:
            model = refit(meta, rows)
        except MisoError:
            raise
        except Exception as exc:  # damaged metadata: any shape the refit cannot use
            raise BadInput(
                f"{sidecar(path)}: cannot refit the model from its metadata ({type(exc).__name__})",
                hint="fit it again: miso fit",
            ) from None
        meta["refitted_from"] = meta.get("sklearn_version")
        try:
            save_model(
                path,
                model,
                rows,
                gpu_model_key=str(meta.get("gpu_model", "")),
                driver=meta.get("driver") if isinstance(meta.get("driver"), str) else None,
            )
            meta["sklearn_version"] = sklearn_version()
        except (OSError, TypeError, ValueError):
            pass  # read-only location (or odd metadata): use the refit in memory
        return model, meta
    import joblib

    raw = read_private(path)  # the very bytes that were checked
    try:
        model = joblib.load(io.BytesIO(raw))
    except Exception as exc:  # a torn or foreign file: any unpickling error
        raise BadInput(
            f"{path}: cannot load model ({type(exc).__name__})", hint="fit it again: miso fit"
        ) from None
    if not isinstance(model, SliceRatioModel) or not hasattr(model, "targets_"):
        raise BadInput(f"{path}: not a miso slice model", hint="fit it again: miso fit")
    return model, meta


def refit(meta: dict[str, Any], rows: Sequence[ProfileRow]) -> SliceRatioModel:
    """Refit with the saved choice of estimator per slice size (no new model selection)."""
    params = meta.get("params", {})
    chosen = {
        int(k.removeprefix("mig_").removesuffix("g")): v for k, v in meta["estimators"].items()
    }
    model = SliceRatioModel(
        estimators=params.get("estimators", ["ridge"]),
        random_state=int(params.get("random_state", 0)),
        min_target_rows=int(params.get("min_target_rows", 10)),
        min_target_families=int(params.get("min_target_families", 2)),
    )
    model.fit(rows, choices=chosen)
    cv = meta.get("cv", {})
    for key, rep in cv.items() if isinstance(cv, dict) else ():
        try:
            g = int(str(key).removeprefix("mig_").removesuffix("g"))
            sigma = float(rep["sigma_log"]) if isinstance(rep, dict) else None
        except (KeyError, TypeError, ValueError, OverflowError):
            continue  # a damaged report: keep the refit's own uncertainty
        if g in model.sigma_ and sigma is not None and math.isfinite(sigma) and sigma >= 0:
            model.sigma_[g] = sigma  # keep the cross-validated uncertainty
            model.cv_[g] = rep
    return model
