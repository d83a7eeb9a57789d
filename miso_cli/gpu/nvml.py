"""The driver boundary: the only module that imports ``pynvml``.

:func:`open_driver` returns a :class:`Driver` over either the ``pynvml`` module
(the real driver) or a :class:`~miso_cli.gpu.sim.simnvml.SimNvml` built on it (a
simulated GPU). Both expose the same functions, so every line below runs the
same way on both. NVML is initialised lazily, under a lock, on first use.

Driver errors become :mod:`miso_cli.errors` exceptions with a hint a person can
act on: no driver (suggesting the simulated GPU), no permission ("MIG changes
need root"), GPU lost, GPU not MIG-capable. Everything else NVML raises becomes
:class:`NvmlCallFailed`, which names the call and the NVML error.

MIG facts this module relies on (see ``nvml.h``): profile *indices* are the
``NVML_GPU_INSTANCE_PROFILE_*`` constants and give, through the profile info,
the device's profile *ids*, which every other call takes; instances are created
at explicit placements; teardown destroys compute instances before their GPU
instance; a MIG mode change may reset the device, so handles are re-acquired by
UUID afterwards.
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import pynvml

from miso_cli.errors import MisoError, NoGpu, PermissionDenied, UsageError
from miso_cli.gpu.layouts import Layout, Slice, slice_of
from miso_cli.gpu.profiles import (
    PROFILE_INDEX_COUNT,
    VARIANT_OF_INDEX,
    GpuModel,
    Placement,
    SliceProfile,
    model_key_for,
)

T = TypeVar("T")

SIM_HINT = "use --gpu sim:a100-40gb to try miso on a simulated GPU"
ROOT_HINT = "run as root (e.g. sudo), or use --gpu sim:a100-40gb to try it on a simulated GPU"

# Full-size compute instance profile index for a GPU instance of N compute slices.
_FULL_CI_INDEX = {
    1: pynvml.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE,
    2: pynvml.NVML_COMPUTE_INSTANCE_PROFILE_2_SLICE,
    3: pynvml.NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE,
    4: pynvml.NVML_COMPUTE_INSTANCE_PROFILE_4_SLICE,
    6: pynvml.NVML_COMPUTE_INSTANCE_PROFILE_6_SLICE,
    7: pynvml.NVML_COMPUTE_INSTANCE_PROFILE_7_SLICE,
    8: pynvml.NVML_COMPUTE_INSTANCE_PROFILE_8_SLICE,
}

# Profile indices to ask the driver about: the binding's count may lag the driver's
# (nvidia-ml-py 12.535 stops at 0xA, before the RTX PRO Blackwell +gfx/+me.all/-me ones).
_PROFILE_INDICES = range(max(int(pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT), PROFILE_INDEX_COUNT))

# Raised by pynvml's unversioned wrappers when the driver lacks the versioned function
# (e.g. nvmlDeviceGetComputeRunningProcesses_v3 on an old driver). Not an NVMLError.
_LIBRARY_MISMATCH: tuple[type[BaseException], ...] = tuple(
    t for t in (getattr(pynvml, "NVMLLibraryMismatchError", None),) if isinstance(t, type)
)


class NvmlCallFailed(MisoError):
    """An NVML call failed for a reason without a more specific miso error."""

    code = "NVML_ERROR"

    def __init__(self, call: str, error: pynvml.NVMLError, where: str = "") -> None:
        self.call = call
        self.nvml_error = _error_name(error)
        self.nvml_code = int(getattr(error, "value", -1))
        at = f" on {where}" if where else ""
        super().__init__(
            f"{call}{at} failed: {self.nvml_error} ({error})",
            details={"call": call, "nvml_error": self.nvml_error},
        )


_ERROR_NAMES = {
    getattr(pynvml, n): n[len("NVML_ERROR_") :] for n in dir(pynvml) if n.startswith("NVML_ERROR_")
}


def _error_name(error: pynvml.NVMLError) -> str:
    return _ERROR_NAMES.get(getattr(error, "value", None), "UNKNOWN")


def _function_not_found() -> pynvml.NVMLError:
    return pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str | None
    uuid: str | None
    memory_total_mb: int | None
    mig_capable: bool
    mig_current: bool
    mig_pending: bool
    model_key: str | None
    pci_device_id: int | None = None
    # Whether switching MIG mode waits for a GPU reset (A100/A30) or not (Hopper+);
    # None for a GPU miso cannot place.
    mig_mode_needs_reset: bool | None = None
    # Values the driver would not give (field -> reason, e.g. "NO_PERMISSION"): the
    # field is None in the data, and the reason says why.
    missing: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["pci_device_id"] = None if self.pci_device_id is None else f"0x{self.pci_device_id:08X}"
        return out


@dataclass(frozen=True)
class Holder:
    """A non-CUDA client that may keep a GPU busy: it never shows in the process list."""

    name: str
    pid: int | None
    why: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MigInstance:
    """A GPU instance and its (single, full-size) compute instance, as miso uses them.

    ``slice`` is None where the caller may not read GPU instances (no privilege):
    the MIG device is then known by its UUID and ids only. ``ci_id``/``uuid`` are
    None for a GPU instance without a compute instance.
    """

    gi_id: int
    ci_id: int | None
    slice: Slice | None
    uuid: str | None
    memory_mb: int | None
    profile_id: int | None = None
    profile: str | None = None
    compute_instances: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "gi_id": self.gi_id,
            "ci_id": self.ci_id,
            "profile": self.profile,
            "profile_id": self.profile_id,
            "placement": (
                {"start": self.slice.start, "size": self.slice.size} if self.slice else None
            ),
            "uuid": self.uuid,
            "memory_mb": self.memory_mb,
            "compute_instances": self.compute_instances,
        }


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_memory_mb: int | None
    gi_id: int | None
    ci_id: int | None
    device_uuid: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModeChange:
    """The result of a MIG mode change request."""

    current: bool
    pending: bool
    needs_reset: bool  # the change waits for a GPU reset (A100/A30, or a VM)
    in_use: bool  # the driver answered IN_USE: something holds the GPU
    # The GPU switches MIG mode without a reset (Hopper and later).
    resetless: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def message(self, i: int, enabled: bool) -> str:
        """What to tell the user, following the GPU's rules; empty when the change is done."""
        want = "on" if enabled else "off"
        if self.current == enabled:
            return ""
        if self.resetless and not self.needs_reset:
            return (
                f"GPU {i}: MIG mode stays {'on' if self.current else 'off'}: the GPU is in use "
                f"(this GPU switches without a reset; stop the processes using it, then set "
                f"MIG {want} again)"
            )
        if self.in_use:
            return (
                f"GPU {i}: MIG {want} is pending: a client holds the GPU (CUDA processes, or "
                "nvidia-persistenced, DCGM/nv-hostengine, nvsm, the nvidia_drm module); stop "
                "them and reset the GPU (nvidia-smi -r) or reboot"
            )
        return f"GPU {i}: MIG {want} is pending until the GPU is reset (nvidia-smi -r) or rebooted"


