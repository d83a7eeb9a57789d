"""``miso apply``: make a GPU's MIG instances match a layout, changing only what differs."""

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
        from miso_cli.errors import BadInput, UsageError
        from miso_cli.gpu import apply as core
        from miso_cli.gpu.nvml import open_driver

        if mig is not None and mig.lower() not in ("on", "off"):
            raise UsageError(f"--mig: expected 'on' or 'off', not {mig!r}")
        chosen = sum(x is not None and x != [] for x in (profiles, plan, mig))
        if chosen != 1:
            raise UsageError(
                "give the wanted instances, or --plan FILE, or --mig on|off (exactly one)",
                hint="e.g. miso apply --gpu-index 0 4g.20gb 2g.10gb 1g.5gb",
            )
        if check and dry_run:
            raise UsageError("--check and --dry-run do not go together")
        wanted: list[tuple[int, list[str], str]] = []
        if plan is not None:
            wanted = [(i, toks, f"{plan}: GPU {i}") for i, toks in core.load_plan(plan)]
        elif profiles:
            wanted = [(gpu_index, list(profiles), "arguments")]
        from miso_cli.cli.common import stderr_console
        from miso_cli.runtime.locks import hold_gpus

        drv = open_driver(gpu, state_dir_or_default(state_dir))
        notes: list[str] = []

        def note(msg: str) -> None:
            notes.append(msg)
            stderr_console().print(f"miso: {msg}", markup=False, soft_wrap=True)

        try:
            if plan is not None:
                count = drv.device_count()
                for i, _, source in wanted:
                    if i >= count:
                        raise BadInput(
                            f"{source}: no such GPU (this machine has {count})",
                            hint="see 'miso status'",
                        )
            indices = [gpu_index] if mig is not None else [i for i, _, _ in wanted]
            readonly = check or dry_run
            hold = hold_gpus(drv, indices, "apply", wait_s=wait, recover=not readonly, note=note)
            with hold as locks:
                if mig is not None:
                    return _mode(drv, gpu_index, mig.lower() == "on", check, dry_run)
                return _apply(drv, wanted, locks, force, check, dry_run, notes)
        finally:
            drv.close()

    execute("apply", body, json_out=json_out, debug=debug)


def _apply(
    drv: Any,
    wanted: list[tuple[int, list[str], str]],
    locks: dict[int, Any],
    force: bool,
    check: bool,
    dry_run: bool,
    notes: list[str],
) -> Result:
    from miso_cli.errors import ExitCode
    from miso_cli.gpu import apply as core

    reports: list[dict[str, Any]] = []
    code = ExitCode.OK
    errors: list[dict[str, Any]] = []
    # Every GPU's layout is checked before any GPU changes: a plan that is wrong
    # for its second GPU must not leave the first one half-way.
    resolved = [(i, core.resolve(drv, i, toks, source)) for i, toks, source in wanted]
    for i, layout in resolved:
        if check:
            info = drv.gpu(i)
            current = drv.current_layout(i) if info.mig_current else None
            # Down to each compute instance and MIG device, not profile names alone.
            problems = core.state_problems(drv, i, layout)
            if locks[i].intent_path.exists():
                problems.append(
                    f"GPU {i}: an interrupted apply is unfinished (the next "
                    "'miso apply' finishes or rolls it back)"
                )
            ok = not problems
            reports.append(
                {
                    "gpu_index": i,
                    "wanted": layout.to_json(),
                    "current": current.to_json() if current else None,
                    "matches": ok,
                    "problems": problems,
                }
            )
            if not ok:
                code = ExitCode.STATE_DIFFERS
                errors.append({"code": "STATE_DIFFERS", "message": "; ".join(problems)})
            continue
        rep = core.apply_layout(
            drv, i, layout, force=force, dry_run=dry_run, intent=locks[i].intent_path
        )
        reports.append(rep.to_json())
        if rep.pending_reset:  # MIG mode could not be switched on: say why, per model
            code = ExitCode.STATE_DIFFERS
            change = rep.mode_change
            needs_reset = change is None or change.needs_reset
            errors.append(
                {
                    "code": "STATE_DIFFERS",
                    "message": (
                        change.message(i, True)
                        if change is not None
                        else f"GPU {i}: MIG mode is pending; the GPU must be reset"
                    )
                    + "; no instance was created",
                    "hint": f"stop processes on it, run 'nvidia-smi -r -i {i}' as root "
                    "(or reboot), then apply again"
                    if needs_reset
                    else "stop the processes using the GPU, then apply again",
                }
            )
    data = {"check": check, "dry_run": dry_run, "gpus": reports, "recovered": notes}
    return Result(
        data=data,
        render=lambda out: _render(out, reports, check),
        exit_code=code,
        errors=errors,
    )


def _mode(drv: Any, i: int, on: bool, check: bool, dry_run: bool) -> Result:
    from miso_cli.errors import ExitCode

    info = drv.gpu(i)
    data: dict[str, Any] = {
        "gpu_index": i,
        "mig_wanted": on,
        "mig_current": info.mig_current,
        "mig_pending": info.mig_pending,
        "changed": False,
    }
    code = ExitCode.OK
    errors = []
    change = None
    if info.mig_current != on and not (check or dry_run):
        change = drv.set_mig_mode(i, on)
        data.update(change.to_json())
        data["mig_current"], data["mig_pending"] = change.current, change.pending
        data["changed"] = change.current == on
    if data["mig_current"] != on:
        code = ExitCode.STATE_DIFFERS
        msg = f"GPU {i}: MIG mode is {'on' if data['mig_current'] else 'off'}"
        hint = f"stop processes on it, then 'nvidia-smi -r -i {i}' as root, or reboot"
        if change is not None:  # the driver's answer, in this GPU's terms
            msg = change.message(i, on) or msg
            if not change.needs_reset:
                hint = "stop the processes using the GPU, then set MIG mode again"
        elif data["mig_pending"] == on and not check and not dry_run:
            msg += f"; {'on' if on else 'off'} is pending until the GPU is reset"
        errors.append({"code": "STATE_DIFFERS", "message": msg, "hint": hint})

    def render(out: Console) -> None:
        state = "on" if data["mig_current"] else "off"
        verb = "switched" if data["changed"] else "is"
        out.print(f"GPU {i}: MIG mode {verb} {state}", markup=False)

    return Result(data=data, render=render, exit_code=code, errors=errors)


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
