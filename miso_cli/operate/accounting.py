"""Whether partitioning paid: a run's (or a simulation's) figures against one job per GPU.

The MISO paper argues in these terms: job completion time, makespan, the share of
the GPUs' compute slices that did work, and GPU-hours rented. For a real run
there is no second run without partitioning to compare with, so the baseline is
*estimated*: each job's time on a whole GPU (its steps times its whole-GPU step
time, taken by the best evidence there is, named per job), then those jobs
list-scheduled one per whole GPU, by priority and arrival, exactly as the
``nopart`` policy orders them, with no restart or reconfiguration costs. Where
only a slice's step time is known, the whole-GPU time assumes speed grows in
proportion to compute slices; real jobs rarely scale that well, so that
estimate of the baseline is optimistic and the savings shown are a lower bound.
"""

from __future__ import annotations

import heapq
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miso_cli.errors import BadInput

METHOD = (
    "each job's wall time on a whole GPU: the time each of its attempts ran, at its "
    "speed there relative to a whole GPU (1 on a whole GPU, shared alike under MPS; on "
    "a MIG instance the measured slowdown (a solo profile beside its step time there), "
    "else the predictor's for that size, else "
    "compute slices / 7, which favours the baseline); an unfinished job extrapolated "
    "from its progress. These are list-scheduled one job per whole GPU by priority then "
    "arrival (the nopart order), without restart or reconfiguration costs"
)


# ---------------------------------------------------------------- the baseline


@dataclass
class BaselineJob:
    name: str
    arrival_s: float  # from the run's start
    whole_gpu_s: float | None
    priority: int = 0
    basis: str = ""  # how whole_gpu_s was found


def schedule_whole_gpus(jobs: list[BaselineJob], gpus: int) -> dict[str, Any]:
    """List-schedule ``jobs`` one per whole GPU (nopart's order); JCTs and makespan."""
    known = [j for j in jobs if j.whole_gpu_s is not None]
    if not known or gpus <= 0:
        return {"makespan_s": None, "mean_jct_s": None, "jobs": {}}
    order = {j.name: i for i, j in enumerate(known)}
    arrivals = sorted(known, key=lambda j: (j.arrival_s, order[j.name]))
    free = [0.0] * gpus  # when each GPU is free
    heapq.heapify(free)
    waiting: list[tuple[int, float, str, BaselineJob]] = []
    i, now, out = 0, 0.0, {}
    while i < len(arrivals) or waiting:
        now = max(now, free[0])
        while i < len(arrivals) and arrivals[i].arrival_s <= now + 1e-9:
            j = arrivals[i]
            heapq.heappush(waiting, (-j.priority, j.arrival_s, j.name, j))
            i += 1
        if not waiting:
            now = arrivals[i].arrival_s
            continue
        _, _, _, j = heapq.heappop(waiting)
        start = max(heapq.heappop(free), now)
        end = start + float(j.whole_gpu_s or 0.0)
        heapq.heappush(free, end)
        out[j.name] = {"start_s": start, "end_s": end, "jct_s": end - j.arrival_s}
    ends = [v["end_s"] for v in out.values()]
    jcts = [v["jct_s"] for v in out.values()]
    return {"makespan_s": max(ends), "mean_jct_s": sum(jcts) / len(jcts), "jobs": out}


