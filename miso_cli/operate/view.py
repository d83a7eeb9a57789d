"""How runs look from outside: the ``runs`` part of ``miso status``, and its ``--watch`` loop.

Tables never drop characters: off a terminal they are drawn as wide as they need
(a pipe or a file gets every GPU name and UUID whole); on a terminal a column
too narrow folds its text onto a second line instead of cutting it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from miso_cli.operate import inbox
from miso_cli.operate.dashboard import STATE_STYLE, fmt_duration, fmt_step_time
from miso_cli.operate.runs import RunInfo, job_rows, list_runs, outcome

STATE_STYLE = {**STATE_STYLE, "cancelled": "yellow", "submitted": "cyan", "stopped": "yellow"}


def wide(out: Console) -> Console:
    """``out`` itself on a terminal; off one, a console as wide as any table needs."""
    if out.is_terminal:
        return out
    return Console(
        file=out.file,
        width=max(out.width, 500),
        highlight=False,
        color_system=None,
        soft_wrap=False,
    )


def shown_runs(state_dir: Path) -> list[RunInfo]:
    """Runs worth showing now: every run not over (driven or stopped), else the latest."""
    runs = list_runs(state_dir)
    current = [r for r in runs if r.data.get("status") == "running"]
    if current:
        return current
    return runs[-1:]


def run_summary(run: RunInfo, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    started = float(run.data.get("started_at") or now)
    ended = run.data.get("ended_at")
    pending = []
    for req in inbox.pending(run.run_dir):
        if req.get("kind") == "submit":
            pending.append({"id": req.get("id"), "submitted_at": req.get("submitted_at")})
    rejected = [r for r in run.data.get("requests", []) if r.get("status") == "rejected"]
    return {
        "run_id": run.run_id,
        "policy": run.policy,
        "status": run.status,
        "live": run.live,
        "miso_pid": run.data.get("miso_pid"),
        "gpu_spec": run.data.get("gpu_spec"),
        "started_at": started,
        "ended_at": ended,
        "elapsed_s": (float(ended) if ended else now) - started,
        "outcome": outcome(run),
        "run_dir": str(run.run_dir),
        "jobs": job_rows(run, now),
        "submissions_waiting": pending,
        "requests_rejected": rejected[-5:],
    }


def collect_runs(state_dir: Path, now: float | None = None) -> list[dict[str, Any]]:
    return [run_summary(r, now) for r in shown_runs(state_dir)]


def _progress(row: dict[str, Any]) -> str:
    frac, step, total = row.get("fraction"), row.get("step"), row.get("total_steps")
    if frac is not None:
        text = f"{100 * frac:.0f}%"
        if step is not None and total:
            text += f" {step:g}/{total:g}"
        return text
    if step is not None:
        return f"step {step:g}"
    return "-"


def render_runs(out: Console, runs: list[dict[str, Any]], *, compact: bool = False) -> None:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    if not runs:
        out.print("no runs (start one with: miso run QUEUE.toml)", markup=False)
        return
    for r in runs:
        state = r["status"]
        head = Text()
        head.append(f"run {r['run_id']}", style="bold")
        head.append(f"  policy {r['policy']}  ")
        head.append(state, style=STATE_STYLE.get(state, ""))
        head.append(f"  {fmt_duration(r['elapsed_s'])}")
        if r.get("gpu_spec"):
            head.append(f"  {r['gpu_spec']}")
        out.print(head, soft_wrap=True)
        if state == "stopped":
            out.print(
                "  nobody drives this run now (miso was stopped): continue it with "
                "miso run --resume",
                markup=False,
                soft_wrap=True,
            )
        t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")
        for col in ("job", "state", "GPU", "slice", "progress", "step", "ETA"):
            t.add_column(col, overflow="fold", no_wrap=col not in ("job", "state"))
        if not compact:
            t.add_column("prio", justify="right")
        for j in r["jobs"]:
            cells = [
                j["name"],
                Text(j["state"], style=STATE_STYLE.get(j["state"].split(" ")[0], "")),
                "-" if j["gpu"] is None else str(j["gpu"]),
                j["slice"] or "-",
                _progress(j),
                fmt_step_time(j["step_time_s"]),
                fmt_duration(j["eta_s"]),
            ]
            if not compact:
                cells.append(str(j.get("priority", 0)))
            t.add_row(*cells)
        for _ in r.get("submissions_waiting", []):
            cells = ["(submitted)", Text("submitted", style="cyan"), "-", "-", "-", "-", "-"]
            t.add_row(*(cells + ([""] if not compact else [])))
        out.print(t)
        for rej in r.get("requests_rejected", []):
            out.print(
                f"  request {rej.get('id')} refused: {rej.get('reason', '')}",
                markup=False,
                soft_wrap=True,
            )


def render_gpu_lines(out: Console, data: dict[str, Any]) -> None:
    """One line per GPU (its mode and layout): the compact form for ``--watch``."""
    for g in data.get("gpus", []):
        mode = "n/a" if g.get("mig_current") is None else ("MIG" if g["mig_current"] else "whole")
        procs = len(g.get("processes") or [])
        out.print(
            f"GPU {g['index']} {g.get('name') or 'n/a'}: {mode} {g.get('layout') or ''}"
            f" ({procs} process{'es' if procs != 1 else ''})",
            markup=False,
            soft_wrap=True,
        )


def watch_loop(
    snapshot: Callable[[], dict[str, Any]],
    render: Callable[[Console, dict[str, Any]], None],
    console: Console,
    *,
    json_out: bool,
    interval: float,
    count: int = 0,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Draw ``snapshot()`` every ``interval`` s until Ctrl-C (or ``count`` views); returns views.

    On a terminal the view is redrawn in place (rich Live, no screen clearing, so no
    flicker); off one each view is printed after the last; with ``json_out`` each is
    one JSON envelope line on stdout.
    """
    from miso_cli.cli.output import dumps, envelope

    shown = 0
    live: Any = None
    try:
        while True:
            data = snapshot()
            shown += 1
            if json_out:
                print(dumps(envelope("status", data)), flush=True)
            elif console.is_terminal:
                from rich.console import Group
                from rich.live import Live
                from rich.text import Text

                body = _Frame(render, data)
                stamp = Text(
                    time.strftime("%H:%M:%S") + f"  every {interval:g}s, Ctrl-C to stop",
                    style="dim",
                )
                if live is None:
                    live = Live(
                        Group(stamp, body),
                        console=console,
                        auto_refresh=False,
                        vertical_overflow="ellipsis",
                    )
                    live.start()
                else:
                    live.update(Group(stamp, body), refresh=True)
            else:
                if shown > 1:
                    console.print()
                render(console, data)
                console.file.flush()
            if count and shown >= count:
                break
            sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()
    return shown


class _Frame:
    """A rich renderable drawing one status view into the Live region."""

    def __init__(self, render: Callable[[Console, dict[str, Any]], None], data: dict[str, Any]):
        self.render = render
        self.data = data

    def __rich_console__(self, console: Console, options: Any) -> Any:
        sub = Console(
            width=options.max_width,
            force_terminal=True,
            color_system=console.color_system or "standard",
        )
        with sub.capture() as cap:
            self.render(sub, self.data)
        from rich.text import Text

        yield Text.from_ansi(cap.get().rstrip("\n"))