def open_driver(spec: str | None, state_dir: Path | None) -> Driver:
    """A driver for ``spec``: None/``"nvml"`` = the real driver; ``"sim:MODEL[xN]"`` = simulated.

    A simulated GPU's state lives in ``state_dir/sim/<MODEL[xN]>.json`` and is
    created on first use.
    """
    if spec is None or spec.strip().lower() in ("", "nvml", "real"):
        return Driver(pynvml, simulated=False)
    if spec.strip().lower().startswith("sim:"):
        from miso_cli.gpu.sim import simnvml

        if state_dir is None:
            from miso_cli.runtime.state import default_state_dir

            state_dir = default_state_dir()
        try:
            key, count = simnvml.parse_spec(spec)
            path = simnvml.state_path_for(Path(state_dir), spec)
        except simnvml.SimSpecError as exc:
            raise UsageError(f"--gpu: {exc}", hint="e.g. --gpu sim:a100-40gb") from None
        try:
            lib = simnvml.SimNvml(pynvml, state_path=path, state=simnvml.new_state(key, count))
        except (simnvml.SimLatencyError, simnvml.SimHoldersError):
            raise  # a bad environment variable: its own message, not the state file's
        except (simnvml.SimStateError, ValueError) as exc:
            raise UsageError(
                str(exc), hint=f"delete {path} to start the simulated GPUs afresh"
            ) from None
        return Driver(lib, simulated=True, sim_state_path=path)
    raise UsageError(
        f"--gpu: unknown GPU spec {spec!r}",
        hint="use 'nvml' for the real driver or e.g. 'sim:a100-40gb' for a simulated GPU",
    )


