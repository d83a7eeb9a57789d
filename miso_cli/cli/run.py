"""``miso run``: run a queue of training jobs on MIG slices, with a live view and a journal."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from miso_cli.cli.common import (
    DebugOpt,
    GpuOpt,
    JsonOpt,
    Result,
    StateDirOpt,
    execute,
    require_finite,
    state_dir_or_default,
)
from miso_cli.errors import ExitCode, UsageError


def command(
    queue: Annotated[
        Optional[Path],  # noqa: UP045 - Typer needs Optional on Python 3.10 runtimes
        typer.Argument(help="The queue file (TOML). Not needed with --resume."),
    ] = None,
    gpu: GpuOpt = None,
    layout: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--layout",
            help="Partition every GPU into these MIG instances, e.g. "
            "'3g.20gb,2g.10gb,2g.10gb' (a name may carry @START); each job takes the "
            "largest free instance it fits. Without it, --policy decides (default miso+).",
        ),
    ] = None,
    policy: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--policy",
            help="Scheduling policy: miso+ (the default: re-plan MIG layouts as jobs come "
            "and go, learning each job's speed on its slice), miso (the paper's: profile "
            "every newcomer under MPS), mps, static, nopart (one job "
            "per whole GPU), layout (implied by --layout).",
        ),
    ] = None,
    model: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--model",
            help="Predictor for profiled jobs [default: the state dir's fitted model, "
            "else the shipped prior].",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the last run of this state directory (after a crash or Ctrl-C): "
            "running jobs are found again, the others restarted from their checkpoint.",
        ),
    ] = False,
    hang_timeout: Annotated[
        str,
        typer.Option(
            "--hang-timeout",
            help="Stop a job as hung after this long without progress (e.g. 600, 10m); "
            "a job's hang_timeout overrides it.",
        ),
    ] = "600",
    speedup: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            "--speedup",
            help="Simulated GPUs: run synthetic jobs this many times faster than the "
            "catalog's step times (sets MISO_SIM_SPEEDUP).",
        ),
    ] = None,
    restart_cost: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            "--restart-cost",
            help="Checkpoint/restart seconds a move costs a job, as the policy counts "
            "them (catalog seconds on simulated GPUs; miso simulate's --restart-cost). "
            "Default 30.",
        ),
    ] = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
    state_dir: StateDirOpt = None,
) -> None:
    """Run a queue of training jobs, each pinned to its MIG instance, and report how it went.

    Progress shows live on stderr; with --json, events are JSON lines on stdout and the
    last line is the report envelope. Exit code 7 if a job failed, 130 if interrupted.
    """

    def body(console: Any) -> Result:
        from miso_cli.operate.dashboard import Dashboard, render_summary
        from miso_cli.runtime.executor import RunRequest, run_queue
        from miso_cli.spec.queue import parse_duration_s

        try:
            hang_s = parse_duration_s(hang_timeout)
        except ValueError as exc:
            raise UsageError(f"--hang-timeout: {exc}") from None
        if hang_s <= 0:
            raise UsageError("--hang-timeout: must be positive")
        if speedup is not None and not speedup > 0:
            raise UsageError("--speedup: must be positive")
        require_finite(speedup=speedup, restart_cost=restart_cost)
        if restart_cost is not None and restart_cost < 0:
            raise UsageError(f"--restart-cost: must be >= 0 seconds, got {restart_cost:g}")
        if resume and restart_cost is not None:
            raise UsageError("--resume continues the run as it was: drop --restart-cost")
        if resume and (layout or policy or model):
            raise UsageError("--resume continues the run as it was: drop --layout/--policy/--model")
        if model is not None and not model.is_file():
            raise UsageError(f"--model: {model}: no such file")
        if not resume and queue is None:
            raise UsageError("missing the queue file", hint="miso run QUEUE.toml")
        name = policy or ("layout" if layout else "miso+")
        profiles = None
        if layout is not None:
            profiles = [p.strip() for p in layout.split(",") if p.strip()]
            if not profiles:
                raise UsageError("--layout: name at least one MIG profile, e.g. 3g.20gb,4g.20gb")
            if name != "layout":
                raise UsageError(f"--layout goes with --policy layout, not --policy {name}")
        dash = Dashboard(json_out=json_out)
        req = RunRequest(
            queue_path=queue,
            state_dir=state_dir_or_default(state_dir),
            gpu_spec=gpu,
            policy=name,
            layout=profiles,
            resume=resume,
            hang_timeout_s=hang_s,
            speedup=speedup,
            model_path=model,
            **({"restart_cost_s": restart_cost} if restart_cost is not None else {}),
        )
        try:
            report = run_queue(req, sink=dash, on_executor=_starter(dash))
        finally:
            dash.stop()
        errors = []
        code = ExitCode.OK
        s = report["summary"]
        if report["status"] == "interrupted":
            code = ExitCode.INTERRUPTED
            errors.append(
                {
                    "code": "INTERRUPTED",
                    "message": "interrupted: jobs were asked to checkpoint and stop",
                    "hint": "continue with: miso run --resume",
                }
            )
        elif s["failed"]:
            code = ExitCode.JOBS_FAILED
            failed = [j["name"] for j in report["jobs"] if j["state"] in ("failed", "hung")]
            errors.append(
                {
                    "code": "JOBS_FAILED",
                    "message": f"{len(failed)} job(s) failed: {', '.join(failed)}",
                    "hint": f"logs in {report['run_dir']}/logs",
                }
            )
        return Result(
            data=report,
            render=lambda c: render_summary(c, report),
            exit_code=code,
            errors=errors,
        )

    execute("run", body, json_out=json_out, debug=debug)


def _starter(dash: Any) -> Any:
    def on_executor(ex: Any) -> None:
        dash.attach(ex)
        dash.start()

    return on_executor
