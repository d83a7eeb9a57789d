"""``miso profile``: measure every job of a queue under MPS and store the profiles.

Parses the options, calls :func:`miso_cli.commands.profile.profile` with a progress
display, renders its report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from miso_cli.cli.common import (
    DebugOpt,
    GpuOpt,
    JsonOpt,
    Result,
    StateDirOpt,
    execute,
    state_dir_or_default,
)


def command(
    queue: Annotated[Path, typer.Argument(help="The queue file (TOML).")],
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="colocated: up to 7 jobs together under MPS at each level (MISO's way); "
            "solo: each job alone at each level.",
        ),
    ] = "colocated",
    levels: Annotated[
        Optional[str],  # noqa: UP045 - Typer needs Optional on Python 3.10 runtimes
        typer.Option(
            "--levels",
            help="Active-thread percentages, e.g. 100,50,14 [default: 100,50,14 co-located; "
            "100,57,43,29,14 solo].",
        ),
    ] = None,
    refresh: Annotated[
        bool,
        typer.Option("--refresh", help="Measure again even where a fresh profile is stored."),
    ] = False,
    gpu_index: Annotated[
        int, typer.Option("--gpu-index", help="Which GPU to profile on.", min=0)
    ] = 0,
    warmup_steps: Annotated[
        int, typer.Option("--warmup-steps", help="Steps skipped at each level.", min=0)
    ] = 3,
    min_steps: Annotated[
        int, typer.Option("--min-steps", help="Steps to measure at each level.", min=1)
    ] = 20,
    max_time: Annotated[
        str,
        typer.Option("--max-time", help="Time cap per level (e.g. 30, 30s, 2m)."),
    ] = "30s",
    speedup: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            "--speedup",
            help="Simulated GPUs: synthetic jobs run this many times faster than the "
            "catalog; step times are scaled back [default: 10].",
        ),
    ] = None,
    reset_layout: ResetLayoutOpt = False,
    gpu: GpuOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Measure each job's step time under MPS at a few active-thread percentages.

    miso runs its own MPS daemon on the GPU (or its one full-size MIG instance).
    The MIG layout is not touched, except with --reset-layout (or a yes on the
    terminal): an idle GPU split by a previous run is switched to one full-size
    instance for profiling and back afterwards, also on Ctrl-C. Profiles are stored
    per job and reused by plan and run while fresh. Exit code 7 if a job failed or
    ran out of memory at some level.

    $ miso profile queue.toml --gpu sim:a100-40gb --reset-layout
    """

    def body(console: Any) -> Result:
        from miso_cli.commands.profile import profile, profile_settings
        from miso_cli.spec.queue import load_queue

        settings = profile_settings(
            mode=mode,
            levels=levels,
            warmup_steps=warmup_steps,
            min_steps=min_steps,
            max_time=max_time,
            speedup=speedup,
            gpu_index=gpu_index,
        )
        spec = load_queue(queue)
        sdir = state_dir_or_default(state_dir)
        with _ProgressView(len(settings.resolved_levels()), settings.min_steps) as view:
            report = profile(
                gpu,
                spec.jobs,
                sdir,
                settings,
                refresh=refresh,
                sink=view.sink,
                consent=layout_consent(reset_layout, json_out),
            )
        data = report.to_json()
        return Result(data, lambda c: _render(c, data), report.exit_code, report.errors)

    execute("profile", body, json_out=json_out, debug=debug)


def layout_consent(reset_layout: bool, json_out: bool) -> Any:
    """Consent to switch an idle split GPU to a whole one for profiling: the flag, else a
    question on a terminal (never with --json or without one), else no."""
    import sys

    def ask(offer: Any) -> bool:
        if reset_layout:
            return True
        if json_out or not (sys.stdin.isatty() and sys.stderr.isatty()):
            return False
        return bool(typer.confirm(offer.question(), default=False, err=True))

    return ask


ResetLayoutOpt = Annotated[
    bool,
    typer.Option(
        "--reset-layout",
        help="If the GPU is idle but split into MIG instances (a run leaves its layout), "
        "switch it to one full-size instance for profiling and restore the layout "
        "afterwards (asked on a terminal when not given).",
    ),
]


class _ProgressView:
    """A Rich progress display on stderr: one bar per job, across its levels."""

    def __init__(self, n_levels: int, min_steps: int) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from miso_cli.cli.common import stderr_console

        self.n_levels, self.min_steps = n_levels, min_steps
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[what]}"),
            TimeElapsedColumn(),
            console=stderr_console(),
            transient=True,
        )
        self.tasks: dict[str, Any] = {}
        self.done: dict[str, int] = {}
        self.started = False

    def __enter__(self) -> _ProgressView:
        return self  # the display starts at the first event: a question may come first

    def __exit__(self, *exc: object) -> None:
        if self.started:
            self.progress.stop()

    def sink(self, ev: Any) -> None:
        if not self.started:
            self.progress.start()
            self.started = True
        total = self.n_levels * self.min_steps
        if ev.kind == "level":
            for name in ev.group or []:
                if name not in self.tasks:
                    self.tasks[name] = self.progress.add_task(name, total=total, what="")
                    self.done[name] = 0
        elif ev.kind == "poll" and ev.job in self.tasks:
            steps = min(ev.steps, self.min_steps)
            self.progress.update(
                self.tasks[ev.job],
                completed=self.done[ev.job] + steps,
                what=f"{ev.level:g}%  {ev.steps}/{self.min_steps} steps",
            )
        elif ev.kind == "job-level" and ev.job in self.tasks:
            self.done[ev.job] += self.min_steps
            self.progress.update(
                self.tasks[ev.job],
                completed=self.done[ev.job],
                what=f"{ev.level:g}%  {ev.status}",
            )


def _render(console: Any, report: dict[str, Any]) -> None:
    from rich.table import Table

    levels = report["levels"]
    g = report["gpu"]
    t = Table(
        title=f"MPS profiles ({report['mode']}) on GPU {g['index']} {g['name'] or ''}",
        title_justify="left",
    )
    t.add_column("job")
    for lv in levels:
        t.add_column(f"{lv:g}%  ms/step", justify="right")
    t.add_column("peak MiB", justify="right")
    t.add_column("", style="dim")
    for p in report["profiles"]:
        cells = []
        for lv in p["levels"]:
            if lv["status"] == "ok" and lv["step_time_s"] is not None:
                cells.append(f"{lv['step_time_s'] * 1000:.1f}")
            else:
                cells.append(f"[red]{lv['status']}[/red]")
        mem = p["peak_memory_mb"]
        cells.append(f"{mem:.0f}" if mem else "-")
        cells.append("stored" if p["reused"] else "")
        t.add_row(p["job"], *cells)
    console.print(t)
    for n in report["notes"]:
        console.print(f"note: {n}", markup=False)
    reasons = [
        f"{p['job']} at {lv['level']:g}%: {lv['status']} ({lv['reason']})"
        for p in report["profiles"]
        for lv in p["levels"]
        if lv["status"] != "ok" and lv.get("reason")
    ]
    for r in reasons:
        console.print(r, markup=False)