class Driver:
    """MIG state and changes on the GPUs of one machine, through one NVML library."""

    def __init__(self, lib: Any, *, simulated: bool, sim_state_path: Path | None = None) -> None:
        self._lib = lib
        self.is_simulated = simulated
        self.sim_state_path = sim_state_path
        self._lock = threading.Lock()
        self._initialized = False
        self._handles: dict[int, Any] = {}
        self._uuids: dict[int, str] = {}
        self._models: dict[int, GpuModel] = {}

    @property
    def lib(self) -> Any:
        """The NVML library object (pynvml or a SimNvml); for tests and diagnostics."""
        return self._lib

    # ------------------------------------------------------------ plumbing
    @contextmanager
    def _nvml(self, call: str, where: str = "") -> Iterator[None]:
        """Translate NVML errors raised inside the block."""
        try:
            yield
        except pynvml.NVMLError as exc:
            raise self._translate(call, exc, where) from None
        except _LIBRARY_MISMATCH:
            # The binding's unversioned wrapper found no versioned function in the driver.
            raise NvmlCallFailed(call, _function_not_found(), where) from None

    def _translate(self, call: str, exc: pynvml.NVMLError, where: str) -> MisoError:
        at = f" ({where})" if where else ""
        if isinstance(exc, (pynvml.NVMLError_LibraryNotFound, pynvml.NVMLError_DriverNotLoaded)):
            return NoGpu("no NVIDIA driver found: NVML could not be loaded", hint=SIM_HINT)
        if isinstance(exc, pynvml.NVMLError_NoPermission):
            return PermissionDenied(
                f"MIG changes need root: {call}{at} was refused (NO_PERMISSION)", hint=ROOT_HINT
            )
        if isinstance(exc, pynvml.NVMLError_GpuIsLost):
            return NoGpu(
                f"the GPU is lost{at}: it stopped answering the driver",
                hint="check 'dmesg' for Xid errors; a GPU reset or a reboot is needed",
            )
        if isinstance(exc, pynvml.NVMLError_LibRmVersionMismatch):
            return NoGpu(
                "the NVML library and the kernel driver versions differ",
                hint="reboot after a driver upgrade",
            )
        return NvmlCallFailed(call, exc, where)

    def _call(self, call: str, *args: Any, where: str = "") -> Any:
        self._ensure_init()
        with self._nvml(call, where):
            return getattr(self._lib, call)(*args)

    def _ensure_init(self) -> None:
        if self._initialized:
            return
        with self._lock:
            if self._initialized:
                return
            try:
                self._lib.nvmlInit()
            except pynvml.NVMLError as exc:
                raise self._translate("nvmlInit", exc, "") from None
            except _LIBRARY_MISMATCH:
                raise NoGpu(
                    "the NVML library is older than the nvidia-ml-py binding expects",
                    hint="upgrade the NVIDIA driver, or install an older nvidia-ml-py",
                ) from None
            except OSError:  # a broken libnvidia-ml.so is as good as none
                raise NoGpu(
                    "no NVIDIA driver found: NVML could not be loaded", hint=SIM_HINT
                ) from None
            self._initialized = True

    def close(self) -> None:
        with self._lock:
            if self._initialized:
                try:
                    self._lib.nvmlShutdown()
                except pynvml.NVMLError:
                    pass
                self._initialized = False
            self._handles.clear()

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _handle(self, i: int) -> Any:
        if i in self._handles:
            return self._handles[i]
        count = self.device_count()
        if not 0 <= i < count:
            raise UsageError(
                f"--gpu-index {i}: no such GPU (this machine has {count})",
                hint="see 'miso status'",
            )
        h = self._call("nvmlDeviceGetHandleByIndex", i, where=f"GPU {i}")
        self._handles[i] = h
        return h

    def _reacquire(self, i: int) -> Any:
        """A fresh handle after a MIG mode change (which may reset the device)."""
        self._handles.pop(i, None)
        uuid = self._uuids.get(i)
        if uuid:
            try:
                h = self._call("nvmlDeviceGetHandleByUUID", uuid, where=f"GPU {i}")
                self._handles[i] = h
                return h
            except NvmlCallFailed:
                pass
        return self._handle(i)

    # ------------------------------------------------------------- queries
    def device_count(self) -> int:
        return int(self._call("nvmlDeviceGetCount"))

    def driver_version(self) -> str | None:
        try:
            return _text(self._call("nvmlSystemGetDriverVersion"))
        except NvmlCallFailed:
            return None

    def nvml_version(self) -> str | None:
        try:
            return _text(self._call("nvmlSystemGetNVMLVersion"))
        except NvmlCallFailed:
            return None

    def gpu(self, i: int) -> GpuInfo:
        """What the driver tells about GPU ``i``; a value it refuses is None, with a reason.

        In a container, the parent of MIG devices refuses even its memory size
        (``NO_PERMISSION``): that becomes ``memory_total_mb=None`` and
        ``missing["memory_total_mb"]``, not an error.
        """
        h = self._handle(i)
        where = f"GPU {i}"
        missing: dict[str, str] = {}

        def ask(key: str, call: str) -> Any:
            value, why = self._maybe(lambda: self._call(call, h, where=where))
            if why:
                missing[key] = why
            return value

        name = _text(ask("name", "nvmlDeviceGetName"))
        uuid = _text(ask("uuid", "nvmlDeviceGetUUID"))
        if uuid:
            self._uuids[i] = uuid
        mem = ask("memory_total_mb", "nvmlDeviceGetMemoryInfo")
        total = int(mem.total) // (1024 * 1024) if mem is not None else None
        pci = ask("pci_device_id", "nvmlDeviceGetPciInfo")
        pci_id = int(pci.pciDeviceId) if pci is not None else None
        capable, current, pending = True, False, False
        try:
            current_mode, pending_mode = self._call("nvmlDeviceGetMigMode", h, where=where)
            current = current_mode == pynvml.NVML_DEVICE_MIG_ENABLE
            pending = pending_mode == pynvml.NVML_DEVICE_MIG_ENABLE
        except NvmlCallFailed as exc:
            if exc.nvml_error not in ("NOT_SUPPORTED", "FUNCTION_NOT_FOUND"):
                raise
            capable = False
        key = model_key_for(name, pci_device_id=pci_id)
        needs_reset = _needs_reset(key, name)
        return GpuInfo(
            i, name, uuid, total, capable, current, pending, key, pci_id, needs_reset, missing
        )

    def _optional(self, fn: Callable[[], T]) -> T | None:
        """A value that may be unsupported or refused: None instead of an error."""
        return self._maybe(fn)[0]

    def _maybe(self, fn: Callable[[], T]) -> tuple[T | None, str | None]:
        """A value the driver may refuse: (value, None), or (None, the NVML error name)."""
        try:
            return fn(), None
        except PermissionDenied:
            return None, "NO_PERMISSION"
        except NvmlCallFailed as exc:
            if exc.nvml_error in (
                "NOT_SUPPORTED",
                "FUNCTION_NOT_FOUND",
                "UNKNOWN",
                "NO_PERMISSION",
                "INSUFFICIENT_SIZE",
            ):
                return None, exc.nvml_error
            raise

    def gpu_model(self, i: int) -> GpuModel:
        """The GPU's MIG profiles and placements, as its driver reports them."""
        if i in self._models:
            return self._models[i]
        from miso_cli.gpu.profiles import MODELS

        info = self.gpu(i)
        if not info.mig_capable:
            raise NoGpu(f"GPU {i} ({info.name}) is not MIG-capable", hint=SIM_HINT)
        h = self._handle(i)
        known = MODELS.get(info.model_key) if info.model_key else None
        profiles: list[SliceProfile] = []
        refused = False  # placements refused without privilege: inferred below
        for index in _PROFILE_INDICES:
            try:
                pinfo = self._call(
                    "nvmlDeviceGetGpuInstanceProfileInfo", h, index, where=f"GPU {i}"
                )
            except NvmlCallFailed as exc:
                if exc.nvml_error in ("NOT_SUPPORTED", "INVALID_ARGUMENT"):
                    continue
                raise
            name = _text(getattr(pinfo, "name", b"")) or ""
            name = (
                name.removeprefix("MIG ").strip() or f"{pinfo.sliceCount}g.{pinfo.memorySizeMB}mb"
            )
            placements: tuple[Placement, ...] = ()
            try:
                placements = self._placements(h, int(pinfo.id), i, info)
            except PermissionDenied:
                if known is not None and _has_profile(known, int(pinfo.id)):
                    placements = known.profile(int(pinfo.id)).placements
                else:
                    refused = True
            profiles.append(
                SliceProfile(
                    name=name,
                    profile_id=int(pinfo.id),
                    index=index,
                    slices=int(pinfo.sliceCount),
                    memory_mb=int(pinfo.memorySizeMB),
                    instance_count=int(pinfo.instanceCount),
                    multiprocessors=int(pinfo.multiprocessorCount),
                    copy_engines=int(pinfo.copyEngineCount),
                    decoders=int(pinfo.decoderCount),
                    encoders=int(pinfo.encoderCount),
                    jpegs=int(pinfo.jpegCount),
                    ofas=int(pinfo.ofaCount),
                    placements=placements,
                    variant=_variant(index),
                )
            )
        if not profiles:
            raise NoGpu(f"GPU {i} ({info.name}) reports no MIG profiles", hint=SIM_HINT)
        if refused:
            # A GPU without a table, read without root: the driver gives profiles but
            # not placements. Infer them from memory fractions and instance counts.
            profiles = list(infer_placements(profiles))
        compute = max(p.slices for p in profiles)
        slots = max((pl.start + pl.size for p in profiles for pl in p.placements), default=0)
        max_dev = self._optional(
            lambda: self._call("nvmlDeviceGetMaxMigDeviceCount", h, where=f"GPU {i}")
        )
        gm = GpuModel(
            key=info.model_key or _slug(info.name or f"gpu{i}"),
            name=info.name or "unknown",
            memory_mb=info.memory_total_mb
            or (known.memory_mb if known else max(p.memory_mb for p in profiles)),
            compute_slices=compute,
            memory_slots=slots,
            max_mig_devices=int(max_dev) if max_dev else compute,
            multiprocessors=known.multiprocessors
            if known
            else max(p.multiprocessors for p in profiles),
            pci_device_id=info.pci_device_id or (known.pci_device_id if known else 0),
            profiles=tuple(profiles),
            architecture=known.architecture if known else _architecture(info.name),
        )
        self._models[i] = gm
        return gm

    def _placements(self, h: Any, profile_id: int, i: int, info: GpuInfo) -> tuple[Placement, ...]:
        # Count first (NULL array), then fill an array of that size.
        count = ctypes.c_uint(0)
        call = "nvmlDeviceGetGpuInstancePossiblePlacements"
        try:
            self._call(call, h, profile_id, None, ctypes.byref(count), where=f"GPU {i}")
        except NvmlCallFailed as exc:
            # Drivers answer with MIG off too; should one not, a known table stands in
            # (the placements are a property of the chip).
            from miso_cli.gpu.profiles import MODELS

            known = MODELS.get(info.model_key or "")
            if exc.nvml_error != "NOT_SUPPORTED" or known is None:
                raise
            if not _has_profile(known, profile_id):
                raise
            return known.profile(profile_id).placements
        arr = (pynvml.c_nvmlGpuInstancePlacement_t * max(1, count.value))()
        self._call(call, h, profile_id, arr, ctypes.byref(count), where=f"GPU {i}")
        return tuple(Placement(int(arr[k].start), int(arr[k].size)) for k in range(count.value))

    def instances(self, i: int) -> list[MigInstance]:
        """The GPU's instances (empty with MIG off), ordered by placement."""
        info = self.gpu(i)
        if not info.mig_capable or not info.mig_current:
            return []
        gm = self.gpu_model(i)
        h = self._handle(i)
        devices = self._mig_devices(i)
        try:
            out = self._instances_privileged(i, h, gm, devices)
        except PermissionDenied:
            # Without privilege only MIG devices are visible: ids, UUIDs, memory and
            # (nvmlDeviceGetAttributes_v2) slice counts and engines.
            out = []
            for (gi, ci), dev in sorted(devices.items()):
                prof = profile_of_mig_device(gm, dev.memory_mb, dev.attributes)
                out.append(
                    MigInstance(
                        gi,
                        ci,
                        None,
                        dev.uuid,
                        dev.memory_mb,
                        prof.profile_id if prof else None,
                        prof.name if prof else None,
                    )
                )
            return out
        out.sort(key=lambda m: (m.slice.start if m.slice else -1, m.gi_id))
        return out

    def _instances_privileged(
        self, i: int, h: Any, gm: GpuModel, devices: dict[tuple[int, int], MigDevice]
    ) -> list[MigInstance]:
        where = f"GPU {i}"
        out: list[MigInstance] = []
        for prof in gm.profiles:
            arr = (pynvml.c_nvmlGpuInstance_t * max(1, prof.instance_count))()
            count = ctypes.c_uint(prof.instance_count)
            self._call(
                "nvmlDeviceGetGpuInstances",
                h,
                prof.profile_id,
                arr,
                ctypes.byref(count),
                where=where,
            )
            for k in range(count.value):
                gi = arr[k]
                ginfo = self._call("nvmlGpuInstanceGetInfo", gi, where=where)
                sl = slice_of(
                    prof, Placement(int(ginfo.placement.start), int(ginfo.placement.size))
                )
                cis = self._compute_instances(gi, prof, where)
                gi_id = int(ginfo.id)
                if not cis:
                    out.append(
                        MigInstance(
                            gi_id, None, sl, None, prof.memory_mb, prof.profile_id, prof.name, 0
                        )
                    )
                    continue
                ci_id = min(cis)
                dev = devices.get((gi_id, ci_id))
                uuid, mem = (dev.uuid, dev.memory_mb) if dev else (None, None)
                out.append(
                    MigInstance(
                        gi_id,
                        ci_id,
                        sl,
                        uuid,
                        mem or prof.memory_mb,
                        prof.profile_id,
                        prof.name,
                        len(cis),
                    )
                )
        return out

    def _each_compute_instance(self, gi: Any, indices: Iterable[int], where: str) -> Iterator[Any]:
        """Handles of the compute instances of ``gi``, for the given CI profile indices."""
        for index in indices:
            try:
                cinfo = self._call(
                    "nvmlGpuInstanceGetComputeInstanceProfileInfo",
                    gi,
                    index,
                    pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
                    where=where,
                )
            except NvmlCallFailed as exc:
                if exc.nvml_error in ("NOT_SUPPORTED", "INVALID_ARGUMENT"):
                    continue
                raise
            n = max(1, int(cinfo.instanceCount))
            arr = (pynvml.c_nvmlComputeInstance_t * n)()
            count = ctypes.c_uint(n)
            self._call(
                "nvmlGpuInstanceGetComputeInstances",
                gi,
                int(cinfo.id),
                arr,
                ctypes.byref(count),
                where=where,
            )
            for k in range(count.value):
                yield arr[k]

    def _compute_instances(self, gi: Any, prof: SliceProfile, where: str) -> list[int]:
        # Only compute-instance sizes that fit in this GPU instance can exist in it.
        indices = sorted(v for s, v in _FULL_CI_INDEX.items() if s <= prof.slices)
        return sorted(
            int(self._call("nvmlComputeInstanceGetInfo", ci, where=where).id)
            for ci in self._each_compute_instance(gi, indices, where)
        )

    def _mig_devices(self, i: int) -> dict[tuple[int, int], MigDevice]:
        """(gi, ci) -> the MIG device, from the unprivileged MIG-device calls."""
        h = self._handle(i)
        where = f"GPU {i}"
        out: dict[tuple[int, int], MigDevice] = {}
        n = int(self._call("nvmlDeviceGetMaxMigDeviceCount", h, where=where) or 0)
        for k in range(n):
            try:
                mh = self._call("nvmlDeviceGetMigDeviceHandleByIndex", h, k, where=where)
            except NvmlCallFailed as exc:
                if exc.nvml_error in ("NOT_FOUND", "INVALID_ARGUMENT"):
                    continue
                raise
            gi = int(self._call("nvmlDeviceGetGpuInstanceId", mh, where=where))
            ci = int(self._call("nvmlDeviceGetComputeInstanceId", mh, where=where))
            uuid = _text(self._call("nvmlDeviceGetUUID", mh, where=where)) or ""
            mem, _why = self._maybe(
                lambda mh=mh: self._call("nvmlDeviceGetMemoryInfo", mh, where=where)
            )
            attrs, _why = self._maybe(
                lambda mh=mh: self._call("nvmlDeviceGetAttributes_v2", mh, where=where)
            )
            out[(gi, ci)] = MigDevice(
                gi,
                ci,
                uuid,
                int(mem.total) // (1024 * 1024) if mem is not None else None,
                _attributes(attrs),
                mh,
            )
        return out

    def current_layout(self, i: int) -> Layout:
        insts = self.instances(i)
        if any(m.slice is None for m in insts):
            raise PermissionDenied(
                f"reading GPU {i}'s MIG layout needs root (GPU instances are privileged)",
                hint=ROOT_HINT,
            )
        return Layout.of(m.slice for m in insts if m.slice is not None)

    def processes(self, i: int) -> list[GpuProcess]:
        """Compute processes on the GPU, per MIG device where MIG is on."""
        info = self.gpu(i)
        h = self._handle(i)
        where = f"GPU {i}"
        out: list[GpuProcess] = []
        if info.mig_current:
            # Per MIG device: works without privilege, unlike the parent handle.
            # The handles from the enumeration, not re-looked-up by UUID: R450-era drivers
            # name MIG devices MIG-GPU-<uuid>/<gi>/<ci>, which a lookup may not take.
            for (gi, ci), dev in sorted(self._mig_devices(i).items()):
                for p in self._running(dev.handle, where):
                    out.append(GpuProcess(int(p.pid), _mib(p.usedGpuMemory), gi, ci, dev.uuid))
            return out
        for p in self._running(h, where):
            out.append(GpuProcess(int(p.pid), _mib(p.usedGpuMemory), None, None, info.uuid))
        return out

    def _running(self, h: Any, where: str) -> list[Any]:
        """Compute processes on a handle, through the newest call the driver has."""
        try:
            return list(self._call("nvmlDeviceGetComputeRunningProcesses", h, where=where))
        except NvmlCallFailed as exc:
            if exc.nvml_error != "FUNCTION_NOT_FOUND":
                raise
        # A driver without the _v3 call (pynvml raised NVMLLibraryMismatchError).
        return list(self._call("nvmlDeviceGetComputeRunningProcesses_v2", h, where=where))

    # ------------------------------------------------------------- capture
    def capture(self) -> dict[str, Any]:
        """Every GPU-instance profile of every GPU and its placements, as the driver says.

        Read-only (the format ``tests/data/real/*.json`` holds): per profile index
        the profile info, and the placements (``None`` where refused, e.g. without
        root, with the NVML error in ``error``). Nothing here falls back to miso's
        tables, so the result can be held against them.
        """
        gpus = []
        for i in range(self.device_count()):
            info = self.gpu(i)
            h = self._handle(i)
            rows: list[dict[str, Any]] = []
            for index in _PROFILE_INDICES:
                row: dict[str, Any] = {"profile": index, "error": None}
                try:
                    p = self._call("nvmlDeviceGetGpuInstanceProfileInfo", h, index)
                except MisoError as exc:
                    row["error"] = _error_of(exc)
                    rows.append(row)
                    continue
                name = _text(getattr(p, "name", None))
                row.update(
                    id=int(p.id),
                    name=name.removeprefix("MIG ").strip() if name else None,
                    slice_count=int(p.sliceCount),
                    instance_count=int(p.instanceCount),
                    memory_mib=int(p.memorySizeMB),
                    multiprocessor_count=int(p.multiprocessorCount),
                    copy_engine_count=int(p.copyEngineCount),
                    decoder_count=int(p.decoderCount),
                    encoder_count=int(p.encoderCount),
                    jpeg_count=int(p.jpegCount),
                    ofa_count=int(p.ofaCount),
                    placements=None,
                )
                try:
                    count = ctypes.c_uint(0)
                    call = "nvmlDeviceGetGpuInstancePossiblePlacements"
                    self._call(call, h, int(p.id), None, ctypes.byref(count))
                    arr = (pynvml.c_nvmlGpuInstancePlacement_t * max(1, count.value))()
                    self._call(call, h, int(p.id), arr, ctypes.byref(count))
                    row["placements"] = [
                        {"start": int(arr[k].start), "size": int(arr[k].size)}
                        for k in range(count.value)
                    ]
                except MisoError as exc:
                    row["error"] = _error_of(exc)
                rows.append(row)
            pci = info.pci_device_id
            gpus.append(
                {
                    "name": info.name,
                    "pci_device_id": None if pci is None else f"0x{pci >> 16:04X}",
                    "memory_total_mib": info.memory_total_mb,
                    "mig_mode": [int(info.mig_current), int(info.mig_pending)],
                    "gi_profiles": rows,
                }
            )
        try:
            from importlib.metadata import version

            binding: str | None = version("nvidia-ml-py")
        except Exception:  # an unpackaged pynvml: the capture is still whole without it
            binding = None
        return {
            "driver": self.driver_version(),
            "nvml_version": self.nvml_version(),
            "binding": binding,
            "simulated": self.is_simulated,
            "gpus": gpus,
        }

    # ------------------------------------------------------------- holders
    def likely_holders(self, i: int) -> list[Holder]:
        """Non-CUDA clients that may hold GPU ``i`` (they never show as processes).

        They keep an A100's MIG mode pending and, holding a MIG device handle, make
        a destroy fail with ``IN_USE`` while no process is listed. On the real
        driver: a scan of running processes and loaded kernel modules (see
        :func:`scan_holders`); on a simulated GPU: the holders it simulates.
        """
        if self.is_simulated and hasattr(self._lib, "holders"):
            return [
                Holder(str(h["name"]), h.get("pid"), _HOLDER_WHY.get(_base(h["name"]), "holds it"))
                for h in self._lib.holders(i)
            ]
        return scan_holders()

    # ------------------------------------------------------------- changes
    def set_mig_mode(self, i: int, enabled: bool) -> ModeChange:
        info = self.gpu(i)
        if not info.mig_capable:
            raise NoGpu(f"GPU {i} ({info.name}) is not MIG-capable", hint=SIM_HINT)
        h = self._handle(i)
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if enabled else pynvml.NVML_DEVICE_MIG_DISABLE
        status = int(self._call("nvmlDeviceSetMigMode", h, mode, where=f"GPU {i}"))
        self._reacquire(i)
        self._models.pop(i, None)
        after = self.gpu(i)
        in_use = status == pynvml.NVML_ERROR_IN_USE
        resetless = after.mig_mode_needs_reset is False
        # A GPU that switches without a reset waits for one only when the driver says so
        # (RESET_REQUIRED, e.g. in some VMs) and leaves the new mode pending.
        needs_reset = after.mig_current != enabled and (
            not resetless or status == pynvml.NVML_ERROR_RESET_REQUIRED
        )
        return ModeChange(after.mig_current, after.mig_pending, needs_reset, in_use, resetless)

    def create_instance(self, i: int, profile: SliceProfile, placement: Placement) -> MigInstance:
        """A GPU instance at ``placement`` with one full-size compute instance.

        If the compute instance cannot be created, the GPU instance is destroyed
        again, so no half-made instance is left behind.
        """
        h = self._handle(i)
        where = f"GPU {i}, {profile.name}@{placement.start}"
        pl = pynvml.c_nvmlGpuInstancePlacement_t(placement.start, placement.size)
        gi = self._call(
            "nvmlDeviceCreateGpuInstanceWithPlacement",
            h,
            profile.profile_id,
            ctypes.byref(pl),
            where=where,
        )
        try:
            gi_id = int(self._call("nvmlGpuInstanceGetInfo", gi, where=where).id)
            ci_index = _FULL_CI_INDEX[profile.slices]
            cinfo = self._call(
                "nvmlGpuInstanceGetComputeInstanceProfileInfo",
                gi,
                ci_index,
                pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
                where=where,
            )
            ci = self._call("nvmlGpuInstanceCreateComputeInstance", gi, int(cinfo.id), where=where)
            ci_id = int(self._call("nvmlComputeInstanceGetInfo", ci, where=where).id)
        except (MisoError, KeyError):
            try:
                self._call("nvmlGpuInstanceDestroy", gi, where=where)
            except MisoError:
                pass  # the caller's rollback re-reads the GPU and sees what is left
            raise
        dev = self._mig_devices(i).get((gi_id, ci_id))
        uuid, mem = (dev.uuid, dev.memory_mb) if dev else (None, None)
        return MigInstance(
            gi_id,
            ci_id,
            slice_of(profile, placement),
            uuid,
            mem or profile.memory_mb,
            profile.profile_id,
            profile.name,
            1,
        )

    def destroy_instance(self, i: int, gi_id: int) -> None:
        """Destroy a GPU instance: its compute instances first, then itself."""
        h = self._handle(i)
        where = f"GPU {i}, GPU instance {gi_id}"
        gi = self._call("nvmlDeviceGetGpuInstanceById", h, gi_id, where=where)
        # Compute instances first: the driver refuses to destroy a GPU instance that has any.
        # Collected before destroying, so the listing never changes under the iteration.
        indices = range(int(pynvml.NVML_COMPUTE_INSTANCE_PROFILE_COUNT))
        for ci in list(self._each_compute_instance(gi, indices, where)):
            self._call("nvmlComputeInstanceDestroy", ci, where=where)
        self._call("nvmlGpuInstanceDestroy", gi, where=where)


