"""What ``miso run`` shows while it works, and the summary at the end.

Three forms, chosen by where the output goes:

* a Rich live view on stderr when it is a terminal: the GPUs and their layout,
  one row per job (state, slice, progress bar, step time, throughput, ETA),
  redrawn about once a second (only then: it costs next to nothing);
* plain lines on stderr otherwise (one per event, and a progress line now and then);
* with ``--json``, each event as one JSON line on stdout (the final envelope
  follows it, printed by the command).
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from miso_cli.cli.output import dumps
from miso_cli.runtime.snapshot import RunSnapshot

_QUIET = {"_refresh", "progress"}
STATE_STYLE = {
    "waiting": "dim",
    "starting": "cyan",
    "running": "green",
    "stopping": "yellow",
    "finished": "bold green",
    "failed": "bold red",
    "hung": "bold red",
    "interrupted": "yellow",
    "profiling": "magenta",
    "cancelled": "yellow",  # issue-15: miso cancel
}


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def fmt_step_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def describe(event: dict[str, Any]) -> str | None:
    """One human line for an event (None for events that need none)."""
    kind = event.get("event")
    job = event.get("job")
    if kind == "run_started":
        return f"run {event['run_id']}: {len(event['jobs'])} jobs, policy {event['policy']}"
    if kind == "run_resumed":
        return (
            f"resumed run {event['run_id']}: running {len(event['running'])}, "
            f"collected {len(event['collected'])}, restarting {len(event['restarting'])}"
        )
    if kind == "started":
        where = event.get("slice") or "whole GPU"
        again = " (resumed)" if event.get("resumed") else ""
        return f"{job}: started on GPU {event['gpu']} {where}{again}, attempt {event['attempt']}"
    if kind == "finished":
        return f"{job}: finished"
    if kind in ("failed", "hung"):
        return f"{job}: {kind}: {event.get('reason', '')}"
    if kind == "requeued":
        return f"{job}: back in the queue ({event.get('reason', '')})"
    if kind == "arrived":
        return f"{job}: joins the queue"
    if kind == "interrupted":
        return f"{job}: interrupted ({event.get('reason', '')})"
    if kind in ("cancelled", "request", "request_rejected"):  # issue-15: miso submit/cancel
        from miso_cli.operate.inbox import describe_event

        return describe_event(event)
    if kind == "stopping":
        return f"{job}: asked to checkpoint and stop ({event['reason']}, {event['signal']})"
    if kind == "killed":
        return f"{job}: killed ({event.get('reason', '')})"
    if kind == "hang":
        return f"{job}: no progress for {event['idle_s']:.0f} s: stopping it as hung"
    if kind == "decided":
        return f"GPU {event['gpu']}: {event['reason']}" if event.get("reason") else None
    if kind == "layout_changed":
        return f"GPU {event['gpu']}: layout {event['before']} -> {event['layout']}"
    if kind == "mig_mode":
        return f"GPU {event['gpu']}: MIG mode {'on' if event['enabled'] else 'off'}"
    if kind == "gpu_mode":
        return f"GPU {event['gpu']}: mode {event['mode']} ({event.get('reason', '')})"
    if kind == "draining":
        return (
            f"GPU {event['gpu']}: checkpointing {', '.join(event['jobs'])} to change it "
            f"({event.get('reason', '')})"
        )
    if kind == "profiling":
        levels = ", ".join(f"{lv}%" for lv in event["levels"])
        return f"GPU {event['gpu']}: profiling {', '.join(event['jobs'])} under MPS at {levels}"
    if kind == "profile_level":
        times = ", ".join(f"{j} {fmt_step_time(t)}" for j, t in event["step_time_s"].items())
        return f"GPU {event['gpu']}: measured at {event['level']}%: {times or 'nothing'}"
    if kind == "profiled":
        parts = []
        for j, rel in event.get("prediction", {}).items():
            small = min(rel, key=int) if rel else None
            parts.append(f"{j} {small}g {rel[small]:.1f}x" if small else j)
        missing = event.get("missing") or []
        tail = f"; not measured: {', '.join(missing)}" if missing else ""
        return f"GPU {event['gpu']}: profiled; predicted vs whole GPU: {', '.join(parts)}{tail}"
    if kind == "profile_cancelled":
        return f"GPU {event['gpu']}: profiling cancelled"
    if kind == "mps_daemon":
        what = "started" if event.get("running") else "stopped"
        return f"GPU {event['gpu']}: MPS control daemon {what}"
    if kind == "profiles_reused":
        return f"stored MPS profiles reused for {', '.join(event['jobs'])}"
    if kind == "observed":
        return f"{job}: {fmt_step_time(event['step_time_s'])}/step on {event['slice']} (kept)"
    if kind == "note":
        return str(event.get("message", ""))
    if kind == "interrupting":
        return "interrupted: asking jobs to checkpoint and stop (again to kill at once)"
    return None


class Dashboard:
    """Receives the executor's events; draws the live view or prints lines."""

    def __init__(
        self,
        *,
        json_out: bool,
        live: bool | None = None,
        stream: IO[str] | None = None,
        plain_every_s: float = 30.0,
    ) -> None:
        self.json_out = json_out
        self.err = stream or sys.stderr
        self.live_enabled = self.err.isatty() if live is None else live
        self.plain_every_s = plain_every_s
        self.executor: Any = None
        self._live: Any = None
        self._last_plain = time.monotonic()

    def attach(self, executor: Any) -> None:
        self.executor = executor

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if self.json_out and kind != "_refresh":
            print(dumps(event), flush=True)
        if self.live_enabled:
            line = describe(event)
            if line and self._live is not None:
                self._live.console.print(line, markup=False, highlight=False)
            if kind == "_refresh" or line:
                self.refresh()
            return
        if self.json_out:
            return
        line = describe(event)
        if line:
            print(f"miso: {line}", file=self.err, flush=True)
        elif kind == "_refresh":
            now = time.monotonic()
            if now - self._last_plain >= self.plain_every_s:
                self._last_plain = now
                self._plain_progress()

    def _plain_progress(self) -> None:
        if self.executor is None:
            return
        parts = []
        for name, rec in self.executor.journal.jobs.items():
            if rec.state != "running":
                continue
            p = rec.progress or {}
            frac = p.get("fraction")
            pct = f"{100 * frac:.0f}%" if frac is not None else f"step {p.get('step') or 0:g}"
            parts.append(f"{name} {pct} eta {fmt_duration(p.get('eta_s'))}")
        if parts:
            print("miso: " + "; ".join(parts), file=self.err, flush=True)

    # ------------------------------------------------------------ the live view

    def start(self) -> None:
        if not self.live_enabled:
            return
        from rich.console import Console
        from rich.live import Live

        console = Console(file=self.err, highlight=False)
        self._live = Live(
            self.render(),
            console=console,
            auto_refresh=False,
            transient=False,
            redirect_stdout=False,
        )
        self._live.start()

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.render(), refresh=True)

    def stop(self) -> None:
        if self._live is not None:
            self.refresh()
            self._live.stop()
            self._live = None

    def render(self) -> Any:
        from rich.text import Text

        ex = self.executor
        if ex is None:
            return Text("starting...")
        return render_snapshot(ex.snapshot())


