"""The ``miso`` command: one Typer application, one module per subcommand.

Each subcommand's module is imported only when that command runs (or its help or
option completion is asked for): ``miso --help`` and ``miso status`` do not pay for
the imports of ``miso simulate`` or ``miso fit``. The list of commands with their
one-line help (:data:`SUMMARIES`) is kept here, so listing them imports nothing;
``tests/test_manpages.py`` checks it against each command's own help.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from typing import Annotated, Any

import typer

from miso_cli.cli.group import RecordingGroup


def _is_usage_error(exc: BaseException) -> bool:
    """A command line the parser refused: Click's UsageError family (exit code 2).

    Told by Click's documented interface (``exit_code``, ``format_message``) rather than
    by class, as Typer may carry its own copy of Click.
    """
    return getattr(exc, "exit_code", None) == 2 and callable(getattr(exc, "format_message", None))


class _MisoGroup(RecordingGroup):
    """A command line the parser refuses follows the error conventions of ``execute``.

    Click would print a usage block and ``Error: ...`` over several lines, and no
    JSON envelope; scripts that pass ``--json`` read stdout and would find nothing.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = LazyCommands(COMMANDS, SUMMARIES)

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)  # the names alone: nothing is imported

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        with _listing(self):
            super().format_commands(ctx, formatter)

    def shell_complete(self, ctx: Any, incomplete: str) -> list[Any]:
        with _listing(self):  # `miso <TAB>`: names and one-line help, no imports
            return super().shell_complete(ctx, incomplete)

    def invoke(self, ctx: typer.Context) -> Any:
        argv = [*getattr(ctx, "_protected_args", []), *ctx.args]
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if not _is_usage_error(exc) or type(exc).__name__ == "NoArgsIsHelpError":
                raise  # not a refused command line, or `miso CMD` alone: show help
            from miso_cli.cli.common import fail_usage

            fail_usage(argv, list(self.commands), exc.format_message().rstrip("."))


class LazyCommands(MutableMapping[str, Any]):
    """The group's commands by name: each built from its module on first use.

    ``listing()`` gives stand-ins that carry only the one-line help, for the command
    list of ``miso --help`` and for completing a command name.
    """

    def __init__(self, modules: list[tuple[str, str]], summaries: dict[str, str]) -> None:
        self._modules = dict(modules)
        self._summaries = summaries
        self._loaded: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._loaded:
            if name not in self._modules:
                raise KeyError(name)
            self._loaded[name] = load_command(name, self._modules[name])
        return self._loaded[name]

    def __setitem__(self, name: str, cmd: Any) -> None:
        self._loaded[name] = cmd
        self._modules.setdefault(name, "")

    def __delitem__(self, name: str) -> None:
        del self._modules[name]
        self._loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)

    def listing(self) -> dict[str, Any]:
        from typer.core import TyperCommand

        return {
            name: self._loaded.get(name) or TyperCommand(name, help=self._summaries[name])
            for name in self._modules
        }


class _listing:
    """For the ``with`` block, the group lists stand-ins instead of its commands."""

    def __init__(self, group: Any) -> None:
        self.group = group

    def __enter__(self) -> None:
        self.real = self.group.commands
        self.group.commands = self.real.listing()

    def __exit__(self, *exc: object) -> None:
        self.group.commands = self.real


def load_command(name: str, module: str) -> Any:
    """The Click command of ``miso NAME``, built by Typer from ``miso_cli.cli.MODULE``."""
    from miso_cli.cli.completion import attach_command

    mod = importlib.import_module(f"miso_cli.cli.{module}")
    single = typer.Typer(rich_markup_mode=None, add_completion=False)
    single.command(name)(mod.command)
    cmd = typer.main.get_command(single)
    attach_command(name, cmd)  # completion for --policy, profile names and job names
    return cmd


