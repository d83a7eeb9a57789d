"""Use cases behind the CLI: each takes parsed options and returns a typed result (no printing).

``miso_cli.cli`` parses the command line, calls one of these and renders what it
returns; tests call them directly.
"""

from __future__ import annotations


def require_finite(**options: float | None) -> None:
    """Refuse ``inf`` and ``nan``: Typer reads them as floats, and no miso option means either.

    Keyword names are the options' (``profile_s`` for ``--profile-s``).
    """
    import math

    from miso_cli.errors import UsageError

    for name, value in options.items():
        if value is not None and not math.isfinite(value):
            option = "--" + name.replace("_", "-")
            raise UsageError(f"{option}: must be a finite number, got {value}")
