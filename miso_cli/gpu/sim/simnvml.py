"""A simulated NVML: the pynvml functions miso calls, backed by a state file.

``SimNvml(pynvml)`` offers the same function names and arguments as the
``pynvml`` module and answers with pynvml's own ctypes structs, constants and
``NVMLError_*`` exceptions, so :mod:`miso_cli.gpu.nvml` runs the same code
against it as against the driver. This module never imports pynvml: it receives
the module.

It is strict where mocks usually are lenient, because code that passes here
should pass on a driver:

* profile *index* -> profile *id* (the tables of :mod:`miso_cli.gpu.profiles`);
* placements through the count-then-fill calling convention; creating on an
  occupied slot is ``INSUFFICIENT_RESOURCES``, on a placement the profile does
  not allow ``INVALID_ARGUMENT``; instance-count and compute-slice limits hold;
* MIG mode has a current and a pending value; ``nvmlDeviceSetMigMode`` returns
  the activation status (``IN_USE`` while processes run: the change stays
  pending until :meth:`SimNvml.reset_gpu`);
* instance calls with MIG off are ``NOT_SUPPORTED``; privileged calls from an
  unprivileged caller are ``NO_PERMISSION``;
* destroying a GPU instance that still has compute instances, or a compute
  instance that has processes, is ``IN_USE``;
* one MIG device per compute instance, with a ``MIG-<uuid>`` derived from the
  GPU's UUID, the instance ids and a creation counter, so a re-created instance
  gets a new UUID as on the driver;
* a GPU can be marked lost (every call on it is ``GPU_IS_LOST``), and the Nth
  call of any function can be made to fail with any NVML error.

Handles are genuine pynvml pointer types (``c_nvmlDevice_t``, ...) whose address
encodes what they designate; they are never dereferenced. A handle to a
destroyed instance is refused with ``INVALID_ARGUMENT``.

State lives in one JSON file (``version``, ``gpus``, ``processes``,
``privileged``, ``faults``, ``extensions``), rewritten atomically under an
``fcntl.flock`` on a sibling ``.lock`` file, so two ``miso`` invocations and the
jobs they launch see one GPU. Tests may keep the state in memory instead: the
same code paths run, without the file I/O.

Fault injection, three ways (the call counts are per process):

* ``sim.inject_fault("nvmlDeviceCreateGpuInstanceWithPlacement", 2, "INSUFFICIENT_RESOURCES")``;
* ``MISO_SIM_FAULTS="fn:N:ERROR_NAME,..."`` (``N`` may be ``*`` for every call);
* ``faults`` in the state file: ``[{"fn": ..., "n": ..., "error": ...}]``.

``MISO_SIM_PRIVILEGED=0`` (or ``1``) overrides the state file's ``privileged``
flag, which defaults to true so a newcomer can apply layouts on the simulated GPU.

``MISO_SIM_LATENCY=SECONDS`` (default 0) delays every mutating call (set MIG
mode, create or destroy a GPU or compute instance) by that many seconds, as a
driver takes time to carve a GPU; the delay goes through the ``sleep`` the
:class:`SimNvml` was given, so tests pass a fake one and never wait.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import math
import os
import random
import re
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

from miso_cli.errors import BadInput, UsageError
from miso_cli.gpu.profiles import PROFILE_INDEX_COUNT, GpuModel, SliceProfile, model
from miso_cli.runtime.pids import pid_exists

STATE_VERSION = 1
SIM_DRIVER_VERSION = "550.54.15-sim"
SIM_NVML_VERSION = "12.550.54.15-sim"
_NAMESPACE = uuidlib.UUID("4d49534f-7369-6d75-6c61-746564475055")
_SPEC_RE = re.compile(r"^sim:(?P<model>[a-z0-9-]+?)(?:x(?P<count>\d+))?$")
_NOT_AVAILABLE_UINT = 0xFFFFFFFF

# Handle address layout: kind (4 bits) | gpu (8) | gpu instance (8) | ci (8) | serial (32).
_KIND_GPU, _KIND_MIG, _KIND_GI, _KIND_CI = 1, 2, 3, 4

# Compute-instance profiles a GPU instance of N compute slices offers (nvidia-smi mig -lcip).
_CI_SLICES = {1: (1,), 2: (1, 2), 3: (1, 2, 3), 4: (1, 2, 4), 7: (1, 2, 3, 4, 7)}
# NVML_COMPUTE_INSTANCE_PROFILE_* index (= the CI profile id the driver reports) per size.
_CI_INDEX = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4, 8: 5, 6: 6}

# The calls that change the GPU: each takes MISO_SIM_LATENCY seconds.
MUTATING_CALLS = frozenset(
    {
        "nvmlDeviceSetMigMode",
        "nvmlDeviceCreateGpuInstance",
        "nvmlDeviceCreateGpuInstanceWithPlacement",
        "nvmlGpuInstanceDestroy",
        "nvmlGpuInstanceCreateComputeInstance",
        "nvmlComputeInstanceDestroy",
    }
)
LATENCY_ENV = "MISO_SIM_LATENCY"
_MAX_LATENCY_S = 3600.0

F = TypeVar("F", bound=Callable[..., Any])


class SimSpecError(ValueError):
    """A ``sim:...`` GPU spec that names no known model."""


class SimLatencyError(UsageError, ValueError):
    """``MISO_SIM_LATENCY`` is not a number of seconds (exit 2, USAGE)."""


class SimHoldersError(UsageError, ValueError):
    """``MISO_SIM_HOLDERS`` does not parse (exit 2, USAGE)."""


def parse_latency(text: str | None) -> float:
    """``MISO_SIM_LATENCY``'s value -> seconds per mutating call; unset or empty = 0."""
    if text is None or text.strip() == "":
        return 0.0
    try:
        value = float(text.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 <= value <= _MAX_LATENCY_S:
        raise SimLatencyError(
            f"{LATENCY_ENV}={text!r}: expected seconds per mutating NVML call, "
            f"a number from 0 to {_MAX_LATENCY_S:g}",
            hint=f"e.g. {LATENCY_ENV}=0.5, or unset it for no delay",
        )
    return value


def parse_spec(spec: str) -> tuple[str, int]:
    """``"sim:h100-80gbx8"`` -> ``("h100-80gb", 8)``; ``"sim:a100-40gb"`` -> 1 GPU."""
    m = _SPEC_RE.match(spec.strip().lower())
    if not m:
        raise SimSpecError(f"bad simulated GPU spec {spec!r}: expected sim:MODEL or sim:MODELxN")
    key = m.group("model")
    count = int(m.group("count") or 1)
    try:
        model(key)
    except KeyError as exc:
        raise SimSpecError(str(exc.args[0])) from None
    if not 1 <= count <= 64:
        raise SimSpecError(f"bad GPU count in {spec!r}: 1 to 64")
    return key, count


def state_path_for(state_dir: Path, spec: str) -> Path:
    """Where the simulated GPUs of ``spec`` keep their state under ``state_dir``."""
    key, count = parse_spec(spec)
    name = key if count == 1 else f"{key}x{count}"
    return Path(state_dir) / "sim" / f"{name}.json"


def new_state(model_key: str, count: int = 1) -> dict[str, Any]:
    """A fresh state: ``count`` GPUs of ``model_key``, MIG off, no instances, privileged."""
    gpus = []
    for i in range(count):
        gpu_uuid = "GPU-" + str(uuidlib.uuid5(_NAMESPACE, f"miso-sim/{model_key}/{count}/{i}"))
        gpus.append(
            {
                "index": i,
                "model": model_key,
                "uuid": gpu_uuid,
                "mig_current": False,
                "mig_pending": False,
                "lost": False,
                "reset_required_for_mode": False,
                "serial": 0,
                # Seeds the GPU-instance ids, so they differ from GPU to GPU as on a driver.
                "seed": int(hashlib.sha256(gpu_uuid.encode()).hexdigest()[:8], 16),
                "instances": [],
            }
        )
    return {
        "version": STATE_VERSION,
        "gpus": gpus,
        "processes": [],
        "privileged": True,
        "faults": [],
        "holders": [],
        "extensions": {},
    }


HOLDERS_ENV = "MISO_SIM_HOLDERS"
_HOLDER_RE = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)(?::(?P<gpu>\d+))?(?P<mig>@mig)?$")


