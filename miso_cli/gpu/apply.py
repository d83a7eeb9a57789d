"""Make one GPU's MIG instances match a wanted layout, changing only what differs.

:func:`apply_layout` reads the GPU, computes the difference (instances with the
same profile at the same placement are kept, with their processes running),
refuses to destroy an instance that has processes unless ``force``, then
destroys and creates. It is transactional: when a step fails it undoes the
steps done (re-creating what it destroyed at the same placements, destroying
what it created), checks the GPU is back as it found it, and raises
:class:`~miso_cli.errors.RolledBack`; if the GPU cannot be restored it raises
:class:`~miso_cli.errors.Inconsistent`, naming what is left. The GPU is never
left half-configured silently.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from miso_cli.errors import GpuBusy, Inconsistent, MisoError, NoGpu, RolledBack
from miso_cli.gpu.layouts import Layout, Slice
from miso_cli.gpu.nvml import Driver, GpuProcess, MigInstance, ModeChange
from miso_cli.pids import pid_exists


@dataclass(frozen=True)
class Step:
    """One change: ``enable_mig``, ``destroy`` or ``create`` (an instance at a placement)."""

    action: str
    slice: Slice | None = None
    gi_id: int | None = None

    def describe(self) -> str:
        if self.action == "enable_mig":
            return "enable MIG mode"
        assert self.slice is not None
        at = f"{self.slice.profile} at {self.slice.start}:{self.slice.size}"
        if self.action == "destroy":
            return f"destroy {at} (GPU instance {self.gi_id})"
        return f"create {at}"

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "instance": self.slice.to_json() if self.slice else None,
            "gi_id": self.gi_id,
            "description": self.describe(),
        }


@dataclass
class ApplyReport:
    """What :func:`apply_layout` found, planned and did on one GPU."""

    gpu_index: int
    wanted: Layout
    before: Layout
    after: Layout
    steps: list[Step]
    kept: list[Slice]
    dry_run: bool
    mode_change: ModeChange | None = None
    pending_reset: bool = False
    killed: list[int] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.steps) and not self.dry_run and not self.pending_reset

    @property
    def matches(self) -> bool:
        return self.after == self.wanted and not self.pending_reset

    def to_json(self) -> dict[str, Any]:
        return {
            "gpu_index": self.gpu_index,
            "wanted": self.wanted.to_json(),
            "before": self.before.to_json(),
            "after": self.after.to_json(),
            "steps": [s.to_json() for s in self.steps],
            "kept": [s.to_json() for s in self.kept],
            "dry_run": self.dry_run,
            "changed": self.changed,
            "matches": self.matches,
            "pending_reset": self.pending_reset,
            "mig_mode": self.mode_change.to_json() if self.mode_change else None,
            "killed_pids": self.killed,
        }


def diff(
    current: list[MigInstance], wanted: Layout
) -> tuple[list[Slice], list[MigInstance], list[Slice]]:
    """(kept, to destroy, to create): instances are kept when profile and placement match
    and they carry exactly one compute instance (a GPU instance without one, or split
    into several, is re-made)."""
    want = set(wanted.slices)
    kept: list[Slice] = []
    destroy: list[MigInstance] = []
    for inst in current:
        if (
            inst.slice is not None
            and inst.slice in want
            and inst.slice not in kept
            and inst.ci_id is not None
            and inst.compute_instances == 1
        ):
            kept.append(inst.slice)
        else:
            destroy.append(inst)
    create = [s for s in wanted.slices if s not in kept]
    return sorted(kept), destroy, create


def check_fits(drv: Driver, i: int, wanted: Layout) -> None:
    """Raise if ``wanted`` names a profile or placement this GPU does not offer."""
    from miso_cli.errors import BadInput
    from miso_cli.gpu.layouts import fits

    gm = drv.gpu_model(i)
    chosen = []
    for s in wanted.slices:
        try:
            prof = gm.profile(s.profile)
        except KeyError:
            known = ", ".join(p.name for p in gm.profiles)
            raise BadInput(
                f"{s.profile} is not a MIG profile of GPU {i} ({gm.name})",
                hint=f"its profiles: {known}",
            ) from None
        if not fits(gm, chosen, prof, s.placement):
            raise BadInput(
                f"{wanted.name} does not fit on GPU {i} ({gm.name}): "
                f"{s.profile} at {s.start}:{s.size} overlaps or is not an allowed placement",
                hint="see 'miso layouts' for valid layouts and placements",
            )
        chosen.append((prof, s.placement))


def apply_layout(
    drv: Driver,
    i: int,
    layout: Layout,
    force: bool = False,
    dry_run: bool = False,
    *,
    kill_timeout_s: float = 10.0,
) -> ApplyReport:
    """Make GPU ``i`` hold exactly ``layout``; see the module docstring.

    Raises GpuBusy (processes on an instance to destroy, without ``force``),
    PermissionDenied, NoGpu, RolledBack (a step failed; the old layout is back),
    Inconsistent (a step failed and the old layout could not be restored).
    """
    info = drv.gpu(i)
    if not info.mig_capable:
        raise NoGpu(f"GPU {i} ({info.name}) is not MIG-capable")
    check_fits(drv, i, layout)
    steps: list[Step] = []
    mode: ModeChange | None = None
    if not info.mig_current:
        steps.append(Step("enable_mig"))
        if dry_run:
            steps += [Step("create", s) for s in layout.slices]
            empty = Layout(())
            return ApplyReport(i, layout, empty, empty, steps, [], True, None, info.mig_pending)
        mode = drv.set_mig_mode(i, True)
        if not mode.current:
            # Pending: the GPU must be reset (or the machine rebooted) first.
            empty = Layout(())
            return ApplyReport(i, layout, empty, empty, steps, [], False, mode, True)

    current = drv.instances(i)
    before = drv.current_layout(i)
    kept, destroy, create = diff(current, layout)
    plan = [Step("destroy", m.slice, m.gi_id) for m in destroy]
    plan += [Step("create", s) for s in create]
    if dry_run:
        return ApplyReport(i, layout, before, before, steps + plan, kept, True, mode)

    killed: list[int] = []
    if destroy:
        busy_ids = {m.gi_id for m in destroy}
        busy = [p for p in drv.processes(i) if p.gi_id in busy_ids]
        if busy and not force:
            raise GpuBusy(
                f"GPU {i}: processes use instances that would be destroyed: "
                + ", ".join(_proc(p) for p in busy),
                hint="stop them first, or pass --force to terminate them",
                details={"pids": sorted({p.pid for p in busy})},
            )
        if busy:
            killed = _terminate(sorted({p.pid for p in busy}), kill_timeout_s)

    done: list[tuple[Step, MigInstance | None]] = []
    try:
        for m in destroy:
            step = Step("destroy", m.slice, m.gi_id)
            drv.destroy_instance(i, m.gi_id)
            done.append((step, m))
        gm = drv.gpu_model(i)
        for s in create:
            step = Step("create", s)
            made = drv.create_instance(i, gm.profile(s.profile), s.placement)
            done.append((step, made))
    except MisoError as exc:
        failed = plan[len(done)].describe() if len(done) < len(plan) else "the last step"
        _rollback(drv, i, done, before, exc, failed)
        raise AssertionError("unreachable") from None  # _rollback always raises

    after = _read_layout(drv, i)
    if after != layout:
        raise Inconsistent(
            f"GPU {i}: after applying, the GPU holds {after.name}, not {layout.name}",
            hint="run 'miso status' and apply again",
        )
    return ApplyReport(i, layout, before, after, steps + plan, kept, False, mode, False, killed)


def _read_layout(drv: Driver, i: int, tries: int = 3) -> Layout:
    """The current layout; retried, since a transient read error must not hide the state."""
    last: MisoError | None = None
    for _ in range(tries):
        try:
            return drv.current_layout(i)
        except MisoError as exc:
            last = exc
    assert last is not None
    raise last


def _rollback(
    drv: Driver,
    i: int,
    done: list[tuple[Step, MigInstance | None]],
    before: Layout,
    exc: MisoError,
    failed: str,
) -> None:
    problems: list[str] = []
    # Undo in reverse order: remove what was created, then re-create what was destroyed.
    for step, inst in reversed(done):
        for attempt in range(2):
            try:
                if step.action == "create" and inst is not None:
                    drv.destroy_instance(i, inst.gi_id)
                elif step.action == "destroy" and step.slice is not None:
                    gm = drv.gpu_model(i)
                    drv.create_instance(i, gm.profile(step.slice.profile), step.slice.placement)
                break
            except MisoError as undo_exc:
                if attempt == 1:
                    problems.append(f"could not undo '{step.describe()}': {undo_exc.message}")
    # A step that failed half-way (e.g. a GPU instance made but its compute instance
    # not) may have left something: compare with what was there and clean up.
    try:
        now = _read_layout(drv, i)
        if now != before:
            current = drv.instances(i)
            keep = set(before.slices)
            for inst in current:
                if inst.slice is not None and inst.slice not in keep:
                    drv.destroy_instance(i, inst.gi_id)
            now = _read_layout(drv, i)
            missing = [s for s in before.slices if s not in set(now.slices)]
            gm = drv.gpu_model(i)
            for s in missing:
                drv.create_instance(i, gm.profile(s.profile), s.placement)
            now = _read_layout(drv, i)
    except MisoError as read_exc:
        raise Inconsistent(
            f"GPU {i}: {failed} failed ({exc.message}), and the GPU could not be checked "
            f"afterwards ({read_exc.message})",
            hint="run 'miso status', then apply the layout you want",
            details={"failed_step": failed, "cause": exc.as_dict()},
        ) from None
    if now == before:
        raise RolledBack(
            f"GPU {i}: {failed} failed ({exc.message}); restored the previous layout {before.name}",
            hint="fix the cause and apply again",
            details={"failed_step": failed, "cause": exc.as_dict(), "layout": before.to_json()},
        ) from None
    raise Inconsistent(
        f"GPU {i}: {failed} failed ({exc.message}), and the previous layout {before.name} "
        f"could not be restored; the GPU now holds {now.name}"
        + (f" ({'; '.join(problems)})" if problems else ""),
        hint="run 'miso status', then apply the layout you want",
        details={"failed_step": failed, "cause": exc.as_dict(), "layout": now.to_json()},
    ) from None


def _proc(p: GpuProcess) -> str:
    mem = f", {p.used_memory_mb} MiB" if p.used_memory_mb is not None else ""
    return f"pid {p.pid} (GPU instance {p.gi_id}{mem})"


def _terminate(pids: list[int], timeout_s: float) -> list[int]:
    """SIGTERM, then SIGKILL after ``timeout_s``; the pids that were signalled."""
    signalled = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            signalled.append(pid)
        except ProcessLookupError:
            continue
        except PermissionError:
            raise GpuBusy(
                f"pid {pid} uses an instance to destroy and cannot be signalled by this user",
                hint="stop it as its owner or as root",
            ) from None
    deadline = time.monotonic() + timeout_s
    alive = list(signalled)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        if alive:
            time.sleep(0.05)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in alive) and time.monotonic() < deadline:
        time.sleep(0.05)
    return signalled


def _alive(pid: int) -> bool:
    try:
        # Reap our own children so they do not linger as zombies.
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    return pid_exists(pid)


def load_plan(path: Any) -> list[tuple[int, list[str]]]:
    """The wanted layout per GPU from a plan file, as ``(index, ["3g.20gb@0", ...])``.

    Accepts a ``miso plan --json`` envelope (``data.gpus[]``), or
    ``{"gpus": [{"index": 0, "layout": [...]}]}`` where ``layout`` is a list of
    ``PROFILE[@START]`` strings or an object with ``instances`` shaped like
    ``Layout.to_json()``. GPUs whose ``mode`` is not ``mig`` are skipped.
    """
    import json
    from pathlib import Path

    from miso_cli.errors import BadInput
    from miso_cli.textfile import read_text

    p = Path(path)
    text = read_text(p, "the plan file")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{p}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if isinstance(doc, dict) and "schema_version" in doc and isinstance(doc.get("data"), dict):
        doc = doc["data"]
    if not isinstance(doc, dict) or not isinstance(doc.get("gpus"), list):
        raise BadInput(f"{p}: expected an object with a 'gpus' list (or a miso plan envelope)")
    if not doc["gpus"]:
        raise BadInput(f"{p}: the plan has no GPUs")
    out: list[tuple[int, list[str]]] = []
    seen: set[int] = set()
    for n, g in enumerate(doc["gpus"]):
        where = f"{p}: gpus[{n}]"
        if not isinstance(g, dict):
            raise BadInput(f"{where}: expected an object with 'index' and 'layout'")
        idx = g.get("index")
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            raise BadInput(f"{where}.index: expected a GPU index (an integer >= 0)")
        if idx in seen:
            raise BadInput(f"{where}.index: GPU {idx} appears twice")
        seen.add(idx)
        if g.get("mode", "mig") != "mig":
            continue
        lay = g.get("layout")
        tokens: list[str] = []
        if isinstance(lay, list):
            for k, t in enumerate(lay):
                if not isinstance(t, str) or not t.strip():
                    raise BadInput(f"{where}.layout[{k}]: expected a string like '3g.20gb@0'")
                tokens.append(t.strip())
        elif isinstance(lay, dict) and isinstance(lay.get("instances"), list):
            for k, inst in enumerate(lay["instances"]):
                w = f"{where}.layout.instances[{k}]"
                if not isinstance(inst, dict) or not isinstance(inst.get("profile"), str):
                    raise BadInput(f"{w}: expected an object with 'profile' and 'placement'")
                pl = inst.get("placement")
                if pl is None:
                    tokens.append(inst["profile"])
                    continue
                if not (
                    isinstance(pl, dict)
                    and isinstance(pl.get("start"), int)
                    and isinstance(pl.get("size"), int)
                ):
                    raise BadInput(f"{w}.placement: expected {{'start': int, 'size': int}}")
                tokens.append(f"{inst['profile']}@{pl['start']}:{pl['size']}")
        else:
            raise BadInput(
                f"{where}.layout: expected a list like ['3g.20gb@0', '4g.20gb'] or an object "
                "with 'instances'"
            )
        out.append((idx, tokens))
    return out


def resolve(drv: Driver, i: int, tokens: list[str], source: str) -> Layout:
    """Placements for ``PROFILE[@START[:SIZE]]`` tokens on GPU ``i``, keeping current ones."""
    from miso_cli.errors import BadInput
    from miso_cli.gpu.layouts import LayoutError, place

    gm = drv.gpu_model(i)
    plain: list[str] = []
    for t in tokens:
        name, _, at = t.partition("@")
        start, _, size = at.partition(":")
        if size:
            try:
                prof = gm.profile(name)
            except KeyError:
                prof = None
            if prof is not None and size.isdigit() and int(size) != prof.memory_slots:
                raise BadInput(
                    f"{source}: {t}: {name} spans {prof.memory_slots} memory slots, not {size}"
                )
        plain.append(f"{name}@{start}" if at else name)
    current: Layout | None = None
    info = drv.gpu(i)
    if info.mig_current:
        try:
            current = drv.current_layout(i)
        except MisoError:
            current = None
    try:
        return place(gm, plain, prefer=current)
    except LayoutError as exc:
        raise BadInput(
            f"{source}: {exc}", hint=f"see 'miso layouts --gpu-index {i}' for what fits"
        ) from None
