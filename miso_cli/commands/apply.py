"""``miso apply``: make GPUs' MIG instances match a layout, or switch MIG mode.

The use case behind the command: checks the request, opens the driver, holds the
GPUs' locks, then hands each GPU to :func:`miso_cli.gpu.apply.apply_layout` (or asks
the driver for a MIG mode change). Returns typed results and never prints; what a
person should see as it happens (an interrupted apply finished first) goes to the
``note`` callback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miso_cli.errors import ExitCode

Note = Callable[[str], None]


@dataclass(frozen=True)
class WantedLayout:
    """One GPU's wanted instances, as given: ``PROFILE[@START]`` tokens and where from."""

    gpu_index: int
    tokens: list[str]
    source: str  # "arguments", or "plan.json: GPU 1": named in errors


@dataclass
class ApplyResult:
    """What ``miso apply`` did (or, with ``check``/``dry_run``, found) on each GPU."""

    check: bool
    dry_run: bool
    gpus: list[dict[str, Any]]  # per GPU: an apply report, or a check's finding
    recovered: list[str]  # interrupted applies finished or rolled back first
    exit_code: ExitCode = ExitCode.OK
    errors: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "dry_run": self.dry_run,
            "gpus": self.gpus,
            "recovered": self.recovered,
        }


@dataclass
class MigModeResult:
    """``miso apply --mig on|off`` on one GPU: the mode wanted, found and changed."""

    gpu_index: int
    mig_wanted: bool
    mig_current: bool
    mig_pending: bool
    changed: bool = False
    change: dict[str, Any] | None = None  # the driver's answer, when a change was asked
    exit_code: ExitCode = ExitCode.OK
    errors: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "gpu_index": self.gpu_index,
            "mig_wanted": self.mig_wanted,
            "mig_current": self.mig_current,
            "mig_pending": self.mig_pending,
            "changed": self.changed,
        }
        if self.change is not None:
            data.update(self.change)
            data["mig_current"], data["mig_pending"] = self.mig_current, self.mig_pending
            data["changed"] = self.changed
        return data


def wanted_layouts(
    profiles: Sequence[str] | None,
    plan: Path | None,
    mig: str | None,
    gpu_index: int,
    *,
    check: bool = False,
    dry_run: bool = False,
) -> list[WantedLayout]:
    """The request checked: exactly one of instances, a plan file or a MIG mode.

    Returns the wanted layouts (none for ``--mig``); a bad request is a UsageError, a
    bad plan file a BadInput naming it.
    """
    from miso_cli.errors import UsageError
    from miso_cli.gpu.apply import load_plan

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
    if plan is not None:
        return [WantedLayout(i, toks, f"{plan}: GPU {i}") for i, toks in load_plan(plan)]
    if profiles:
        return [WantedLayout(gpu_index, list(profiles), "arguments")]
    return []


def apply(
    gpu_spec: str | None,
    state_dir: Path,
    wanted: Sequence[WantedLayout],
    *,
    mig: bool | None = None,
    gpu_index: int = 0,
    from_plan: bool = False,
    force: bool = False,
    dry_run: bool = False,
    check: bool = False,
    wait_s: float = 5.0,
    note: Note = lambda msg: None,
) -> ApplyResult | MigModeResult:
    """Make the GPUs match ``wanted`` (see :func:`wanted_layouts`), or, with ``mig``, switch
    MIG mode of GPU ``gpu_index`` on (True) or off (False).

    One miso at a time changes a GPU: the GPUs' locks are held (waiting ``wait_s``),
    and with neither ``check`` nor ``dry_run`` an apply a killed miso left
    unfinished is finished or rolled back first (``note`` is told). ``from_plan``:
    the GPU indices came from a plan file, so a GPU this machine lacks is BAD_INPUT.
    """
    from miso_cli.errors import BadInput
    from miso_cli.gpu.nvml import open_driver
    from miso_cli.runtime.locks import hold_gpus

    drv = open_driver(gpu_spec, state_dir)
    notes: list[str] = []

    def noted(msg: str) -> None:
        notes.append(msg)
        note(msg)

    try:
        if from_plan:
            count = drv.device_count()
            for w in wanted:
                if w.gpu_index >= count:
                    raise BadInput(
                        f"{w.source}: no such GPU (this machine has {count})",
                        hint="see 'miso status'",
                    )
        indices = [gpu_index] if mig is not None else [w.gpu_index for w in wanted]
        readonly = check or dry_run
        hold = hold_gpus(drv, indices, "apply", wait_s=wait_s, recover=not readonly, note=noted)
        with hold as locks:
            if mig is not None:
                return set_mig_mode(drv, gpu_index, mig, check, dry_run)
            intents = {i: lock.intent_path for i, lock in locks.items()}
            return apply_layouts(drv, wanted, intents, force, check, dry_run, notes)
    finally:
        drv.close()


