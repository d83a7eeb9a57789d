"""``miso doctor``: check the driver, GPUs, permissions, MPS, state and model."""

from __future__ import annotations

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

_MARK = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}
_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def command(
    gpu: GpuOpt = None,
    state_dir: StateDirOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Check that this machine is ready for miso run, and say how to fix what is not.

    One line per check: Python and package versions, the NVML library and driver,
    the nvidia-ml-py binding against the driver, each GPU's MIG capability and mode
    (and a pending change), permission for MIG changes, the MPS control binary and
    any daemon already running, processes on the GPUs that miso did not start, the
    state directory and its permissions, and the fitted model and its age. Exits
    non-zero (NO_GPU, PERMISSION, ...) when something blocks miso run.

    $ miso doctor

    $ miso doctor --gpu sim:a100-40gb --json
    """

    def body(console: Console) -> Result:
        from miso_cli.commands import doctor

        report = doctor.doctor(gpu, state_dir_or_default(state_dir, check=False))
        checks, code = report.checks, report.exit_code

        def render(out: Console) -> None:
            from rich.text import Text

            width = max(len(c.name) for c in checks)
            for c in checks:
                line = Text()
                line.append(_MARK.get(c.status, c.status), style=_STYLE.get(c.status, ""))
                line.append(f" {c.name.ljust(width)}  {c.message}")
                if c.fix and c.status != doctor.OK:
                    line.append("  fix: ", style="dim")
                    line.append(c.fix)
                out.print(line, soft_wrap=True)
            if code == 0:
                n_warn = sum(c.status == doctor.WARN for c in checks)
                tail = f" ({n_warn} warning(s))" if n_warn else ""
                out.print(f"ready for miso run{tail}", markup=False)

        return Result(report.to_json(), render, exit_code=code, errors=report.errors)

    execute("doctor", body, json_out=json_out, debug=debug)
