"""``miso submit``: add jobs to the running run (a queue file, or one job after ``--``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

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
from miso_cli.errors import UsageError

RunOpt = Annotated[
    Optional[str],  # noqa: UP045 - Typer needs Optional on Python 3.10 runtimes
    typer.Option("--run", help="The run to change (an id or a unique prefix) [default: latest]."),
]


def command(
    args: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Argument(
            help="QUEUE.toml, or with --name the job's command after '--' "
            "(miso submit --name x -- python train.py).",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--name", help="Submit one job of this name; its command follows '--'."),
    ] = None,
    priority: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            "--priority",
            help="Priority of every job submitted (higher first), over the queue file's.",
        ),
    ] = None,
    steps: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--steps", help="With --name: the job's total steps."),
    ] = None,
    memory: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--memory", help="With --name: peak GPU memory, e.g. 8GiB."),
    ] = None,
    workload: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--workload", help="With --name: the catalog workload name."),
    ] = None,
    retries: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--retries", help="With --name: restarts allowed after a failure."),
    ] = None,
    checkpoint_signal: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--checkpoint-signal",
            help="With --name: the signal asking the job to save and stop (e.g. SIGUSR1).",
        ),
    ] = None,
    grace: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--grace", help="With --name: how long it may take to save (e.g. 60s)."),
    ] = None,
    run: RunOpt = None,
    state_dir: StateDirOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Add jobs to the running run: validated like a queue file, kept in the run's inbox
    (fsynced) before this returns, taken by the run within about a second.

    Only the run's owner (or root) may submit: a run started with 'sudo miso run'
    takes 'sudo miso submit'. Without a run to add to: exit 2, code NO_RUN.

    $ miso submit more.toml

    $ miso submit --name tune --steps 500 -- python train.py --lr 0.1
    """

    def body(console: Console) -> Result:
        from miso_cli.operate.submit import command_queue_text, submit

        items = list(args or [])
        state = state_dir_or_default(state_dir)
        single = (steps, memory, workload, retries, checkpoint_signal, grace)
        if name is None:
            if any(v is not None for v in single):
                raise UsageError(
                    "--steps/--memory/--workload/--retries/--checkpoint-signal/"
                    "--grace describe a job given with --name"
                )
            if len(items) != 1:
                raise UsageError(
                    "give one queue file, or --name NAME -- COMMAND...",
                    hint="miso submit more.toml, or miso submit --name x -- python train.py",
                )
            data = submit(state, queue_path=Path(items[0]), run_id=run, priority=priority)
        else:
            if not items:
                raise UsageError(
                    f"--name {name}: the job's command is missing",
                    hint=f"miso submit --name {name} -- python train.py",
                )
            text = command_queue_text(
                name,
                items,
                priority=priority,
                steps=steps,
                memory=memory,
                workload=workload,
                retries=retries,
                checkpoint_signal=checkpoint_signal,
                grace=grace,
            )
            data = submit(state, queue_text=text, run_id=run)
        return Result(data=data, render=lambda out: render(out, data))

    execute("submit", body, json_out=json_out, debug=debug)


def render(out: Console, data: dict[str, Any]) -> None:
    jobs = ", ".join(data["jobs"])
    out.print(f"submitted to run {data['run_id']}: {jobs}", markup=False, soft_wrap=True)
    if not data["live"]:
        out.print(
            f"run {data['run_id']} is {data['run_status']}: nobody drives it now; the jobs "
            "start when it is resumed (miso run --resume)",
            markup=False,
            soft_wrap=True,
        )
