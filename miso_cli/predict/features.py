"""Features of a job's MPS profile that say how it will slow down on smaller MIG slices.

Everything is scale-free (ratios), in log space so that a slowdown and a speed-up
of the same factor weigh the same:

* ``own_r<pct>``: log(step time at ``pct`` % threads / step time at 100 %), for
  each profiled level below 100. A job that barely slows down when its SMs are
  cut will barely slow down on a smaller slice;
* ``jobs_in_mix``: how many real jobs shared the GPU while profiling. In a busy
  mix the 100 % level is already slowed by contention, which flattens the ratios;
* ``co_{mean,max,min}_r<pct>``: the same ratios of the co-runners in the mix.
  They tell how much of the job's own profile is the mix's doing (a job beside
  bandwidth-hungry neighbours looks more compute-bound than it is). Without
  co-runner profiles, the job's own values stand in;
* ``own_r<pct>_x_jobs``, ``own_r<pct>_per_job``: the own ratios times and divided
  by ``jobs_in_mix``. How much contention flattens a profile depends on the mix
  size (seven jobs at 14 % fill the GPU, one does not), which a linear model can
  only express through such products. Leave-one-family-out on the A100 pairs,
  they take the ridge model from 10.5 % to 9.9 % mean MAPE on 4g/3g.

Levels the model was trained on but a profile lacks are interpolated in log-log
between the measured levels; below the lowest, throughput is taken as
proportional to the share of threads.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from miso_cli.predict.data import FULL_LEVEL, ProfileRow

if TYPE_CHECKING:
    import numpy as np


def level_time(mps: Mapping[int, float], pct: int) -> float:
    """Step time at ``pct`` % threads from the measured levels (exact where measured)."""
    if pct in mps:
        return float(mps[pct])
    levels = sorted(mps)
    if not levels:
        raise ValueError("empty MPS profile")
    if pct < levels[0]:
        return float(mps[levels[0]]) * levels[0] / pct
    if pct > levels[-1]:
        return float(mps[levels[-1]])
    for lo, hi in zip(levels, levels[1:], strict=False):
        if lo < pct < hi:
            w = (math.log(pct) - math.log(lo)) / (math.log(hi) - math.log(lo))
            return math.exp((1 - w) * math.log(mps[lo]) + w * math.log(mps[hi]))
    raise AssertionError("unreachable")


def usable_profile(mps: Mapping[int, float] | None) -> bool:
    """A profile features can be built from: the 100 % level and one lower level."""
    if not mps or FULL_LEVEL not in mps:
        return False
    return any(p < FULL_LEVEL for p in mps) and all(v > 0 for v in mps.values())


def own_ratios(mps: Mapping[int, float], levels: Sequence[int]) -> list[float]:
    full = float(mps[FULL_LEVEL])
    return [math.log(level_time(mps, p) / full) for p in levels]


class FeatureSpec:
    """Which MPS levels the features use, and the names of the feature columns."""

    def __init__(self, levels: Sequence[int], interactions: bool = True) -> None:
        lv = sorted({int(p) for p in levels if int(p) != FULL_LEVEL}, reverse=True)
        if not lv:
            raise ValueError("features need at least one MPS level below 100")
        self.levels: tuple[int, ...] = tuple(lv)
        self.interactions = interactions

    @property
    def with_interactions(self) -> bool:
        # Specs pickled before the interaction features existed have no attribute.
        return bool(getattr(self, "interactions", False))

    @property
    def names(self) -> list[str]:
        own = [f"own_r{p}" for p in self.levels]
        co = [f"co_{s}_r{p}" for s in ("mean", "max", "min") for p in self.levels]
        inter = []
        if self.with_interactions:
            inter = [f"own_r{p}_{k}" for k in ("x_jobs", "per_job") for p in self.levels]
        return [*own, "jobs_in_mix", *co, *inter]

    def to_json(self) -> dict[str, object]:
        return {
            "levels": list(self.levels),
            "interactions": self.with_interactions,
            "names": self.names,
        }

    @staticmethod
    def from_rows(rows: Sequence[ProfileRow]) -> FeatureSpec:
        """The levels below 100 that at least half of the rows measured."""
        counts: dict[int, int] = defaultdict(int)
        for r in rows:
            for p in r.mps:
                if p != FULL_LEVEL:
                    counts[p] += 1
        levels = [p for p, n in counts.items() if n * 2 >= len(rows)]
        if not levels:
            levels = [max(counts, key=lambda p: counts[p])] if counts else []
        return FeatureSpec(levels)

    def vector(
        self,
        mps: Mapping[int, float],
        jobs_in_mix: int,
        co_runners: Sequence[Mapping[int, float]] = (),
    ) -> list[float]:
        """The feature vector of one job (pure Python: no per-call numpy overhead)."""
        own = own_ratios(mps, self.levels)
        co = [own_ratios(c, self.levels) for c in co_runners if usable_profile(c)] or [own]
        k = len(self.levels)
        mean = [sum(c[i] for c in co) / len(co) for i in range(k)]
        mx = [max(c[i] for c in co) for i in range(k)]
        mn = [min(c[i] for c in co) for i in range(k)]
        n = float(jobs_in_mix)
        if not self.with_interactions:
            return [*own, n, *mean, *mx, *mn]
        return [*own, n, *mean, *mx, *mn, *(v * n for v in own), *(v / n for v in own)]

    def matrix(self, rows: Sequence[ProfileRow]) -> np.ndarray:
        """Feature matrix of rows; co-runners are the other rows of the same mix."""
        import numpy as np

        by_mix: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            if r.mix is not None:
                by_mix[r.mix].append(i)
        out = np.empty((len(rows), len(self.names)))
        for i, r in enumerate(rows):
            others = [rows[j].mps for j in by_mix.get(r.mix or "", ()) if j != i]
            out[i] = self.vector(r.mps, r.jobs_in_mix, others)
        return out
