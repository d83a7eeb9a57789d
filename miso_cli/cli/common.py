"""What every subcommand shares: common options, the error boundary, output.

A subcommand parses its options, then calls :func:`execute` with a body that
does the work through the core and returns a :class:`Result`. ``execute`` owns
the conventions: the JSON envelope on stdout with ``--json``, human output
otherwise, one-line errors with named exit codes, tracebacks only with
``--debug``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console

from miso_cli.cli.output import dumps, envelope
from miso_cli.commands import require_finite  # noqa: F401 - the command modules take it from here
from miso_cli.errors import ExitCode, MisoError


def _complete_gpu(incomplete: str) -> list[str]:
    from miso_cli.cli.completion import complete_gpu

    return complete_gpu(incomplete)


JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print one JSON envelope on stdout; human output and progress go to stderr.",
    ),
]
DebugOpt = Annotated[
    bool,
    typer.Option("--debug", envvar="MISO_DEBUG", help="Show the full traceback of errors."),
]
GpuOpt = Annotated[
    Optional[str],  # noqa: UP045 - Typer needs Optional on Python 3.10 runtimes
    typer.Option(
        "--gpu",
        envvar="MISO_GPU",
        help="GPUs to use: 'nvml' (the real driver, the default) or a simulated "
        "GPU such as 'sim:a100-40gb' or 'sim:h100-80gbx8' (8 GPUs).",
        autocompletion=_complete_gpu,
    ),
]
StateDirOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--state-dir",
        envvar="MISO_STATE_DIR",
        help="Where miso keeps its journal, profiles, models and simulated GPUs "
        "[default: $XDG_STATE_HOME/miso].",
    ),
]


@dataclass
class Result:
    """What a command body returns: the JSON payload and how to show it to a person."""

    data: dict[str, Any]
    render: Callable[[Console], None] | None = None
    exit_code: ExitCode = ExitCode.OK
    errors: list[dict[str, Any]] = field(default_factory=list)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def stdout_console() -> Console:
    return Console(highlight=False)


def state_dir_or_default(state_dir: Path | None, *, check: bool = True) -> Path:
    """``--state-dir`` (or ``MISO_STATE_DIR``), else the default; refused if it is a file.

    ``check=False`` for ``miso doctor``, which reports a bad state dir as a finding.
    """
    from miso_cli.runtime.state import check_state_dir, default_state_dir

    path = Path(state_dir).expanduser() if state_dir else default_state_dir()
    if check:
        check_state_dir(path)
    return path


def _print_error(err: dict[str, Any]) -> None:
    line = f"miso: error: {err['message']}"
    if err.get("hint"):
        line += f" ({err['hint']})"
    # One line, whatever the message holds: a script greps the first line only.
    line = " ".join(line.split())
    stderr_console().print(line, markup=False, soft_wrap=True)


def fail(command: str, err: dict[str, Any], exit_code: ExitCode, *, json_out: bool) -> NoReturn:
    """Report ``err`` the way every command does (envelope with --json, one line) and exit."""
    if json_out:
        print(dumps(envelope(command, None, [err])), flush=True)
    _print_error(err)
    raise typer.Exit(int(exit_code))


def _os_error(exc: OSError) -> tuple[dict[str, Any], ExitCode]:
    """An operating-system error the core did not expect, named by its path."""
    import errno

    path = exc.filename2 if exc.filename2 is not None else exc.filename
    what = exc.strerror or type(exc).__name__
    message = f"{path}: {what}" if path is not None else what
    if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
        return {
            "code": "PERMISSION",
            "message": message,
            "hint": "run as a user who may write there, or choose another --state-dir / --out",
        }, ExitCode.PERMISSION
    return {
        "code": "FAILURE",
        "message": message,
        "hint": "check the path, its parent folders and the free space",
    }, ExitCode.FAILURE


def execute(
    command: str,
    body: Callable[[Console], Result],
    *,
    json_out: bool,
    debug: bool,
) -> NoReturn:
    """Run ``body`` under the conventions and exit with its code.

    ``body`` gets the console for human output: stdout normally, stderr with
    ``--json`` (so stdout carries only the envelope).
    """
    human = stderr_console() if json_out else stdout_console()
    try:
        result = body(human)
    except MisoError as exc:
        if debug:
            stderr_console().print_exception()
        fail(command, exc.as_dict(), exc.exit_code, json_out=json_out)
    except KeyboardInterrupt:
        fail(
            command,
            {"code": "INTERRUPTED", "message": "interrupted"},
            ExitCode.INTERRUPTED,
            json_out=json_out,
        )
    except typer.Exit:
        raise
    except OSError as exc:  # a path the core did not check: name it, no traceback
        if debug or os.environ.get("MISO_DEBUG"):
            raise
        err, code = _os_error(exc)
        fail(command, err, code, json_out=json_out)
    except Exception as exc:  # the last line of defence: one line, never a traceback
        if debug or os.environ.get("MISO_DEBUG"):
            raise
        err = {
            "code": "INTERNAL",
            "message": f"internal error: {type(exc).__name__}: {exc}",
            "hint": "run again with --debug for the traceback, and report it",
        }
        fail(command, err, ExitCode.FAILURE, json_out=json_out)
    if json_out:
        print(dumps(envelope(command, result.data, result.errors)), flush=True)
    elif result.render is not None:
        result.render(human)
    # Errors also reach stderr with --json: a person watching a script sees why it stopped.
    for err in result.errors:
        _print_error(err)
    sys.stdout.flush()
    raise typer.Exit(int(result.exit_code))


def fail_usage(argv: list[str], commands: list[str], message: str) -> NoReturn:
    """A command line the parser refused: one line, exit 2 (USAGE), an envelope with --json."""
    name = argv[0] if argv and argv[0] in commands else "miso"
    where = f"miso {name}" if name != "miso" else "miso"
    err = {"code": "USAGE", "message": message, "hint": f"see '{where} --help'"}
    fail(name, err, ExitCode.USAGE, json_out="--json" in argv[1:])


# -- tables for people and for scripts ----------------------------------------------


def print_table(console: Console, table: Any) -> None:
    """Print a Rich table; when the output is not a terminal, wide enough that no cell
    is cut (a pipe or a file gets every column in full, whatever COLUMNS says)."""
    if console.is_terminal:
        console.print(table)
        return
    from rich.measure import Measurement

    # The table's natural width, not capped by the console's (COLUMNS or 80).
    options = console.options.update(width=1_000_000, max_width=1_000_000)
    width = max(Measurement.get(console, options, table).maximum, 20)
    wide = Console(
        file=console.file, width=width, highlight=False, color_system=None, soft_wrap=False
    )
    wide.print(table)


def write_csv(rows: list[list[Any]], header: list[str]) -> None:
    """Rows as CSV on stdout (RFC 4180, a header line first), as nvidia-smi's
    --format=csv gives them to scripts; None is an empty cell."""
    import csv

    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    sys.stdout.flush()
