"""``miso priority``: change the priority of jobs of the running run."""

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
    job: Annotated[str, typer.Argument(help="The job.", show_default=False)],
    priority: Annotated[
        int, typer.Argument(help="Its new priority (higher goes first).", show_default=False)
    ],
    run: RunOpt = None,
    state_dir: StateDirOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Change a job's priority; the policy looks at the queue again with it.

    $ miso priority bert 5
    """

    def body(console: Console) -> Result:
        from miso_cli.errors import UsageError
        from miso_cli.operate.submit import control

        if abs(priority) > 10**9:
            raise UsageError("PRIORITY: must be between -1e9 and 1e9")
        data = control(
            state_dir_or_default(state_dir), "priority", [job], priority=priority, run_id=run
        )
        return Result(data=data, render=lambda out: render(out, data))

    execute("priority", body, json_out=json_out, debug=debug)


def render(out: Console, data: dict[str, Any]) -> None:
    for name in data["jobs"]:
        out.print(f"{name}: priority {data['priority']} (run {data['run_id']})", markup=False)