app = typer.Typer(
    name="miso",
    cls=_MisoGroup,
    help="Choose, apply and run MIG layouts for a queue of GPU training jobs.",
    no_args_is_help=True,
    invoke_without_command=True,  # `miso --version [--json]` runs the callback alone
    add_completion=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# (command name, module under miso_cli.cli). Each module defines ``command``.
COMMANDS: list[tuple[str, str]] = [
    ("status", "status"),
    ("layouts", "layouts"),
    ("apply", "apply"),
    ("run", "run"),
    ("doctor", "doctor"),
    ("export", "export"),
    ("simulate", "simulate"),
    ("plan", "plan"),
    ("profile", "profile"),
    ("fit", "fit"),
    ("predict", "predict"),
    ("calibrate", "calibrate"),
    ("submit", "submit"),
    ("cancel", "cancel"),
    ("priority", "priority"),
    ("runs", "runs"),
    ("logs", "logs"),
    ("report", "report"),
    ("man", "man"),
]

# The first paragraph of each command's help, as ``miso --help`` lists it (checked
# against the commands by tests/test_manpages.py).
SUMMARIES: dict[str, str] = {
    "status": (
        "Show the runs of this machine's state dir (id, policy, state; per job its state, GPU, "
        "slice, progress, step time and ETA), then each GPU (name, memory, MIG capable, mode "
        "current/pending), its instances (profile, placement, MIG device UUID, memory) and the "
        "processes on it."
    ),
    "layouts": "List the MIG layouts of a GPU with the placement of each instance.",
    "apply": "Make GPU instances match the wanted layout, enabling MIG mode where needed.",
    "run": "Run a queue of training jobs, each pinned to its MIG instance, and report how it went.",
    "doctor": "Check that this machine is ready for miso run, and say how to fix what is not.",
    "export": "Hand a plan, or the GPUs' current layout, to mig-parted, Kubernetes or Slurm.",
    "simulate": "Compare scheduling policies on a job trace, on a virtual clock.",
    "plan": "Plan layouts and assignments for a queue from its jobs' profiles and predictions.",
    "profile": "Measure each job's step time under MPS at a few active-thread percentages.",
    "fit": "Fit a model predicting step time on each MIG slice from MPS profiles, and save it.",
    "predict": (
        "Predict each row's step time on every MIG slice, relative to the whole GPU (7g = 1.0)."
    ),
    "calibrate": (
        "Measure calibration jobs under MPS and on every MIG slice size, restore, then fit."
    ),
    "submit": (
        "Add jobs to the running run: validated like a queue file, kept in the run's inbox "
        "(fsynced) before this returns, taken by the run within about a second."
    ),
    "cancel": (
        "Cancel jobs: a waiting job leaves the queue, a running one is asked to checkpoint (its "
        "checkpoint signal, then its grace period) and stops. Journaled as 'cancelled'; 'miso "
        "run --resume' does not start it again."
    ),
    "priority": "Change a job's priority; the policy looks at the queue again with it.",
    "runs": (
        "List every run, oldest first: its id, when it started, how long it took, its policy "
        "and GPUs, and its outcome (status and job counts). A run whose miso was stopped "
        "(crash, kill, reboot) shows as 'stopped': continue it with miso run --resume."
    ),
    "logs": (
        "Print a job's log: its output from every attempt, each after a '=== miso:' line that "
        "says where and when it started."
    ),
    "report": (
        "Report a run, finished or running: mean JCT, makespan, slice utilisation, GPU-hours, "
        "reconfigurations, migrations, restart overhead, profiling time; the time and GPU-hours "
        "saved against one job per whole GPU, estimated from each job's measured speed (the "
        "method is printed); the cost at --price per GPU-hour."
    ),
    "man": "Print the manual page of miso or of one of its commands.",
}


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the versions of miso, the NVML binding and the driver, then exit.",
        ),
    ] = False,
    json_out: Annotated[
        bool,
        typer.Option("--json", help="With --version: print them as a JSON envelope."),
    ] = False,
) -> None:
    """Choose, apply and run MIG layouts for a queue of GPU training jobs."""
    if version:
        from miso_cli.commands.doctor import version_info, version_text

        if json_out:
            from miso_cli.cli.output import dumps, envelope

            typer.echo(dumps(envelope("version", version_info())))
        else:
            typer.echo(version_text())
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        from miso_cli.cli.common import fail_usage

        fail_usage(["miso", *(["--json"] if json_out else [])], [], "missing command")


def main() -> None:
    app()
