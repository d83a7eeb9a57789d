"""``miso runs`` and ``miso report``: what the runs of a state dir did, and whether it paid.

Use cases over the journal (:mod:`miso_cli.operate`): the list of runs with their
outcome; one run's report (JCT, makespan, utilisation, the whole-GPU baseline, the
cost) with its timeline; the same report for each policy of a ``miso simulate
--json`` file. They return typed results and never print.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miso_cli.errors import BadInput, UsageError


@dataclass
class RunList:
    """Every run of a state dir, oldest first: id, status, timing, outcome."""

    runs: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """The data of ``miso runs --json``."""
        return {"runs": self.runs}


def list_runs(state_dir: Path, now: float | None = None) -> RunList:
    """The runs of ``state_dir``; a running one's elapsed time is up to ``now``."""
    from miso_cli.operate.runs import counts, outcome
    from miso_cli.operate.runs import list_runs as runs_of

    now = time.time() if now is None else now
    rows = []
    for r in runs_of(state_dir):
        started = float(r.data.get("started_at") or 0.0)
        ended = r.data.get("ended_at")
        rows.append(
            {
                "run_id": r.run_id,
                "status": r.status,
                "live": r.live,
                "policy": r.policy,
                "gpu_spec": r.data.get("gpu_spec"),
                "started_at": started,
                "ended_at": ended,
                "elapsed_s": (float(ended) if ended else now) - started,
                "jobs": counts(r),
                "outcome": outcome(r),
                "run_dir": str(r.run_dir),
            }
        )
    return RunList(rows)


@dataclass
class RunReport:
    """A run's report (:func:`miso_cli.operate.accounting.run_report`), and its timeline."""

    data: dict[str, Any]  # the accounting, with the run's status and where the page went
    timeline: list[str] | None = None  # the text timeline, when asked for

    def to_json(self) -> dict[str, Any]:
        """The data of ``miso report --json``."""
        return self.data


def price(state_dir: Path, per_hour: float | None) -> tuple[float | None, str]:
    """The price of one GPU-hour and its currency: ``per_hour``, else the state dir's config."""
    from miso_cli.commands import require_finite
    from miso_cli.operate import accounting

    require_finite(price=per_hour)
    if per_hour is not None:
        return per_hour, ""
    return accounting.price_from_config(state_dir)


def report_run(
    state_dir: Path,
    run: str | None = None,
    *,
    per_hour: float | None = None,
    currency: str = "",
    html: Path | None = None,
    timeline_width: int | None = None,
    now: float | None = None,
) -> RunReport:
    """Report run ``run`` (an id or a unique prefix; None: the latest) at ``per_hour``.

    ``html``: also write the timeline there as one page. ``timeline_width``: also draw
    the text timeline, that many columns wide.
    """
    from miso_cli.operate import accounting
    from miso_cli.operate.runs import open_run
    from miso_cli.operate.timeline import from_run

    r = open_run(state_dir, run)
    events = accounting.read_events(r.run_dir)
    now = time.time() if now is None else now
    data = accounting.run_report(r.data, events, price=per_hour, currency=currency, now=now)
    data["status"] = r.status
    tl = from_run(r.data, events, r.run_dir, now=now)
    tl.summary = accounting.summary_pairs(data)
    tl.notes = ["Baseline: " + data["baseline"]["method"] + "."]
    if html is not None:
        from miso_cli.operate.html import render_html
        from miso_cli.runtime.state import atomic_write_text

        atomic_write_text(html, render_html(tl), mode=0o644)
        data["html"] = str(html)
    text = None
    if timeline_width is not None:
        from miso_cli.operate.timeline import render_text

        text = render_text(tl, width=timeline_width)
        data["timeline"] = text
    return RunReport(data, text)


def report_simulation(
    path: Path, *, per_hour: float | None = None, currency: str = ""
) -> dict[str, Any]:
    """The report of each policy in a ``miso simulate --json`` file, against its nopart."""
    from miso_cli.operate import accounting

    return accounting.sim_report(read_simulation(path), price=per_hour, currency=currency)


def read_simulation(path: Path) -> dict[str, Any]:
    """The envelope in a file of ``miso simulate --json`` output (its last line)."""
    from miso_cli.spec.textfile import read_text

    raw = read_text(path, "the simulation output")
    lines = [ln for ln in raw.splitlines() if ln.strip()]
    if not lines:
        raise BadInput(f"{path}: empty")
    try:
        doc = json.loads(lines[-1])  # the envelope is the last line
    except ValueError:
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise BadInput(f"{path}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("command", "simulate") != "simulate":
        raise BadInput(f"{path}: not the output of 'miso simulate --json'")
    return doc


def check_report_request(
    run: str | None, sim: Path | None, html: Path | None, timeline: bool
) -> None:
    """``miso report``: a run or ``--sim``, and the timeline options only for a run."""
    if sim is None:
        return
    if run is not None:
        raise UsageError("give a RUN or --sim, not both")
    if html is not None or timeline:
        raise UsageError(
            "--html/--timeline need a run: for a simulation use miso simulate --timeline out.html"
        )
