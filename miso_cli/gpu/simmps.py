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
present, so they already carry that share; the model adds nothing more.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from miso_cli.catalog import Workload

# Slowdown per 100 % of oversubscribed SMs, fitted on a100-40gb/mps_mig_pairs.csv
# by benchmarks/mps_interference.py.
INTERFERENCE = 0.39


def _check_pct(pct: float) -> float:
    pct = float(pct)
    if not 0 < pct <= 100:
        raise ValueError(f"active-thread percentage must be in (0, 100], got {pct}")
    return pct


def slowdown(pct: float, co_runner_pcts: Iterable[float]) -> float:
    """Factor (>= 1) by which co-runners at ``co_runner_pcts`` slow a job at ``pct``."""
    total = _check_pct(pct) + sum(_check_pct(p) for p in co_runner_pcts)
    return 1.0 + INTERFERENCE * max(0.0, total - 100.0) / 100.0


def step_time_ms(
    workload: Workload,
    pct: float,
    co_runners: Sequence[tuple[Workload, float]] = (),
) -> float:
    """Step time (ms) of ``workload`` at ``pct`` active threads beside ``co_runners``.

    ``co_runners`` are the other jobs under the same MPS daemon, as
    ``(workload, their percentage)``; an empty list means the job is alone.
    """
    solo = workload.mps_step_time_ms(_check_pct(pct))
    return solo * slowdown(pct, (p for _, p in co_runners))


def colocated_step_times_ms(mix: Sequence[Workload], pct: float) -> list[float]:
    """Step time of every job of ``mix`` when all run together at ``pct`` (MISO's profile)."""
    return [
        step_time_ms(w, pct, [(o, pct) for j, o in enumerate(mix) if j != i])
        for i, w in enumerate(mix)
    ]