def apply_layouts(
    drv: Any,
    wanted: Sequence[WantedLayout],
    intents: dict[int, Path],
    force: bool = False,
    check: bool = False,
    dry_run: bool = False,
    recovered: list[str] | None = None,
) -> ApplyResult:
    """Apply (or check) each wanted layout on an open driver whose GPUs' locks are held.

    ``intents`` is each GPU's intent file (its lock's): written before the GPU changes,
    and, found by ``check``, an interrupted apply that is unfinished.
    """
    from miso_cli.gpu import apply as core

    result = ApplyResult(check, dry_run, [], recovered if recovered is not None else [])
    # Every GPU's layout is checked before any GPU changes: a plan that is wrong
    # for its second GPU must not leave the first one half-way.
    resolved = [(w.gpu_index, core.resolve(drv, w.gpu_index, w.tokens, w.source)) for w in wanted]
    for i, layout in resolved:
        if check:
            info = drv.gpu(i)
            current = drv.current_layout(i) if info.mig_current else None
            # Down to each compute instance and MIG device, not profile names alone.
            problems = core.state_problems(drv, i, layout)
            if intents[i].exists():
                problems.append(
                    f"GPU {i}: an interrupted apply is unfinished (the next "
                    "'miso apply' finishes or rolls it back)"
                )
            ok = not problems
            result.gpus.append(
                {
                    "gpu_index": i,
                    "wanted": layout.to_json(),
                    "current": current.to_json() if current else None,
                    "matches": ok,
                    "problems": problems,
                }
            )
            if not ok:
                result.exit_code = ExitCode.STATE_DIFFERS
                result.errors.append({"code": "STATE_DIFFERS", "message": "; ".join(problems)})
            continue
        rep = core.apply_layout(drv, i, layout, force=force, dry_run=dry_run, intent=intents[i])
        result.gpus.append(rep.to_json())
        if rep.pending_reset:  # MIG mode could not be switched on: say why, per model
            result.exit_code = ExitCode.STATE_DIFFERS
            change = rep.mode_change
            needs_reset = change is None or change.needs_reset
            result.errors.append(
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
    return result


def set_mig_mode(drv: Any, i: int, on: bool, check: bool, dry_run: bool) -> MigModeResult:
    """Switch MIG mode of GPU ``i`` (unless ``check`` or ``dry_run``); say if it is not so."""
    info = drv.gpu(i)
    result = MigModeResult(i, on, info.mig_current, info.mig_pending)
    change = None
    if info.mig_current != on and not (check or dry_run):
        change = drv.set_mig_mode(i, on)
        result.change = change.to_json()
        result.mig_current, result.mig_pending = change.current, change.pending
        result.changed = change.current == on
    if result.mig_current != on:
        result.exit_code = ExitCode.STATE_DIFFERS
        msg = f"GPU {i}: MIG mode is {'on' if result.mig_current else 'off'}"
        hint = f"stop processes on it, then 'nvidia-smi -r -i {i}' as root, or reboot"
        if change is not None:  # the driver's answer, in this GPU's terms
            msg = change.message(i, on) or msg
            if not change.needs_reset:
                hint = "stop the processes using the GPU, then set MIG mode again"
        elif result.mig_pending == on and not check and not dry_run:
            msg += f"; {'on' if on else 'off'} is pending until the GPU is reset"
        result.errors.append({"code": "STATE_DIFFERS", "message": msg, "hint": hint})
    return result