def _scaled(seconds: float | None, scale: float) -> float | None:
    """Wall seconds of a synthetic job in catalog seconds, as the event lines give them."""
    return None if seconds is None else seconds * scale


def render_snapshot(snap: RunSnapshot) -> Any:
    """The live view of one run, from its snapshot."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    gpus = Table.grid(padding=(0, 2))
    for g in snap.gpus:
        gpus.add_row(
            Text(f"GPU {g.index}", style="bold"),
            g.name,
            f"{g.mode}: {g.layout}",
            Text(g.doing, style="cyan"),
        )
    jobs = Table(expand=False, box=None, padding=(0, 1), header_style="bold")
    for col in ("job", "state", "slice", "progress", "", "step", "it/s", "ETA", "CPU", "RSS"):
        jobs.add_column(col, no_wrap=True, min_width=min(len(col), 4) if col else 4)
    for row in snap.jobs:
        p = row.progress
        frac = p.get("fraction")
        bar: Any = ProgressBar(total=1.0, completed=frac or 0.0, width=12)
        if row.state == "finished":
            bar = ProgressBar(total=1.0, completed=1.0, width=12)
            frac = 1.0
        step = p.get("step")
        total = p.get("total")
        steps = "-" if step is None else f"{step:g}" + (f"/{total:g}" if total else "")
        tput = p.get("throughput_steps_s")
        eta = p.get("eta_s") if row.journal_state == "running" else None
        jobs.add_row(
            row.name,
            Text(row.state, style=STATE_STYLE.get(row.state, "")),
            row.where,
            bar,
            f"{100 * frac:3.0f}%" if frac is not None else steps,
            fmt_step_time(_scaled(p.get("step_time_s"), snap.step_time_scale)),
            f"{tput:.1f}" if tput else "-",
            fmt_duration(eta),
            f"{row.cpu_percent:.0f}%" if row.cpu_percent is not None else "-",
            f"{row.rss_mb:.0f}M" if row.rss_mb is not None else "-",
        )
    summary = ", ".join(f"{n} {s}" for s, n in sorted(snap.counts().items()))
    head = Text(
        f"miso run {snap.run_id} | policy {snap.policy} | "
        f"{fmt_duration(snap.elapsed_s)} | {summary}",
        style="bold",
    )
    if snap.step_time_scale != 1.0:  # issue-15b: say which time the step column is in
        head.append(f" | step: catalog time, jobs run x{snap.step_time_scale:g}", style="dim")
    return Group(head, gpus, jobs)


def paused_s(job: dict[str, Any]) -> float | None:
    """Completion time not spent waiting to start or running: between attempts (checkpoint,
    re-layout, profiling restarts, waiting again). queue + run + paused = JCT (issue-15b)."""
    jct, queue, run = job.get("completion_s"), job.get("queue_s"), job.get("run_s")
    if jct is None or queue is None or run is None:
        return None
    return max(0.0, jct - queue - run)


def _print_uncut(console: Any, table: Any) -> None:
    """On a terminal as it fits; to a pipe or a file, wide enough that no cell is cut."""
    if console.is_terminal:
        console.print(table)
        return
    from rich.measure import Measurement

    options = console.options.update(width=1_000_000, max_width=1_000_000)
    natural = Measurement.get(console, options, table).maximum
    saved = console.width
    console.width = max(saved, natural)
    try:
        console.print(table)
    finally:
        console.width = saved


def render_summary(console: Any, report: dict[str, Any]) -> None:
    """The table printed at the end of a run (and by ``miso run --resume`` of a finished one)."""
    from rich.table import Table

    table = Table(title=f"miso run {report['run_id']}", header_style="bold")
    for col in ("job", "state", "slice", "queue", "run", "paused", "JCT", "retries", "attempts"):
        table.add_column(col, justify="left" if col in ("job", "state", "slice") else "right")
    for job in report["jobs"]:
        where = "-"
        if job.get("gpu") is not None:
            where = f"{job['gpu']}:{job.get('slice') or 'whole'}"
        table.add_row(
            job["name"],
            f"[{STATE_STYLE.get(job['state'], '')}]{job['state']}[/]",
            where,
            fmt_duration(job.get("queue_s")),
            fmt_duration(job.get("run_s")),
            fmt_duration(paused_s(job)),
            fmt_duration(job.get("completion_s")),
            str(job.get("retries", 0)),
            str(job.get("attempts", 0)),
        )
    _print_uncut(console, table)
    s = report["summary"]
    util = s.get("slice_utilisation")
    console.print(
        f"makespan {fmt_duration(s.get('makespan_s'))}, mean JCT "
        f"{fmt_duration(s.get('mean_jct_s'))}, slice utilisation "
        f"{'-' if util is None else f'{100 * util:.0f}%'}; "
        f"{s['finished']} finished, {s['failed']} failed"
        + (f", {s['other']} not done" if s.get("other") else ""),
        highlight=False,
    )
    for job in report["jobs"]:
        if job["state"] in ("failed", "hung") and job.get("reason"):
            console.print(f"  {job['name']}: {job['reason']}", markup=False, highlight=False)
    console.print(f"report: {report['report_file']}", markup=False, highlight=False)
