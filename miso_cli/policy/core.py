"""The contract between scheduling policies and the two drivers that execute them.

A *driver* owns time and effects: :mod:`miso_cli.runtime.executor` runs real processes on
real or simulated GPUs in wall-clock time; :mod:`miso_cli.sim.simulator` replays a
trace on a virtual clock. Both feed the same :class:`Policy` the same
:class:`Event` s with a :class:`ClusterView` of the facts, and both carry out the
:class:`GpuTarget` s it returns. A policy never sleeps, never touches a GPU and
never reads a clock: it only looks at the view.

Targets are declarative: each says what one GPU should look like (mode, layout,
which job on which instance). The driver works out the steps from the
difference with what is there:

* jobs on an instance that is kept (same profile, same placement) keep running;
* instances not in the target layout are destroyed, new ones created
  (a *reconfiguration* of that GPU when the layout changes);
* a running job whose instance changes is checkpointed and restarted on its
  new one (a *migration*), paying its restart cost;
* a job on the GPU that the target no longer lists goes back to the queue
  (checkpointed if it can be, else restarted from scratch later).

Predictions are step times *relative to the whole GPU* (7 compute slices on
A100/H100: ``{7: 1.0, 4: 1.4, 3: 1.6, 2: 2.6, 1: 5.0}``), keyed by compute slices,
so policies are independent of the GPU model's memory sizes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from typing import Literal

from miso_cli.gpu.layouts import Layout, Slice
from miso_cli.gpu.profiles import GpuModel

JobStateName = Literal["waiting", "profiling", "running", "finished", "failed"]
GpuMode = Literal["full", "mig", "mps"]
# "resume": a driver took over a run another miso process left (``miso run --resume``):
# every job may have moved since the policy last looked. "tick": time passed and some
# fact changed (a driver sends no tick when nothing did, see ClusterView.fingerprint).
EventKind = Literal["arrival", "finish", "failed", "profiled", "tick", "resume"]
EVENT_KINDS: tuple[EventKind, ...] = ("arrival", "finish", "failed", "profiled", "tick", "resume")


@dataclass
class SlicePrediction:
    """A job's predicted step time per compute-slice count, relative to the whole GPU."""

    relative: dict[int, float]  # {7: 1.0, 4: 1.38, ...}; a missing key = unknown
    uncertainty: dict[int, float] = field(default_factory=dict)  # std. dev., same units
    source: str = "model"  # "model", "prior", "physical", "oracle", "measured"


@dataclass
class JobView:
    """What a policy may know about one job."""

    name: str
    arrival_s: float
    state: JobStateName = "waiting"
    priority: int = 0
    memory_mb: float | None = None  # peak GPU memory need, when known
    total_steps: float | None = None
    done_steps: float = 0.0
    step_time_7g_s: float | None = None  # measured or estimated seconds per step on 7g
    checkpointable: bool = True
    restart_cost_s: float = 30.0  # checkpoint + restore, seconds
    gpu: int | None = None
    slice: Slice | None = None  # None when on a whole GPU / under MPS
    prediction: SlicePrediction | None = None
    profiled: bool = False  # an MPS profile of this job exists
    workload: str | None = None  # catalog name, in simulations
    seq: int = 0  # position in the queue file / trace: ties of arrival_s go by it
    # Measured seconds per step by compute slices, from the job's own progress on an
    # instance (see miso_cli.engine.measure); the driver keeps it, so --resume has it.
    measured_step_s: dict[int, float] = field(default_factory=dict)
    # When the job took its current instance (the driver's clock), if the driver says.
    placed_s: float | None = None

    @property
    def remaining_steps(self) -> float | None:
        if self.total_steps is None:
            return None
        return max(0.0, self.total_steps - self.done_steps)


@dataclass
class GpuView:
    """What a policy may know about one GPU."""

    index: int
    model: GpuModel
    mode: GpuMode = "full"
    layout: Layout = field(default_factory=lambda: Layout(()))
    jobs: dict[str, Slice | None] = field(default_factory=dict)  # job -> its instance
    profiling: bool = False  # an MPS profiling phase is under way
    busy: bool = False  # a reconfiguration is under way

    def free_slices(self) -> list[Slice]:
        taken = {s for s in self.jobs.values() if s is not None}
        return [s for s in self.layout.slices if s not in taken]


