"""The rules both drivers apply to a target: what is kept, what restarts, what is counted.

Written once here and applied by :class:`miso_cli.engine.core.Engine`, which both
:mod:`miso_cli.runtime.executor` (real processes, wall clock) and
:mod:`miso_cli.sim.simulator` (virtual jobs, virtual clock) drive, so a figure
``miso simulate`` prints counts what ``miso run`` does:

* a *reconfiguration* is a target that changes a GPU's mode or its MIG layout;
* a job on the GPU that the target no longer lists is *requeued* (checkpointed);
* a running job whose instance, GPU or mode changes is *migrated*: checkpointed and
  restarted on its new place, paying its restart cost;
* under MPS a new share is a migration too: a CUDA context's active-thread
  percentage is fixed when it is created, so the job restarts to get it;
* events of one instant are decided in :data:`EVENT_ORDER`;
* a step time measured on an instance becomes a whole-GPU one by the job's
  prediction (:func:`step_time_7g_s`);
* slice utilisation counts a whole GPU, or one shared under MPS, once
  (:func:`busy_slice_seconds`);
* a target is checked (:func:`check_target`) before anything is done for it;
* an MPS profiling phase runs its levels in :data:`PROFILE_ORDER`, smallest share
  first, so the jobs end the phase at 100 %, the share they keep; every level after
  the first restarts the jobs (a new share), paying their restart cost.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from miso_cli.gpu.layouts import Layout, Slice, fits
from miso_cli.gpu.profiles import GpuModel
from miso_cli.policy.core import GpuTarget, SlicePrediction

# What happened at one instant reaches the policy in this order: jobs that ended,
# then profiling phases that ended (in GPU order), then arrivals (in queue
# order): a finish frees room the newly profiled and the newcomers may take.
EVENT_ORDER: tuple[str, ...] = ("finish", "failed", "profiled", "arrival")

PROFILE_LEVELS: tuple[int, ...] = (100, 50, 14)  # MPS active-thread % a profile measures
PROFILE_ORDER: tuple[int, ...] = tuple(sorted(PROFILE_LEVELS))  # the order a phase runs them


@dataclass(frozen=True)
class Placed:
    """Where a running job is now: its GPU, its instance (None: whole GPU or MPS), its share."""

    gpu: int
    slice: Slice | None
    share: float | None = None  # MPS active-thread %, in mode "mps"


def is_reconfiguration(mode: str, layout: Layout, target: GpuTarget) -> bool:
    """Whether carrying out ``target`` changes the GPU's mode or its MIG layout."""
    if target.mode != mode:
        return True
    return target.mode == "mig" and target.layout != layout


def moves(gpu: int, mode: str, target: GpuTarget, running: Mapping[str, Placed]) -> dict[str, str]:
    """The running jobs ``target`` stops: job -> ``requeue`` or ``migrate``.

    ``running`` holds every running job of the cluster (a job the target takes from
    another GPU migrates). Jobs not named stay as they are.
    """
    out: dict[str, str] = {}
    for name, where in running.items():
        here = where.gpu == gpu
        wanted = name in target.assignment
        if here and not wanted:
            out[name] = "requeue"
            continue
        if not wanted:
            continue
        if not here:
            out[name] = "migrate"
            continue
        new_slice = target.assignment[name] if target.mode == "mig" else None
        if target.mode != mode or where.slice != new_slice:
            out[name] = "migrate"
        elif target.mode == "mps" and (
            target.profile_s or float(target.mps_share.get(name, 100)) != (where.share or 100.0)
        ):
            out[name] = "migrate"  # a new share (or a profiling phase) needs a new context
    return out


class TargetError(ValueError):
    """A policy asked for something no GPU can be (a bug of the policy, not of the input)."""


def check_target(model: GpuModel, target: GpuTarget, who: str) -> None:
    """Raise :class:`TargetError` unless ``target`` can be carried out on a GPU of ``model``.

    Both drivers check a target before acting on it: ``miso run`` before it asks any
    job to checkpoint, so a wrong target stops nothing.
    """
    if target.profile_s and target.mode != "mps":
        raise TargetError(f"{who}: profiling needs mode 'mps'")
    if target.mode == "mig":
        placed: list[Any] = []
        for sl in target.layout.slices:
            try:
                prof = model.profile(sl.profile)
            except KeyError:
                raise TargetError(f"{who}: unknown profile {sl.profile}") from None
            if not fits(model, placed, prof, sl.placement):
                raise TargetError(f"{who}: {sl.key} does not fit in {target.layout.name}")
            placed.append((prof, sl.placement))
        used = list(target.assignment.values())
        if any(s is None or s not in target.layout.slices for s in used):
            raise TargetError(f"{who}: a job is assigned to no instance of the layout")
        if len(set(used)) != len(used):
            raise TargetError(f"{who}: two jobs on one instance")
    elif target.mode == "full":
        if len(target.assignment) > 1:
            raise TargetError(f"{who}: more than one job on a whole GPU")
    elif target.mode != "mps":
        raise TargetError(f"{who}: unknown mode {target.mode!r}")


def busy_slice_seconds(
    spans: Iterable[tuple[int | None, int | None, float, float]], gpu_slices: Mapping[int, int]
) -> float:
    """Compute-slice seconds occupied by jobs, counted as ``miso simulate`` counts them.

    ``spans``: (GPU, compute slices of the instance or None for a whole GPU / MPS,
    start, end). A job on an instance occupies its slices; jobs on a whole GPU or
    sharing it under MPS occupy all its slices once, however many share it.
    """
    whole: dict[int, list[tuple[float, float]]] = {}
    busy = 0.0
    for gpu, slices, start, end in spans:
        if end <= start:
            continue
        if slices is not None:
            busy += slices * (end - start)
        elif gpu is not None:
            whole.setdefault(gpu, []).append((start, end))
    for gpu, intervals in whole.items():
        covered, reach = 0.0, -math.inf
        for start, end in sorted(intervals):
            if end > reach:
                covered += end - max(start, reach)
                reach = end
        busy += gpu_slices.get(gpu, 7) * covered
    return busy


def step_time_7g_s(
    step_s: float, slices: int, full_slices: int, prediction: SlicePrediction | None
) -> float:
    """A job's seconds per step on a whole GPU, from its seconds per step on ``slices``.

    With a prediction, by its relative step time there (as miso+ turns measured
    progress into remaining time); without one, by compute slices, a rough figure
    better than none.
    """
    if slices >= full_slices:
        return step_s
    rel = prediction.relative.get(slices) if prediction is not None else None
    if rel:
        return step_s / rel
    return step_s * slices / full_slices
