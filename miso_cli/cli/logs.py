"""``miso logs``: print or follow a job's log, all its attempts."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Optional

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

_sleep = time.sleep  # tests replace it: following never waits on the wall clock there


def command(
    job: Annotated[str, typer.Argument(help="The job.", show_default=False)],
    follow_: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="Keep printing what the job writes until it ends (Ctrl-C to stop).",
        ),
    ] = False,
    attempt: Annotated[
        Optional[int],  # noqa: UP045 - Typer needs Optional on Python 3.10 runtimes
        typer.Option("--attempt", min=1, help="Only this attempt's part of the log."),
    ] = None,
    run: RunOpt = None,
    state_dir: StateDirOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Print a job's log: its output from every attempt, each after a '=== miso:' line
    that says where and when it started.

    $ miso logs bert

    $ miso logs bert -f --run 20250101-120000
    """

    def body(console: Console) -> Result:
        from miso_cli.errors import UsageError
        from miso_cli.operate.logs import follow, job_over, log_path, read_log
        from miso_cli.operate.runs import open_run

        r = open_run(state_dir_or_default(state_dir), run)
        path = log_path(r, job)
        if json_out:
            if follow_:
                raise UsageError("--follow prints the log as it grows: drop --json")
            text = read_log(path, attempt).decode("utf-8", errors="replace")
            data = {"run_id": r.run_id, "job": job, "log": str(path), "text": text}
            return Result(data=data)
        out = sys.stdout.buffer

        def write(chunk: bytes) -> None:
            out.write(chunk)
            out.flush()

        if follow_ and attempt is None:
            try:
                follow(path, write, done=job_over(r.run_dir, job), sleep=_sleep)
            except KeyboardInterrupt:
                pass  # the job goes on: only the view stops
        else:
            write(read_log(path, attempt))
        return Result(data={})

    execute("logs", body, json_out=json_out, debug=debug)
