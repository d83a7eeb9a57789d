"""What happened on each GPU over time: layouts, jobs on their instances, changes, profiling.

A :class:`Timeline` is plain data with times in seconds from the start; it is
built from a run's journal and events (:func:`from_run`) or from a simulation's
record, and drawn as text (:func:`render_text`) or as an HTML page
(:mod:`miso_cli.operate.html`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Instance:
    start: int  # first memory slot
    size: int  # memory slots
    profile: str


@dataclass
class LayoutSpan:
    gpu: int
    start_s: float
    end_s: float
    mode: str  # mig, full, mps
    instances: list[Instance] = field(default_factory=list)

    @property
    def name(self) -> str:
        if self.mode != "mig":
            return {"full": "whole GPU", "mps": "MPS"}.get(self.mode, self.mode)
        if not self.instances:
            return "(empty)"
        return "+".join(i.profile for i in sorted(self.instances, key=lambda i: -i.size))


@dataclass
class Bar:
    gpu: int
    job: str
    start_s: float
    end_s: float
    slot: int | None  # the instance's first memory slot; None: the whole GPU (or MPS)
    size: int | None  # its memory slots
    profile: str | None
    outcome: str | None  # finished, stopped, failed, ... None while it runs
    attempt: int = 1


@dataclass
class Mark:
    gpu: int
    time_s: float
    kind: str  # reconfigure
    label: str


@dataclass
class Phase:
    gpu: int
    start_s: float
    end_s: float
    kind: str  # profiling
    label: str = ""


@dataclass
class GpuLane:
    index: int
    name: str
    slots: int  # memory slots of the model (8 on an A100)


@dataclass
class Timeline:
    title: str
    end_s: float
    gpus: list[GpuLane]
    layouts: list[LayoutSpan]
    bars: list[Bar]
    marks: list[Mark]
    phases: list[Phase]
    summary: list[tuple[str, str]] = field(default_factory=list)  # label, value
    notes: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)  # in the order of the queue


def _instances(items: Any) -> list[Instance]:
    out = []
    for it in items or []:
        if isinstance(it, dict) and it.get("profile") and it.get("start") is not None:
            out.append(Instance(int(it["start"]), int(it.get("size") or 1), str(it["profile"])))
    return out


def _placed(model_key: str | None, layout: str, previous: list[Instance]) -> list[Instance]:
    """Placements for a layout name, as miso's placer would choose them."""
    from miso_cli.gpu.layouts import Layout, Slice, place
    from miso_cli.gpu.profiles import model

    if not model_key or not layout or layout == "(empty)":
        return []
    try:
        m = model(model_key)
        prefer = Layout.of(
            Slice(i.start, i.size, i.profile, m.profile(i.profile).slices) for i in previous
        )
        placed = place(m, layout.split("+"), prefer=prefer)
    except Exception:  # noqa: BLE001 - a name this miso cannot place: draw no instances
        return []
    return [Instance(s.start, s.size, s.profile) for s in placed.slices]


_HEADER = re.compile(r"=== miso: (\S+) attempt (\d+) on GPU (\d+) (\S+)@(\d+) ")


