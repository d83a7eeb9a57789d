"""Two simple policies: whole GPUs (``nopart``) and a fixed MIG layout (``layout``).

Both follow the contract of :mod:`miso_cli.policy.core`: they look at the view
and return declarative targets, nothing else. They are the baselines that the
planning policies are measured against, and what ``miso run`` uses when no
planner is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from miso_cli.gpu.layouts import Layout, LayoutError, Slice, place
from miso_cli.gpu.profiles import GpuModel
from miso_cli.policy.core import ClusterView, Event, GpuTarget, GpuView, JobView, Policy


def _running_on(view: ClusterView, gpu: GpuView) -> dict[str, Slice | None]:
    """Jobs the view places on ``gpu`` that are still alive (not finished or failed)."""
    out: dict[str, Slice | None] = {}
    for name, sl in gpu.jobs.items():
        job = view.jobs.get(name)
        if job is not None and job.state in ("running", "profiling"):
            out[name] = sl
    return out


class NoPart(Policy):
    """One job per whole GPU, first come first served (then priority).

    The MISO paper's "no partition" baseline: a GPU runs one job at a time at
    full size; a job waits until a GPU is free.
    """

    name = "nopart"
    reacts_to_progress = False
    reads_measured_speed = False

    def decide(self, event: Event, view: ClusterView) -> list[GpuTarget]:
        queue = view.queue()
        taken: set[str] = set()  # given a GPU by this decision
        targets: list[GpuTarget] = []
        for gpu in view.gpus:
            if gpu.busy:
                continue
            running = _running_on(view, gpu)
            if running:
                continue
            # The first job of the queue, not yet given a GPU, that fits this one whole.
            job = next(
                (j for j in queue if j.name not in taken and _fits_whole(j, gpu.model)), None
            )
            if job is None:
                if gpu.mode != "full" or gpu.jobs:
                    # Leave a MIG or MPS setup behind only while it has work.
                    targets.append(GpuTarget(gpu.index, "full", reason="idle: whole GPU"))
                continue
            taken.add(job.name)
            targets.append(
                GpuTarget(
                    gpu.index,
                    "full",
                    assignment={job.name: None},
                    reason=f"{job.name} is next in the queue and GPU {gpu.index} is free",
                )
            )
        return targets


def _fits_whole(job: JobView, model: GpuModel) -> bool:
    return job.memory_mb is None or job.memory_mb <= model.memory_mb


def _slice_memory(model: GpuModel, sl: Slice) -> int:
    return model.profile(sl.profile).memory_mb


class FixedLayout(Policy):
    """The same MIG layout on every GPU (or one per GPU); jobs take free instances.

    Each waiting job, in queue order, takes the largest free instance whose
    memory holds it (across all GPUs; ties go to the lower GPU index, then the
    lower placement). A job that fits no free instance waits, and the jobs
    behind it may pass it (backfilling), so one large job does not idle the
    small instances.

    ``layout`` is a list of profile names (``["3g.20gb", "2g.10gb", "2g.10gb"]``,
    a name may carry ``@start``) for every GPU, or a mapping GPU index -> such a
    list. Placements are chosen against the GPU's current layout so that
    instances already there are kept.
    """

    name = "layout"
    reacts_to_progress = False
    reads_measured_speed = False

    def __init__(self, layout: Sequence[str] | Mapping[int, Sequence[str]]) -> None:
        if isinstance(layout, Mapping):
            self.per_gpu: dict[int, list[str]] | None = {int(k): list(v) for k, v in layout.items()}
            self.default: list[str] | None = None
        else:
            self.per_gpu = None
            self.default = list(layout)
        self._placed: dict[int, Layout] = {}

    def wanted(self, gpu: int) -> list[str] | None:
        if self.per_gpu is not None:
            return self.per_gpu.get(gpu)
        return self.default

    def layout_for(self, gpu: GpuView) -> Layout | None:
        """The placed layout for ``gpu`` (None: the policy leaves this GPU alone).

        Raises :class:`~miso_cli.gpu.layouts.LayoutError` when the profiles do not
        fit on the GPU's model, so a driver can check this before starting anything.
        """
        if gpu.index in self._placed:
            return self._placed[gpu.index]
        wanted = self.wanted(gpu.index)
        if wanted is None:
            return None
        if not wanted:
            raise LayoutError(f"GPU {gpu.index}: the layout names no MIG profile")
        placed = place(gpu.model, wanted, prefer=gpu.layout if gpu.mode == "mig" else None)
        self._placed[gpu.index] = placed
        return placed

    def decide(self, event: Event, view: ClusterView) -> list[GpuTarget]:
        plans: dict[int, tuple[GpuView, Layout, dict[str, Slice | None]]] = {}
        free: list[tuple[int, Slice, int]] = []  # (gpu, slice, memory MB)
        for gpu in view.gpus:
            layout = self.layout_for(gpu)
            if layout is None or gpu.busy:
                continue
            running = _running_on(view, gpu)
            reshape = gpu.mode != "mig" or (gpu.layout is not layout and gpu.layout != layout)
            if not reshape and len(running) >= len(layout.slices):
                continue  # every instance runs a job (one each) and stays: nothing to plan
            if reshape:
                # Only jobs whose instance survives keep running; the driver
                # requeues the others.
                running = {j: s for j, s in running.items() if s in layout.slices}
            taken = set(running.values())
            plans[gpu.index] = (gpu, layout, dict(running))
            for sl in layout.slices:
                if sl not in taken:
                    free.append((gpu.index, sl, _slice_memory(gpu.model, sl)))
        changed: dict[int, list[str]] = {
            i: ["set layout"]
            for i, (g, lay, _) in plans.items()
            if g.mode != "mig" or g.layout != lay
        }
        # Largest compute first, then most memory; ties: lower GPU, lower placement.
        free.sort(key=lambda f: (-f[1].slices, -f[2], f[0], f[1].start))
        for job in view.queue():
            if not free:
                break  # every instance is taken: the rest of the queue waits
            for k, (gi, sl, mem) in enumerate(free):
                if job.memory_mb is not None and job.memory_mb > mem:
                    continue
                plans[gi][2][job.name] = sl
                changed.setdefault(gi, []).append(f"{job.name} -> {sl.profile}@{sl.start}")
                del free[k]
                break
        targets = []
        for gi, reasons in sorted(changed.items()):
            _, layout, assignment = plans[gi]
            reason = "; ".join(reasons)
            targets.append(
                GpuTarget(gi, "mig", layout=layout, assignment=assignment, reason=reason)
            )
        return targets