def _variant(index: int) -> str:
    if index in VARIANT_OF_INDEX:
        return VARIANT_OF_INDEX[index]
    standard = {
        pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE,
        pynvml.NVML_GPU_INSTANCE_PROFILE_2_SLICE,
        pynvml.NVML_GPU_INSTANCE_PROFILE_3_SLICE,
        pynvml.NVML_GPU_INSTANCE_PROFILE_4_SLICE,
        pynvml.NVML_GPU_INSTANCE_PROFILE_6_SLICE,
        pynvml.NVML_GPU_INSTANCE_PROFILE_7_SLICE,
        pynvml.NVML_GPU_INSTANCE_PROFILE_8_SLICE,
    }
    return "standard" if index in standard else "other"


@dataclass(frozen=True)
class MigAttributes:
    """``nvmlDeviceGetAttributes_v2`` of a MIG device: answered without privilege."""

    gi_slices: int
    ci_slices: int
    memory_mb: int
    multiprocessors: int
    decoders: int
    encoders: int
    jpegs: int
    ofas: int


@dataclass(frozen=True)
class MigDevice:
    """A MIG device as the unprivileged calls see it."""

    gi_id: int
    ci_id: int
    uuid: str
    memory_mb: int | None
    attributes: MigAttributes | None
    handle: Any = None


