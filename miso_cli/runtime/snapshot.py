"""What a run shows of itself to the live view: a typed snapshot, not the executor.

:meth:`miso_cli.runtime.executor.Executor.snapshot` builds one;
:class:`miso_cli.operate.dashboard.Dashboard` draws it.
Anything the view needs is here, so the view depends on no executor internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GpuRow:
    index: int
    name: str
    mode: str  # full, mig, mps
    layout: str  # the MIG layout's name, or "whole GPU"
    doing: str = ""  # "changing to mig (jobs checkpointing)", "profiling at 50% (level 2/3)"


@dataclass(frozen=True)
class JobRow:
    name: str
    state: str  # as shown: the journal's state, "not yet" (arrives later), or "profiling"
    where: str  # "0:3g.20gb", "1:whole", "0:mps", or "-"
    journal_state: str = ""  # the journal's state (waiting, running, finished, ...)
    progress: dict[str, Any] = field(default_factory=dict)  # step, total, fraction, eta_s, ...
    cpu_percent: float | None = None
    rss_mb: float | None = None


@dataclass(frozen=True)
class RunSnapshot:
    run_id: str
    policy: str
    elapsed_s: float
    gpus: list[GpuRow]
    jobs: list[JobRow]
    # issue-15b: catalog seconds per wall second of synthetic jobs (1 on real GPUs): the
    # live view shows step times in the event lines' time.
    step_time_scale: float = 1.0

    def counts(self) -> dict[str, int]:
        """Jobs per journal state."""
        out: dict[str, int] = {}
        for j in self.jobs:
            state = j.journal_state or j.state
            out[state] = out.get(state, 0) + 1
        return out
