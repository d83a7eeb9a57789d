"""A physical model of step time across MIG slices: SM share and memory-bandwidth share.

A MIG instance gets a fixed share of the GPU's SMs (its multiprocessors) and of its
memory bandwidth and L2 (its memory slots, out of 8 on A100/H100). A training
step is modelled as three parts, as fractions of its time on the whole GPU::

    t(g) / t(full) = f + c * SM(full)/SM(g) + m * MEM(full)/MEM(g),   f + c + m = 1

``c``: the SM-bound part, ``m``: the bandwidth-bound part, ``f``: what neither
speeds up (input pipeline, launch overhead, host work). Two measured or
predicted ratios on slices whose SM and memory shares differ (4g and 3g on an
A100 share their memory slots but not their SMs) fix ``c`` and ``m``; the model
then gives the ratio on any other slice, including on another GPU model.

Checked on the A100 catalog (``../shared/data/a100-40gb/catalog.csv``, measured 7g,
4g, 3g in, measured 2g, 1g out): mean absolute error 6.5% on 2g and 17% on 1g
(the smallest slice is slower than its shares alone explain: one copy engine, a
seventh of the L2). Predictions it makes are flagged ``physical`` and carry the
larger uncertainty recorded in the shipped prior.
"""

from __future__ import annotations

from dataclasses import dataclass

from miso_cli.gpu.profiles import GpuModel


@dataclass(frozen=True)
class Shares:
    """Per compute-slice count: the SM and memory-slot ratio of the whole GPU to the slice."""

    sm: dict[int, float]  # SM(full) / SM(g)
    mem: dict[int, float]  # slots(full) / slots(g)
    full: int  # compute slices of the whole GPU

    @staticmethod
    def of(model: GpuModel) -> Shares:
        full = model.full_profile
        sm: dict[int, float] = {}
        mem: dict[int, float] = {}
        for p in model.standard_profiles():
            sm[p.slices] = full.multiprocessors / p.multiprocessors
            mem[p.slices] = full.memory_slots / p.memory_slots
        return Shares(sm, mem, full.slices)


def decompose(ratios: dict[int, float], shares: Shares) -> tuple[float, float]:
    """``(c, m)`` from step-time ratios on slices below the full GPU (non-negative, c+m<=1).

    Uses the two largest slices present; with one, the slowdown is put on the SMs.
    """
    known = sorted((g for g in ratios if g != shares.full and g in shares.sm), reverse=True)
    if not known:
        return 0.0, 0.0
    a = known[0]
    ra = max(ratios[a], 1.0) - 1.0
    sa, ma = shares.sm[a] - 1.0, shares.mem[a] - 1.0
    c = m = 0.0
    if len(known) >= 2:
        b = known[1]
        rb = max(ratios[b], 1.0) - 1.0
        sb, mb = shares.sm[b] - 1.0, shares.mem[b] - 1.0
        det = sa * mb - sb * ma
        if abs(det) > 1e-9:
            c = (ra * mb - rb * ma) / det
            m = (sa * rb - sb * ra) / det
    if len(known) < 2 or c < 0 or m < 0:
        # Degenerate or inconsistent (noise can make 3g look faster than 4g): keep the
        # non-negative part. With equal memory shares (4g/3g) that is the formula below.
        if len(known) >= 2 and shares.mem[known[0]] == shares.mem[known[1]]:
            b = known[1]
            rb = max(ratios[b], 1.0) - 1.0
            c = max(0.0, (rb - ra) / (shares.sm[b] - shares.sm[a]))
            m = max(0.0, (ra - sa * c) / ma) if ma > 0 else 0.0
        else:
            c, m = (ra / sa if sa > 0 else 0.0), 0.0
    total = c + m
    if total > 1.0:  # cannot be more than the whole step
        c, m = c / total, m / total
    return max(c, 0.0), max(m, 0.0)


def ratio_on(slices: int, c: float, m: float, shares: Shares) -> float:
    """Step time on ``slices`` relative to the full GPU under the three-part model."""
    return 1.0 + c * (shares.sm[slices] - 1.0) + m * (shares.mem[slices] - 1.0)
