"""The driver boundary: the only module that imports ``pynvml``.

:func:`open_driver` returns a :class:`Driver` over either the ``pynvml`` module
(the real driver) or a :class:`~miso_cli.gpu.simnvml.SimNvml` built on it (a
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
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import pynvml

from miso_cli.errors import MisoError, NoGpu, PermissionDenied, UsageError
from miso_cli.gpu.layouts import Layout, Slice, slice_of
from miso_cli.gpu.profiles import GpuModel, Placement, SliceProfile, model_key_for

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
    needs_reset: bool
    in_use: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def open_driver(spec: str | None, state_dir: Path | None) -> Driver:
    """A driver for ``spec``: None/``"nvml"`` = the real driver; ``"sim:MODEL[xN]"`` = simulated.

    A simulated GPU's state lives in ``state_dir/sim/<MODEL[xN]>.json`` and is
    created on first use.
    """
    if spec is None or spec.strip().lower() in ("", "nvml", "real"):
        return Driver(pynvml, simulated=False)
    if spec.strip().lower().startswith("sim:"):
        from miso_cli.gpu import simnvml

        if state_dir is None:
            from miso_cli.state import default_state_dir

            state_dir = default_state_dir()
        try:
            key, count = simnvml.parse_spec(spec)
            path = simnvml.state_path_for(Path(state_dir), spec)
        except simnvml.SimSpecError as exc:
            raise UsageError(f"--gpu: {exc}", hint="e.g. --gpu sim:a100-40gb") from None
        try:
            lib = simnvml.SimNvml(pynvml, state_path=path, state=simnvml.new_state(key, count))
        except simnvml.SimLatencyError:
            raise
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
        h = self._handle(i)
        where = f"GPU {i}"
        name = _text(self._optional(lambda: self._call("nvmlDeviceGetName", h, where=where)))
        uuid = _text(self._optional(lambda: self._call("nvmlDeviceGetUUID", h, where=where)))
        if uuid:
            self._uuids[i] = uuid
        mem = self._optional(lambda: self._call("nvmlDeviceGetMemoryInfo", h, where=where))
        total = int(mem.total) // (1024 * 1024) if mem is not None else None
        capable, current, pending = True, False, False
        try:
            current_mode, pending_mode = self._call("nvmlDeviceGetMigMode", h, where=where)
            current = current_mode == pynvml.NVML_DEVICE_MIG_ENABLE
            pending = pending_mode == pynvml.NVML_DEVICE_MIG_ENABLE
        except NvmlCallFailed as exc:
            if exc.nvml_error not in ("NOT_SUPPORTED", "FUNCTION_NOT_FOUND"):
                raise
            capable = False
        key = model_key_for(name) if name else None
        return GpuInfo(i, name, uuid, total, capable, current, pending, key)

    def _optional(self, fn: Callable[[], T]) -> T | None:
        """A value that may be unsupported on some GPUs: None instead of an error."""
        try:
            return fn()
        except NvmlCallFailed as exc:
            if exc.nvml_error in ("NOT_SUPPORTED", "FUNCTION_NOT_FOUND", "UNKNOWN"):
                return None
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
        for index in range(int(pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT)):
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
            try:
                placements = self._placements(h, int(pinfo.id), i, info)
            except PermissionDenied:
                if known is None:
                    raise
                placements = known.profile(int(pinfo.id)).placements
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
        compute = max(p.slices for p in profiles)
        slots = max((pl.start + pl.size for p in profiles for pl in p.placements), default=0)
        max_dev = self._optional(
            lambda: self._call("nvmlDeviceGetMaxMigDeviceCount", h, where=f"GPU {i}")
        )
        gm = GpuModel(
            key=info.model_key or _slug(info.name or f"gpu{i}"),
            name=info.name or "unknown",
            memory_mb=info.memory_total_mb or 0,
            compute_slices=compute,
            memory_slots=slots,
            max_mig_devices=int(max_dev) if max_dev else compute,
            multiprocessors=known.multiprocessors
            if known
            else max(p.multiprocessors for p in profiles),
            pci_device_id=known.pci_device_id if known else 0,
            profiles=tuple(profiles),
        )
        self._models[i] = gm
        return gm

    def _placements(self, h: Any, profile_id: int, i: int, info: GpuInfo) -> tuple[Placement, ...]:
        # Count first (NULL array), then fill an array of that size.
        count = ctypes.c_uint(0)
        call = "nvmlDeviceGetGpuInstancePossiblePlacements"
        if not info.mig_current and info.model_key:
            from miso_cli.gpu.profiles import MODELS

            # The driver answers placements only in MIG mode; with MIG off, a known
            # model's table stands in (the placements are a property of the chip).
            return MODELS[info.model_key].profile(profile_id).placements
        self._call(call, h, profile_id, None, ctypes.byref(count), where=f"GPU {i}")
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
            # Without privilege only MIG devices are visible: ids, UUIDs and memory.
            out = []
            for (gi, ci), (uuid, mem) in sorted(devices.items()):
                prof = _profile_by_memory(gm, mem)
                out.append(
                    MigInstance(
                        gi,
                        ci,
                        None,
                        uuid,
                        mem,
                        prof.profile_id if prof else None,
                        prof.name if prof else None,
                    )
                )
            return out
        out.sort(key=lambda m: (m.slice.start if m.slice else -1, m.gi_id))
        return out

    def _instances_privileged(
        self, i: int, h: Any, gm: GpuModel, devices: dict[tuple[int, int], tuple[str, int | None]]
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
                uuid, mem = devices.get((gi_id, ci_id), (None, None))
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

    def _mig_devices(self, i: int) -> dict[tuple[int, int], tuple[str, int | None]]:
        """(gi, ci) -> (MIG device UUID, memory MiB), from the unprivileged MIG-device calls."""
        h = self._handle(i)
        where = f"GPU {i}"
        out: dict[tuple[int, int], tuple[str, int | None]] = {}
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
            mem = self._optional(
                lambda mh=mh: self._call("nvmlDeviceGetMemoryInfo", mh, where=where)
            )
            out[(gi, ci)] = (uuid, int(mem.total) // (1024 * 1024) if mem is not None else None)
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
            for (gi, ci), (uuid, _mem) in sorted(self._mig_devices(i).items()):
                mh = self._call("nvmlDeviceGetHandleByUUID", uuid, where=where)
                for p in self._call("nvmlDeviceGetComputeRunningProcesses", mh, where=where):
                    out.append(GpuProcess(int(p.pid), _mib(p.usedGpuMemory), gi, ci, uuid))
            return out
        for p in self._call("nvmlDeviceGetComputeRunningProcesses", h, where=where):
            out.append(GpuProcess(int(p.pid), _mib(p.usedGpuMemory), None, None, info.uuid))
        return out

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
        needs_reset = after.mig_current != enabled
        return ModeChange(after.mig_current, after.mig_pending, needs_reset, in_use)

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
        uuid, mem = self._mig_devices(i).get((gi_id, ci_id), (None, None))
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
    if index in (
        pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1,
        pynvml.NVML_GPU_INSTANCE_PROFILE_2_SLICE_REV1,
    ):
        return "me"
    if index == pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2:
        return "double_memory"
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


def _profile_by_memory(gm: GpuModel, mem: int | None) -> SliceProfile | None:
    if mem is None:
        return None
    best = [p for p in gm.standard_profiles() if p.memory_mb == mem]
    return min(best, key=lambda p: p.slices) if best else None


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
