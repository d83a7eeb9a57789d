"""A timeline as one self-contained HTML page: inline CSS and SVG, no script, no network.

Each GPU is a lane whose height is its memory slots; each layout's instances are
outlined at their placement for as long as the layout lasted, jobs are coloured
bars on their instance, reconfigurations are red lines and profiling phases a
hatched band. Hovering shows details (SVG ``<title>``); printing gives a
landscape page with the summary above the lanes.
"""

from __future__ import annotations

from html import escape
from typing import Any

from miso_cli.operate.timeline import Timeline, fmt_s, share_rows

WIDTH = 1100  # SVG user units; the SVG scales to the page
LEFT = 90  # room for slot labels
SLOT_H = 22
AXIS_H = 22

CSS = """
:root { color-scheme: light; }
* { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       margin: 24px; color: #1d2330; background: #fff; }
h1 { font-size: 20px; margin: 0 0 12px; }
h2 { font-size: 15px; margin: 20px 0 6px; }
table.summary { border-collapse: collapse; margin-bottom: 8px; }
table.summary td { padding: 2px 14px 2px 0; vertical-align: top; }
table.summary td.k { color: #5a6270; white-space: nowrap; }
table.summary td.v { font-variant-numeric: tabular-nums; }
p.note { color: #5a6270; max-width: 1000px; margin: 4px 0; font-size: 12px; }
section.policy { break-before: page; page-break-before: always; }
section.policy:first-of-type { break-before: auto; page-break-before: auto; }
.lane { margin: 10px 0 18px; break-inside: avoid; page-break-inside: avoid; }
svg { width: 100%; height: auto; display: block; }
svg text { font-family: inherit; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 16px; font-size: 12px; margin: 8px 0; }
.legend span.sw { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
                  vertical-align: -2px; margin-right: 4px; }
.legend .mark { border-left: 2px dashed #d62728; height: 12px; display: inline-block;
                vertical-align: -2px; margin-right: 4px; }
@media print {
  @page { size: A4 landscape; margin: 12mm; }
  body { margin: 0; font-size: 11px; }
  h1 { font-size: 16px; }
  .lane { margin: 4px 0 10px; }
}
"""

PALETTE = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
    "#ff9da7", "#9c755f", "#8cd17d", "#86bcb6", "#f1ce63", "#a0cbe8", "#ffbe7d",
    "#d4a6c8", "#79706e",
]  # fmt: skip


def colours(jobs: list[str]) -> dict[str, str]:
    return {j: PALETTE[i % len(PALETTE)] for i, j in enumerate(jobs)}


def _x(t: float, end: float) -> float:
    return LEFT + (WIDTH - LEFT - 10) * (t / end if end > 0 else 0.0)


def _ticks(end: float) -> list[float]:
    if end <= 0:
        return [0.0]
    raw = end / 8
    step = 1.0
    for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200):
        step = float(s)
        if s >= raw:
            break
    out, t = [], 0.0
    while t <= end + 1e-9:
        out.append(t)
        t += step
    return out


