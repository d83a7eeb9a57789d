"""Shell completion for option values: GPUs, models, policies, MIG profiles, job names.

Typer calls these with what was typed so far (``autocompletion=`` on an option, or
:func:`attach` for options declared in other modules). They never raise: a completion
that fails offers nothing rather than printing a traceback into the shell.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _match(words: list[str], incomplete: str) -> list[str]:
    return [w for w in words if w.startswith(incomplete)]


def complete_gpu(incomplete: str) -> list[str]:
    """``nvml`` and ``sim:<model>`` for each simulated model."""
    from miso_cli.gpu.profiles import MODELS

    return _match(["nvml"] + [f"sim:{k}" for k in sorted(MODELS)], incomplete)


def complete_model(incomplete: str) -> list[str]:
    from miso_cli.gpu.profiles import MODELS

    return _match(sorted(MODELS), incomplete)


def complete_policy(incomplete: str) -> list[str]:
    """Policy names; after a comma (``--policy miso,mp``) the next name of a list."""
    try:
        from miso_cli.policy.registry import names
    except Exception:  # a broken policy package must not break the shell
        return []
    head, _, last = incomplete.rpartition(",")
    prefix = head + "," if head else ""
    done = set(head.split(",")) if head else set()
    return [prefix + n for n in names() if n.startswith(last) and n not in done]


def complete_profile(incomplete: str) -> list[str]:
    """MIG profile names of the known models (``3g.20gb``, ``1g.10gb+me``, ...)."""
    from miso_cli.gpu.profiles import MODELS

    names = sorted({p.name for m in MODELS.values() for p in m.profiles})
    return _match(names, incomplete)


def _queue_job_names(path: Any) -> list[str]:
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return []
    jobs = doc.get("job", [])
    return [j["name"] for j in jobs if isinstance(j, dict) and isinstance(j.get("name"), str)]


def _run_job_names(state_dir: Any, run_id: Any) -> list[str]:
    try:
        from miso_cli.operate.runs import open_run
        from miso_cli.runtime.state import default_state_dir

        sdir = Path(state_dir) if state_dir else default_state_dir()
        run = open_run(sdir, run_id if isinstance(run_id, str) else None)
        return list(run.jobs)
    except Exception:  # no run, unreadable journal: nothing to offer
        return []


def complete_job_name(ctx: Any, incomplete: str) -> list[str]:
    """Job names: from the queue file on the command line, else the latest run's."""
    params = getattr(ctx, "params", {}) or {}
    names: list[str] = []
    for key in ("queue", "queue_file"):
        if params.get(key):
            names = _queue_job_names(params[key])
            break
    if not names:
        state_dir = params.get("state_dir") or os.environ.get("MISO_STATE_DIR")
        names = _run_job_names(state_dir, params.get("run"))
    return _match(sorted(set(names)), incomplete)


# Options declared in other modules get their completion here, by parameter name.
_BY_PARAM = {
    "policy": complete_policy,
    "profiles": complete_profile,
}
# Commands whose positional argument is a job name.
_JOB_ARGUMENTS = {("cancel", "jobs"), ("logs", "job"), ("priority", "job")}


def attach_command(name: str, cmd: Any) -> None:
    """Give the parameters of ``miso NAME`` their completion (Click's ``shell_complete``
    on the parameter, replaced per instance)."""
    for param in getattr(cmd, "params", []):
        func = _BY_PARAM.get(param.name)
        if func is not None:
            _set(param, lambda ctx, incomplete, f=func: f(incomplete))
        elif (name, param.name) in _JOB_ARGUMENTS:
            _set(param, complete_job_name)


@dataclass
class CompletionItem:
    """What Click's shell completion formats: ``value``, ``type`` and ``help`` (the
    interface of click.shell_completion.CompletionItem, whichever copy Typer carries)."""

    value: str
    type: str = "plain"
    help: str | None = None


def _set(param: Any, func: Any) -> None:
    def shell_complete(ctx: Any, incomplete: str) -> list[CompletionItem]:
        try:
            return [CompletionItem(w) for w in func(ctx, incomplete)]
        except Exception:
            return []

    param.shell_complete = shell_complete