def _attributes(attrs: Any) -> MigAttributes | None:
    if attrs is None:
        return None
    return MigAttributes(
        int(attrs.gpuInstanceSliceCount),
        int(attrs.computeInstanceSliceCount),
        int(attrs.memorySizeMB),
        int(attrs.multiprocessorCount),
        int(attrs.sharedDecoderCount),
        int(attrs.sharedEncoderCount),
        int(attrs.sharedJpegCount),
        int(attrs.sharedOfaCount),
    )


def profile_of_mig_device(
    gm: GpuModel, memory_mb: int | None, attrs: MigAttributes | None = None
) -> SliceProfile | None:
    """The GPU-instance profile of a MIG device, from what an unprivileged caller sees.

    With the device's attributes (slice count, engines, memory), the profile with
    that slice count whose memory is nearest, engines matching best, standard
    variants first: a 1g.20gb (1 slice) is never taken for the 2g.20gb of equal
    memory, nor a 4g.40gb for the 3g.40gb. Memory alone (attributes refused) only
    names a profile whose memory matches within 2% and is the one of that size,
    else None: older drivers report e.g. 20224 MiB for a profile of 19968.
    """
    if attrs is not None:
        same = [p for p in gm.profiles if p.slices == attrs.gi_slices]
        if not same:
            return None
        mem = attrs.memory_mb or memory_mb or 0

        def score(p: SliceProfile) -> tuple[float, int, int]:
            engines = (p.decoders, p.encoders, p.jpegs, p.ofas)
            seen = (attrs.decoders, attrs.encoders, attrs.jpegs, attrs.ofas)
            mismatch = sum(1 for a, b in zip(engines, seen, strict=True) if a != b)
            return (abs(p.memory_mb - mem) / max(p.memory_mb, 1), mismatch, p.variant != "standard")

        best = min(same, key=score)
        return best if abs(best.memory_mb - mem) <= 0.1 * best.memory_mb else None
    if memory_mb is None:
        return None
    near = [p for p in gm.profiles if abs(p.memory_mb - memory_mb) <= 0.02 * p.memory_mb]
    if len({p.slices for p in near}) != 1:
        return None  # no profile, or several sizes of that memory (1g.20gb/2g.20gb, 3g/4g)
    return min(near, key=lambda p: (p.variant != "standard", abs(p.memory_mb - memory_mb)))


