"""``miso man``: print miso's manual pages, generated from the CLI itself.

``pip install -e`` installs no data files, so ``man miso`` finds nothing after an
editable install; this command prints the same page from the installed code.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer


def command(
    ctx: typer.Context,
    name: Annotated[
        Optional[str],  # noqa: UP045 - Typer needs Optional on Python 3.10 runtimes
        typer.Argument(help="The subcommand whose page to print (e.g. run); none: miso's own."),
    ] = None,
    roff: Annotated[
        bool,
        typer.Option(
            "--roff",
            help="Print the roff source even on a terminal (where the page is shown "
            "through 'man -l -' when man is installed).",
        ),
    ] = False,
) -> None:
    """Print the manual page of miso or of one of its commands.

    The page is the one in man/ (both are generated from the command definitions). On
    a terminal it is formatted by man; otherwise the roff source is printed, ready for
    'man -l -' or a file.

    $ miso man run

    $ miso man export --roff > miso-export.1
    """
    import shutil
    import subprocess
    import sys

    from miso_cli.cli import manpages
    from miso_cli.cli.common import fail
    from miso_cli.errors import ExitCode

    pages = manpages.build_pages(root=ctx.find_root().command)
    page = "miso.1" if name is None else f"miso-{name}.1"
    if page not in pages:
        known = sorted(p[len("miso-") : -2] for p in pages if p != "miso.1")
        fail(
            "man",
            {
                "code": "USAGE",
                "message": f"no manual page for {name!r}",
                "hint": "commands: " + ", ".join(known),
            },
            ExitCode.USAGE,
            json_out=False,
        )
    text = pages[page]
    man = shutil.which("man")
    if not roff and man is not None and sys.stdout.isatty():
        raise typer.Exit(subprocess.run([man, "-l", "-"], input=text, text=True).returncode)
    typer.echo(text, nl=False)
