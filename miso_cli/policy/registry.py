"""Policies by name, for ``--policy NAME`` in ``miso run`` and ``miso simulate``.

A policy module registers a factory that takes keyword options and returns a
:class:`~miso_cli.policy.core.Policy`. Factories are imported lazily (by
module path), so listing the names costs nothing.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from miso_cli.errors import UsageError
from miso_cli.policy.core import Policy

Factory = Callable[..., Policy]

# name -> a factory, or "module:attribute" naming one (imported on first use).
POLICIES: dict[str, Factory | str] = {
    "nopart": "miso_cli.policy.simple:NoPart",
    "layout": "miso_cli.policy.simple:FixedLayout",
    "static": "miso_cli.policy.baselines:Static",
    "mps": "miso_cli.policy.baselines:Mps",
    "miso": "miso_cli.policy.miso:Miso",
    "oracle": "miso_cli.policy.miso:Oracle",
    "miso+": "miso_cli.policy.miso:MisoPlus",
}


def register(name: str, factory: Factory | str) -> None:
    """Make ``factory`` available as ``--policy name`` (replaces an earlier one)."""
    POLICIES[name] = factory


def names() -> list[str]:
    return sorted(POLICIES)


def _resolve(name: str) -> Factory:
    try:
        entry = POLICIES[name]
    except KeyError:
        raise UsageError(
            f"--policy: unknown policy {name!r}",
            hint=f"known: {', '.join(names())}",
        ) from None
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
        POLICIES[name] = entry
    return entry


def get(name: str, **options: Any) -> Policy:
    """A new policy ``name`` built with ``options``; a clear error for options it lacks."""
    factory = _resolve(name)
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    given = {k: v for k, v in options.items() if v is not None}
    if not takes_any:
        extra = sorted(set(given) - set(params))
        if extra:
            raise UsageError(
                f"--policy {name}: does not take --{extra[0].replace('_', '-')}",
            )
    missing = [
        p.name
        for p in params.values()
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.name not in given
    ]
    if missing:
        raise UsageError(f"--policy {name}: needs --{missing[0].replace('_', '-')}")
    return factory(**given)
