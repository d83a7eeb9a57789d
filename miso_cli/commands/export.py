"""``miso export``: hand a plan, or the GPUs' current layout, to mig-parted, Kubernetes or Slurm.

The use case behind the command: where the layouts come from (a plan file, a queue
planned now as ``miso plan`` does, or the driver), then
:func:`miso_cli.export.handoff.export` and, where the tool is installed,
mig-parted's own check of the result. Returns a typed result and never prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ExportOptions:
    """How the files are written: ``miso export``'s format options."""

    node: str | None = None
    namespace: str = "default"  # the jobs' namespace
    operator_namespace: str = "gpu-operator"
    image: str | None = None
    config_name: str | None = None  # the node's mig-parted config
    slurm_types: str = "bare"
    workdir_volume: str = "hostpath"


@dataclass
class ExportResult:
    """The files of the hand-off, what it says about them, and those written."""

    fmt: str
    handoff: Any  # miso_cli.export.handoff.Handoff
    bundle: Any  # its files and summary
    written: list[Path] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return list(self.handoff.warnings)

    def stream_text(self) -> str:
        """The files as one text, ready for a pipe (``kubectl apply -f -``)."""
        from miso_cli.export import handoff as ex

        return str(ex.stream_text(self.bundle, self.fmt))

    def to_json(self) -> dict[str, Any]:
        """The data of ``miso export --json``."""
        data = dict(self.bundle.summary)
        data["files"] = dict(sorted(self.bundle.files.items()))
        data["written"] = [str(p) for p in self.written]
        return data


def export_layouts(
    gpu_spec: str | None,
    state_dir: Path,
    fmt: str,
    *,
    plan: Path | None = None,
    queue: Path | None = None,
    merge_configmap: Path | None = None,
    out: Path | None = None,
    options: ExportOptions | None = None,
) -> ExportResult:
    """Export the layouts of ``plan`` (with ``queue``'s jobs), else of ``queue`` planned
    now, else of the GPUs of ``gpu_spec`` as they are, in format ``fmt``.

    ``merge_configmap`` (k8s only) keeps the configs of an existing ConfigMap; ``out``
    is a folder to write the files into (None: write nothing).
    """
    from miso_cli.export import handoff as ex

    opts = options or ExportOptions()
    queue_spec = None
    if queue is not None:
        from miso_cli.spec.queue import load_queue

        queue_spec = load_queue(queue)
    if plan is not None:
        handoff = ex.load_plan(plan)
        if queue_spec is not None:
            ex.attach_queue(handoff, queue_spec)
    elif queue_spec is not None:
        handoff = ex.plan_queue(queue_spec, gpu_spec, state_dir)
    else:
        from miso_cli.gpu.nvml import open_driver

        drv = open_driver(gpu_spec, state_dir)
        try:
            handoff = ex.from_driver(drv)
        finally:
            drv.close()
    existing = ex.load_configmap(merge_configmap) if merge_configmap is not None else None
    if existing is not None and fmt != "k8s":
        from miso_cli.errors import UsageError

        raise UsageError("--merge-configmap: only for --format k8s")
    bundle = ex.export(
        handoff,
        fmt,
        node=opts.node,
        namespace=opts.operator_namespace,
        job_namespace=opts.namespace,
        image=opts.image,
        node_config=opts.config_name,
        existing_configs=existing,
        slurm_types=opts.slurm_types,
        workdir_volume=opts.workdir_volume,
    )
    # mig-parted's own check of what was written, where the tool is installed.
    bundle.summary["validated"] = ex.validate_with_mig_parted(bundle)
    written = ex.write_bundle(bundle, out) if out is not None else []
    return ExportResult(fmt, handoff, bundle, list(written))