@dataclass
class ClusterView:
    now: float
    gpus: list[GpuView]
    jobs: dict[str, JobView]

    # The names of the waiting jobs, when the driver keeps them (then queue() costs in
    # proportion to the queue, not to every job of the run); None: found from ``jobs``.
    waiting: Set[str] | None = None
    # The same names already in queue order (queue_key), when the driver keeps the queue
    # ordered as jobs join and leave it: then queue() does not sort.
    queue_order: Sequence[str] | None = None
    # The jobs on a GPU or claimed by a GPU's target, when the driver knows them: with
    # ``queue_order`` every job that is not finished or failed, so fingerprint() reads
    # those and not every job of the run.
    active: Set[str] | None = None

    def queue(self) -> list[JobView]:
        """Waiting jobs: priority (higher first), then first come first served.

        Jobs that arrive together keep their order in the queue file or trace.
        """
        if self.queue_order is not None:
            jobs = self.jobs
            return [jobs[n] for n in self.queue_order]
        if self.waiting is not None:
            waiting = [self.jobs[n] for n in self.waiting]
        else:
            waiting = [j for j in self.jobs.values() if j.state == "waiting"]
        return sorted(waiting, key=queue_key)

    def fingerprint(self) -> tuple[object, ...]:
        """The facts a decision depends on, apart from the clock and measured speeds.

        A driver skips a ``tick`` whose view has the fingerprint of the last view it
        decided on: the policy has already answered those facts.
        """
        gpus = tuple(
            (
                g.index,
                g.mode,
                g.layout,
                tuple(sorted(g.jobs.items(), key=lambda kv: kv[0])),
                g.busy,
                g.profiling,
            )
            for g in self.gpus
        )
        if self.queue_order is not None and self.active is not None:
            live = [self.jobs[n] for n in sorted({*self.queue_order, *self.active})]
        else:
            live = sorted(self.jobs.values(), key=lambda j: j.name)
        jobs = tuple(
            (j.name, j.state, j.profiled, j.prediction is not None, j.gpu, j.slice)
            for j in live
            if j.state in ("waiting", "running", "profiling")
        )
        return gpus, jobs


def queue_key(job: JobView) -> tuple[int, float, int, str]:
    """A waiting job's place in the queue: priority (higher first), arrival, then its
    position in the queue file or trace."""
    return (-job.priority, job.arrival_s, job.seq, job.name)


@dataclass
class Event:
    kind: EventKind
    job: str | None = None
    gpu: int | None = None


@dataclass
class GpuTarget:
    """What one GPU should look like next. See the module docstring for how it is applied."""

    gpu: int
    mode: GpuMode
    layout: Layout = field(default_factory=lambda: Layout(()))  # for mode "mig"
    assignment: dict[str, Slice | None] = field(default_factory=dict)
    mps_share: dict[str, int] = field(default_factory=dict)  # mode "mps": job -> thread %
    profile_s: float | None = None  # mode "mps": profile for this long, then "profiled"
    reason: str = ""


class Policy(ABC):
    """A scheduling policy: events and facts in, GPU targets out. Pure and deterministic.

    Pure: the targets depend on the event and the view alone. A policy keeps nothing
    between calls; what it learns from the run (measured speeds, profiles) reaches it
    through the view, which the driver keeps and journals, so a resumed run decides as
    the interrupted one would have. Every event kind of :data:`EVENT_KINDS` is handled.
    """

    name: str = "policy"
    # Whether progress alone (steps done, measured speeds) can change a decision. When
    # False, a driver skips ticks whose facts (ClusterView.fingerprint) it already decided on.
    reacts_to_progress: bool = True
    # Whether the policy reads JobView.measured_step_s. When False, a driver need not
    # measure the jobs' speeds from their progress at each decision (the engine does not).
    reads_measured_speed: bool = True

    @abstractmethod
    def decide(self, event: Event, view: ClusterView) -> list[GpuTarget]:
        """Targets for the GPUs that should change; GPUs not named stay as they are."""