def _slots_from_logs(run_dir: Path, jobs: list[str]) -> dict[tuple[str, int], int]:
    """(job, attempt) -> first memory slot of its instance, from the logs' attempt headers."""
    out: dict[tuple[str, int], int] = {}
    for name in jobs:
        try:
            with open(run_dir / "logs" / f"{name}.log", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if line.startswith("=== miso: "):
                        m = _HEADER.match(line)
                        if m and m.group(1) == name:
                            out[(name, int(m.group(2)))] = int(m.group(5))
        except OSError:
            continue
    return out


def from_run(
    data: dict[str, Any], events: list[dict[str, Any]], run_dir: Path, *, now: float
) -> Timeline:
    """The timeline of a run (running or over) from its journal, events and log headers."""
    t0 = float(data.get("started_at") or now)
    end = float(data.get("ended_at") or now) - t0
    gpus_data = [g for g in data.get("gpus") or [] if isinstance(g, dict)]
    keys = {int(g["index"]): g.get("model") for g in gpus_data if "index" in g}
    lanes = []
    for g in gpus_data:
        slots = 8
        try:
            from miso_cli.gpu.profiles import model

            slots = model(str(g.get("model"))).memory_slots
        except Exception:  # noqa: BLE001 - an unknown model: an A100's 8 slots
            pass
        lanes.append(GpuLane(int(g["index"]), str(g.get("name") or "GPU"), slots))
    # Layouts: the GPUs as the run found them, then every change.
    first = next((e for e in events if e.get("event") == "run_started"), None)
    current: dict[int, tuple[float, str, list[Instance]]] = {}
    for g in (first or {}).get("gpus") or gpus_data:
        mode = str(g.get("mode") or ("mig" if g.get("mig_enabled") else "full"))
        current[int(g["index"])] = (
            0.0,
            mode,
            _instances(g.get("instances")) if mode == "mig" else [],
        )
    spans: list[LayoutSpan] = []
    marks: list[Mark] = []
    phases: list[Phase] = []
    open_phase: dict[int, tuple[float, str]] = {}

    def close(gpu: int, at: float) -> None:
        if gpu in current:
            since, mode, insts = current[gpu]
            if at > since:
                spans.append(LayoutSpan(gpu, since, at, mode, insts))

    for e in events:
        kind, gpu = e.get("event"), e.get("gpu")
        t = float(e["time"]) - t0
        if not isinstance(gpu, int):
            continue
        if kind == "layout_changed":
            _, mode, insts = current.get(gpu, (0.0, "mig", []))
            new = _instances(e.get("instances")) or _placed(
                keys.get(gpu), str(e.get("layout") or ""), insts
            )
            close(gpu, t)
            current[gpu] = (t, "mig", new)
            marks.append(Mark(gpu, t, "reconfigure", f"{e.get('before')} -> {e.get('layout')}"))
        elif kind == "gpu_mode":
            _, _, insts = current.get(gpu, (0.0, "full", []))
            close(gpu, t)
            mode = str(e.get("mode"))
            current[gpu] = (t, mode, insts if mode == "mig" else [])
            marks.append(Mark(gpu, t, "reconfigure", f"mode {mode}"))
        elif kind == "profiling":
            open_phase[gpu] = (t, ", ".join(e.get("jobs") or []))
        elif kind in ("profiled", "profile_cancelled") and gpu in open_phase:
            start, label = open_phase.pop(gpu)
            phases.append(Phase(gpu, start, t, "profiling", label))
    for gpu in list(current):
        close(gpu, end)
    for gpu, (start, label) in open_phase.items():
        phases.append(Phase(gpu, start, end, "profiling", label))
    # Jobs: every attempt, on the instance its log header names.
    order = [j.get("name") for j in (data.get("queue") or {}).get("jobs", [])]
    jobs = data.get("jobs") or {}
    names = [n for n in order if n in jobs] + [n for n in jobs if n not in order]
    slots = _slots_from_logs(run_dir, names)
    bars = []
    for name in names:
        for a in jobs[name].get("attempts") or []:
            if not isinstance(a, dict) or a.get("gpu") is None or a.get("started_at") is None:
                continue
            s = float(a["started_at"]) - t0
            e_ = a.get("ended_at")
            stop = (float(e_) - t0) if e_ is not None else end
            profile = a.get("slice")
            slot = slots.get((name, int(a.get("number") or 0)))
            size = None
            if profile:
                size = _size_of(keys.get(int(a["gpu"])), str(profile))
                if slot is None:
                    slot = _guess_slot(spans, int(a["gpu"]), s, str(profile))
            bars.append(
                Bar(
                    int(a["gpu"]),
                    name,
                    s,
                    max(s, stop),
                    slot if profile else None,
                    size,
                    profile,
                    a.get("outcome"),
                    int(a.get("number") or 1),
                )
            )
    policy = data.get("policy")
    pname = policy.get("name") if isinstance(policy, dict) else str(policy)
    return Timeline(
        title=f"miso run {data.get('run_id')} ({pname}, {data.get('status')})",
        end_s=max(end, max((b.end_s for b in bars), default=0.0)),
        gpus=lanes,
        layouts=spans,
        bars=bars,
        marks=marks,
        phases=phases,
        jobs=names,
    )


def _size_of(model_key: str | None, profile: str) -> int | None:
    try:
        from miso_cli.gpu.profiles import model

        return int(model(str(model_key)).profile(profile).memory_slots)
    except Exception:  # noqa: BLE001
        return None


def _guess_slot(spans: list[LayoutSpan], gpu: int, at: float, profile: str) -> int | None:
    for sp in spans:
        if sp.gpu == gpu and sp.start_s <= at + 1e-6 < sp.end_s + 1e-6:
            for inst in sp.instances:
                if inst.profile == profile:
                    return inst.start
    return None


def share_rows(bars: list[Bar]) -> dict[int, tuple[int, int]]:
    """Bars without an instance (whole GPU, MPS) share their lane: index -> (row, rows)."""
    rows_end: list[float] = []
    row_of: dict[int, int] = {}
    for i, b in sorted(enumerate(bars), key=lambda ib: (ib[1].start_s, ib[0])):
        for r, free_at in enumerate(rows_end):
            if free_at <= b.start_s + 1e-9:
                rows_end[r] = b.end_s
                row_of[i] = r
                break
        else:
            rows_end.append(b.end_s)
            row_of[i] = len(rows_end) - 1
    n = max(1, len(rows_end))
    return {i: (r, n) for i, r in row_of.items()}


# ---------------------------------------------------------------- text


def fmt_s(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def letters(jobs: list[str]) -> dict[str, str]:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return {j: alphabet[i % len(alphabet)] for i, j in enumerate(jobs)}


def render_text(tl: Timeline, width: int = 80) -> list[str]:
    """A compact timeline: per GPU a row per instance slot, a letter per job, a legend.

    ``|`` on the GPU's scale row marks a reconfiguration, ``p`` a profiling phase.
    """
    label_w = 12
    cols = max(20, width - label_w - 2)
    span = tl.end_s if tl.end_s > 0 else 1.0
    legend = letters(tl.jobs or sorted({b.job for b in tl.bars}))

    def col(t: float) -> int:
        return min(cols - 1, max(0, int(t / span * cols)))

    lines = [tl.title]
    lines.append(" " * label_w + " 0" + fmt_s(span).rjust(cols - 1))
    for lane in tl.gpus:
        scale = ["-"] * cols
        for ph in (p for p in tl.phases if p.gpu == lane.index):
            for c in range(col(ph.start_s), col(ph.end_s) + 1):
                scale[c] = "p"
        for mk in (m for m in tl.marks if m.gpu == lane.index):
            scale[col(mk.time_s)] = "|"
        lines.append(f"{('GPU ' + str(lane.index))[:label_w]:<{label_w}} " + "".join(scale))
        bars = [b for b in tl.bars if b.gpu == lane.index]
        rows: dict[str, list[str]] = {}
        whole = [b for b in bars if b.slot is None]
        shared = share_rows(whole)
        n_whole = max((n for _, n in shared.values()), default=0)
        for r in range(n_whole):
            rows["whole/MPS" if n_whole == 1 else f"MPS {r + 1}"] = ["."] * cols
        keys = sorted({(b.slot, b.profile or "") for b in bars if b.slot is not None})
        for slot, profile in keys:
            rows[f"{profile}@{slot}"] = ["."] * cols

        def paint(cells: list[str], b: Bar) -> None:
            for c in range(col(b.start_s), max(col(b.start_s), col(b.end_s) - 1) + 1):
                cells[c] = legend.get(b.job, "?")

        for i, b in enumerate(whole):
            r, n = shared[i]
            paint(rows["whole/MPS" if n == 1 else f"MPS {r + 1}"], b)
        for b in bars:
            if b.slot is not None:
                paint(rows[f"{b.profile}@{b.slot}"], b)
        for label, cells in rows.items():
            lines.append(f"  {label[: label_w - 2]:<{label_w - 2}} " + "".join(cells))
        changes = [f"{fmt_s(sp.start_s)} {sp.name}" for sp in tl.layouts if sp.gpu == lane.index]
        if changes:
            lines.append("  layouts: " + "; ".join(changes))
    lines.append("jobs: " + ", ".join(f"{ch}={j}" for j, ch in legend.items()))
    lines.append("| reconfiguration, p profiling under MPS, . idle")
    return lines


# ---------------------------------------------------------------- a simulation


def _key(key: str | None) -> tuple[str, int] | None:
    if not key or "@" not in key:
        return None
    profile, _, start = key.rpartition("@")
    return (profile, int(start)) if start.isdigit() else None


def from_sim(
    policy: str,
    targets: list[dict[str, Any]],
    finish_s: dict[str, float | None],
    models: list[Any],
    *,
    jobs: list[str] | None = None,
) -> Timeline:
    """The timeline of one simulated policy from the targets it chose (``SimResult.targets``,
    each ``{time, gpu, mode, layout, assignment: {job: "3g.20gb@4" or None}, profile_s}``)
    and when each job finished. A job holds its place from the target that put it there
    until a later target moves it or it finishes."""
    lanes = [GpuLane(i, m.name, m.memory_slots) for i, m in enumerate(models)]
    spans: list[LayoutSpan] = []
    marks: list[Mark] = []
    phases: list[Phase] = []
    bars: list[Bar] = []
    current: dict[int, tuple[float, str, list[Instance]]] = {
        i: (0.0, "full", []) for i in range(len(models))
    }
    placed: dict[str, tuple[int, float, str | None]] = {}  # job -> (gpu, since, key)
    end = max([f for f in finish_s.values() if f is not None] + [0.0])

    def leave(job: str, at: float) -> None:
        if job not in placed:
            return
        gpu, since, key = placed.pop(job)
        pk = _key(key)
        stop = min(at, finish_s.get(job) or at)
        if stop > since:
            size = None
            if pk:
                try:
                    size = int(models[gpu].profile(pk[0]).memory_slots)
                except (KeyError, AttributeError):
                    size = 1
            done = finish_s.get(job) is not None and stop >= (finish_s.get(job) or 0) - 1e-9
            bars.append(
                Bar(
                    gpu,
                    job,
                    since,
                    stop,
                    pk[1] if pk else None,
                    size,
                    pk[0] if pk else None,
                    "finished" if done else "stopped",
                )
            )

    for t in sorted(targets, key=lambda r: float(r.get("time") or 0.0)):
        at, gpu = float(t.get("time") or 0.0), int(t.get("gpu") or 0)
        if not 0 <= gpu < len(models):
            continue
        mode = str(t.get("mode") or "full")
        assignment: dict[str, Any] = t.get("assignment") or {}
        since, old_mode, old = current[gpu]
        insts = []
        if mode == "mig":
            insts = [
                Instance(k[1], int(models[gpu].profile(k[0]).memory_slots), k[0])
                for k in (_key(v) for v in assignment.values())
                if k
            ]
            names = str(t.get("layout") or "").split("+") if t.get("layout") else []
            missing = list(names)
            for i in insts:
                if i.profile in missing:
                    missing.remove(i.profile)
            if missing:  # instances nobody was given: placed as miso's placer would
                extra = _placed(
                    models[gpu].key,
                    "+".join(i.profile for i in insts) + ("+" if insts else "") + "+".join(missing),
                    insts,
                )
                taken = {(i.start, i.profile) for i in insts}
                insts += [i for i in extra if (i.start, i.profile) not in taken][: len(missing)]
        changed = mode != old_mode or sorted((i.start, i.profile) for i in insts) != sorted(
            (i.start, i.profile) for i in old
        )
        if changed:
            if at > since:
                spans.append(LayoutSpan(gpu, since, at, old_mode, old))
            current[gpu] = (at, mode, insts)
            marks.append(Mark(gpu, at, "reconfigure", f"{mode} {t.get('layout') or ''}"))
        if t.get("profile_s"):
            phases.append(
                Phase(gpu, at, at + float(t["profile_s"]), "profiling", ", ".join(assignment))
            )
        # Jobs this GPU had and the target drops, or moves: their bar ends here.
        for job, (g, _, key) in list(placed.items()):
            if g == gpu and (
                job not in assignment or assignment[job] != key or changed and mode != "mig"
            ):
                leave(job, at)
        for job, key in assignment.items():
            if job in placed and placed[job][0] != gpu:
                leave(job, at)
            if job not in placed and (finish_s.get(job) is None or finish_s[job] > at):
                placed[job] = (gpu, at, key)
    for job in list(placed):
        leave(job, finish_s.get(job) or end)
    for gpu, (since, mode, insts) in current.items():
        if end > since:
            spans.append(LayoutSpan(gpu, since, end, mode, insts))
    return Timeline(
        title=f"miso simulate: {policy}",
        end_s=end,
        gpus=lanes,
        layouts=spans,
        bars=bars,
        marks=marks,
        phases=phases,
        jobs=jobs or sorted(finish_s),
    )
