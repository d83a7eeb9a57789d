"""``miso layouts``: every valid MIG layout of one GPU, enumerated from its placements.

Parses the options, calls :func:`miso_cli.commands.layouts.list_layouts`, renders the
layouts as a table or CSV.
"""

from __future__ import annotations

from typing import Annotated, Optional

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
from miso_cli.gpu.layouts import Layout


def _complete_model(incomplete: str) -> list[str]:
    from miso_cli.cli.completion import complete_model

    return complete_model(incomplete)


def command(
    gpu: GpuOpt = None,
    gpu_index: Annotated[
        int, typer.Option("--gpu-index", "-i", help="Which GPU's profiles to use.", min=0)
    ] = 0,
    model: Annotated[
        Optional[str],  # noqa: UP045 - Typer needs Optional on Python 3.10 runtimes
        typer.Option(
            "--model",
            help="List a known GPU model's layouts without a GPU (e.g. a100-40gb, h100-80gb).",
            autocompletion=_complete_model,
        ),
    ] = None,
    include_me: Annotated[
        bool, typer.Option("--include-me", help="Also use the +me (media extensions) profiles.")
    ] = False,
    include_double_memory: Annotated[
        bool,
        typer.Option(
            "--include-double-memory",
            help="Also use the 1g profile with double memory (e.g. 1g.10gb on A100-40GB).",
        ),
    ] = False,
    all_layouts: Annotated[
        bool,
        typer.Option(
            "--all",
            help="List every layout, not only maximal ones (where no further instance fits).",
        ),
    ] = False,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="table (for people; in full when not a terminal) or csv (one line per "
            "layout, for scripts).",
        ),
    ] = "table",
    state_dir: StateDirOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """List the MIG layouts of a GPU with the placement of each instance.

    By default only maximal layouts (no further instance fits) of the standard
    profiles: 19 on an A100. Layouts come from the profiles' placements as the
    driver reports them, never from a fixed list.

    $ miso layouts --gpu sim:a100-40gb

    $ miso layouts --model h100-80gb --include-double-memory --json
    """

    def body(console: Console) -> Result:
        from miso_cli.commands.layouts import list_layouts
        from miso_cli.errors import UsageError

        if fmt not in ("table", "csv"):
            raise UsageError(f"--format {fmt!r}: expected table or csv")
        found = list_layouts(
            gpu,
            lambda: state_dir_or_default(state_dir),
            gpu_index=gpu_index,
            model=model,
            include_me=include_me,
            include_double_memory=include_double_memory,
            all_layouts=all_layouts,
        )
        gm, layouts = found.model, found.layouts
        data = found.to_json()

        def render(out: Console) -> None:
            from rich import box
            from rich.table import Table

            from miso_cli.cli.common import print_table, write_csv

            if fmt == "csv":
                write_csv(
                    [
                        [
                            n,
                            slot_map(lay, gm.memory_slots),
                            lay.name,
                            lay.compute_slices,
                            gm.compute_slices,
                            len(lay.slices),
                        ]
                        for n, lay in enumerate(layouts, 1)
                    ],
                    ["index", "slots", "layout", "compute_slices", "gpu_compute_slices",
                     "instances"],
                )  # fmt: skip
                return

            kind = "layouts" if all_layouts else "maximal layouts"
            t = Table(
                title=f"{len(layouts)} {kind} of {gm.name}",
                title_justify="left",
                box=box.SIMPLE_HEAD,
                pad_edge=False,
                collapse_padding=True,
                caption="slots: each memory slot shows the compute slices of the instance "
                "in it; '.' is free",
                caption_justify="left",
            )
            # On a narrow terminal the layout name wraps; the other columns never shrink.
            t.add_column("#", justify="right", no_wrap=True, min_width=2)
            t.add_column("slots", no_wrap=True)
            t.add_column("layout", overflow="fold", ratio=1)
            t.add_column("compute", justify="right", no_wrap=True, min_width=7)
            for n, lay in enumerate(layouts, 1):
                t.add_row(
                    str(n),
                    slot_map(lay, gm.memory_slots),
                    lay.name,
                    f"{lay.compute_slices}/{gm.compute_slices}",
                )
            print_table(out, t)

        return Result(data=data, render=render)

    execute("layouts", body, json_out=json_out, debug=debug)


def slot_map(layout: Layout, memory_slots: int) -> str:
    """``4444|22|1|.``: the memory slots, grouped by instance, each showing its size class."""
    cells: list[str] = []
    slot = 0
    by_start = {s.start: s for s in layout.slices}
    while slot < memory_slots:
        inst = by_start.get(slot)
        if inst is None:
            cells.append(".")
            slot += 1
            continue
        cells.append(str(inst.slices) * inst.size)
        slot += inst.size
    return "|".join(cells)
