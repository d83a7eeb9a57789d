"""Workload catalogs: measured step times of workloads on each MIG slice and MPS share.

The format is that of the MISO measurements (``workload``, ``mig_<g>g`` and
``mps_<pct>`` columns, step times in milliseconds; an empty ``mig_<g>g`` means the
workload does not fit in that instance's memory). Catalogs pace the synthetic
training jobs on simulated GPUs and give the simulator its ground truth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from miso_cli.errors import BadInput

_MIG = re.compile(r"^mig_(\d+)g$")
_MPS = re.compile(r"^mps_(\d+)$")


@dataclass(frozen=True)
class Workload:
    name: str
    mig_ms: dict[int, float | None]  # compute slices -> step time (ms); None = does not fit
    mps_ms: dict[int, float]  # active-thread % -> step time (ms) alone under MPS

    @property
    def family(self) -> str:
        return self.name.split("_", 1)[0]

    def fits(self, slices: int) -> bool:
        return self.mig_ms.get(slices) is not None

    def step_time_ms(self, slices: int) -> float | None:
        """Step time on an instance of ``slices`` compute slices (None: out of memory)."""
        return self.mig_ms.get(slices)

    def smallest_fit(self) -> int | None:
        fitting = [g for g, t in self.mig_ms.items() if t is not None]
        return min(fitting) if fitting else None

    def mps_step_time_ms(self, pct: float) -> float:
        """Step time alone under MPS at ``pct`` active threads.

        Piecewise-linear in the measured levels' *throughput* (1/step time),
        clamped at the ends; below the lowest measured level throughput falls in
        proportion to the share. Without MPS columns, the MIG columns stand in
        (g/7 of the SMs is ``100*g/7`` percent).
        """
        points = dict(self.mps_ms)
        if not points:
            full = self.mig_ms.get(7)
            for g, t in self.mig_ms.items():
                if t is not None:
                    points[round(100 * g / 7)] = t
            if full is not None:
                points[100] = full
        if not points:
            raise ValueError(f"workload {self.name} has no step times")
        levels = sorted(points)
        pct = min(max(float(pct), 1.0), 100.0)
        if pct in points:
            return points[int(pct)]
        if pct <= levels[0]:
            return points[levels[0]] * levels[0] / pct
        if pct >= levels[-1]:
            return points[levels[-1]]
        for lo, hi in zip(levels, levels[1:], strict=False):
            if lo <= pct <= hi:
                tp_lo, tp_hi = 1.0 / points[lo], 1.0 / points[hi]
                tp = tp_lo + (tp_hi - tp_lo) * (pct - lo) / (hi - lo)
                return 1.0 / tp
        raise AssertionError("unreachable")


@dataclass(frozen=True)
class Catalog:
    path: Path | None
    workloads: dict[str, Workload]

    def __getitem__(self, name: str) -> Workload:
        try:
            return self.workloads[name]
        except KeyError:
            where = f" in {self.path}" if self.path else ""
            raise BadInput(f"unknown workload {name!r}{where}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.workloads

    def __len__(self) -> int:
        return len(self.workloads)


def load_catalog(path: Path | str) -> Catalog:
    """Read a catalog CSV; every problem is a :class:`BadInput` naming file, line and column."""
    from miso_cli.textfile import csv_reader, positive_cell

    path = Path(path)
    with csv_reader(path, "catalog") as reader:
        fields = reader.fieldnames or []
        if "workload" not in fields:
            raise BadInput(f"{path}:1: catalog needs a 'workload' column")
        mig_cols = {c: int(m.group(1)) for c in fields if (m := _MIG.match(c))}
        mps_cols = {c: int(m.group(1)) for c in fields if (m := _MPS.match(c))}
        if not mig_cols:
            raise BadInput(f"{path}:1: catalog needs mig_<g>g columns (e.g. mig_7g)")
        workloads: dict[str, Workload] = {}
        for row in reader:
            line = reader.line_num
            name = (row.get("workload") or "").strip()
            if not name:
                raise BadInput(f"{path}:{line}: column workload: empty")
            if name in workloads:
                raise BadInput(f"{path}:{line}: workload {name!r} appears twice")
            mig = {
                g: positive_cell(path, line, c, row.get(c) or "", what="step time")
                for c, g in mig_cols.items()
            }
            mps: dict[int, float] = {}
            for c, pct in mps_cols.items():
                v = positive_cell(path, line, c, row.get(c) or "", what="step time")
                if v is not None:
                    mps[pct] = v
            if all(v is None for v in mig.values()):
                raise BadInput(f"{path}:{line}: workload {name!r} fits no MIG slice")
            workloads[name] = Workload(name, mig, mps)
    if not workloads:
        raise BadInput(f"{path}: catalog has no workloads")
    return Catalog(path, workloads)
