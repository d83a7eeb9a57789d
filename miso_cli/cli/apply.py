"""``miso apply``: make a GPU's MIG instances match a layout, changing only what differs.

Parses the options, calls :func:`miso_cli.commands.apply.apply`, renders its result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

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
    profiles: Annotated[
        Optional[list[str]],  # noqa: UP045 - Typer needs Optional on Python 3.10 runtimes
        typer.Argument(
            help="The wanted instances, e.g. 4g.20gb 2g.10gb 1g.5gb; PROFILE@START pins a "
            "placement. Omit with --plan.",
            show_default=False,
        ),
    ] = None,
    gpu_index: Annotated[
        int, typer.Option("--gpu-index", "-i", help="The GPU to change.", min=0)
    ] = 0,
    plan: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--plan",
            help="A plan file (JSON): a 'miso plan --json' envelope or "
            '{"gpus": [{"index": 0, "layout": ["3g.20gb@0", ...]}]}.',
            dir_okay=False,
        ),
    ] = None,
    mig: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--mig", help="Only switch MIG mode 'on' or 'off' (no instances).", metavar="on|off"
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Terminate processes on instances that must be destroyed."),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the steps; change nothing.")
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Change nothing; exit 0 if the GPU already matches, STATE_DIFFERS (6) if not.",
        ),
    ] = False,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            help="Seconds to wait for another miso that is changing the GPU (then GPU_BUSY).",
            min=0,
        ),
    ] = 5.0,
    gpu: GpuOpt = None,
    state_dir: StateDirOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Make GPU instances match the wanted layout, enabling MIG mode where needed.

    Instances that already match (same profile, same placement) are kept, with
    their processes running; only the rest is destroyed and created. Destroying
    an instance that has processes is refused unless --force. If any step fails,
    the layout found is restored (exit 9, ROLLED_BACK); if it cannot be, exit 10
    (INCONSISTENT) says what is left. When a GPU reset or reboot is needed for
    MIG mode, it says so and exits 6 (STATE_DIFFERS).

    One miso at a time changes a GPU: a second waits --wait seconds, then exits 8
    (GPU_BUSY) naming the holder. The intent is written before the GPU changes, and
    Ctrl-C waits until the GPU is in the old or the new layout; an apply killed
    outright is finished or rolled back by the next miso command that takes the GPU.

    $ miso apply --gpu-index 0 4g.20gb 2g.10gb 1g.5gb

    $ miso apply --plan plan.json --dry-run

    $ miso apply --check --gpu-index 0 3g.20gb@0 3g.20gb@4
    """

    def body(console: Console) -> Result:
        from miso_cli.cli.common import stderr_console
        from miso_cli.commands.apply import MigModeResult, apply, wanted_layouts

        wanted = wanted_layouts(profiles, plan, mig, gpu_index, check=check, dry_run=dry_run)

        def note(msg: str) -> None:
            stderr_console().print(f"miso: {msg}", markup=False, soft_wrap=True)

        result = apply(
            gpu,
            state_dir_or_default(state_dir),
            wanted,
            mig=None if mig is None else mig.lower() == "on",
            gpu_index=gpu_index,
            from_plan=plan is not None,
            force=force,
            dry_run=dry_run,
            check=check,
            wait_s=wait,
            note=note,
        )
        data = result.to_json()
        if isinstance(result, MigModeResult):
            return Result(
                data, lambda out: _render_mode(out, data), result.exit_code, result.errors
            )
        reports = data["gpus"]
        return Result(
            data, lambda out: _render(out, reports, check), result.exit_code, result.errors
        )

    execute("apply", body, json_out=json_out, debug=debug)


def _render_mode(out: Console, data: dict[str, Any]) -> None:
    state = "on" if data["mig_current"] else "off"
    verb = "switched" if data["changed"] else "is"
    out.print(f"GPU {data['gpu_index']}: MIG mode {verb} {state}", markup=False)


def _render(out: Console, reports: list[dict[str, Any]], check: bool) -> None:
    for r in reports:
        i = r["gpu_index"]
        if check:
            state = "matches" if r["matches"] else "differs"
            out.print(f"GPU {i}: {state} ({r['wanted']['name']})", markup=False)
            continue
        steps = r["steps"]
        if r["dry_run"]:
            out.print(f"GPU {i}: would {'make no change' if not steps else 'run:'}", markup=False)
        elif not steps:
            out.print(f"GPU {i}: already {r['wanted']['name']}; nothing to do", markup=False)
        else:
            out.print(f"GPU {i}: {r['before']['name']} -> {r['after']['name']}", markup=False)
        for s in steps:
            out.print(f"  {s['description']}", markup=False)
        if r["kept"]:
            kept = ", ".join(f"{k['profile']}@{k['placement']['start']}" for k in r["kept"])
            out.print(f"  kept: {kept}", markup=False)
        if r.get("killed_pids"):
            out.print(f"  terminated: {', '.join(map(str, r['killed_pids']))}", markup=False)