def compare(
    actual: dict[str, Any],
    baseline: dict[str, Any],
    *,
    gpus: int,
    price: float | None,
) -> dict[str, Any]:
    """Time and GPU-hours saved (positive: partitioning did better), and their cost."""

    def minus(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    held = actual.get("gpu_hours")
    base_hours = (
        None if baseline.get("makespan_s") is None else gpus * baseline["makespan_s"] / 3600.0
    )
    out = {
        "makespan_s": minus(baseline.get("makespan_s"), actual.get("makespan_s")),
        "mean_jct_s": minus(baseline.get("mean_jct_s"), actual.get("mean_jct_s")),
        "gpu_hours": minus(base_hours, held),
        "baseline_gpu_hours": base_hours,
        "makespan_ratio": _ratio(actual.get("makespan_s"), baseline.get("makespan_s")),
        "mean_jct_ratio": _ratio(actual.get("mean_jct_s"), baseline.get("mean_jct_s")),
    }
    if price is not None:
        out["cost"] = None if out["gpu_hours"] is None else out["gpu_hours"] * price
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


# ---------------------------------------------------------------- a run


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """``events.jsonl``, skipping a torn last line (miso may be writing it now)."""
    out = []
    try:
        with open(Path(run_dir) / "events.jsonl", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if isinstance(ev, dict) and isinstance(ev.get("time"), (int, float)):
                    out.append(ev)
    except FileNotFoundError:
        pass
    return out


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def shared_time(
    intervals: list[tuple[str, float, float]],
) -> tuple[dict[str, float], float]:
    """Intervals sharing one GPU (whole-GPU or MPS attempts): each one's equal share of
    the GPU-seconds, and the time the GPU had at least one of them (their union)."""
    points = sorted({t for _, s, e in intervals for t in (s, e)})
    share = {key: 0.0 for key, _, _ in intervals}
    union = 0.0
    for a, b in zip(points, points[1:], strict=False):
        on = [key for key, s, e in intervals if s <= a and e >= b]
        if on:
            union += b - a
            for key in on:
                share[key] += (b - a) / len(on)
    return share, union


def _speed_ratio(
    slices: int,
    capacity: int,
    step_on_it: float | None,
    profile: dict[str, Any] | None,
    prediction: dict[str, Any] | None,
) -> tuple[float, str]:
    """Whole-GPU step time over step time on ``slices`` compute slices (1 on a whole GPU)."""
    if slices >= capacity or slices <= 0:
        return 1.0, "whole GPU"
    # Measured beats predicted: the job's own step times, alone on a whole GPU (a solo
    # profile) and on this instance.
    t7 = _num((profile or {}).get("step_time_7g_s"))
    alone = int((profile or {}).get("jobs_in_mix") or 1) == 1
    if t7 and alone and step_on_it:
        ratio = min(1.0, t7 / step_on_it)
        return ratio, f"{slices}g at the measured {ratio:.2f} of a whole GPU"
    rel = _num((prediction or {}).get(str(slices)))
    if rel and rel > 0:
        return min(1.0, 1.0 / rel), f"{slices}g at the predicted 1/{rel:.2f} of a whole GPU"
    return slices / capacity, f"{slices}g at {slices}/{capacity} of a whole GPU (linear)"


def whole_gpu_time(
    rec: dict[str, Any],
    spec: dict[str, Any],
    profile: dict[str, Any] | None,
    capacity: int,
    prediction: dict[str, Any] | None = None,
    *,
    now: float | None = None,
    shares: dict[str, float] | None = None,
) -> tuple[float | None, str]:
    """A job's time on a whole GPU, and the evidence it rests on.

    Each attempt's wall time counts at the job's speed there relative to a whole GPU
    (1 on a whole GPU, or under MPS, where miso profiles briefly); an unfinished job's
    time is extrapolated from its progress; a job that never started counts its steps
    times its whole-GPU step time, when a profile gives it.
    """
    p = rec.get("progress") or {}
    attempts = [a for a in rec.get("attempts") or [] if isinstance(a, dict)]
    step_last = _num(p.get("step_time_s"))
    total_s, bases = 0.0, []
    for i, a in enumerate(attempts):
        s = _num(a.get("started_at"))
        e = _num(a.get("ended_at"))
        if e is None and i == len(attempts) - 1 and now is not None:
            e = now
        if s is None or e is None:
            continue
        key = f"{rec.get('name')}/{a.get('number')}"
        if not a.get("slice") and shares is not None and key in shares:
            # A whole GPU, or MPS: shared alike with whatever else ran there then.
            total_s += shares[key]
            shared = shares[key] < e - s - 1e-6
            basis = "whole GPU, shared alike under MPS" if shared else "whole GPU"
            if basis not in bases:
                bases.append(basis)
            continue
        slices = int(a.get("slices") or capacity) if a.get("slice") else capacity
        step = step_last if i == len(attempts) - 1 else None
        ratio, basis = _speed_ratio(slices, capacity, step, profile, prediction)
        total_s += max(0.0, e - s) * ratio
        if basis not in bases:
            bases.append(basis)
    if total_s > 0:
        if rec.get("state") != "finished":
            frac = _num(p.get("fraction"))
            if not frac:
                return None, "started, progress unknown"
            total_s /= frac
            bases.append(f"extrapolated from {100 * frac:.0f}% done")
        return total_s, "run time: " + "; ".join(bases)
    t7 = _num((profile or {}).get("step_time_7g_s"))
    total = _num(p.get("total")) or _num(spec.get("steps"))
    if total and t7:
        return total * t7, "steps x whole-GPU step time (MPS profile)"
    return None, "not started, no step time known"


def run_figures(
    data: dict[str, Any], events: list[dict[str, Any]], *, now: float | None = None
) -> dict[str, Any]:
    """Makespan, JCTs, utilisation, GPU-hours, reconfigurations, moves and overheads."""
    now = time.time() if now is None else now
    t0 = float(data.get("started_at") or now)
    ended = _num(data.get("ended_at"))
    jobs: dict[str, dict[str, Any]] = data.get("jobs") or {}
    gpus = data.get("gpus") or []
    n_gpus = max(1, len(gpus))
    capacity = sum(int(g.get("compute_slices") or 7) for g in gpus) or 7 * n_gpus
    end = ended if ended is not None else now
    _, union = whole_gpu_shares(data, now)
    per_gpu = {
        int(g.get("index", i)): int(g.get("compute_slices") or 7) for i, g in enumerate(gpus)
    }
    busy = sum(per_gpu.get(g, 7) * u for g, u in union.items())  # whole GPU or MPS
    restart_s = 0.0
    jcts = []
    for rec in jobs.values():
        attempts = [a for a in rec.get("attempts") or [] if isinstance(a, dict)]
        prev_end = None
        for a in attempts:
            s = _num(a.get("started_at"))
            e = _num(a.get("ended_at")) or (end if ended is None else None)
            if s is None or e is None:
                continue
            if a.get("slice"):  # on a MIG instance: its compute slices
                busy += float(a.get("slices") or 7) * max(0.0, e - s)
            if prev_end is not None and a.get("resumed"):
                restart_s += max(0.0, s - prev_end)
            prev_end = _num(a.get("ended_at"))
        if rec.get("state") == "finished" and _num(rec.get("ended_at")) is not None:
            jcts.append(float(rec["ended_at"]) - float(rec.get("queued_at") or t0))
    makespan = max(0.0, end - t0)
    stops = [e for e in events if e.get("event") == "stopping"]
    profiling_s, open_phase = 0.0, {}
    for e in events:
        kind = e.get("event")
        if kind == "profiling":
            open_phase[e.get("gpu")] = float(e["time"])
        elif kind in ("profiled", "profile_cancelled") and e.get("gpu") in open_phase:
            profiling_s += float(e["time"]) - open_phase.pop(e.get("gpu"))
    for started in open_phase.values():
        profiling_s += max(0.0, end - started)
    return {
        "gpus": n_gpus,
        "capacity_slices": capacity,
        "makespan_s": makespan,
        "mean_jct_s": sum(jcts) / len(jcts) if jcts else None,
        "finished": len(jcts),
        "slice_utilisation": min(1.0, busy / (capacity * makespan)) if makespan > 0 else None,
        "gpu_hours": n_gpus * makespan / 3600.0,
        "busy_gpu_hours": busy / (capacity / n_gpus) / 3600.0,
        "reconfigurations": sum(
            1 for e in events if e.get("event") in ("layout_changed", "gpu_mode")
        ),
        "migrations": sum(1 for e in stops if e.get("reason") == "migrate"),
        "requeues": sum(1 for e in stops if e.get("reason") == "requeue"),
        "profiling_restarts": sum(1 for e in stops if e.get("reason") == "level"),
        "restart_overhead_s": restart_s,
        "profiling_s": profiling_s,
    }


def whole_gpu_shares(
    data: dict[str, Any], now: float | None
) -> tuple[dict[str, float], dict[int, float]]:
    """For attempts without a MIG instance: their equal-share GPU-seconds ("job/attempt"),
    and per GPU the time at least one of them ran."""
    end = _num(data.get("ended_at")) or now
    per_gpu: dict[int, list[tuple[str, float, float]]] = {}
    for name, rec in (data.get("jobs") or {}).items():
        attempts = [a for a in rec.get("attempts") or [] if isinstance(a, dict)]
        for i, a in enumerate(attempts):
            if a.get("slice") or a.get("gpu") is None:
                continue
            s, e = _num(a.get("started_at")), _num(a.get("ended_at"))
            if e is None and i == len(attempts) - 1:
                e = end
            if s is None or e is None:
                continue
            per_gpu.setdefault(int(a["gpu"]), []).append((f"{name}/{a.get('number')}", s, e))
    shares: dict[str, float] = {}
    union: dict[int, float] = {}
    for gpu, intervals in per_gpu.items():
        sh, u = shared_time(intervals)
        shares.update(sh)
        union[gpu] = u
    return shares, union


def run_baseline(
    data: dict[str, Any], events: list[dict[str, Any]], now: float | None = None
) -> tuple[list[BaselineJob], dict[str, Any]]:
    t0 = float(data.get("started_at") or 0.0)
    gpus = data.get("gpus") or []
    capacity = int(gpus[0].get("compute_slices") or 7) if gpus else 7
    specs = {j.get("name"): j for j in (data.get("queue") or {}).get("jobs", [])}
    profiles = data.get("profiles") or {}
    predictions: dict[str, Any] = {}
    for e in events:
        if e.get("event") == "profiled" and isinstance(e.get("prediction"), dict):
            predictions.update(e["prediction"])
    shares, _ = whole_gpu_shares(data, now)
    out = []
    for name, rec in (data.get("jobs") or {}).items():
        spec = specs.get(name, {})
        secs, basis = whole_gpu_time(
            {**rec, "name": name},
            spec,
            profiles.get(name),
            capacity,
            predictions.get(name),
            now=now,
            shares=shares,
        )
        out.append(
            BaselineJob(
                name,
                arrival_s=max(0.0, float(rec.get("queued_at") or t0) - t0),
                whole_gpu_s=secs,
                priority=int(spec.get("priority") or 0),
                basis=basis,
            )
        )
    return out, schedule_whole_gpus(out, max(1, len(gpus)))


def run_report(
    data: dict[str, Any],
    events: list[dict[str, Any]],
    *,
    price: float | None = None,
    currency: str = "",
    now: float | None = None,
) -> dict[str, Any]:
    """The report of one run (finished or running) from its journal and events."""
    figures = run_figures(data, events, now=now)
    jobs, base = run_baseline(data, events, now)
    missing = [j.name for j in jobs if j.whole_gpu_s is None]
    baseline = {
        "policy": "nopart",
        "estimated": True,
        "method": METHOD,
        "makespan_s": base["makespan_s"],
        "mean_jct_s": base["mean_jct_s"],
        "jobs": [{"name": j.name, "whole_gpu_s": j.whole_gpu_s, "basis": j.basis} for j in jobs],
        "left_out": missing,
    }
    policy = data.get("policy")
    pname = policy.get("name") if isinstance(policy, dict) else policy
    saved = compare(figures, base, gpus=figures["gpus"], price=price)
    if pname == "nopart":  # the run is its own baseline
        saved = None
        baseline["method"] = "this run is one job per whole GPU: it is the baseline"
    return {
        "kind": "run",
        "run_id": data.get("run_id"),
        "status": data.get("status"),
        "policy": pname,
        "gpu_spec": data.get("gpu_spec"),
        "summary": figures,
        "baseline": baseline,
        "saved": saved,
        "price": _price(price, currency, figures["gpu_hours"]),
    }


def _price(price: float | None, currency: str, hours: float | None) -> dict[str, Any] | None:
    if price is None:
        return None
    return {
        "per_gpu_hour": price,
        "currency": currency,
        "cost": None if hours is None else hours * price,
    }


# ---------------------------------------------------------------- a simulation


def sim_report(
    envelope: dict[str, Any], *, price: float | None = None, currency: str = ""
) -> dict[str, Any]:
    """The report of ``miso simulate --json`` output: each policy against nopart."""
    data = envelope.get("data", envelope)
    results = data.get("results")
    if not isinstance(results, list) or not results:
        raise BadInput("not the output of 'miso simulate --json' (no results)")
    gpus = data.get("gpus") or {}
    n = int(gpus.get("count") or 1)
    rows = []
    base = next((r for r in results if r.get("policy") == "nopart"), None)
    how = (
        "the nopart policy simulated on the same trace"
        if base
        else "no nopart result in the file: run simulate with --policy nopart,..."
    )
    for r in results:
        figures = {
            "gpus": n,
            "makespan_s": r.get("makespan_s"),
            "mean_jct_s": r.get("mean_jct_s"),
            "slice_utilisation": r.get("slice_utilisation"),
            "gpu_hours": None if r.get("makespan_s") is None else n * r["makespan_s"] / 3600.0,
            "reconfigurations": r.get("reconfigurations"),
            "migrations": r.get("migrations"),
            "restart_overhead_s": r.get("restart_overhead_s"),
            "profiling_s": r.get("profiling_s"),
        }
        saved = compare(figures, base, gpus=n, price=price) if base else None
        if r.get("policy") == "nopart":
            saved = None  # the baseline itself
        rows.append(
            {
                "policy": r.get("policy"),
                "summary": figures,
                "saved": saved,
                "price": _price(price, currency, figures["gpu_hours"]),
            }
        )
    return {
        "kind": "simulation",
        "trace": data.get("trace"),
        "gpus": gpus,
        "baseline": {"policy": "nopart", "estimated": False, "method": how},
        "policies": rows,
    }


# ---------------------------------------------------------------- the price


def price_from_config(state_dir: Path) -> tuple[float | None, str]:
    """``price_per_gpu_hour`` and ``currency`` of ``<state dir>/config.toml``, if set."""
    from miso_cli.spec.queue import tomllib

    path = Path(state_dir) / "config.toml"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return None, ""
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{path}: cannot read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{path}: not valid TOML: {exc}") from None
    price = data.get("price_per_gpu_hour")
    currency = data.get("currency", "")
    if price is not None and (
        isinstance(price, bool) or not isinstance(price, (int, float)) or not price >= 0
    ):
        raise BadInput(f"{path}: price_per_gpu_hour: expected a number >= 0, got {price!r}")
    if not isinstance(currency, str):
        raise BadInput(f"{path}: currency: expected a string")
    return (None if price is None else float(price)), currency


# ---------------------------------------------------------------- words


def summary_pairs(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The report's figures as (label, value) pairs, for the text and the HTML page."""
    from miso_cli.operate.timeline import fmt_s

    def dur(v: Any) -> str:
        return "-" if v is None else fmt_s(float(v))

    def pct(v: Any) -> str:
        return "-" if v is None else f"{100 * float(v):.0f}%"

    def signed(v: Any, fmt: Any) -> str:
        if v is None:
            return "-"
        return fmt(v) if v >= 0 else "-" + fmt(-v) + " (partitioning took longer)"

    s = report["summary"]
    saved = report.get("saved") or {}
    base = report.get("baseline") or {}
    pairs = [
        ("makespan", dur(s.get("makespan_s"))),
        ("mean JCT", dur(s.get("mean_jct_s"))),
        ("slice utilisation", pct(s.get("slice_utilisation"))),
        (
            "GPU-hours",
            f"{s['gpu_hours']:.3f} ({s['gpus']} GPU x {dur(s.get('makespan_s'))})"
            if s.get("gpu_hours") is not None
            else "-",
        ),
    ]
    if s.get("busy_gpu_hours") is not None:
        pairs.append(("GPU-hours busy with jobs", f"{s['busy_gpu_hours']:.3f}"))
    extra = []
    for key, label in (
        ("reconfigurations", "reconfigurations"),
        ("migrations", "migrations"),
        ("requeues", "requeues"),
        ("profiling_restarts", "profiling restarts"),
    ):
        if s.get(key) is not None:
            extra.append(f"{s[key]} {label}")
    if extra:
        pairs.append(("changes", ", ".join(extra)))
    pairs.append(("restart overhead", dur(s.get("restart_overhead_s"))))
    if "profiling_s" in s:
        pairs.append(("profiling time", dur(s.get("profiling_s"))))
    if saved:
        kind = "estimated" if base.get("estimated") else "simulated"
        pairs.append(
            (
                f"one job per whole GPU ({kind})",
                f"makespan {dur(base.get('makespan_s'))}, mean JCT {dur(base.get('mean_jct_s'))}, "
                f"{saved['baseline_gpu_hours']:.3f} GPU-hours"
                if saved.get("baseline_gpu_hours") is not None
                else "-",
            )
        )
        pairs.append(("time saved (makespan)", signed(saved.get("makespan_s"), fmt_s)))
        pairs.append(("time saved (mean JCT)", signed(saved.get("mean_jct_s"), fmt_s)))
        pairs.append(("GPU-hours saved", signed(saved.get("gpu_hours"), lambda v: f"{v:.3f}")))
    price = report.get("price")
    if price:
        cur = f" {price['currency']}" if price.get("currency") else ""
        cost = "-" if price.get("cost") is None else f"{price['cost']:.2f}{cur}"
        line = f"{cost} at {price['per_gpu_hour']:g}{cur} per GPU-hour"
        if saved.get("cost") is not None:
            line += f"; saved {signed(saved['cost'], lambda v: f'{v:.2f}')}{cur}"
        pairs.append(("cost", line))
    return pairs
