"""Workload catalogs: measured step times of workloads on each MIG slice and MPS share.

The format is that of the MISO measurements (``workload``, ``mig_<g>g`` and
``mps_<pct>`` columns, step times in milliseconds; an empty ``mig_<g>g`` means the
workload does not fit in that instance's memory). Catalogs pace the synthetic
training jobs on simulated GPUs and give the simulator its ground truth.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from miso_cli.errors import BadInput

REFERENCE_GPU = "a100-40gb"  # the GPU the example catalogs (MISO's measurements) come from
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

    def memory_need_mb(self, reference: str = REFERENCE_GPU) -> float:
        """A memory need consistent with the catalog's empties on the ``reference`` GPU.

        An empty ``mig_<g>g`` says the workload did not fit that instance of the GPU the
        catalog was measured on: its need lies above the largest instance it missed
        and at most the smallest one it fitted. The middle of that range (half the
        smallest fitting instance when it fitted everything).
        """
        from miso_cli.gpu.profiles import MODELS

        model = MODELS[reference]
        fitting, not_fitting = [], []
        for g, t in self.mig_ms.items():
            try:
                mem = float(model.by_slices(g).memory_mb)
            except KeyError:
                continue
            (fitting if t is not None else not_fitting).append(mem)
        # It fitted its smallest fitting instance, so it needs no more than that; a miss on
        # an instance with as much memory (the A100's 3g.20gb beside a fitting 4g.20gb) is
        # not about memory and says nothing of the need.
        high = min(fitting, default=float(model.memory_mb))
        low = max((m for m in not_fitting if m < high), default=0.0)
        return low + 0.5 * (high - low) if low else 0.5 * high

    def step_time_on(
        self, slices: int, slice_memory_mb: float, need_mb: float | None = None
    ) -> float | None:
        """Step time (ms) on an instance of ``slices`` compute slices with ``slice_memory_mb``.

        Whether the workload fits is decided by memory, not by the catalog's column:
        ``need_mb`` (default :meth:`memory_need_mb`) against the instance's memory, so
        a workload that missed the A100's 2g.10gb fits an H100's 2g.20gb. Where the
        catalog has no time for a slice size it fits (its cell is empty because it did
        not fit the reference GPU), the time is extrapolated from the two smallest
        measured sizes, as a power of the compute slices (exponent between 0 and 1:
        never faster than the larger slice, never slower than in proportion to SMs).
        None: out of memory.
        """
        need = self.memory_need_mb() if need_mb is None else float(need_mb)
        if need > float(slice_memory_mb):
            return None
        known = self.mig_ms.get(slices)
        if known is not None:
            return known
        measured = sorted((g, t) for g, t in self.mig_ms.items() if t is not None)
        if not measured:
            return None
        if len(measured) == 1 or slices > measured[-1][0]:
            g0, t0 = measured[0] if slices < measured[0][0] else measured[-1]
            return t0 * (g0 / slices) if slices < g0 else t0
        (g0, t0), (g1, t1) = measured[0], measured[1]
        if slices > g0:  # between measured sizes: interpolate in log-log
            lower = max((g, t) for g, t in measured if g < slices)
            upper = min((g, t) for g, t in measured if g > slices)
            (g0, t0), (g1, t1) = lower, upper
        b = math.log(t0 / t1) / math.log(g1 / g0)
        b = min(max(b, 0.0), 1.0)
        return t0 * (g0 / slices) ** b

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
    from miso_cli.spec.textfile import csv_reader, positive_cell

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