def infer_placements(profiles: Iterable[SliceProfile]) -> tuple[SliceProfile, ...]:
    """Placements for profiles the driver would not place (no root, no table).

    Each profile spans memory slots in proportion to its memory, with the smallest
    profile one slot wide; its instances sit side by side from slot 0 (a profile
    with as many slots as another but fewer instances, such as +me, takes the
    other's placements). This is the pattern of every tabulated GPU (A100, A30,
    H100, H200, B200), so for those it reproduces the driver's answer; for a new
    chip it is an inference, good for planning, not for creating instances.
    """
    profiles = list(profiles)
    smallest = min(p.memory_mb for p in profiles if p.memory_mb > 0)
    widest = max(p.slices for p in profiles)
    placed: dict[tuple[int, int], tuple[Placement, ...]] = {}  # (slices, size) -> placements
    out: dict[int, SliceProfile] = {}
    # Smaller profiles first, most instances first among them, so a +me profile (one
    # instance) takes its plain sibling's placements and the whole-GPU profile spans
    # every slot the others use (its memory is not an exact multiple of theirs).
    for p in sorted(profiles, key=lambda p: (p.slices == widest, -p.instance_count)):
        if p.placements:
            out[p.profile_id] = p
            continue
        size = max(1, round(p.memory_mb / smallest))
        if p.slices == widest and placed:
            size = max(pl.start + pl.size for pls in placed.values() for pl in pls)
        pl = placed.get((p.slices, size))
        if pl is None:
            pl = tuple(Placement(k * size, size) for k in range(p.instance_count))
            placed[(p.slices, size)] = pl
        out[p.profile_id] = replace(p, placements=pl)
    return tuple(out[p.profile_id] for p in profiles)


