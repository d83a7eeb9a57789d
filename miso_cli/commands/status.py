"""``miso status``: the runs of a state dir, and the GPUs with their MIG instances and processes.

The use case behind the command (and each view of ``--watch``). Returns a typed
result and never prints. A value the driver will not give is ``None`` (shown as n/a,
null in JSON), and a GPU that fails to answer is a row with its error: missing
values are data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class GpuStatus:
    """What the driver says about each GPU."""

    simulated: bool
    sim_state_path: str | None
    driver_version: str | None
    nvml_version: str | None
    gpus: list[dict[str, Any]]  # per GPU: its info, instances, processes, layout and error

    def to_json(self) -> dict[str, Any]:
        return {
            "simulated": self.simulated,
            "sim_state_path": self.sim_state_path,
            "driver_version": self.driver_version,
            "nvml_version": self.nvml_version,
            "gpus": self.gpus,
        }


@dataclass
class StatusReport:
    """The runs of the state dir and the GPUs; ``gpu_error`` when no GPU answered."""

    runs: list[dict[str, Any]]
    gpus: GpuStatus | None = None
    gpu_error: dict[str, Any] | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        """The data of ``miso status --json``."""
        if self.gpus is None:
            return {"runs": self.runs, "gpus": [], "gpu_error": self.gpu_error}
        data = self.gpus.to_json()
        data["runs"] = self.runs
        return data


def status(gpu_spec: str | None, state_dir: Path) -> StatusReport:
    """The runs of ``state_dir`` and the GPUs of ``gpu_spec``.

    Without ``gpu_spec``, the GPUs of the run shown (a driven one first), if a run
    names them. With runs to show, GPUs that cannot be opened (NO_GPU) become
    ``gpu_error`` rather than an error.
    """
    from miso_cli.errors import NoGpu
    from miso_cli.gpu.nvml import open_driver
    from miso_cli.operate.view import collect_runs

    runs = collect_runs(state_dir)
    spec = gpu_spec
    if spec is None:  # the GPUs of the run shown (a driven one first), if it names them
        ordered = sorted(runs, key=lambda r: not r["live"])
        spec = next((r["gpu_spec"] for r in ordered if r["gpu_spec"]), None)
    try:
        drv = open_driver(spec, state_dir)
        try:
            gpus = gpu_status(drv)
        finally:
            drv.close()
    except NoGpu as exc:
        if not runs:
            raise
        # The runs are still worth showing: the GPU part says why it is missing.
        return StatusReport(runs, None, exc.as_dict())
    return StatusReport(runs, gpus)


def gpu_status(drv: Any) -> GpuStatus:
    """Each GPU of an open driver; a GPU that fails to answer becomes a row with an error."""
    from miso_cli.errors import MisoError

    gpus: list[dict[str, Any]] = []
    for i in range(drv.device_count()):
        row: dict[str, Any] = {"index": i, "error": None}
        try:
            info = drv.gpu(i)
            row.update(info.to_json())
        except MisoError as exc:
            row.update(
                {
                    "name": None,
                    "uuid": None,
                    "memory_total_mb": None,
                    "mig_capable": None,
                    "mig_current": None,
                    "mig_pending": None,
                    "model_key": None,
                    "instances": [],
                    "processes": [],
                    "layout": None,
                    "error": exc.as_dict(),
                }
            )
            gpus.append(row)
            continue
        row["instances"], row["processes"], row["layout"] = [], [], None
        notes = []
        try:
            insts = drv.instances(i)
            row["instances"] = [m.to_json() for m in insts]
            if insts and all(m.slice is not None for m in insts):
                from miso_cli.gpu.layouts import Layout

                row["layout"] = Layout.of(m.slice for m in insts).name
            elif info.mig_current and not insts:
                row["layout"] = "(empty)"
        except MisoError as exc:
            notes.append(exc.as_dict())
        try:
            row["processes"] = [p.to_json() for p in drv.processes(i)]
        except MisoError as exc:
            notes.append(exc.as_dict())
        if notes:
            row["error"] = notes[0]
        gpus.append(row)
    return GpuStatus(
        simulated=bool(drv.is_simulated),
        sim_state_path=str(drv.sim_state_path) if drv.sim_state_path else None,
        driver_version=drv.driver_version(),
        nvml_version=drv.nvml_version(),
        gpus=gpus,
    )