def lane_svg(tl: Timeline, gpu: int, slots: int, colour: dict[str, str]) -> str:
    end = tl.end_s if tl.end_s > 0 else 1.0
    h = slots * SLOT_H
    total_h = h + AXIS_H + 4
    out = [
        f'<svg viewBox="0 0 {WIDTH} {total_h}" xmlns="http://www.w3.org/2000/svg" '
        f'role="img" aria-label="GPU {gpu} timeline">',
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#efe7f7"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#9467bd" stroke-width="2"/></pattern></defs>',
        f'<rect x="{LEFT}" y="0" width="{WIDTH - LEFT - 10}" height="{h}" fill="#f6f7f9" '
        'stroke="#c9ced6"/>',
    ]
    for s in range(slots + 1):
        y = s * SLOT_H
        out.append(
            f'<line x1="{LEFT}" y1="{y}" x2="{WIDTH - 10}" y2="{y}" stroke="#e3e6eb" '
            'stroke-width="0.5"/>'
        )
    for s in range(slots):
        out.append(
            f'<text x="{LEFT - 6}" y="{s * SLOT_H + SLOT_H - 4}" font-size="10" '
            f'text-anchor="end" fill="#8a919c">slot {s}</text>'
        )
    for ph in (p for p in tl.phases if p.gpu == gpu):
        x0, x1 = _x(ph.start_s, end), _x(ph.end_s, end)
        out.append(
            f'<rect x="{x0:.1f}" y="0" width="{max(1.0, x1 - x0):.1f}" height="{h}" '
            f'fill="url(#hatch)" opacity="0.8"><title>profiling under MPS '
            f"{fmt_s(ph.start_s)}-{fmt_s(ph.end_s)}: {escape(ph.label)}</title></rect>"
        )
    for sp in (s for s in tl.layouts if s.gpu == gpu):
        x0, x1 = _x(sp.start_s, end), _x(sp.end_s, end)
        for inst in sp.instances:
            y = inst.start * SLOT_H
            out.append(
                f'<rect x="{x0:.1f}" y="{y + 1}" width="{max(1.0, x1 - x0):.1f}" '
                f'height="{inst.size * SLOT_H - 2}" fill="#ffffff" fill-opacity="0.55" '
                f'stroke="#6b7380" stroke-width="1" rx="3"><title>{escape(inst.profile)}@'
                f"{inst.start} from {fmt_s(sp.start_s)} to {fmt_s(sp.end_s)}</title></rect>"
            )
            if x1 - x0 > 60:
                out.append(
                    f'<text x="{x0 + 4:.1f}" y="{y + inst.size * SLOT_H - 4}" font-size="9" '
                    f'fill="#6b7380">{escape(inst.profile)}</text>'
                )
    bars = [b for b in tl.bars if b.gpu == gpu]
    whole = [b for b in bars if b.slot is None]
    rows = share_rows(whole)
    for b in bars:
        if b.slot is None:
            r, n = rows[whole.index(b)]
            y, bh = r * h / n + 2, h / n - 4
        else:
            y, bh = b.slot * SLOT_H + 3, (b.size or 1) * SLOT_H - 6
        x0, x1 = _x(b.start_s, end), _x(b.end_s, end)
        where = f"{b.profile}@{b.slot}" if b.profile else "whole GPU / MPS"
        how = b.outcome or "running"
        fill = colour.get(b.job, "#888")
        dash = ' stroke-dasharray="4 2"' if how not in ("finished", "running") else ""
        out.append(
            f'<rect x="{x0:.1f}" y="{y:.1f}" width="{max(1.5, x1 - x0):.1f}" '
            f'height="{max(2.0, bh):.1f}" fill="{fill}" stroke="#1d2330" stroke-width="0.6"'
            f'{dash} rx="2"><title>{escape(b.job)} attempt {b.attempt} on {escape(where)}: '
            f"{fmt_s(b.start_s)}-{fmt_s(b.end_s)}, {escape(how)}</title></rect>"
        )
        label = b.job
        room = (x1 - x0 - 6) / 6.2  # characters that fit at font-size 11
        if room >= 3 and bh >= 11:
            if len(label) > room:
                label = label[: max(1, int(room) - 1)] + "…"
            out.append(
                f'<text x="{x0 + 3:.1f}" y="{y + min(bh, 26) / 2 + 4:.1f}" font-size="11" '
                f'fill="#fff" style="paint-order:stroke" stroke="{fill}" stroke-width="2">'
                f"{escape(label)}</text>"
            )
    for mk in (m for m in tl.marks if m.gpu == gpu):
        x = _x(mk.time_s, end)
        out.append(
            f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{h}" stroke="#d62728" '
            f'stroke-width="1.5" stroke-dasharray="4 3"><title>{fmt_s(mk.time_s)}: '
            f"{escape(mk.label)}</title></line>"
        )
    for t in _ticks(end):
        x = _x(t, end)
        out.append(
            f'<line x1="{x:.1f}" y1="{h}" x2="{x:.1f}" y2="{h + 4}" stroke="#8a919c"/>'
            f'<text x="{x:.1f}" y="{h + 16}" font-size="10" text-anchor="middle" '
            f'fill="#5a6270">{fmt_s(t)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


def _section(tl: Timeline, heading: str) -> list[str]:
    colour = colours(tl.jobs or sorted({b.job for b in tl.bars}))
    parts = [f"<{heading}>{escape(tl.title)}</{heading}>"]
    if tl.summary:
        parts.append('<table class="summary">')
        for k, v in tl.summary:
            parts.append(f'<tr><td class="k">{escape(k)}</td><td class="v">{escape(v)}</td></tr>')
        parts.append("</table>")
    for note in tl.notes:
        parts.append(f'<p class="note">{escape(note)}</p>')
    parts.append('<div class="legend">')
    for job, c in colour.items():
        parts.append(f'<span><span class="sw" style="background:{c}"></span>{escape(job)}</span>')
    parts.append(
        '<span><span class="mark"></span>reconfiguration</span>'
        '<span><span class="sw" style="background:#efe7f7;border:1px solid #9467bd"></span>'
        "profiling under MPS</span>"
        '<span><span class="sw" style="background:#fff;border:1px solid #6b7380"></span>'
        "MIG instance</span></div>"
    )
    for lane in tl.gpus:
        layouts = [sp for sp in tl.layouts if sp.gpu == lane.index]
        seq = " → ".join(f"{sp.name} ({fmt_s(sp.start_s)})" for sp in layouts) or "-"
        parts.append(
            f'<div class="lane"><h2>GPU {lane.index}: {escape(lane.name)}</h2>'
            f'<p class="note">layouts: {escape(seq)}</p>'
            + lane_svg(tl, lane.index, lane.slots, colour)
            + "</div>"
        )
    return parts


def render_page(timelines: list[Timeline], title: str) -> str:
    """One page; one section per timeline (a run, or each policy of a simulation)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
    ]
    if len(timelines) == 1:
        parts += _section(timelines[0], "h1")
    else:
        parts.append(f"<h1>{escape(title)}</h1>")
        for tl in timelines:
            parts.append('<section class="policy">')
            parts += _section(tl, "h2")
            parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_html(tl: Timeline) -> str:
    return render_page([tl], tl.title)


def write_simulation(
    path: Any,
    results: list[tuple[str, Any]],
    models: list[Any],
    jobs: list[str],
    data: dict[str, Any],
) -> str:
    """``miso simulate --timeline PATH``: one section per policy, its report above its lanes.

    ``results`` pairs each policy name with its ``SimResult`` (``targets`` and ``jobs``
    with ``finish_s``); ``data`` is the simulate payload (for the summaries).
    """
    from miso_cli.operate.accounting import sim_report, summary_pairs
    from miso_cli.operate.timeline import from_sim
    from miso_cli.runtime.state import atomic_write_text

    report = sim_report({"data": data})
    rows = {r["policy"]: r for r in report["policies"]}
    base = rows.get("nopart")
    timelines = []
    for name, res in results:
        finish = {j.name: j.finish_s for j in res.jobs}
        tl = from_sim(name, list(getattr(res, "targets", []) or []), finish, models, jobs=jobs)
        row = rows.get(name)
        if row is not None and row["summary"].get("profiling_s") is None:
            row["summary"]["profiling_s"] = sum(p.end_s - p.start_s for p in tl.phases)
        if row is not None:
            baseline = {"estimated": False}
            if base is not None:
                baseline.update(
                    makespan_s=base["summary"].get("makespan_s"),
                    mean_jct_s=base["summary"].get("mean_jct_s"),
                )
            tl.summary = summary_pairs({**row, "baseline": baseline})
        timelines.append(tl)
    title = f"miso simulate: {data.get('trace')} on {len(models)} x {models[0].key}"
    atomic_write_text(path, render_page(timelines, title), mode=0o644)
    return str(path)