def _has_profile(gm: GpuModel, profile_id: int) -> bool:
    return any(p.profile_id == profile_id for p in gm.profiles)


def _architecture(name: str | None) -> str:
    bare = (name or "").upper().removeprefix("NVIDIA ").strip()
    if bare.startswith(("A100", "A30", "A800", "PG506")):
        return "ampere"
    if bare.startswith(("H1", "H2", "H8", "GH")):
        return "hopper"
    return "blackwell"


def _needs_reset(key: str | None, name: str | None) -> bool | None:
    """Whether a MIG mode switch waits for a reset: by the table, else by the name."""
    from miso_cli.gpu.profiles import MODELS

    if key and key in MODELS:
        return MODELS[key].mig_mode_needs_reset
    if not name:
        return None
    return _architecture(name) == "ampere"


# Non-CUDA clients that hold GPUs: process (or module) name -> why it matters.
_HOLDER_WHY = {
    "nvidia-persistenced": "keeps the driver state loaded (stop it for an A100 MIG mode change)",
    "nv-hostengine": "DCGM's host engine holds NVML handles, MIG devices included",
    "dcgm-exporter": "reads metrics through DCGM, holding MIG device handles",
    "nvsm": "NVIDIA System Management polls the GPUs",
    "nvidia-fabricmanager": "Fabric Manager holds NVSwitch systems' GPUs",
    "nv-fabricmanager": "Fabric Manager holds NVSwitch systems' GPUs",
    "nvidia-smi": "an nvidia-smi (e.g. a monitoring loop) holds the GPU while it runs",
    "nvidia_drm": "the nvidia_drm kernel module holds the GPU (unload it: modprobe -r nvidia_drm)",
}


