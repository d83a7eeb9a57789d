"""The simulated GPU's MPS performance model.

A job under MPS with ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE = p`` may use at most
``p`` percent of the GPU's SMs. Alone, its step time at ``p`` is the catalog's
``mps_<pct>`` curve (:meth:`miso_cli.catalog.Workload.mps_step_time_ms`,
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
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from miso_cli.catalog import Workload

# Slowdown per 100 % of oversubscribed SMs, fitted on a100-40gb/mps_mig_pairs.csv
# by benchmarks/mps_interference.py.
INTERFERENCE = 0.39
MPS_MODELS = ("optimistic", "pessimistic")


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
    ``model`` is ``optimistic`` or ``pessimistic`` (see the module docstring).
    """
    solo = workload.mps_step_time_ms(_check_pct(pct))
    factor = slowdown(pct, (p for _, p in co_runners))
    if _check_model(model) == "pessimistic" and co_runners:
        total = demand(workload, pct) + sum(demand(w, p) for w, p in co_runners)
        factor = max(factor, total)
    return solo * factor


def colocated_step_times_ms(
    mix: Sequence[Workload], pct: float, model: str = "optimistic"
) -> list[float]:
    """Step time of every job of ``mix`` when all run together at ``pct`` (MISO's profile)."""
    return [
        step_time_ms(w, pct, [(o, pct) for j, o in enumerate(mix) if j != i], model)
        for i, w in enumerate(mix)
    ]
