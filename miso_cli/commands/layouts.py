"""``miso layouts``: every valid MIG layout of one GPU, enumerated from its placements.

The use case behind the command: a GPU model from the driver (or the built-in table
with ``model``), then :func:`miso_cli.gpu.layouts.enumerate_layouts`. Returns a typed
result and never prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class LayoutList:
    """A GPU model's layouts, and where the model's profiles came from."""

    model: Any  # the GpuModel
    gpu_index: int | None  # None when the model was named, not read from a GPU
    source: str  # "table", "simulated" or "driver"
    maximal_only: bool
    include_me: bool
    include_double_memory: bool
    layouts: list[Any]  # Layout, in enumeration order

    def to_json(self) -> dict[str, Any]:
        """The data of ``miso layouts --json``."""
        gm = self.model
        return {
            "model": gm.key,
            "name": gm.name,
            "gpu_index": self.gpu_index,
            "source": self.source,
            "maximal_only": self.maximal_only,
            "include_me": self.include_me,
            "include_double_memory": self.include_double_memory,
            "profiles": [
                {
                    "name": p.name,
                    "id": p.profile_id,
                    "slices": p.slices,
                    "memory_mb": p.memory_mb,
                    "instance_count": p.instance_count,
                    "placements": [{"start": pl.start, "size": pl.size} for pl in p.placements],
                    "variant": p.variant,
                }
                for p in gm.profiles
            ],
            "count": len(self.layouts),
            "layouts": [lay.to_json() for lay in self.layouts],
        }


def list_layouts(
    gpu_spec: str | None,
    state_dir: Callable[[], Path],
    *,
    gpu_index: int = 0,
    model: str | None = None,
    include_me: bool = False,
    include_double_memory: bool = False,
    all_layouts: bool = False,
) -> LayoutList:
    """The layouts of GPU ``gpu_index`` of ``gpu_spec``, or of the known ``model``.

    Only maximal layouts (no further instance fits) unless ``all_layouts``.
    ``state_dir`` is asked only when a GPU is opened. An unknown model is a UsageError.
    """
    from miso_cli.errors import UsageError
    from miso_cli.gpu.layouts import enumerate_layouts
    from miso_cli.gpu.profiles import MODELS
    from miso_cli.gpu.profiles import model as model_of

    if model is not None:
        try:
            gm = model_of(model)
        except KeyError:
            raise UsageError(
                f"--model: unknown GPU model {model!r}",
                hint="known: " + ", ".join(sorted(MODELS)),
            ) from None
        source = "table"
    else:
        from miso_cli.gpu.nvml import open_driver

        drv = open_driver(gpu_spec, state_dir())
        try:
            gm = drv.gpu_model(gpu_index)
        finally:
            drv.close()
        source = "simulated" if drv.is_simulated else "driver"
    layouts = enumerate_layouts(
        gm,
        maximal=not all_layouts,
        include_me=include_me,
        include_double_memory=include_double_memory,
    )
    return LayoutList(
        model=gm,
        gpu_index=None if model is not None else gpu_index,
        source=source,
        maximal_only=not all_layouts,
        include_me=include_me,
        include_double_memory=include_double_memory,
        layouts=list(layouts),
    )
