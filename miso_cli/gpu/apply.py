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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miso_cli.errors import GpuBusy, Inconsistent, MisoError, NoGpu, RolledBack
from miso_cli.gpu.layouts import Layout, Slice
from miso_cli.gpu.nvml import Driver, GpuProcess, MigInstance, ModeChange
from miso_cli.runtime.locks import deferred_signals, held_lock
from miso_cli.runtime.pids import pid_exists
from miso_cli.runtime.retry import Backoff, nvml_error, retry

# A destroy refused with IN_USE is tried again for about half a minute in all.
BUSY_BACKOFF = Backoff(tries=6, first_s=0.5, factor=2.0, max_s=8.0)


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
    intent: Path | None = None,
    sleep: Callable[[float], None] = time.sleep,
    busy_backoff: Backoff = BUSY_BACKOFF,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> ApplyReport:
    """Make GPU ``i`` hold exactly ``layout``; see the module docstring.

    ``intent`` (a path in the GPU's lock folder) is written before the first change and
    removed once the GPU is in the new or the old state, so that a miso killed in between
    leaves a record for :func:`recover_unfinished`. SIGINT and SIGTERM wait until then.
    A destroy refused with ``IN_USE`` while no process is listed (a monitoring agent
    holding the instance) is retried after ``busy_backoff`` pauses (``sleep``).

    Raises GpuBusy (processes on an instance to destroy, without ``force``; or still
    ``IN_USE`` after the retries, after rolling back), PermissionDenied, NoGpu, RolledBack
    (a step failed; the old layout is back), Inconsistent (a step failed and the old
    layout could not be restored).
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
    if not plan:
        return ApplyReport(i, layout, before, before, steps, kept, False, mode, False, killed)

    if intent is None:  # under a GPU lock this process holds: the intent goes beside it
        held = held_lock(drv, i)
        intent = held.intent_path if held is not None else None
    # From here the GPU changes: the intent is on disk first, and a signal waits.
    with deferred_signals():
        if intent is not None:
            write_intent(intent, i, info.uuid, before, layout)
        done: list[tuple[Step, MigInstance | None]] = []
        try:
            for m in destroy:
                step = Step("destroy", m.slice, m.gi_id)
                _destroy(drv, i, m.gi_id, sleep=sleep, policy=busy_backoff, on_retry=on_retry)
                done.append((step, m))
            gm = drv.gpu_model(i)
            for s in create:
                step = Step("create", s)
                made = drv.create_instance(i, gm.profile(s.profile), s.placement)
                done.append((step, made))
        except MisoError as exc:
            failed = plan[len(done)].describe() if len(done) < len(plan) else "the last step"
            try:
                _rollback(drv, i, done, before, exc, failed)
            except (RolledBack, GpuBusy):
                clear_intent(intent)
                raise
            raise AssertionError("unreachable") from None  # _rollback always raises

        problems = _problems_retried(drv, i, layout)
        if problems:
            try:
                _rollback(
                    drv,
                    i,
                    done,
                    before,
                    Inconsistent(f"GPU {i}: after applying, " + "; ".join(problems)),
                    "the check after applying",
                )
            except RolledBack:
                clear_intent(intent)
                raise
        clear_intent(intent)
    after = Layout.of(layout.slices)
    return ApplyReport(i, layout, before, after, steps + plan, kept, False, mode, False, killed)


# ------------------------------------------------------------ checking the GPU


def state_problems(drv: Driver, i: int, wanted: Layout) -> list[str]:
    """What keeps GPU ``i`` from holding ``wanted`` as miso uses it: each instance at its
    placement, with exactly one compute instance and a MIG device, and nothing else.

    Empty when it does. Raises PermissionDenied where GPU instances cannot be read.
    """
    from miso_cli.errors import PermissionDenied
    from miso_cli.gpu.nvml import ROOT_HINT

    info = drv.gpu(i)
    if not info.mig_current:
        return [f"GPU {i}: MIG mode is off"]
    problems: list[str] = []
    have: list[Slice] = []
    for m in drv.instances(i):
        if m.slice is None:
            raise PermissionDenied(
                f"reading GPU {i}'s MIG layout needs root (GPU instances are privileged)",
                hint=ROOT_HINT,
            )
        have.append(m.slice)
        what = f"GPU {i}: {m.slice.profile} at {m.slice.start} (GPU instance {m.gi_id})"
        if m.ci_id is None or m.compute_instances == 0:
            problems.append(f"{what} has no compute instance")
        elif m.compute_instances != 1:
            problems.append(f"{what} has {m.compute_instances} compute instances, not one")
        elif not m.uuid:
            problems.append(f"{what} has no MIG device")
    now = Layout.of(have)
    if now != Layout.of(wanted.slices):
        problems.insert(0, f"GPU {i} holds {now.name}, not {wanted.name}")
    return problems


def _problems_retried(drv: Driver, i: int, wanted: Layout, tries: int = 3) -> list[str]:
    """:func:`state_problems`, retried: a transient read error must not hide the state."""
    last: MisoError | None = None
    for _ in range(tries):
        try:
            return state_problems(drv, i, wanted)
        except MisoError as exc:
            if exc.code == "PERMISSION":
                raise
            last = exc
    assert last is not None
    raise last


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


def _converge(drv: Driver, i: int, target: Layout) -> None:
    """Destroy what is not in ``target`` (or is broken: no compute instance, no MIG device),
    then create what is missing. Raises the first driver error."""
    current = drv.instances(i)
    keep = set(target.slices)
    seen: set[Slice] = set()
    for inst in current:
        healthy = inst.ci_id is not None and inst.compute_instances == 1 and bool(inst.uuid)
        if inst.slice is not None and inst.slice in keep and healthy and inst.slice not in seen:
            seen.add(inst.slice)
            continue
        drv.destroy_instance(i, inst.gi_id)
    gm = drv.gpu_model(i)
    for s in target.slices:
        if s not in seen:
            drv.create_instance(i, gm.profile(s.profile), s.placement)


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
    # A step that failed half-way (e.g. a compute instance destroyed but not its GPU
    # instance) may have left something broken: check every instance down to its
    # compute instance and MIG device, and repair towards the old layout.
    left: list[str] = []
    try:
        for _ in range(2):
            left = _problems_retried(drv, i, before)
            if not left:
                break
            try:
                _converge(drv, i, before)
            except MisoError as again:
                problems.append(f"repair: {again.message}")
        left = _problems_retried(drv, i, before)
    except MisoError as read_exc:
        raise Inconsistent(
            f"GPU {i}: {failed} failed ({exc.message}), and the GPU could not be checked "
            f"afterwards ({read_exc.message})",
            hint="run 'miso status', then apply the layout you want",
            details={"failed_step": failed, "cause": exc.as_dict()},
        ) from None
    if not left:
        if isinstance(exc, GpuBusy):
            exc.message += f"; restored the previous layout {before.name}"
            exc.args = (exc.message,)
            exc.details["rolled_back"] = True
            raise exc from None
        raise RolledBack(
            f"GPU {i}: {failed} failed ({exc.message}); restored the previous layout {before.name}",
            hint="fix the cause and apply again",
            details={"failed_step": failed, "cause": exc.as_dict(), "layout": before.to_json()},
        ) from None
    try:
        now_name = _read_layout(drv, i).name
    except MisoError:
        now_name = "an unreadable layout"
    raise Inconsistent(
        f"GPU {i}: {failed} failed ({exc.message}), and the previous layout {before.name} "
        f"could not be restored; the GPU now holds {now_name}: " + "; ".join(left + problems),
        hint="run 'miso status', then apply the layout you want",
        details={"failed_step": failed, "cause": exc.as_dict(), "problems": left + problems},
    ) from None


# ------------------------------------------------------------ a destroy that finds IN_USE

# Processes that hold a MIG instance without showing as a compute process on it.
LIKELY_HOLDERS = {
    "nvidia-persistenced": "the persistence daemon",
    "nv-hostengine": "DCGM",
    "dcgm-exporter": "DCGM exporter",
    "dcgmi": "DCGM",
    "nvsm": "NVSM",
    "nvsm-core": "NVSM",
    "nvidia-smi": "nvidia-smi",
    "nvidia-powerd": "nvidia-powerd",
    "nvidia-mig-parted": "mig-parted",
    "nvidia-cuda-mps-control": "an MPS control daemon",
    "nvidia-cuda-mps-server": "an MPS server",
    "Xorg": "the X server",
}


def likely_holders(process_iter: Callable[[], Any] | None = None) -> list[str]:
    """Running programs that commonly hold a GPU instance without a listed process."""
    found: list[str] = []
    try:
        if process_iter is None:
            import psutil

            procs = [(p.info.get("name") or "", p.pid) for p in psutil.process_iter(["name"])]
        else:
            procs = list(process_iter())
    except Exception:  # a process listing is a hint only
        procs = []
    for name, pid in procs:
        if name in LIKELY_HOLDERS:
            found.append(f"{name} (pid {pid}, {LIKELY_HOLDERS[name]})")
    if os.path.isdir("/sys/module/nvidia_drm"):
        found.append("the nvidia_drm kernel module (modeset)")
    return found


def _destroy(
    drv: Driver,
    i: int,
    gi_id: int,
    *,
    sleep: Callable[[float], None],
    policy: Backoff,
    on_retry: Callable[[int, BaseException, float], None] | None,
) -> None:
    try:
        retry(
            lambda: drv.destroy_instance(i, gi_id),
            policy=policy,
            sleep=sleep,
            transient=lambda e: nvml_error(e) == "IN_USE",
            on_retry=on_retry,
        )
    except MisoError as exc:
        if nvml_error(exc) != "IN_USE":
            raise
        holders = likely_holders()
        raise GpuBusy(
            f"GPU {i}: GPU instance {gi_id} stayed in use (IN_USE) for "
            f"{policy.total_s:g} s with no process listed on it"
            + (f"; likely holders: {', '.join(holders)}" if holders else ""),
            hint="stop the monitoring agents that hold it (e.g. 'systemctl stop "
            "nvidia-dcgm nvidia-persistenced'), then apply again",
            details={"gi_id": gi_id, "likely_holders": holders},
        ) from None


# ------------------------------------------------------------ the intent on disk

INTENT_VERSION = 1


def _layout_from_json(doc: Any) -> Layout:
    if not isinstance(doc, dict) or not isinstance(doc.get("instances"), list):
        raise ValueError("not a layout")
    out = []
    for inst in doc["instances"]:
        pl = inst["placement"]
        out.append(
            Slice(int(pl["start"]), int(pl["size"]), str(inst["profile"]), int(inst["slices"]))
        )
    return Layout.of(out)


def write_intent(path: Path, i: int, uuid: str | None, before: Layout, wanted: Layout) -> None:
    """Record, durably, that GPU ``i`` is about to go from ``before`` to ``wanted``."""
    from miso_cli.runtime.state import atomic_write_json

    atomic_write_json(
        path,
        {
            "version": INTENT_VERSION,
            "gpu_index": i,
            "gpu_uuid": uuid,
            "pid": os.getpid(),
            "started_at": time.time(),
            "before": before.to_json(),
            "wanted": wanted.to_json(),
        },
    )


def clear_intent(path: Path | None) -> None:
    if path is None:
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def read_intent(path: Path) -> dict[str, Any] | None:
    """The intent record at ``path``; None if there is none. Raises ValueError if damaged."""
    import json

    from miso_cli.safefs import open_file

    try:
        fd = open_file(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as fh:
        doc = json.loads(fh.read(1 << 20).decode("utf-8"))
    if not isinstance(doc, dict) or doc.get("version") != INTENT_VERSION:
        raise ValueError("not an apply record")
    doc["before"] = _layout_from_json(doc.get("before"))
    doc["wanted"] = _layout_from_json(doc.get("wanted"))
    return doc


def recover_unfinished(drv: Driver, i: int, path: Path) -> str | None:
    """Finish or roll back an apply on GPU ``i`` that a killed miso left; say what was done.

    Call with the GPU's lock held. The GPU in the new state: the apply had finished. In
    the old state: nothing to undo. In between: rolled back to the old layout (the
    command that started it never reported success), or, if that fails, forward to
    the new one. Raises Inconsistent, keeping the record, if neither can be reached.
    """
    from miso_cli.errors import BadInput

    try:
        doc = read_intent(path)
        if doc is not None:
            check_fits(drv, i, doc["before"])  # layouts this GPU can hold, or not a record
            check_fits(drv, i, doc["wanted"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError, BadInput):
        clear_intent(path)
        return f"GPU {i}: removed an unreadable record of an interrupted apply ({path})"
    if doc is None:
        return None
    before, wanted = doc["before"], doc["wanted"]
    who = f"an apply by pid {doc.get('pid', '?')} that was interrupted"
    if not _problems_retried(drv, i, wanted):
        clear_intent(path)
        return f"GPU {i}: {who} had finished; the GPU holds {wanted.name}"
    if not _problems_retried(drv, i, before):
        clear_intent(path)
        return f"GPU {i}: {who} had changed nothing; the GPU still holds {before.name}"
    errors: list[str] = []
    for target, verb in ((before, "rolled back to"), (wanted, "completed to")):
        for _ in range(2):
            try:
                with deferred_signals():
                    _converge(drv, i, target)
                    if not _problems_retried(drv, i, target):
                        clear_intent(path)
                        return f"GPU {i}: {who} left a partial layout; {verb} {target.name}"
            except MisoError as exc:
                errors.append(exc.message)
    raise Inconsistent(
        f"GPU {i}: {who} left a partial layout that could be neither rolled back to "
        f"{before.name} nor completed to {wanted.name}: " + "; ".join(errors[-2:]),
        hint="run 'miso status', then apply the layout you want",
        details={"intent": str(path)},
    )


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
    from miso_cli.spec.textfile import read_text

    p = Path(path)
    text = read_text(p, "the plan file")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{p}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise BadInput(f"{p}: nested too deeply to be a plan") from None
    except ValueError:  # an integer of thousands of digits (int_max_str_digits)
        raise BadInput(f"{p}: a number in the plan has too many digits") from None
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
        if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < 1 << 16:
            raise BadInput(f"{where}.index: expected a GPU index (an integer from 0 to 65535)")
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
