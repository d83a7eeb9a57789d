"""``miso export``: hand a plan or the current layout to mig-parted, Kubernetes or Slurm."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
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


class Format(str, Enum):
    mig_parted = "mig-parted"
    k8s = "k8s"
    slurm = "slurm"


def command(
    fmt: Annotated[
        Format,
        typer.Option(
            "--format",
            "-f",
            help="mig-parted: a mig-parted config; k8s: MIG manager ConfigMap, node label and "
            "one Job per job; slurm: gres.conf, slurm.conf fragment, sbatch scripts and the "
            "drain/apply/resume steps.",
        ),
    ] = Format.mig_parted,
    plan: Annotated[
        Optional[Path],  # noqa: UP045 - Typer needs Optional on Python 3.10 runtimes
        typer.Option(
            "--plan",
            help="A plan: the output of 'miso plan QUEUE --json' (or its data, or "
            '{"gpus": [{"index": 0, "layout": ["3g.20gb@0", ...]}]}).',
        ),
    ] = None,
    queue: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--queue",
            help="The queue file the jobs come from: their commands and environment go into "
            "the Jobs and sbatch scripts. Without --plan, the queue is planned first.",
        ),
    ] = None,
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--out",
            "-o",
            help="Write the files into this directory instead of printing them.",
        ),
    ] = None,
    node: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--node",
            help="The cluster's name for this server (node label, NodeName, Job nodeSelector).",
        ),
    ] = None,
    image: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--image", help="Container image of the Kubernetes Jobs (k8s, with jobs)."),
    ] = None,
    namespace: Annotated[
        str,
        typer.Option("--namespace", help="Namespace of the Kubernetes Jobs."),
    ] = "default",
    operator_namespace: Annotated[
        str,
        typer.Option(
            "--operator-namespace",
            help="Namespace of the GPU Operator, where the MIG manager's ConfigMap goes.",
        ),
    ] = "gpu-operator",
    config_name: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--config-name",
            help="Name of the config that sets the whole node [default: the layout's name, "
            "or miso-node-<hash> when the GPUs differ].",
        ),
    ] = None,
    merge_configmap: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--merge-configmap",
            help="k8s: an existing MIG manager ConfigMap ('kubectl get configmap NAME -n "
            "gpu-operator -o yaml' or -o json) whose configs are kept beside miso's "
            "[default: keep the operator's all-disabled and all-enabled].",
        ),
    ] = None,
    workdir_volume: Annotated[
        str,
        typer.Option(
            "--workdir-volume",
            help="k8s: 'hostpath' mounts each job's working directory from the node at the "
            "same path; 'none' only sets workingDir (the image or your volumes provide it).",
        ),
    ] = "hostpath",
    slurm_types: Annotated[
        str,
        typer.Option(
            "--slurm-types",
            help="slurm: GRES types 'bare' (3g.20gb) or 'model' (a100_3g.20gb: tells GPU "
            "models with the same profile names apart across a cluster).",
        ),
    ] = "bare",
    gpu: GpuOpt = None,
    state_dir: StateDirOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Hand a plan, or the GPUs' current layout, to mig-parted, Kubernetes or Slurm.

    From a plan (--plan, from miso plan --json) or a queue (--queue), or without
    either from the GPUs' current layout, as nvidia-mig-parted export does. The
    mig-parted config names one config per distinct layout; Kubernetes gets it as
    the GPU Operator MIG manager's ConfigMap with the nvidia.com/mig.config label to
    set, and one batch/v1 Job per job asking for nvidia.com/mig-<profile>; Slurm
    gets gres.conf (AutoDetect=nvml), the node's Gres line, one sbatch script per
    job with --gres=gpu:<profile>:1, and a drain/apply/resume script. Where
    nvidia-mig-parted is on PATH, its 'assert --valid-config' checks the config first.

    $ miso export --format mig-parted --gpu sim:a100-40gb

    $ miso export --format k8s --plan plan.json --queue queue.toml --image IMAGE --node n1

    $ miso export --format slurm --plan plan.json --queue queue.toml --out handoff/
    """

    def body(console: Console) -> Result:
        from miso_cli.commands.export import ExportOptions, export_layouts

        result = export_layouts(
            gpu,
            state_dir_or_default(state_dir),
            fmt.value,
            plan=plan,
            queue=queue,
            merge_configmap=merge_configmap,
            out=out,
            options=ExportOptions(
                node=node,
                namespace=namespace,
                operator_namespace=operator_namespace,
                image=image,
                config_name=config_name,
                slurm_types=slurm_types,
                workdir_volume=workdir_volume,
            ),
        )

        def render(con: Console) -> None:
            from miso_cli.cli.common import stderr_console

            err = stderr_console()
            for w in result.warnings:
                err.print(f"miso: warning: {w}", markup=False)
            if out is None:
                # The files themselves, ready for a pipe (kubectl apply -f -, > config.yaml).
                typer.echo(result.stream_text(), nl=False)
                return
            for p in result.written:
                con.print(str(p), markup=False, highlight=False, soft_wrap=True)
            for step in result.bundle.summary.get("steps", []):
                con.print(f"  {step}", markup=False, highlight=False, soft_wrap=True)

        return Result(data=result.to_json(), render=render)

    execute("export", body, json_out=json_out, debug=debug)
