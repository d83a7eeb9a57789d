"""``miso calibrate``: measure calibration jobs under MPS and on every MIG slice, then fit.

The use case behind the command: the calibration jobs (a queue file, or on a
simulated GPU one synthetic job per catalog workload), the measurement
(:func:`miso_cli.predict.calibrate.calibrate`, which restores the layout whatever
happens), then a fit on every stored pair and observation. Returns a typed result
and never prints; progress lines go to the ``progress`` callback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miso_cli.errors import ExitCode

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"


@dataclass
class CalibrationReport:
    """What was measured on which GPU, whether its layout is back, and the fit."""

    gpu_index: int
    gpu_model: str
    pairs: Path  # the CSV of measured pairs
    rows: int
    restored: bool
    original_layout: Any
    jobs: dict[str, Any]  # per job, per level or slice: ok, oom, ...
    notes: list[str]
    fit: dict[str, Any] | None = None  # the fitting report, unless not asked or impossible
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.BAD_INPUT if self.errors else ExitCode.OK

    def to_json(self) -> dict[str, Any]:
        """The data of ``miso calibrate --json``."""
        return {
            "gpu_index": self.gpu_index,
            "gpu_model": self.gpu_model,
            "pairs": str(self.pairs),
            "rows": self.rows,
            "restored": self.restored,
            "original_layout": self.original_layout,
            "jobs": self.jobs,
            "notes": self.notes,
            "fit": self.fit,
        }


def calibrate_gpu(
    gpu_spec: str | None,
    state_dir: Path,
    *,
    gpu_index: int = 0,
    queue: Path | None = None,
    catalog: Path | None = None,
    speedup: float | None = None,
    min_steps: int = 10,
    max_level_s: float = 30.0,
    mixes: bool = True,
    fit: bool = True,
    estimators: Sequence[str] | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> CalibrationReport:
    """Calibrate GPU ``gpu_index`` of ``gpu_spec`` and (with ``fit``) fit its model.

    A real GPU needs real calibration jobs (``queue``); a simulated one defaults to a
    synthetic job per workload of ``catalog`` (examples/catalog.csv). When the fit
    cannot be made, the pairs are kept and the report carries the reason as an error.
    """
    from miso_cli.errors import BadInput, UsageError
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

    names = tuple(estimators) if estimators is not None else parse_estimators(None)
    drv = open_driver(gpu_spec, state_dir)
    try:
        if queue is not None:
            from miso_cli.spec.queue import load_queue

            jobs = load_queue(queue).jobs
        elif drv.is_simulated:
            jobs = synthetic_jobs(catalog or EXAMPLES / "catalog.csv", EXAMPLES / "sim_train.py")
        else:
            raise UsageError(
                "--queue: a real GPU needs real calibration jobs",
                hint="write a queue file of training jobs with workload names, "
                "e.g. examples/pytorch.toml",
            )
        settings = CalibrationSettings(
            speedup=speedup, min_steps=min_steps, max_level_s=max_level_s, mixes=mixes
        )
        res = calibrate(drv, gpu_index, state_dir, jobs, settings, progress=progress)
        key = drv.gpu_model(gpu_index).key
        driver = drv.driver_version()
    finally:
        drv.close()
    report = CalibrationReport(
        gpu_index=gpu_index,
        gpu_model=key,
        pairs=res.csv_path,
        rows=len(res.rows),
        restored=res.restored,
        original_layout=res.original_layout,
        jobs=res.statuses,
        notes=res.notes,
    )
    if fit:
        rows = read_many(calibration_files(state_dir, key)) + observation_rows(state_dir, key)
        try:
            report.fit = fit_rows(
                rows,
                default_model_path(state_dir, key),
                gpu_model_key=key,
                estimators=names,
                driver=driver,
                extra={"calibrated_on": {"gpu_index": gpu_index, "driver": driver}},
            )
        except BadInput as exc:  # the pairs are stored: say why there is no model yet
            exc.hint = "the pairs are kept; calibrate with more workloads, then miso fit"
            report.errors.append(exc.as_dict())
    return report
