"""Seconds per step measured from a job's own progress on its instance.

The stretch measured starts at the first look that finds the job progressing on
its instance, so the time it spent restoring from its checkpoint or waiting for
its instance is not counted as slow steps. What is measured is keyed by compute
slices and reaches the policy as :attr:`~miso_cli.policy.core.JobView.measured_step_s`.

Both drivers keep one :class:`ProgressMeter` and call :meth:`ProgressMeter.look`
before each decision; ``miso run`` journals :meth:`ProgressMeter.to_json`, so a
resumed run keeps what was measured.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from miso_cli.gpu.layouts import Slice

MEASURE_MIN_S = 5.0  # shortest stretch of progress a step time is measured over


@dataclass(frozen=True)
class Look:
    """One job as a driver sees it at one instant."""

    name: str
    state: str  # the policy's state name: waiting, running, profiling, finished, failed
    gpu: int | None
    slice: Slice | None
    done_steps: float


@dataclass
class _Anchor:
    gpu: int | None
    slice: Slice | None
    since: float  # nan until the job is seen progressing on this instance
    done: float


@dataclass
class ProgressMeter:
    """Per job: where its current measurement started, and seconds per step per slice count."""

    min_s: float = MEASURE_MIN_S
    anchors: dict[str, _Anchor] = field(default_factory=dict)
    measured: dict[str, dict[int, float]] = field(default_factory=dict)

    def look(self, now: float, jobs: Iterable[Look]) -> None:
        """Update the measurements from the jobs' progress at ``now``."""
        for job in jobs:
            self.see(now, job.name, job.state, job.gpu, job.slice, job.done_steps)

    def see(
        self,
        now: float,
        name: str,
        state: str,
        gpu: int | None,
        slice: Slice | None,
        done_steps: float,
    ) -> bool:
        """:meth:`look` at one job; whether what is measured of it (:meth:`of`) changed."""
        if state != "running" or slice is None:
            self.anchors.pop(name, None)
            if state in ("finished", "failed"):
                return self.measured.pop(name, None) is not None
            return False
        prev = self.anchors.get(name)
        if prev is None or prev.gpu != gpu or (prev.slice is not slice and prev.slice != slice):
            self.anchors[name] = _Anchor(gpu, slice, math.nan, done_steps)
            return False
        since = prev.since
        if since != since:  # nan: not yet seen progressing here
            if done_steps > prev.done:
                self.anchors[name] = _Anchor(gpu, slice, now, done_steps)
            return False
        elapsed = now - since
        if elapsed >= self.min_s and done_steps > prev.done:
            per_step = elapsed / (done_steps - prev.done)
            measured = self.measured.get(name)
            if measured is None:
                measured = self.measured[name] = {}
            if measured.get(slice.slices) != per_step:
                measured[slice.slices] = per_step
                return True
        return False

    def of(self, name: str) -> dict[int, float]:
        """Seconds per step of ``name`` by compute slices (a copy; empty when unknown)."""
        return dict(self.measured.get(name, {}))

    def to_json(self) -> dict[str, Any]:
        def sl(s: Slice | None) -> list[Any] | None:
            return None if s is None else [s.start, s.size, s.profile, s.slices]

        return {
            "anchors": {
                n: [a.gpu, sl(a.slice), None if math.isnan(a.since) else a.since, a.done]
                for n, a in self.anchors.items()
            },
            "measured": {n: {str(k): v for k, v in m.items()} for n, m in self.measured.items()},
        }

    @staticmethod
    def from_json(data: Any, min_s: float = MEASURE_MIN_S) -> ProgressMeter:
        """The meter a journal kept; anything damaged is dropped (measured again)."""
        meter = ProgressMeter(min_s)
        if not isinstance(data, dict):
            return meter
        try:
            for n, (gpu, s, since, done) in dict(data.get("anchors", {})).items():
                sl = None if s is None else Slice(int(s[0]), int(s[1]), str(s[2]), int(s[3]))
                meter.anchors[str(n)] = _Anchor(
                    None if gpu is None else int(gpu),
                    sl,
                    math.nan if since is None else float(since),
                    float(done),
                )
            for n, m in dict(data.get("measured", {})).items():
                meter.measured[str(n)] = {int(k): float(v) for k, v in dict(m).items()}
        except (TypeError, ValueError, IndexError):
            return ProgressMeter(min_s)
        return meter
