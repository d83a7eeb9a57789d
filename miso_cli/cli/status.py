"""``miso status``: the runs of this machine, and the GPUs, their MIG instances and processes.

Parses the options, calls :func:`miso_cli.commands.status.status` (once, or once per
view with ``--watch``), renders its report.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

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

_sleep = time.sleep  # tests replace it: a watch never waits on the wall clock there


def command(
    gpu: GpuOpt = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Redraw every --interval seconds until Ctrl-C (it only reads: the run "
            "goes on when the view stops).",
        ),
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, max=3600.0, help="Seconds between redraws.")
    ] = 2.0,
    count: Annotated[
        int,
        typer.Option("--count", min=0, help="With --watch: stop after this many views (0: never)."),
    ] = 0,
    state_dir: StateDirOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show the runs of this machine's state dir (id, policy, state; per job its state,
    GPU, slice, progress, step time and ETA), then each GPU (name, memory, MIG capable,
    mode current/pending), its instances (profile, placement, MIG device UUID, memory)
    and the processes on it.

    Without --gpu, a running run's GPUs are shown (sim:... for a simulated run).
    A value the driver will not give (a lost GPU, an unprivileged caller) shows as
    n/a, and null in JSON. With --watch --json: one JSON envelope per line and view.

    $ miso status

    $ miso status --watch

    $ miso status --gpu sim:a100-40gb --json
    """
    from miso_cli.cli.common import require_finite

    def snapshot() -> dict[str, Any]:
        from miso_cli.commands.status import status

        return status(gpu, state_dir_or_default(state_dir)).to_json()

    def body(console: Console) -> Result:
        require_finite(interval=interval)
        if watch:
            from miso_cli.operate.view import watch_loop

            watch_loop(
                snapshot,
                render_watch,
                console,
                json_out=json_out,
                interval=interval,
                count=count,
                sleep=_sleep,
            )
            raise typer.Exit(0)  # Ctrl-C ends a watch cleanly: the run is not ours
        data = snapshot()
        return Result(data=data, render=lambda out: render_all(out, data))

    execute("status", body, json_out=json_out, debug=debug)


def render_watch(out: Console, data: dict[str, Any]) -> None:
    """The live view: the runs, then one line per GPU."""
    from miso_cli.operate.view import render_gpu_lines, render_runs, wide

    out = wide(out)
    render_runs(out, data.get("runs", []), compact=out.width < 100)
    if data.get("gpu_error"):
        _gpu_error(out, data["gpu_error"])
    render_gpu_lines(out, data)


def render_all(out: Console, data: dict[str, Any]) -> None:
    from miso_cli.operate.view import render_runs, wide

    out = wide(out)
    render_runs(out, data.get("runs", []))
    if data.get("gpu_error"):
        _gpu_error(out, data["gpu_error"])
        return
    render(out, data)


def _gpu_error(out: Console, err: dict[str, Any]) -> None:
    hint = f" ({err['hint']})" if err.get("hint") else ""
    out.print(f"GPUs: {err['message']}{hint}", markup=False, soft_wrap=True)


def _na(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def render(out: Console, data: dict[str, Any]) -> None:
    from rich import box
    from rich.table import Table

    where = "simulated" if data["simulated"] else "driver"
    out.print(
        f"{where} {_na(data['driver_version'])}, NVML {_na(data['nvml_version'])}",
        markup=False,
    )

    # UUIDs are what people copy into CUDA_VISIBLE_DEVICES: never truncate them.
    def table(title: str) -> Table:
        return Table(
            title=title,
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
            collapse_padding=True,
        )

    gt = table("GPUs")
    for col in ("GPU", "name", "MiB", "MIG", "mode"):
        gt.add_column(col)
    gt.add_column("layout", no_wrap=True)
    for g in data["gpus"]:
        mode = "n/a"
        if g.get("mig_current") is not None:
            mode = "on" if g["mig_current"] else "off"
            if g.get("mig_pending") is not None and g["mig_pending"] != g["mig_current"]:
                mode += f" (pending {'on' if g['mig_pending'] else 'off'}: reset needed)"
        gt.add_row(
            str(g["index"]),
            _na(g.get("name")),
            _na(g.get("memory_total_mb")),
            _na(g.get("mig_capable")),
            mode,
            _na(g.get("layout")),
        )
    out.print(gt)
    for g in data["gpus"]:
        out.print(f"GPU {g['index']}: {_na(g.get('uuid'))}", markup=False, no_wrap=True)
    rows = [(g["index"], m) for g in data["gpus"] for m in g.get("instances", [])]
    if rows:
        it = table("MIG instances")
        for col in ("GPU", "GI/CI"):
            it.add_column(col)
        it.add_column("profile", no_wrap=True)
        it.add_column("slots", no_wrap=True)
        it.add_column("MiB")
        it.add_column("MIG device UUID", no_wrap=True, min_width=40)
        for idx, m in rows:
            pl = m.get("placement")
            it.add_row(
                str(idx),
                f"{_na(m.get('gi_id'))}/{_na(m.get('ci_id'))}",
                _na(m.get("profile")),
                f"{pl['start']}:{pl['size']}" if pl else "n/a",
                _na(m.get("memory_mb")),
                _na(m.get("uuid")),
            )
        out.print(it)
    procs = [(g["index"], p) for g in data["gpus"] for p in g.get("processes", [])]
    pt = table("Processes")
    for col in ("GPU", "GI/CI", "PID", "MiB"):
        pt.add_column(col)
    pt.add_column("device", no_wrap=True, min_width=40)
    for idx, p in procs:
        pt.add_row(
            str(idx),
            f"{_na(p.get('gi_id'))}/{_na(p.get('ci_id'))}",
            str(p["pid"]),
            _na(p.get("used_memory_mb")),
            _na(p.get("device_uuid")),
        )
    if procs:
        out.print(pt)
    else:
        out.print("no processes on the GPUs", markup=False)
    for g in data["gpus"]:
        if g.get("error"):
            err = g["error"]
            hint = f" ({err['hint']})" if err.get("hint") else ""
            out.print(f"GPU {g['index']}: {err['message']}{hint}", markup=False)
