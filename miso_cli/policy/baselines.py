"""The MISO paper's baselines besides whole GPUs: ``static`` and ``mps``.

``static`` (the paper's "optimal static partition" baseline as its artifact runs
it): every GPU keeps one fixed MIG layout, by default 3g+2g+2g; a new job takes
the largest free instance that holds it (across GPUs); when a larger instance
falls idle and nothing waits that fits it, the job on the smallest instance that
gains from the move is checkpointed and promoted to it (a migration).

``mps``: no MIG; at most 3 jobs per GPU under MPS, each at an equal share of the
active threads (33% in the paper's artifact), FIFO with backfilling of jobs whose
memory fits beside the GPU's other jobs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from miso_cli.gpu.layouts import Layout, LayoutError, Slice, place
from miso_cli.policy.core import ClusterView, Event, GpuTarget, GpuView, JobView, Policy
from miso_cli.policy.simple import FixedLayout

# The MISO paper's static partition, 3g+2g+2g on an A100, by compute slices so that it
# carries over to every 7-slice model; on the 4-slice A30 its analogue is 2g+1g+1g.
DEFAULT_STATIC_SLICES = {7: (3, 2, 2), 4: (2, 1, 1)}


class Static(FixedLayout):
    """A fixed layout per GPU; largest free instance first; promotion by migration."""

    name = "static"

    def __init__(
        self,
        layout: Sequence[str] | Mapping[int, Sequence[str]] | None = None,
        promote: bool = True,
    ) -> None:
        super().__init__(layout if layout is not None else ())
        self.model_default = layout is None
        self.promote = promote

    def layout_for(self, gpu: GpuView) -> Layout | None:
        if self.model_default and gpu.index not in self._placed:
            sizes = DEFAULT_STATIC_SLICES.get(gpu.model.compute_slices)
            if sizes is None:
                raise LayoutError(
                    f"GPU {gpu.index}: no default static layout for {gpu.model.key}; "
                    "give one (e.g. --static-layout)"
                )
            names = [gpu.model.by_slices(g).name for g in sizes]
            prefer = gpu.layout if gpu.mode == "mig" else None
            self._placed[gpu.index] = place(gpu.model, names, prefer=prefer)
        return super().layout_for(gpu)

    def decide(self, event: Event, view: ClusterView) -> list[GpuTarget]:
        targets = {t.gpu: t for t in super().decide(event, view)}
        if not self.promote or view.queue():
            return list(targets.values())
        # Only where nothing waits: a waiting job has the first claim on a free instance.
        return self._promote(view, targets)

    def _promote(self, view: ClusterView, targets: dict[int, GpuTarget]) -> list[GpuTarget]:
        state: dict[int, tuple[object, dict[str, Slice | None]]] = {}
        for gpu in view.gpus:
            if gpu.busy:
                continue
            layout = self.layout_for(gpu)
            if layout is None:
                continue
            if gpu.index in targets:
                assignment = dict(targets[gpu.index].assignment)
            else:
                if gpu.mode != "mig" or gpu.layout != layout:
                    continue
                assignment = {
                    j: s
                    for j, s in gpu.jobs.items()
                    if j in view.jobs and view.jobs[j].state == "running"
                }
            state[gpu.index] = (layout, assignment)
        changed: dict[int, list[str]] = {}
        while True:
            free = [
                (gi, sl)
                for gi, (layout, a) in state.items()
                for sl in layout.slices  # type: ignore[attr-defined]
                if sl not in a.values()
            ]
            if not free:
                break
            free.sort(key=lambda f: (-f[1].slices, f[0], f[1].start))
            gi, big = free[0]
            movers = []
            for gj, (_, a) in state.items():
                for name, sl in a.items():
                    job = view.jobs.get(name)
                    if sl is None or job is None or sl.slices >= big.slices:
                        continue
                    if not job.checkpointable or not _fits(view, job, gi, big):
                        continue
                    movers.append((sl.slices, job.arrival_s, name, gj, sl))
            if not movers:
                break
            _, _, name, gj, _ = min(movers)
            del state[gj][1][name]
            state[gi][1][name] = big
            changed.setdefault(gj, []).append(f"{name} leaves for a larger instance")
            changed.setdefault(gi, []).append(f"promote {name} to {big.profile}@{big.start}")
        for gi, reasons in changed.items():
            layout, assignment = state[gi]
            prev = targets.get(gi)
            reason = "; ".join(([prev.reason] if prev and prev.reason else []) + reasons)
            targets[gi] = GpuTarget(
                gi,
                "mig",
                layout=layout,  # type: ignore[arg-type]
                assignment=dict(assignment),
                reason=reason,
            )
        return [targets[k] for k in sorted(targets)]


def _fits(view: ClusterView, job: JobView, gpu: int, sl: Slice) -> bool:
    if job.memory_mb is None:
        return True
    model = view.gpus[[g.index for g in view.gpus].index(gpu)].model
    return job.memory_mb <= model.profile(sl.profile).memory_mb


class Mps(Policy):
    """Up to ``max_jobs`` jobs per GPU under MPS at ``share`` percent of the threads each."""

    name = "mps"
    reacts_to_progress = False
    reads_measured_speed = False

    def __init__(self, max_jobs: int = 3, share: int = 33) -> None:
        if max_jobs < 1:
            raise ValueError("max_jobs must be at least 1")
        if not 1 <= share <= 100:
            raise ValueError("share must be a percentage between 1 and 100")
        self.max_jobs = max_jobs
        self.share = share

    def decide(self, event: Event, view: ClusterView) -> list[GpuTarget]:
        load: dict[int, dict[str, Slice | None]] = {}
        memory: dict[int, float] = {}
        for gpu in view.gpus:
            if gpu.busy:
                continue
            alive = {
                j: None
                for j in gpu.jobs
                if j in view.jobs and view.jobs[j].state in ("running", "profiling")
            }
            load[gpu.index] = alive
            memory[gpu.index] = sum(view.jobs[j].memory_mb or 0.0 for j in alive)
        models = {g.index: g.model for g in view.gpus}
        changed: dict[int, list[str]] = {}
        # The GPUs with room for one more job (by count), in load's order.
        open_ = [gi for gi, jobs in load.items() if len(jobs) < self.max_jobs]
        for job in view.queue():
            if not open_:
                break  # every GPU is full: the rest of the queue waits
            room = [
                gi for gi in open_ if memory[gi] + (job.memory_mb or 0.0) <= models[gi].memory_mb
            ]
            if not room:
                continue  # backfill: a smaller job behind may still fit
            gi = min(room, key=lambda i: (len(load[i]), i))
            load[gi][job.name] = None
            memory[gi] += job.memory_mb or 0.0
            if len(load[gi]) >= self.max_jobs:
                open_.remove(gi)
            changed.setdefault(gi, []).append(f"{job.name} joins GPU {gi} under MPS")
        out = []
        for gi, reasons in sorted(changed.items()):
            out.append(
                GpuTarget(
                    gi,
                    "mps",
                    assignment=dict(load[gi]),
                    mps_share={j: self.share for j in load[gi]},
                    reason="; ".join(reasons),
                )
            )
        return out
