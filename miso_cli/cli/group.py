"""The group class of ``miso``'s Typer application, kept apart so that every command's
start-up need not import the man page generator."""

from __future__ import annotations

from typing import Any

from typer.core import TyperGroup


class RecordingGroup(TyperGroup):
    """A Typer group class that keeps the Click group Typer builds from an application.

    Typer builds its Click command each time the application is called; an application
    created with ``typer.Typer(cls=RecordingGroup)`` (or a subclass) leaves it here, so
    the pages are generated through Typer's and Click's public API only.
    """

    last: RecordingGroup | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        RecordingGroup.last = self