def _base(name: str) -> str:
    return os.path.basename(str(name)).strip()


def scan_holders(
    processes: Iterable[tuple[int, str]] | None = None, modules: str | None = None
) -> list[Holder]:
    """Running daemons and loaded modules known to hold NVIDIA GPUs (psutil, /proc/modules).

    ``processes`` ((pid, name) pairs) and ``modules`` (the text of
    ``/proc/modules``) are read from the system when not given.
    """
    found: list[Holder] = []
    if processes is None:
        try:
            import psutil

            processes = [
                (int(p.pid), str(p.info.get("name") or "")) for p in psutil.process_iter(["name"])
            ]
        except Exception:  # a process list we cannot read names no holder, not an error
            processes = []
    for pid, name in processes:
        base = _base(name)
        if base in _HOLDER_WHY or base.startswith("nvsm"):
            found.append(Holder(base, pid, _HOLDER_WHY.get(base, _HOLDER_WHY["nvsm"])))
    if modules is None:
        try:
            with open("/proc/modules", encoding="utf-8") as fh:
                modules = fh.read()
        except OSError:
            modules = ""
    for line in modules.splitlines():
        parts = line.split()
        if parts and parts[0] == "nvidia_drm":
            found.append(Holder("nvidia_drm", None, _HOLDER_WHY["nvidia_drm"]))
    return found


_LEGACY_MIG_RE = re.compile(r"^MIG-(?P<gpu>GPU-[0-9a-fA-F-]+)/(?P<gi>\d+)/(?P<ci>\d+)$")


def parse_mig_uuid(text: str) -> tuple[str, int, int] | None:
    """``MIG-GPU-<uuid>/<gi>/<ci>`` (R450-era MIG device names) -> (GPU UUID, gi, ci).

    None for anything else, including today's ``MIG-<uuid>`` form, which carries
    no ids (look it up with :meth:`Driver.instances`).
    """
    m = _LEGACY_MIG_RE.match(text.strip())
    if not m:
        return None
    return m.group("gpu"), int(m.group("gi")), int(m.group("ci"))


def _error_of(exc: MisoError) -> str:
    if isinstance(exc, NvmlCallFailed):
        return exc.nvml_error
    if isinstance(exc, PermissionDenied):
        return "NO_PERMISSION"
    return exc.code


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").rstrip("\x00")
    return str(value)


def _mib(value: Any) -> int | None:
    if value is None:
        return None
    v = int(value)
    if v >= 0xFFFFFFFFFFFFFFF0:  # NVML_VALUE_NOT_AVAILABLE
        return None
    return v // (1024 * 1024)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
