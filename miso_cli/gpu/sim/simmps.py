"""The simulated GPU's MPS performance model.

A job under MPS with ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE = p`` may use at most
``p`` percent of the GPU's SMs. Alone, its step time at ``p`` is the catalog's
``mps_<pct>`` curve (:meth:`miso_cli.spec.catalog.Workload.mps_step_time_ms`,
interpolated in throughput between the measured levels).

Co-located jobs slow each other down. MPS does not partition SMs: the
percentage is a cap, so when the caps of the jobs sharing one daemon add up to
more than 100 % their kernels queue for the same SMs. The model::

    step_time(w, p, co) = solo_w(p) * S
    S = 1 + INTERFERENCE * max(0, P - 100) / 100
    P = p + sum of the co-runners' percentages

so jobs whose caps fit side by side (seven jobs at 14 %) run as if alone, and
every further 100 % of requested SMs adds INTERFERENCE (0.39) of the solo step
time. The slowdown is well below proportional (seven jobs at 100 % each are
3.3x slower, not 7x) because no job keeps every SM busy for its whole step.

Why this model, from ``a100-40gb/mps_mig_pairs.csv`` (MISO's A100 measurements:
mixes of 1 to 7 jobs, every job of a mix at the same percentage): a row only
holds ratios between levels, so what the data can show is how a job's
``mps_100 / mps_14`` and ``mps_50 / mps_14`` ratios change from alone to a mix
of n jobs. They grow steadily with n: on average the log of the 100 %/14 %
ratio rises by 0.29, 0.48, 0.72, 0.92, 1.04, 1.14 for n = 2..7 (a small
embedding job is about 0.7 alone and 2.8 among seven: slower at 100 % than at
14 %), and the 50 %/14 % ratio by 0.04 at n = 2 (P = 100, no oversubscription)
up to 0.79 at n = 7. That is the oversubscription effect above; at 14 % the
caps never exceed 98 %. Fitting INTERFERENCE to all 14620 job-level
observations (least squares on the log of the ratio change) gives 0.39: the
mean absolute error in log ratio falls from 0.69 (no interference) to 0.23,
against 0.20 for the best any predictor that knows only the workload and n
could do (the per-(workload, n) median). A power law in P fits as well
overall but overshoots at n = 2..3. Weighting co-runners by how compute-bound
they are cannot be fitted here: repeated workloads share one row and the rows
of some workload families are withheld, so a mix's co-runners are only
partly known. ``benchmarks/mps_interference.py`` refits and prints these
figures.

What the data cannot show: a slowdown that is the same at every level (memory
bandwidth, the small dummy jobs that filled every measured mix) cancels in the
ratios. The catalog's solo MPS columns were measured with those dummies
present, so they already carry that share. In particular nothing in the data
says what happens when the caps add up to 100 % or less: the model above
(``optimistic``) assumes nothing happens, so seven jobs at 14 % each run as
fast as each does alone. For a job that keeps 40 % of its speed at 14 % of the
SMs (bert_2 in the A100 catalog) that is 2.8 whole GPUs of progress from one
GPU, against 1.4 on its best MIG instance: MPS at small shares is worth more
than any MIG partition, and the ``mps`` baseline gains from it.

Hence a second setting, ``pessimistic``: co-located jobs share one GPU's worth
of progress no better than MIG would let them. Each job's *demand* is the
fraction of a GPU that MIG would need to run it as fast as it runs alone at its
share (on the best trade-off of its instance sizes, time-shared, so fractional
slices count; :func:`mig_capacity`); when the demands of
the jobs under one daemon add up to more than 1, every job slows down by that
sum (and never by less than the oversubscription slowdown above). One job alone
is never slowed. Under this setting MPS co-location never beats the best MIG
partition of the same jobs, so a comparison with ``mps`` that still favours
MIG policies does not rest on MPS's free lunch.

Uncertainty: the truth for caps summing to <= 100 % lies between the two
settings for compute-bound mixes, and may lie below ``pessimistic`` for jobs
that are bound by memory bandwidth (which MIG partitions and MPS does not). No
measurement here separates them: the coordinator may take H200 measurements of
mixes at 14 % each (``benchmarks/mps_interference.py`` refits), which would
replace both assumptions with a fitted one. ``miso simulate --mps-model``
picks the setting; the default stays ``optimistic`` (the earlier behaviour).

A third setting, ``measured``, follows the H200 measurements of
``tests/data/real/h200-mps-2026-11-30.json`` (docs/hardware.md, "MPS
interference, measured"): three synthetic kinds, compute-bound ``matmul``,
memory-bound ``membw`` and launch-bound ``small``, alone and in mixes whose
shares sum to 100 % or less. A job's kind is read off its own solo MPS curve:
its *boundness* ``b = log(t(lo) / t(100)) / log(100 / lo)`` at its lowest
measured share ``lo`` (1 = step time grows as 1/share, 0 = flat;
:func:`boundness`). The kinds measure b = 0.04 (small, at 33 %), 0.58 (membw)
and 0.83 (matmul, both at 14 %); a job's compute weight ``c`` and memory weight
``m`` interpolate linearly between them (small: c = m = 0; membw: m = 1;
matmul: c = 1; :func:`kind_weights`). Then::

    S_i = 1 + sum_j v_j * (ALPHA * c_i * c_j + BETA * m_j * (c_i + m_i))

where ``v_j`` is co-runner j's solo speed at its share relative to 100 %:
compute-bound jobs contend for the compute that thread percentages do not
isolate, and a memory-heavy co-runner slows every busy job (memory bandwidth is
not partitioned). ALPHA = 0.48 and BETA = 0.65 are the least-squares fit on the
log slowdowns of the 14 job observations of the six <= 100 % mixes
(``tests/test_simmps_measured.py`` refits them): mean absolute error 0.076 in
log slowdown (no interference: 0.27); the worst miss is matmul beside membw
and small at 33 % each (model 1.43x, measured 1.10x), and a membw job beside a
matmul (model 1.0x, measured 1.14x). Above 100 % the larger of this and the
oversubscription factor applies (the H200 pairs at 100 % + 100 % were ~2x, so
that part is still optimistic there). Uncertainty: three kernels on one GPU;
the boundness read from a catalog measured on another GPU (A100, with dummy
co-runners) maps a job onto these kinds only roughly, and a flat curve cannot
tell a launch-bound job (harmless) from a badly memory-bound one, so jobs with
b below 0.04 are taken as harmless. Most catalog jobs have b between 0.4 and
0.65 and so count as mostly memory-heavy; reading a flat curve instead as
compute mixed with launch overhead (m = 0) gives milder interference (the mps
baseline on examples/trace.csv: mean JCT 1774 s instead of 1974 s). A job's MIG
curve could separate the two (bandwidth is partitioned by MIG, not by MPS) but
no MIG measurement of the three kinds exists to anchor that. The sum over
co-runners is linear, checked only up to three jobs; seven jobs at 14 % each
extrapolate. Measured is never faster than ``optimistic``; it may be slower
than ``pessimistic``, as the H200 was: two matmuls at 50 % each, or three at
33 %, delivered 0.97-0.98 of one GPU's progress, two membw at 50 % 1.0 GPU,
matmul beside membw 1.19 and a small job rode along for free.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from miso_cli.spec.catalog import Workload

# Slowdown per 100 % of oversubscribed SMs, fitted on a100-40gb/mps_mig_pairs.csv
# by benchmarks/mps_interference.py.
INTERFERENCE = 0.39
MPS_MODELS = ("optimistic", "pessimistic", "measured")

# The ``measured`` setting: boundness of the H200 kinds (small, membw, matmul) and the two
# channel weights fitted on their <= 100 % mixes (tests/test_simmps_measured.py refits them).
B_LAUNCH, B_MEMORY, B_COMPUTE = 0.044, 0.578, 0.831
ALPHA, BETA = 0.48, 0.65


def _check_pct(pct: float) -> float:
    pct = float(pct)
    if not 0 < pct <= 100:
        raise ValueError(f"active-thread percentage must be in (0, 100], got {pct}")
    return pct


def slowdown(pct: float, co_runner_pcts: Iterable[float]) -> float:
    """Factor (>= 1) by which co-runners at ``co_runner_pcts`` slow a job at ``pct``."""
    total = _check_pct(pct) + sum(_check_pct(p) for p in co_runner_pcts)
    return 1.0 + INTERFERENCE * max(0.0, total - 100.0) / 100.0


def mig_envelope(workload: Workload) -> list[tuple[float, float]]:
    """``(fraction of a GPU, speed)`` points of the best MIG trade-off, from ``(0, 0)`` up.

    Speeds are relative to the largest instance that fits (a whole GPU when it
    does); an instance of ``c`` of 7 compute slices is ``c / 7`` of a GPU. The
    points are the upper concave envelope: sharing time between two neighbours
    (or with idling) reaches every speed in between at the least capacity.
    """
    mig = {c: t for c, t in workload.mig_ms.items() if t is not None}
    if not mig:
        raise ValueError(f"workload {workload.name} has no MIG step time")
    full = max(mig)
    points = sorted((c / full, mig[full] / t) for c, t in mig.items())
    return concave_envelope([(0.0, 0.0), *points])


def concave_envelope(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The upper concave hull of ``points`` (x ascending), starting at the leftmost point."""
    hull: list[tuple[float, float]] = []
    best = sorted(points, key=lambda p: (p[0], -p[1]))
    for x, y in best:
        if hull and y <= hull[-1][1]:
            continue  # more capacity, no more speed
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (x - x1) <= (y - y1) * (x2 - x1):
                hull.pop()  # the middle point lies under the chord
            else:
                break
        hull.append((x, y))
    return hull