def parse_holders(text: str) -> list[dict[str, Any]]:
    """``"nvidia-persistenced,nv-hostengine:0@mig"`` -> holder dicts.

    Each item is ``NAME[:GPU][@mig]``: a non-CUDA client of the driver (a daemon,
    or a kernel module such as ``nvidia_drm``) on every GPU or on GPU ``GPU``;
    ``@mig`` makes it hold a handle on every MIG device too.
    """
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        m = _HOLDER_RE.match(item)
        if not m:
            raise SimHoldersError(
                f"{HOLDERS_ENV}: bad holder {item!r}: expected NAME[:GPU][@mig], "
                "e.g. nvidia-persistenced or nv-hostengine:0@mig",
                hint=f"unset {HOLDERS_ENV} for no holders",
            )
        gpu = m.group("gpu")
        out.append(
            {
                "name": m.group("name"),
                "gpu": None if gpu is None else int(gpu),
                "mig": bool(m.group("mig")),
                "pid": None,
            }
        )
    return out


def _pid_alive(pid: int) -> bool:
    return pid_exists(pid)


def _drop_dead(state: dict[str, Any]) -> bool:
    procs = state.get("processes", [])
    alive = [p for p in procs if _pid_alive(int(p["pid"]))]
    if len(alive) != len(procs):
        state["processes"] = alive
        return True
    return False


class _Store:
    """The state, in a file (locked, atomic) or in memory."""

    def __init__(self, path: Path | None, initial: dict[str, Any] | None) -> None:
        self.path = Path(path) if path else None
        self._cache: dict[str, Any] | None = None
        self._stamp: tuple[int, int, int] | None = None
        if self.path is None:
            self._cache = initial if initial is not None else new_state("a100-40gb")
        elif initial is not None and not self.path.exists():
            self._write(initial)

    # -- file helpers -------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _stat(self) -> tuple[int, int, int] | None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read_file(self) -> dict[str, Any]:
        assert self.path is not None
        stamp = self._stat()
        if stamp is not None and stamp == self._stamp and self._cache is not None:
            return self._cache
        try:
            with open(self.path, encoding="utf-8") as fh:
                state = json.load(fh)
        except FileNotFoundError:
            raise SimStateError(f"{self.path}: the simulated GPU state file is missing") from None
        except json.JSONDecodeError as exc:
            raise SimStateError(
                f"{self.path}: line {exc.lineno}: not valid JSON ({exc.msg})"
            ) from None
        except UnicodeDecodeError as exc:
            raise SimStateError(f"{self.path}: not UTF-8 text (byte {exc.start})") from None
        except (RecursionError, ValueError):  # issue-11: nested too deeply, 5000-digit numbers
            raise SimStateError(f"{self.path}: not a simulated GPU state") from None
        except OSError as exc:  # a folder in its place, unreadable, ...
            raise SimStateError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        _check_state(state, self.path)
        self._cache, self._stamp = state, stamp
        return state

    def _write(self, state: dict[str, Any]) -> None:
        from miso_cli.runtime.state import atomic_write_json

        assert self.path is not None
        atomic_write_json(self.path, state)
        self._cache, self._stamp = state, self._stat()

    # -- API ----------------------------------------------------------------
    def read(self) -> dict[str, Any]:
        if self.path is None:
            assert self._cache is not None
            _drop_dead(self._cache)
            return self._cache
        state = self._read_file()
        if any(not _pid_alive(int(p["pid"])) for p in state.get("processes", [])):
            with self.mutate() as st:
                state = st
        return state

    @contextlib.contextmanager
    def mutate(self) -> Iterator[dict[str, Any]]:
        if self.path is None:
            assert self._cache is not None
            yield self._cache
            return
        with self._locked():
            self._stamp = None  # another process may have written: re-read under the lock
            state = self._read_file()
            _drop_dead(state)
            yield state
            self._write(state)


class SimStateError(BadInput, ValueError):
    """The simulated GPU's state file is missing or malformed (exit 3, BAD_INPUT)."""

    def __init__(self, message: str) -> None:
        super().__init__(
            message,
            hint="delete it to start the simulated GPUs afresh, with MIG off",
        )


def _check_state(state: Any, path: Path) -> None:
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise SimStateError(
            f"{path}: not a miso simulated-GPU state (expected version {STATE_VERSION})"
        )
    for key in ("gpus", "processes", "faults"):
        if not isinstance(state.get(key), list):
            raise SimStateError(f"{path}: key {key!r} must be a list")
    # Deep enough that a hand-edited file fails here, with its place, not in an NVML call.
    for n, gpu in enumerate(state["gpus"]):
        where = f"{path}: gpus[{n}]"
        if not isinstance(gpu, dict):
            raise SimStateError(f"{where}: must be an object")
        try:
            model(str(gpu.get("model")))
        except KeyError:
            raise SimStateError(f"{where}.model: unknown GPU model {gpu.get('model')!r}") from None
        if not isinstance(gpu.get("uuid"), str):
            raise SimStateError(f"{where}.uuid: must be a string")
        if not isinstance(gpu.get("instances"), list):
            raise SimStateError(f"{where}.instances: must be a list")
        # issue-11: the fields every call reads, so that a damaged file is named, not a crash
        if not _is_int(gpu.get("index")) or not all(
            isinstance(gpu.get(x), bool) for x in ("mig_current", "mig_pending")
        ):
            raise SimStateError(f"{where}: needs an integer index and true/false MIG modes")
        if gpu.get("pci_device_id") is not None and not _is_int(gpu.get("pci_device_id")):
            raise SimStateError(f"{where}.pci_device_id: must be an integer")
        for k, gi in enumerate(gpu["instances"]):
            ints = ("id", "profile_id", "start", "size")
            if not isinstance(gi, dict) or not all(_is_int(gi.get(x)) for x in ints):
                raise SimStateError(f"{where}.instances[{k}]: needs integer {', '.join(ints)}")
            if not isinstance(gi.get("cis", []), list):
                raise SimStateError(f"{where}.instances[{k}].cis: must be a list")
            for ci in gi.get("cis", []):  # issue-11
                ci_ints = ("id", "serial", "slices", "profile_id")
                if not isinstance(ci, dict) or not all(_is_int(ci.get(x)) for x in ci_ints):
                    raise SimStateError(f"{where}.instances[{k}].cis: needs integer {ci_ints}")
    for n, proc in enumerate(state["processes"]):
        if not isinstance(proc, dict) or not _is_int(proc.get("pid")):
            raise SimStateError(f"{path}: processes[{n}]: needs an integer pid")
        mem = proc.get("used_memory_mb")  # issue-11
        if not isinstance(proc.get("uuid"), str) or not (mem is None or _is_int(mem)):
            raise SimStateError(f"{path}: processes[{n}]: needs a uuid and integer memory")
    state.setdefault("extensions", {})
    state.setdefault("privileged", True)
    if not isinstance(state.setdefault("holders", []), list):
        raise SimStateError(f"{path}: key 'holders' must be a list")
    for n, holder in enumerate(state["holders"]):
        if not isinstance(holder, dict) or not isinstance(holder.get("name"), str):
            raise SimStateError(f"{path}: holders[{n}]: needs a string name")
        if holder.get("gpu") is not None and not _is_int(holder.get("gpu")):
            raise SimStateError(f"{path}: holders[{n}].gpu: must be a GPU index or null")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_faults(text: str) -> list[dict[str, Any]]:
    """``"fn:N:ERROR,..."`` -> fault dicts; ``N`` is a 1-based call number or ``*``."""
    faults = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        parts = item.split(":")
        if len(parts) != 3 or not parts[0].startswith("nvml"):
            raise ValueError(f"bad fault {item!r}: expected nvmlFunction:N:ERROR_NAME")
        fn, n, err = parts
        if n != "*" and not (n.isdigit() and int(n) >= 1):
            raise ValueError(f"bad fault {item!r}: N must be a call number >= 1 or *")
        faults.append({"fn": fn, "n": n if n == "*" else int(n), "error": err.upper()})
    return faults


