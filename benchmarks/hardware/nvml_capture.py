"""Read-only capture of what a real NVIDIA driver says about MIG, as JSON on stdout.

For every GPU: name, PCI device id, memory, MIG mode (current, pending), and for
every GPU-instance profile index the driver knows, the profile's info (id, slice
and instance counts, memory, engines) and its possible placements. Nothing here
changes the GPU: only ``nvmlDeviceGet*`` calls are made.

    python benchmarks/hardware/nvml_capture.py > tests/data/real/<model>.json

The output is the format ``tests/test_real_capture.py`` holds the simulated tables
against.
"""

from __future__ import annotations

import ctypes
import json
import sys
from typing import Any

import pynvml  # noqa: TID251 - a standalone probe of the real driver, outside the package


def _s(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def placements(h: Any, profile_id: int) -> list[dict[str, int]]:
    """The profile's possible placements: count first (NULL array), then fill."""
    fn = pynvml.nvmlDeviceGetGpuInstancePossiblePlacements
    count = ctypes.c_uint(0)
    fn(h, profile_id, None, ctypes.byref(count))
    arr = (pynvml.c_nvmlGpuInstancePlacement_t * max(1, count.value))()
    fn(h, profile_id, arr, ctypes.byref(count))
    return [{"start": int(arr[k].start), "size": int(arr[k].size)} for k in range(count.value)]


def profile_info(h: Any, index: int) -> dict[str, Any]:
    row: dict[str, Any] = {"profile": index, "error": None}
    try:
        info = pynvml.nvmlDeviceGetGpuInstanceProfileInfo(h, index)
    except pynvml.NVMLError as exc:
        row["error"] = _err(exc)
        return row
    row.update(
        id=int(info.id),
        slice_count=int(info.sliceCount),
        instance_count=int(info.instanceCount),
        memory_mib=int(info.memorySizeMB),
        multiprocessor_count=int(info.multiprocessorCount),
        copy_engine_count=int(info.copyEngineCount),
        decoder_count=int(info.decoderCount),
        encoder_count=int(info.encoderCount),
        jpeg_count=int(info.jpegCount),
        ofa_count=int(info.ofaCount),
        is_p2p_supported=int(getattr(info, "isP2pSupported", 0)),
        name=None,
    )
    # The v2/v3 info carries the profile's name ("MIG 1g.18gb"); bindings differ in how to ask.
    getv = getattr(pynvml, "nvmlDeviceGetGpuInstanceProfileInfoV", None)
    for ver_name in ("nvmlGpuInstanceProfileInfo_v3", "nvmlGpuInstanceProfileInfo_v2"):
        ver = getattr(pynvml, ver_name, None)
        if getv is None or ver is None:
            continue
        try:
            v = getv(h, index, ver)
            row["name"] = _s(getattr(v, "name", None))
            row["capabilities"] = int(getattr(v, "capabilities", 0))
            break
        except Exception as exc:  # noqa: BLE001 - recorded, not fatal
            row["name_error"] = _err(exc)
    try:
        row["placements"] = placements(h, int(info.id))
    except pynvml.NVMLError as exc:
        row["placements"] = None
        row["placements_error"] = _err(exc)
    # compute-instance profiles need a GPU instance, which would mean creating one: not done.
    return row


def capture() -> dict[str, Any]:
    pynvml.nvmlInit()
    out: dict[str, Any] = {
        "driver": _s(pynvml.nvmlSystemGetDriverVersion()),
        "nvml_version": _s(pynvml.nvmlSystemGetNVMLVersion()),
        "cuda_driver_version": pynvml.nvmlSystemGetCudaDriverVersion(),
        "binding": getattr(pynvml, "__version__", None),
        "gpus": [],
    }
    try:
        from importlib.metadata import version

        out["binding"] = version("nvidia-ml-py")
    except Exception:  # noqa: BLE001
        pass
    max_index = getattr(pynvml, "NVML_GPU_INSTANCE_PROFILE_COUNT", 15)
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        g: dict[str, Any] = {"index": i, "name": _s(pynvml.nvmlDeviceGetName(h))}
        pci = pynvml.nvmlDeviceGetPciInfo(h)
        g["pci_device_id"] = f"0x{(int(pci.pciDeviceId) >> 16) & 0xFFFF:04x}"
        g["pci_device_id_raw"] = f"0x{int(pci.pciDeviceId):08x}"
        g["pci_subsystem_id"] = f"0x{int(pci.pciSubSystemId):08x}"
        g["memory_total_mib"] = int(pynvml.nvmlDeviceGetMemoryInfo(h).total) // (1 << 20)
        for key, fn in (
            ("vbios", "nvmlDeviceGetVbiosVersion"),
            ("architecture", "nvmlDeviceGetArchitecture"),
            ("cuda_capability", "nvmlDeviceGetCudaComputeCapability"),
            ("persistence_mode", "nvmlDeviceGetPersistenceMode"),
            ("compute_mode", "nvmlDeviceGetComputeMode"),
            ("max_mig_devices", "nvmlDeviceGetMaxMigDeviceCount"),
            ("num_gpu_cores", "nvmlDeviceGetNumGpuCores"),
        ):
            try:
                g[key] = _s(getattr(pynvml, fn)(h))
            except Exception as exc:  # noqa: BLE001 - an unsupported field is data
                g[key] = None
                g[key + "_error"] = _err(exc)
        try:
            g["mig_mode"] = list(pynvml.nvmlDeviceGetMigMode(h))
        except pynvml.NVMLError as exc:
            g["mig_mode"] = None
            g["mig_mode_error"] = _err(exc)
        try:
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
            g["compute_processes"] = len(procs)
        except Exception as exc:  # noqa: BLE001
            g["compute_processes_error"] = _err(exc)
        g["gi_profiles"] = [profile_info(h, idx) for idx in range(max_index)]
        out["gpus"].append(g)
    pynvml.nvmlShutdown()
    return out


if __name__ == "__main__":
    json.dump(capture(), sys.stdout, indent=1)
    sys.stdout.write("\n")