def mig_capacity(workload: Workload, speed: float) -> float:
    """Least fraction of a GPU that MIG needs to run ``workload`` at ``speed`` on average."""
    hull = mig_envelope(workload)
    for (x1, y1), (x2, y2) in zip(hull, hull[1:], strict=False):
        if speed <= y2:
            return x1 + (x2 - x1) * (speed - y1) / (y2 - y1)
    # Faster than its whole GPU (MPS at 100 % can be): as if on more than one GPU.
    x1, y1 = hull[-1]
    return x1 * speed / y1


def demand(workload: Workload, pct: float) -> float:
    """Fraction of a GPU that MIG would need to run ``workload`` as fast as it runs at ``pct``."""
    mig = {c: t for c, t in workload.mig_ms.items() if t is not None}
    step_full = mig[max(mig)] if mig else workload.mps_step_time_ms(100.0)
    speed = step_full / workload.mps_step_time_ms(_check_pct(pct))
    return mig_capacity(workload, speed)


def boundness(workload: Workload) -> float:
    """How much ``workload``'s solo MPS step time grows as its share falls (0 flat, 1 as 1/share).

    ``log(t(lo) / t(100)) / log(100 / lo)`` at its lowest measured share ``lo``
    (14 % when it has no MPS columns: the MIG columns stand in), clipped to [0, 1].
    """
    levels = [p for p, t in workload.mps_ms.items() if t and p < 100]
    lo = float(min(levels)) if levels else 14.0
    ratio = workload.mps_step_time_ms(lo) / workload.mps_step_time_ms(100.0)
    return min(1.0, max(0.0, math.log(ratio) / math.log(100.0 / lo)))


