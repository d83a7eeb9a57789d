"""``miso runs``: the runs of this state dir, past and current, with their outcome."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from miso_cli.cli.common import (
    DebugOpt,
    JsonOpt,
    Result,
    StateDirOpt,
    execute,
    state_dir_or_default,
)


def command(
    state_dir: StateDirOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """List every run, oldest first: its id, when it started, how long it took, its
    policy and GPUs, and its outcome (status and job counts). A run whose miso was
    stopped (crash, kill, reboot) shows as 'stopped': continue it with miso run --resume.

    $ miso runs

    $ miso runs --json | jq '.data.runs[-1].run_id'
    """

    def body(console: Console) -> Result:
        from miso_cli.commands.report import list_runs

        found = list_runs(state_dir_or_default(state_dir))
        data, rows = found.to_json(), found.runs
        return Result(data=data, render=lambda out: render(out, rows))

    execute("runs", body, json_out=json_out, debug=debug)


def render(out: Console, rows: list[dict[str, Any]]) -> None:
    from rich import box
    from rich.table import Table

    from miso_cli.operate.dashboard import fmt_duration
    from miso_cli.operate.view import wide

    out = wide(out)
    if not rows:
        out.print("no runs yet (start one with: miso run QUEUE.toml)", markup=False)
        return
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, header_style="bold")
    for col in ("run", "started", "took", "policy", "GPUs", "outcome"):
        t.add_column(
            col,
            overflow="fold",
            no_wrap=col in ("run", "started", "took"),
            min_width=14 if col == "outcome" else None,
        )
    for r in rows:
        t.add_row(
            r["run_id"],
            time.strftime("%m-%d %H:%M", time.localtime(r["started_at"])),
            fmt_duration(r["elapsed_s"]),
            r["policy"],
            r["gpu_spec"] or "nvml",
            r["outcome"],
        )
    out.print(t)
