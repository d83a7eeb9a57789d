"""The ``miso`` command: one Typer application, one module per subcommand."""

from __future__ import annotations

import importlib
from typing import Annotated, Any

import typer

from miso_cli.cli.manpages import RecordingGroup


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
        from miso_cli.cli.completion import attach

        attach(self)  # completion for --policy, profile names and job names

    def invoke(self, ctx: typer.Context) -> Any:
        argv = [*getattr(ctx, "_protected_args", []), *ctx.args]
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if not _is_usage_error(exc) or type(exc).__name__ == "NoArgsIsHelpError":
                raise  # not a refused command line, or `miso CMD` alone: show help
            from miso_cli.cli.common import fail_usage

            fail_usage(argv, list(self.commands), exc.format_message().rstrip("."))


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


for _name, _module in COMMANDS:
    _mod = importlib.import_module(f"miso_cli.cli.{_module}")
    app.command(_name)(_mod.command)


def main() -> None:
    app()