def kind_weights(b: float) -> tuple[float, float]:
    """``(compute, memory)`` weights of a job of boundness ``b`` (see the module docstring)."""
    if b <= B_LAUNCH:
        return 0.0, 0.0
    if b <= B_MEMORY:
        return 0.0, (b - B_LAUNCH) / (B_MEMORY - B_LAUNCH)
    if b <= B_COMPUTE:
        x = (b - B_MEMORY) / (B_COMPUTE - B_MEMORY)
        return x, 1.0 - x
    return 1.0, 0.0


def measured_slowdown(
    workload: Workload,
    pct: float,
    co_runners: Sequence[tuple[Workload, float]],
    alpha: float = ALPHA,
    beta: float = BETA,
) -> float:
    """Interference factor (>= 1) of the ``measured`` setting, ignoring oversubscription."""
    _check_pct(pct)
    ci, mi = kind_weights(boundness(workload))
    total = 0.0
    for w, p in co_runners:
        cj, mj = kind_weights(boundness(w))
        speed = w.mps_step_time_ms(100.0) / w.mps_step_time_ms(_check_pct(p))
        total += speed * (alpha * ci * cj + beta * mj * (ci + mi))
    return 1.0 + total


def _check_model(model: str) -> str:
    if model not in MPS_MODELS:
        raise ValueError(f"unknown MPS model {model!r} (known: {', '.join(MPS_MODELS)})")
    return model


def step_time_ms(
    workload: Workload,
    pct: float,
    co_runners: Sequence[tuple[Workload, float]] = (),
    model: str = "optimistic",
) -> float:
    """Step time (ms) of ``workload`` at ``pct`` active threads beside ``co_runners``.

    ``co_runners`` are the other jobs under the same MPS daemon, as
    ``(workload, their percentage)``; an empty list means the job is alone.
    ``model`` is ``optimistic``, ``pessimistic`` or ``measured`` (see the module docstring).
    """
    solo = workload.mps_step_time_ms(_check_pct(pct))
    factor = slowdown(pct, (p for _, p in co_runners))
    if _check_model(model) == "pessimistic" and co_runners:
        total = demand(workload, pct) + sum(demand(w, p) for w, p in co_runners)
        factor = max(factor, total)
    elif model == "measured" and co_runners:
        factor = max(factor, measured_slowdown(workload, pct, co_runners))
    return solo * factor


def colocated_step_times_ms(
    mix: Sequence[Workload], pct: float, model: str = "optimistic"
) -> list[float]:
    """Step time of every job of ``mix`` when all run together at ``pct`` (MISO's profile)."""
    return [
        step_time_ms(w, pct, [(o, pct) for j, o in enumerate(mix) if j != i], model)
        for i, w in enumerate(mix)
    ]