def _api(fn: F) -> F:
    """Count the call, apply injected faults, then run the simulated function."""
    name = fn.__name__

    mutating = name in MUTATING_CALLS

    @wraps(fn)
    def wrapper(self: SimNvml, *args: Any, **kwargs: Any) -> Any:
        self._before(name)
        if mutating and self.latency > 0:
            # Outside the state lock, so other processes keep reading the GPU meanwhile.
            self._sleep(self.latency)
        return fn(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class SimNvml:
    """The simulated NVML library; pass it where the ``pynvml`` module would go."""

    def __init__(
        self,
        nvml: Any,
        *,
        state_path: Path | None = None,
        state: dict[str, Any] | None = None,
        faults: list[dict[str, Any]] | None = None,
        latency: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``latency``: seconds per mutating call (None: ``$MISO_SIM_LATENCY``, default 0)."""
        self._n = nvml
        if latency is None:
            self.latency = parse_latency(os.environ.get(LATENCY_ENV))
        else:
            self.latency = parse_latency(repr(float(latency)))
        self._sleep = sleep
        self._store = _Store(state_path, state)
        self._faults: list[dict[str, Any]] = list(faults or [])
        env = os.environ.get("MISO_SIM_FAULTS")
        if env:
            self._faults.extend(parse_faults(env))
        self._env_holders = parse_holders(os.environ.get(HOLDERS_ENV) or "")
        self.calls: dict[str, int] = {}
        self.trace: list[str] | None = None  # set to [] to record every call's name, in order
        self._initialized = 0

    # ---------------------------------------------------------------- control
    @property
    def state_path(self) -> Path | None:
        return self._store.path

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of the current state (for tests and ``status``)."""
        return json.loads(json.dumps(self._store.read()))

    def inject_fault(self, fn: str, n: int | str, error: str) -> None:
        """Make the ``n``-th call of ``fn`` by this object (or every call: ``"*"``) fail."""
        self._faults.append({"fn": fn, "n": n, "error": error.upper()})

    def clear_faults(self) -> None:
        self._faults.clear()
        with self._store.mutate() as st:
            st["faults"] = []

    def reset_counts(self) -> None:
        self.calls.clear()

    def set_privileged(self, privileged: bool) -> None:
        with self._store.mutate() as st:
            st["privileged"] = bool(privileged)

    def set_lost(self, index: int, lost: bool = True) -> None:
        with self._store.mutate() as st:
            st["gpus"][index]["lost"] = bool(lost)

    def set_mode_change_needs_reset(self, index: int, needed: bool = True) -> None:
        """Make MIG mode changes on this GPU wait for a reset (as in many VMs)."""
        with self._store.mutate() as st:
            st["gpus"][index]["reset_required_for_mode"] = bool(needed)

    def add_holder(
        self, name: str, *, gpu: int | None = None, mig: bool = False, pid: int | None = None
    ) -> None:
        """A non-CUDA client of the driver: ``nvidia-persistenced``, DCGM's
        ``nv-hostengine``, ``nvsm``, the ``nvidia_drm`` module, an NVML client.

        It never shows in the process lists. On a GPU whose MIG mode switch needs a
        reset (A100, A30) it keeps the switch pending (``IN_USE``); with ``mig`` it
        holds a handle on every MIG device of the GPU, so destroying a compute
        instance is ``IN_USE`` while no process is listed.
        """
        with self._store.mutate() as st:
            st.setdefault("holders", []).append(
                {"name": name, "gpu": gpu, "mig": bool(mig), "pid": pid}
            )

    def remove_holder(self, name: str) -> None:
        with self._store.mutate() as st:
            st["holders"] = [h for h in st.get("holders", []) if h.get("name") != name]

    def holders(self, index: int) -> list[dict[str, Any]]:
        """The non-CUDA holders of GPU ``index`` (state file and ``$MISO_SIM_HOLDERS``)."""
        return self._holders_of(self._store.read(), index)

    def _holders_of(self, state: dict[str, Any], index: int) -> list[dict[str, Any]]:
        every = list(state.get("holders", [])) + self._env_holders
        return [dict(h) for h in every if h.get("gpu") is None or h.get("gpu") == index]

    def set_container(self, container: bool = True) -> None:
        """Answer as inside a container: parent-GPU memory queries with MIG on are refused."""
        with self._store.mutate() as st:
            st["container"] = bool(container)

    def set_legacy_mig_uuids(self, index: int, legacy: bool = True) -> None:
        """Report MIG device UUIDs as R450-era drivers did: ``MIG-GPU-<uuid>/<gi>/<ci>``."""
        with self._store.mutate() as st:
            st["gpus"][index]["legacy_mig_uuid"] = bool(legacy)

    def set_mig_memory(self, index: int, profile_id: int, memory_mb: int) -> None:
        """MIG devices of ``profile_id`` report ``memory_mb`` (older drivers: 20224 for a
        3g.20gb whose profile says 19968)."""
        with self._store.mutate() as st:
            st["gpus"][index].setdefault("mig_memory_mb", {})[str(profile_id)] = int(memory_mb)

    def set_identity(
        self, index: int, *, name: str | None = None, pci_device_id: int | None = None
    ) -> None:
        """Report another NVML name and/or PCI device id for GPU ``index`` (same table).

        For GPUs outside miso's tables (``"NVIDIA GH200 480GB"``, ``0x234210DE``),
        PCIe variants and pre-R470 names without the "NVIDIA " prefix.
        """
        with self._store.mutate() as st:
            gpu = st["gpus"][index]
            if name is not None:
                gpu["name"] = name
            if pci_device_id is not None:
                gpu["pci_device_id"] = int(pci_device_id)

    def reset_gpu(self, index: int) -> None:
        """A GPU reset (or reboot): the pending MIG mode takes effect, instances vanish."""
        with self._store.mutate() as st:
            gpu = st["gpus"][index]
            gpu["mig_current"] = gpu["mig_pending"]
            gpu["instances"] = []
            uuids = {gpu["uuid"]}
            st["processes"] = [p for p in st["processes"] if p["uuid"] not in uuids]

    def attach(self, uuid: str, pid: int, used_memory_mb: int | None = None) -> None:
        """A process opened a CUDA context on a GPU or MIG device (see :func:`attach_process`)."""
        with self._store.mutate() as st:
            _attach(st, uuid, pid, used_memory_mb, self._store.path)

    def detach(self, pid: int) -> None:
        with self._store.mutate() as st:
            st["processes"] = [p for p in st["processes"] if int(p["pid"]) != pid]

    # -------------------------------------------------------------- internals
    def _err(self, name: str) -> Exception:
        code = getattr(self._n, f"NVML_ERROR_{name}")
        return self._n.NVMLError(code)

    def _before(self, name: str) -> None:
        count = self.calls.get(name, 0) + 1
        self.calls[name] = count
        if self.trace is not None:
            self.trace.append(name)
        for fault in self._faults + list(self._store.read().get("faults", [])):
            if fault.get("fn") == name and (fault.get("n") == "*" or fault.get("n") == count):
                raise self._err(str(fault["error"]).upper())
        if name not in ("nvmlInit", "nvmlInitWithFlags") and not self._initialized:
            raise self._err("UNINITIALIZED")

    def _privileged(self, state: dict[str, Any]) -> bool:
        env = os.environ.get("MISO_SIM_PRIVILEGED")
        if env is not None and env.strip() != "":
            return env.strip().lower() not in ("0", "false", "no", "off")
        return bool(state.get("privileged", True))

    def _need_priv(self, state: dict[str, Any]) -> None:
        if not self._privileged(state):
            raise self._err("NO_PERMISSION")

    # handles
    def _handle(self, ctype: Any, kind: int, gpu: int, gi: int = 0, ci: int = 0, serial: int = 0):
        addr = (kind << 56) | (gpu << 48) | (gi << 40) | (ci << 32) | (serial & 0xFFFFFFFF)
        return ctypes.cast(ctypes.c_void_p(addr), ctype)

    def _decode(self, handle: Any) -> tuple[int, int, int, int, int]:
        try:
            addr = ctypes.cast(handle, ctypes.c_void_p).value or 0
        except (TypeError, ctypes.ArgumentError):
            raise self._err("INVALID_ARGUMENT") from None
        return (
            (addr >> 56) & 0xF,
            (addr >> 48) & 0xFF,
            (addr >> 40) & 0xFF,
            (addr >> 32) & 0xFF,
            (addr & 0xFFFFFFFF),
        )

    def _gpu_of(self, state: dict[str, Any], handle: Any, *, allow_mig: bool = False):
        kind, g, gi, ci, serial = self._decode(handle)
        if kind not in (_KIND_GPU, _KIND_MIG) or (kind == _KIND_MIG and not allow_mig):
            raise self._err("INVALID_ARGUMENT")
        if g >= len(state["gpus"]):
            raise self._err("INVALID_ARGUMENT")
        gpu = state["gpus"][g]
        if gpu.get("lost"):
            raise self._err("GPU_IS_LOST")
        if kind == _KIND_MIG:
            inst = self._find_gi(gpu, gi)
            cis = (
                [c for c in inst["cis"] if c["id"] == ci and c["serial"] == serial] if inst else []
            )
            if not cis:
                raise self._err("INVALID_ARGUMENT")
            return gpu, inst, cis[0]
        return gpu, None, None

    @staticmethod
    def _find_gi(gpu: dict[str, Any], gi_id: int) -> dict[str, Any] | None:
        for inst in gpu["instances"]:
            if inst["id"] == gi_id:
                return inst
        return None

    def _gi_of(self, state: dict[str, Any], handle: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        kind, g, gi, _ci, serial = self._decode(handle)
        if kind != _KIND_GI or g >= len(state["gpus"]):
            raise self._err("INVALID_ARGUMENT")
        gpu = state["gpus"][g]
        if gpu.get("lost"):
            raise self._err("GPU_IS_LOST")
        inst = self._find_gi(gpu, gi)
        if inst is None or inst["serial"] != serial:
            raise self._err("INVALID_ARGUMENT")
        return gpu, inst

    def _ci_of(self, state: dict[str, Any], handle: Any):
        kind, g, gi, ci, serial = self._decode(handle)
        if kind != _KIND_CI or g >= len(state["gpus"]):
            raise self._err("INVALID_ARGUMENT")
        gpu = state["gpus"][g]
        if gpu.get("lost"):
            raise self._err("GPU_IS_LOST")
        inst = self._find_gi(gpu, gi)
        cis = [c for c in inst["cis"] if c["id"] == ci and c["serial"] == serial] if inst else []
        if not cis:
            raise self._err("INVALID_ARGUMENT")
        return gpu, inst, cis[0]

    @staticmethod
    def _model(gpu: dict[str, Any]) -> GpuModel:
        return model(gpu["model"])

    def _profile_by_id(self, gpu: dict[str, Any], profile_id: int) -> SliceProfile:
        for p in self._model(gpu).profiles:
            if p.profile_id == profile_id:
                return p
        raise self._err("INVALID_ARGUMENT")

    def _need_mig(self, gpu: dict[str, Any]) -> None:
        if not gpu["mig_current"]:
            raise self._err("NOT_SUPPORTED")

    def _container(self, state: dict[str, Any]) -> bool:
        env = os.environ.get("MISO_SIM_CONTAINER")
        if env is not None and env.strip() != "":
            return env.strip().lower() not in ("0", "false", "no", "off")
        return bool(state.get("container", False))

    def _process_struct(self) -> Any:
        # nvidia-ml-py 12.535 has no c_nvmlProcessInfo_v3_t; its v2 struct has the same fields.
        for name in ("c_nvmlProcessInfo_v3_t", "c_nvmlProcessInfo_v2_t", "c_nvmlProcessInfo_t"):
            struct = getattr(self._n, name, None)
            if struct is not None:
                return struct
        raise AttributeError("pynvml has no process-info struct")

    def _mig_memory_mb(self, gpu: dict[str, Any], profile_id: int) -> int:
        override = (gpu.get("mig_memory_mb") or {}).get(str(profile_id))
        return (
            int(override)
            if override is not None
            else self._profile_by_id(gpu, profile_id).memory_mb
        )

    @staticmethod
    def _mig_uuid(gpu: dict[str, Any], inst: dict[str, Any], ci: dict[str, Any]) -> str:
        if gpu.get("legacy_mig_uuid"):
            return f"MIG-{gpu['uuid']}/{inst['id']}/{ci['id']}"
        return str(ci["uuid"])

    @staticmethod
    def _deref(ref: Any) -> Any:
        """The object behind ``byref(x)`` or ``pointer(x)``."""
        if ref is None:
            return None
        if hasattr(ref, "_obj"):
            return ref._obj
        if hasattr(ref, "contents"):
            return ref.contents
        return ref

    def _mig_devices(self, gpu: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        out = []
        for inst in sorted(gpu["instances"], key=lambda x: x["id"]):
            for ci in sorted(inst["cis"], key=lambda c: c["id"]):
                out.append((inst, ci))
        return out

    def _procs_on(self, state: dict[str, Any], uuids: set[str]) -> list[dict[str, Any]]:
        return [p for p in state["processes"] if p["uuid"] in uuids]

    # ------------------------------------------------------------ system calls
    @_api
    def nvmlInit(self) -> None:
        self._store.read()
        self._initialized += 1

    @_api
    def nvmlInitWithFlags(self, flags: int) -> None:
        self._store.read()
        self._initialized += 1

    @_api
    def nvmlShutdown(self) -> None:
        self._initialized = max(0, self._initialized - 1)

    @_api
    def nvmlSystemGetDriverVersion(self) -> str:
        return SIM_DRIVER_VERSION

    @_api
    def nvmlSystemGetNVMLVersion(self) -> str:
        return SIM_NVML_VERSION

    @_api
    def nvmlDeviceGetCount(self) -> int:
        return len(self._store.read()["gpus"])

    @_api
    def nvmlDeviceGetHandleByIndex(self, index: int):
        state = self._store.read()
        if not 0 <= index < len(state["gpus"]):
            raise self._err("INVALID_ARGUMENT")
        if state["gpus"][index].get("lost"):
            raise self._err("GPU_IS_LOST")
        return self._handle(self._n.c_nvmlDevice_t, _KIND_GPU, index)

    @_api
    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes):
        if isinstance(uuid, bytes):
            uuid = uuid.decode()
        state = self._store.read()
        for gpu in state["gpus"]:
            if gpu["uuid"] == uuid:
                if gpu.get("lost"):
                    raise self._err("GPU_IS_LOST")
                return self._handle(self._n.c_nvmlDevice_t, _KIND_GPU, gpu["index"])
            for inst in gpu["instances"]:
                for ci in inst["cis"]:
                    if uuid in (ci["uuid"], f"MIG-{gpu['uuid']}/{inst['id']}/{ci['id']}"):
                        return self._handle(
                            self._n.c_nvmlDevice_t,
                            _KIND_MIG,
                            gpu["index"],
                            inst["id"],
                            ci["id"],
                            ci["serial"],
                        )
        raise self._err("NOT_FOUND")

    # ------------------------------------------------------------ device info
    @_api
    def nvmlDeviceGetName(self, handle: Any) -> str:
        gpu, inst, _ci = self._gpu_of(self._store.read(), handle, allow_mig=True)
        name = str(gpu.get("name") or self._model(gpu).name)
        if inst is not None:
            name += " MIG " + self._profile_by_id(gpu, inst["profile_id"]).name
        return name

    @_api
    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        gpu, inst, ci = self._gpu_of(self._store.read(), handle, allow_mig=True)
        return self._mig_uuid(gpu, inst, ci) if ci is not None else gpu["uuid"]

    @_api
    def nvmlDeviceGetIndex(self, handle: Any) -> int:
        gpu, _inst, _ci = self._gpu_of(self._store.read(), handle)
        return int(gpu["index"])

    @_api
    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None):
        state = self._store.read()
        gpu, inst, ci = self._gpu_of(state, handle, allow_mig=True)
        if inst is not None:
            total_mb = self._mig_memory_mb(gpu, inst["profile_id"])
            uuids = {c["uuid"] for c in inst["cis"]}
        else:
            if gpu["mig_current"] and self._container(state):
                # In a container the parent of MIG devices answers no memory query.
                raise self._err("NO_PERMISSION")
            total_mb = self._model(gpu).memory_mb
            uuids = {gpu["uuid"]} | {c["uuid"] for i in gpu["instances"] for c in i["cis"]}
        used_mb = sum(int(p.get("used_memory_mb") or 0) for p in self._procs_on(state, uuids))
        mem = self._n.c_nvmlMemory_t()
        mem.total = total_mb * 1024 * 1024
        mem.used = min(used_mb, total_mb) * 1024 * 1024
        mem.free = mem.total - mem.used
        return mem

    @_api
    def nvmlDeviceGetAttributes_v2(self, handle: Any):
        """Slice counts, engines and memory of a MIG device: answered without privilege."""
        gpu, inst, ci = self._gpu_of(self._store.read(), handle, allow_mig=True)
        if inst is None or ci is None:
            # On a whole GPU the driver answers too, but miso asks MIG devices only.
            raise self._err("NOT_SUPPORTED")
        p = self._profile_by_id(gpu, inst["profile_id"])
        attrs = self._n.c_nvmlDeviceAttributes()
        per_slice = self._model(gpu).by_slices(1).multiprocessors
        full_ci = ci["slices"] == p.slices
        attrs.multiprocessorCount = p.multiprocessors if full_ci else per_slice * ci["slices"]
        attrs.sharedCopyEngineCount = p.copy_engines
        attrs.sharedDecoderCount = p.decoders
        attrs.sharedEncoderCount = p.encoders
        attrs.sharedJpegCount = p.jpegs
        attrs.sharedOfaCount = p.ofas
        attrs.gpuInstanceSliceCount = p.slices
        attrs.computeInstanceSliceCount = ci["slices"]
        attrs.memorySizeMB = self._mig_memory_mb(gpu, p.profile_id)
        return attrs

    nvmlDeviceGetAttributes = nvmlDeviceGetAttributes_v2

    @_api
    def nvmlDeviceGetPciInfo(self, handle: Any):
        gpu, _i, _c = self._gpu_of(self._store.read(), handle)
        info = self._n.nvmlPciInfo_t()
        info.domain = 0
        info.bus = 0x10 + int(gpu["index"])
        info.device = 0
        info.pciDeviceId = int(gpu.get("pci_device_id") or self._model(gpu).pci_device_id)
        info.pciSubSystemId = 0
        bus_id = f"00000000:{0x10 + int(gpu['index']):02X}:00.0".encode()
        info.busId = bus_id
        if hasattr(info, "busIdLegacy"):
            info.busIdLegacy = bus_id[4:]
        return info

    nvmlDeviceGetPciInfo_v3 = nvmlDeviceGetPciInfo

    # --------------------------------------------------------------- MIG mode
    @_api
    def nvmlDeviceGetMigMode(self, handle: Any) -> list[int]:
        gpu, _i, _c = self._gpu_of(self._store.read(), handle)
        return [int(bool(gpu["mig_current"])), int(bool(gpu["mig_pending"]))]

    @_api
    def nvmlDeviceSetMigMode(self, handle: Any, mode: int) -> int:
        with self._store.mutate() as state:
            gpu, _i, _c = self._gpu_of(state, handle)
            self._need_priv(state)
            if mode not in (0, 1):
                raise self._err("INVALID_ARGUMENT")
            want = bool(mode)
            if gpu["mig_current"] == want:
                gpu["mig_pending"] = want
                return int(self._n.NVML_SUCCESS)
            mig_uuids = {c["uuid"] for i in gpu["instances"] for c in i["cis"]}
            busy = self._procs_on(state, {gpu["uuid"]} | mig_uuids) or gpu["instances"]
            if self._model(gpu).mig_mode_needs_reset:
                # A100/A30: the switch waits for a GPU reset, which the driver attempts
                # itself only when no client at all (CUDA or not) holds the GPU.
                gpu["mig_pending"] = want
                if busy or self._holders_of(state, int(gpu["index"])):
                    return int(self._n.NVML_ERROR_IN_USE)
                if gpu.get("reset_required_for_mode"):
                    return int(self._n.NVML_ERROR_RESET_REQUIRED)
                gpu["mig_current"] = want
                return int(self._n.NVML_SUCCESS)
            # Hopper and later switch without a reset: daemons holding the driver do
            # not block it; running CUDA work (or existing instances) refuses it, and
            # nothing is left pending.
            if busy:
                return int(self._n.NVML_ERROR_IN_USE)
            if gpu.get("reset_required_for_mode"):  # e.g. some VMs
                gpu["mig_pending"] = want
                return int(self._n.NVML_ERROR_RESET_REQUIRED)
            gpu["mig_current"] = gpu["mig_pending"] = want
            return int(self._n.NVML_SUCCESS)

    # ---------------------------------------------------------------- profiles
    @_api
    def nvmlDeviceGetGpuInstanceProfileInfo(self, handle: Any, profile: int, version: int = 2):
        gpu, _i, _c = self._gpu_of(self._store.read(), handle)
        # The driver's index range, whatever the binding's NVML_GPU_INSTANCE_PROFILE_COUNT.
        if not 0 <= profile < PROFILE_INDEX_COUNT:
            raise self._err("INVALID_ARGUMENT")
        found = [p for p in self._model(gpu).profiles if p.index == profile]
        if not found:
            raise self._err("NOT_SUPPORTED")
        p = found[0]
        if version == 1:
            info = self._n.c_nvmlGpuInstanceProfileInfo_t()
        else:
            info = self._n.c_nvmlGpuInstanceProfileInfo_v2_t()
            info.name = f"MIG {p.name}".encode()
        info.id = p.profile_id
        info.isP2pSupported = 0
        info.sliceCount = p.slices
        info.instanceCount = p.instance_count
        info.multiprocessorCount = p.multiprocessors
        info.copyEngineCount = p.copy_engines
        info.decoderCount = p.decoders
        info.encoderCount = p.encoders
        info.jpegCount = p.jpegs
        info.ofaCount = p.ofas
        info.memorySizeMB = p.memory_mb
        return info

    nvmlDeviceGetGpuInstanceProfileInfoV = nvmlDeviceGetGpuInstanceProfileInfo

    @_api
    def nvmlDeviceGetGpuInstancePossiblePlacements(
        self, handle: Any, profileId: int, placementsRef: Any, countRef: Any
    ) -> int:
        state = self._store.read()
        gpu, _i, _c = self._gpu_of(state, handle)
        self._need_priv(state)
        # Answered with MIG off too: the placements are a property of the chip.
        p = self._profile_by_id(gpu, int(profileId))
        count = self._deref(countRef)
        if placementsRef is None:
            count.value = len(p.placements)
            return int(self._n.NVML_SUCCESS)
        if count.value < len(p.placements):
            count.value = len(p.placements)
            raise self._err("INSUFFICIENT_SIZE")
        arr = self._deref(placementsRef)
        for k, pl in enumerate(p.placements):
            arr[k].start = pl.start
            arr[k].size = pl.size
        count.value = len(p.placements)
        return int(self._n.NVML_SUCCESS)

    @_api
    def nvmlDeviceGetGpuInstanceRemainingCapacity(self, handle: Any, profileId: int) -> int:
        state = self._store.read()
        gpu, _i, _c = self._gpu_of(state, handle)
        self._need_priv(state)
        self._need_mig(gpu)
        p = self._profile_by_id(gpu, int(profileId))
        return sum(1 for pl in p.placements if self._fits(gpu, p, pl.start, pl.size) is None)

    # --------------------------------------------------------- GPU instances
    def _fits(self, gpu: dict[str, Any], p: SliceProfile, start: int, size: int) -> str | None:
        """Why ``p`` at ``start:size`` cannot be created now (an NVML error name), or None."""
        if (start, size) not in {(pl.start, pl.size) for pl in p.placements}:
            return "INVALID_ARGUMENT"
        m = self._model(gpu)
        used: set[int] = set()
        compute = 0
        same = 0
        for inst in gpu["instances"]:
            used.update(range(inst["start"], inst["start"] + inst["size"]))
            other = self._profile_by_id(gpu, inst["profile_id"])
            compute += other.slices
            if other.profile_id == p.profile_id:
                same += 1
        if used.intersection(range(start, start + size)):
            return "INSUFFICIENT_RESOURCES"
        if compute + p.slices > m.compute_slices or same >= p.instance_count:
            return "INSUFFICIENT_RESOURCES"
        return None

    @staticmethod
    def _gi_id(gpu: dict[str, Any], slots: int, start: int, size: int) -> int:
        """A GPU-instance id that is *not* the one the instance's position suggests.

        Drivers often number by position in a binary tree of memory slots (0 =
        whole GPU, 1-2 = halves, 3-6 = quarters, 7-14 = eighths), but not always:
        a 3g at 4:4 got id 2 on one GPU and id 1 on another. So the simulation
        draws the id from the free ones other than the tree position, seeded by the
        GPU and its creation counter: deterministic for a state, different between
        GPUs, and code that derives ids from placements fails here.
        """
        taken = {i["id"] for i in gpu["instances"]}
        tree = (slots // size - 1) + start // size if size and slots % size == 0 else -1
        pool = [k for k in range(max(2 * slots - 1, 8)) if k not in taken and k != tree]
        if not pool:
            pool = [k for k in range(2 * slots - 1, 255) if k not in taken]
        seed = f"{gpu.get('seed', gpu['uuid'])}/{gpu.get('serial', 0)}"
        return random.Random(seed).choice(pool)

    def _create_gi(self, handle: Any, profile_id: int, start: int | None, size: int | None):
        with self._store.mutate() as state:
            gpu, _i, _c = self._gpu_of(state, handle)
            self._need_priv(state)
            self._need_mig(gpu)
            p = self._profile_by_id(gpu, int(profile_id))
            if start is None or size is None:
                # Without a placement the driver picks one; miso never relies on its choice.
                free = [pl for pl in p.placements if self._fits(gpu, p, pl.start, pl.size) is None]
                if not free:
                    raise self._err("INSUFFICIENT_RESOURCES")
                start, size = free[-1].start, free[-1].size
            why = self._fits(gpu, p, start, size)
            if why:
                raise self._err(why)
            gpu["serial"] = int(gpu.get("serial", 0)) + 1
            gi_id = self._gi_id(gpu, self._model(gpu).memory_slots, start, size)
            inst = {
                "id": gi_id,
                "profile_id": p.profile_id,
                "start": start,
                "size": size,
                "serial": gpu["serial"],
                "cis": [],
            }
            gpu["instances"].append(inst)
            gpu["instances"].sort(key=lambda x: x["id"])
            return self._handle(
                self._n.c_nvmlGpuInstance_t, _KIND_GI, gpu["index"], gi_id, 0, inst["serial"]
            )

    @_api
    def nvmlDeviceCreateGpuInstanceWithPlacement(self, handle: Any, profileId: int, placement: Any):
        pl = self._deref(placement)
        return self._create_gi(handle, profileId, int(pl.start), int(pl.size))

    @_api
    def nvmlDeviceCreateGpuInstance(self, handle: Any, profileId: int):
        return self._create_gi(handle, profileId, None, None)

    @_api
    def nvmlDeviceGetGpuInstances(
        self, handle: Any, profileId: int, gpuInstancesRef: Any, countRef: Any
    ) -> int:
        state = self._store.read()
        gpu, _i, _c = self._gpu_of(state, handle)
        self._need_priv(state)
        self._need_mig(gpu)
        self._profile_by_id(gpu, int(profileId))
        found = [i for i in gpu["instances"] if i["profile_id"] == int(profileId)]
        count = self._deref(countRef)
        if gpuInstancesRef is None or count.value < len(found):
            count.value = len(found)
            if gpuInstancesRef is None:
                return int(self._n.NVML_SUCCESS)
            raise self._err("INSUFFICIENT_SIZE")
        arr = self._deref(gpuInstancesRef)
        for k, inst in enumerate(found):
            arr[k] = self._handle(
                self._n.c_nvmlGpuInstance_t, _KIND_GI, gpu["index"], inst["id"], 0, inst["serial"]
            )
        count.value = len(found)
        return int(self._n.NVML_SUCCESS)

    @_api
    def nvmlDeviceGetGpuInstanceById(self, handle: Any, gpuInstanceId: int):
        state = self._store.read()
        gpu, _i, _c = self._gpu_of(state, handle)
        self._need_priv(state)
        self._need_mig(gpu)
        inst = self._find_gi(gpu, int(gpuInstanceId))
        if inst is None:
            raise self._err("NOT_FOUND")
        return self._handle(
            self._n.c_nvmlGpuInstance_t, _KIND_GI, gpu["index"], inst["id"], 0, inst["serial"]
        )

    @_api
    def nvmlGpuInstanceGetInfo(self, gpuInstance: Any):
        gpu, inst = self._gi_of(self._store.read(), gpuInstance)
        info = self._n.c_nvmlGpuInstanceInfo_t()
        info.device = self._handle(self._n.c_nvmlDevice_t, _KIND_GPU, gpu["index"])
        info.id = inst["id"]
        info.profileId = inst["profile_id"]
        info.placement.start = inst["start"]
        info.placement.size = inst["size"]
        return info

    @_api
    def nvmlGpuInstanceDestroy(self, gpuInstance: Any) -> int:
        with self._store.mutate() as state:
            gpu, inst = self._gi_of(state, gpuInstance)
            self._need_priv(state)
            if inst["cis"]:
                raise self._err("IN_USE")
            gpu["instances"] = [i for i in gpu["instances"] if i is not inst]
            return int(self._n.NVML_SUCCESS)

    # ----------------------------------------------------- compute instances
    def _ci_profile(self, gpu: dict[str, Any], inst: dict[str, Any], index: int):
        gi_profile = self._profile_by_id(gpu, inst["profile_id"])
        sizes = _CI_SLICES.get(gi_profile.slices, (gi_profile.slices,))
        for s in sizes:
            if _CI_INDEX.get(s) == index:
                return gi_profile, s
        return gi_profile, None

    @_api
    def nvmlGpuInstanceGetComputeInstanceProfileInfo(
        self, gpuInstance: Any, profile: int, engProfile: int, version: int = 2
    ):
        gpu, inst = self._gi_of(self._store.read(), gpuInstance)
        if not 0 <= profile < int(self._n.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
            raise self._err("INVALID_ARGUMENT")
        if engProfile != int(self._n.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED):
            raise self._err("NOT_SUPPORTED")
        gi_profile, s = self._ci_profile(gpu, inst, profile)
        if s is None:
            raise self._err("NOT_SUPPORTED")
        if version == 1:
            info = self._n.c_nvmlComputeInstanceProfileInfo_t()
        else:
            info = self._n.c_nvmlComputeInstanceProfileInfo_v2_t()
            prefix = "" if s == gi_profile.slices else f"{s}c."
            info.name = f"MIG {prefix}{gi_profile.name}".encode()
        info.id = profile
        info.sliceCount = s
        info.instanceCount = gi_profile.slices // s
        per_slice = self._model(gpu).by_slices(1).multiprocessors
        info.multiprocessorCount = (
            gi_profile.multiprocessors if s == gi_profile.slices else (per_slice * s)
        )
        info.sharedCopyEngineCount = gi_profile.copy_engines
        info.sharedDecoderCount = gi_profile.decoders
        info.sharedEncoderCount = gi_profile.encoders
        info.sharedJpegCount = gi_profile.jpegs
        info.sharedOfaCount = gi_profile.ofas
        return info

    nvmlGpuInstanceGetComputeInstanceProfileInfoV = nvmlGpuInstanceGetComputeInstanceProfileInfo

    @_api
    def nvmlGpuInstanceCreateComputeInstance(self, gpuInstance: Any, profileId: int):
        with self._store.mutate() as state:
            gpu, inst = self._gi_of(state, gpuInstance)
            self._need_priv(state)
            gi_profile, s = self._ci_profile(gpu, inst, int(profileId))
            if s is None:
                raise self._err("INVALID_ARGUMENT")
            used = sum(c["slices"] for c in inst["cis"])
            if used + s > gi_profile.slices:
                raise self._err("INSUFFICIENT_RESOURCES")
            taken = {c["id"] for c in inst["cis"]}
            ci_id = 0
            while ci_id in taken:
                ci_id += 1
            gpu["serial"] = int(gpu.get("serial", 0)) + 1
            serial = gpu["serial"]
            mig_uuid = "MIG-" + str(
                uuidlib.uuid5(_NAMESPACE, f"{gpu['uuid']}/{inst['id']}/{ci_id}/{serial}")
            )
            inst["cis"].append(
                {
                    "id": ci_id,
                    "profile_id": int(profileId),
                    "slices": s,
                    "start": used,
                    "serial": serial,
                    "uuid": mig_uuid,
                }
            )
            return self._handle(
                self._n.c_nvmlComputeInstance_t, _KIND_CI, gpu["index"], inst["id"], ci_id, serial
            )

    @_api
    def nvmlGpuInstanceGetComputeInstances(
        self, gpuInstance: Any, profileId: int, computeInstancesRef: Any, countRef: Any
    ) -> int:
        state = self._store.read()
        gpu, inst = self._gi_of(state, gpuInstance)
        self._need_priv(state)
        _gp, s = self._ci_profile(gpu, inst, int(profileId))
        if s is None:
            raise self._err("NOT_SUPPORTED")
        found = [c for c in inst["cis"] if c["profile_id"] == int(profileId)]
        count = self._deref(countRef)
        if computeInstancesRef is None or count.value < len(found):
            count.value = len(found)
            if computeInstancesRef is None:
                return int(self._n.NVML_SUCCESS)
            raise self._err("INSUFFICIENT_SIZE")
        arr = self._deref(computeInstancesRef)
        for k, ci in enumerate(found):
            arr[k] = self._handle(
                self._n.c_nvmlComputeInstance_t,
                _KIND_CI,
                gpu["index"],
                inst["id"],
                ci["id"],
                ci["serial"],
            )
        count.value = len(found)
        return int(self._n.NVML_SUCCESS)

    @_api
    def nvmlComputeInstanceGetInfo(self, computeInstance: Any):
        gpu, inst, ci = self._ci_of(self._store.read(), computeInstance)
        info = self._n.c_nvmlComputeInstanceInfo_t()
        info.device = self._handle(self._n.c_nvmlDevice_t, _KIND_GPU, gpu["index"])
        info.gpuInstance = self._handle(
            self._n.c_nvmlGpuInstance_t, _KIND_GI, gpu["index"], inst["id"], 0, inst["serial"]
        )
        info.id = ci["id"]
        info.profileId = ci["profile_id"]
        info.placement.start = ci["start"]
        info.placement.size = ci["slices"]
        return info

    nvmlComputeInstanceGetInfo_v2 = nvmlComputeInstanceGetInfo

    @_api
    def nvmlComputeInstanceDestroy(self, computeInstance: Any) -> int:
        with self._store.mutate() as state:
            gpu, inst, ci = self._ci_of(state, computeInstance)
            self._need_priv(state)
            if self._procs_on(state, {ci["uuid"]}):
                raise self._err("IN_USE")
            if any(h.get("mig") for h in self._holders_of(state, int(gpu["index"]))):
                # A client holding a handle (DCGM, a leaked NVML handle): IN_USE, and no
                # process to show for it.
                raise self._err("IN_USE")
            inst["cis"] = [c for c in inst["cis"] if c is not ci]
            return int(self._n.NVML_SUCCESS)

    # ------------------------------------------------------------ MIG devices
    @_api
    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int:
        gpu, _i, _c = self._gpu_of(self._store.read(), handle)
        return self._model(gpu).max_mig_devices if gpu["mig_current"] else 0

    @_api
    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: int):
        gpu, _i, _c = self._gpu_of(self._store.read(), handle)
        self._need_mig(gpu)
        devices = self._mig_devices(gpu)
        if not 0 <= index < self._model(gpu).max_mig_devices:
            raise self._err("INVALID_ARGUMENT")
        if index >= len(devices):
            raise self._err("NOT_FOUND")
        inst, ci = devices[index]
        return self._handle(
            self._n.c_nvmlDevice_t, _KIND_MIG, gpu["index"], inst["id"], ci["id"], ci["serial"]
        )

    @_api
    def nvmlDeviceIsMigDeviceHandle(self, handle: Any):
        kind, *_rest = self._decode(handle)
        self._gpu_of(self._store.read(), handle, allow_mig=True)
        return ctypes.c_uint(1 if kind == _KIND_MIG else 0)

    @_api
    def nvmlDeviceGetGpuInstanceId(self, handle: Any) -> int:
        _gpu, inst, _ci = self._gpu_of(self._store.read(), handle, allow_mig=True)
        if inst is None:
            raise self._err("INVALID_ARGUMENT")
        return int(inst["id"])

    @_api
    def nvmlDeviceGetComputeInstanceId(self, handle: Any) -> int:
        _gpu, _inst, ci = self._gpu_of(self._store.read(), handle, allow_mig=True)
        if ci is None:
            raise self._err("INVALID_ARGUMENT")
        return int(ci["id"])

    @_api
    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: Any):
        gpu, inst, _ci = self._gpu_of(self._store.read(), handle, allow_mig=True)
        if inst is None:
            raise self._err("INVALID_ARGUMENT")
        return self._handle(self._n.c_nvmlDevice_t, _KIND_GPU, gpu["index"])

    # -------------------------------------------------------------- processes
    @_api
    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:
        state = self._store.read()
        gpu, inst, ci = self._gpu_of(state, handle, allow_mig=True)
        rows: list[tuple[dict[str, Any], int, int]] = []
        if ci is not None:
            rows = [(p, inst["id"], ci["id"]) for p in self._procs_on(state, {ci["uuid"]})]
        elif gpu["mig_current"]:
            # On a MIG-enabled parent the driver lists every instance's processes to root only.
            self._need_priv(state)
            for gi, c in self._mig_devices(gpu):
                rows += [(p, gi["id"], c["id"]) for p in self._procs_on(state, {c["uuid"]})]
        else:
            rows = [
                (p, _NOT_AVAILABLE_UINT, _NOT_AVAILABLE_UINT)
                for p in self._procs_on(state, {gpu["uuid"]})
            ]
        out = []
        for p, gi_id, ci_id in rows:
            info = self._process_struct()()
            info.pid = int(p["pid"])
            used = p.get("used_memory_mb")
            info.usedGpuMemory = int(used) * 1024 * 1024 if used is not None else 0xFFFFFFFFFFFFFFFF
            info.gpuInstanceId = gi_id
            info.computeInstanceId = ci_id
            obj = self._n.nvmlStructToFriendlyObject(info)
            if used is None:
                obj.usedGpuMemory = None
            out.append(obj)
        return out

    nvmlDeviceGetComputeRunningProcesses_v3 = nvmlDeviceGetComputeRunningProcesses
    nvmlDeviceGetComputeRunningProcesses_v2 = nvmlDeviceGetComputeRunningProcesses


# --------------------------------------------------------- the job side
def _attach(
    state: dict[str, Any], uuid: str, pid: int, used_memory_mb: int | None, path: Path | None
) -> None:
    info = _lookup(state, uuid)
    if info is None:
        where = f" in {path}" if path else ""
        raise KeyError(f"no simulated GPU or MIG device {uuid!r}{where}")
    if info["kind"] == "gpu":
        gpu = state["gpus"][info["gpu_index"]]
        if gpu["mig_current"]:
            raise KeyError(f"{uuid} has MIG enabled: a process must run on one of its MIG devices")
    state["processes"] = [p for p in state["processes"] if int(p["pid"]) != pid]
    state["processes"].append(
        {
            "pid": int(pid),
            "uuid": info["canonical_uuid"],
            "used_memory_mb": None if used_memory_mb is None else int(used_memory_mb),
        }
    )


def _lookup(state: dict[str, Any], uuid: str) -> dict[str, Any] | None:
    for gpu in state["gpus"]:
        m = model(gpu["model"])
        if gpu["uuid"] == uuid:
            return {
                "gpu_index": gpu["index"],
                "model_key": gpu["model"],
                "uuid": uuid,
                "kind": "gpu",
                "canonical_uuid": uuid,
                "profile": None,
                "slices": m.compute_slices,
                "memory_mb": m.memory_mb,
            }
        for inst in gpu["instances"]:
            for ci in inst["cis"]:
                if uuid in (ci["uuid"], f"MIG-{gpu['uuid']}/{inst['id']}/{ci['id']}"):
                    p = m.profile(inst["profile_id"])
                    return {
                        "gpu_index": gpu["index"],
                        "model_key": gpu["model"],
                        "uuid": uuid,
                        "kind": "mig",
                        "canonical_uuid": ci["uuid"],
                        "profile": p.name,
                        "slices": ci["slices"],
                        "memory_mb": p.memory_mb,
                        "gi_id": inst["id"],
                        "ci_id": ci["id"],
                    }
    return None


def lookup_device(state_path: Path, uuid: str) -> dict[str, Any]:
    """What a ``GPU-...`` or ``MIG-...`` UUID designates on the simulated GPUs.

    Keys: gpu_index, model_key, uuid, kind ("gpu" or "mig"), profile (e.g.
    ``"3g.20gb"``; None for a whole GPU), slices (7 for a whole A100), memory_mb.
    Raises KeyError when no device has that UUID.
    """
    info = _lookup(_Store(state_path, None).read(), uuid)
    if info is None:
        raise KeyError(f"no simulated GPU or MIG device {uuid!r} in {state_path}")
    return info


def attach_process(state_path: Path, uuid: str, pid: int, used_memory_mb: int | None) -> None:
    """Record that process ``pid`` opened a CUDA context on device ``uuid``."""
    store = _Store(state_path, None)
    with store.mutate() as state:
        _attach(state, uuid, pid, used_memory_mb, Path(state_path))


def detach_process(state_path: Path, pid: int) -> None:
    """Record that process ``pid`` released its device."""
    store = _Store(state_path, None)
    with store.mutate() as state:
        state["processes"] = [p for p in state["processes"] if int(p["pid"]) != int(pid)]


@contextlib.contextmanager
def edit_state(state_path: Path) -> Iterator[dict[str, Any]]:
    """Read-modify-write the state file under its lock (for ``extensions`` users)."""
    store = _Store(state_path, None)
    with store.mutate() as state:
        yield state
