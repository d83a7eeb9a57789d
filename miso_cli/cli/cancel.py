"""``miso cancel``: checkpoint and stop jobs of the running run, or drop waiting ones."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

from miso_cli.cli.common import (
    DebugOpt,
    JsonOpt,
    Result,
    StateDirOpt,
    execute,
    state_dir_or_default,
)
from miso_cli.cli.submit import RunOpt


def command(
    jobs: Annotated[list[str], typer.Argument(help="The jobs to cancel.", show_default=False)],
    run: RunOpt = None,
    state_dir: StateDirOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Cancel jobs: a waiting job leaves the queue, a running one is asked to checkpoint
    (its checkpoint signal, then its grace period) and stops. Journaled as 'cancelled';
    'miso run --resume' does not start it again.

    $ miso cancel bert
    """

    def body(console: Console) -> Result:
        from miso_cli.operate.submit import control

        data = control(state_dir_or_default(state_dir), "cancel", list(jobs), run_id=run)
        return Result(data=data, render=lambda out: render(out, data))

    execute("cancel", body, json_out=json_out, debug=debug)


def render(out: Console, data: dict[str, Any]) -> None:
    for name, state in data["states"].items():
        how = "checkpoint and stop" if state in ("running", "starting", "stopping") else "leave"
        out.print(f"{name}: asked to {how} (run {data['run_id']})", markup=False)
    if not data["live"]:
        out.print(
            f"run {data['run_id']} is {data['run_status']}: this takes effect when it is resumed",
            markup=False,
        )
