"""The simulated NVML behaves like the driver at the pynvml boundary."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import pytest

from miso_cli.gpu import nvml as nvml_mod
from miso_cli.gpu.sim import simnvml
from miso_cli.gpu.sim.simnvml import SimNvml, new_state

N = nvml_mod.pynvml


def _sim(key: str = "a100-40gb", mig: bool = True, **kw) -> SimNvml:
    state = new_state(key)
    state["gpus"][0]["mig_current"] = state["gpus"][0]["mig_pending"] = mig
    sim = SimNvml(N, state=state, **kw)
    sim.nvmlInit()
    return sim


def _gi(sim: SimNvml, dev, pid: int, start: int, size: int):
    pl = N.c_nvmlGpuInstancePlacement_t(start, size)
    return sim.nvmlDeviceCreateGpuInstanceWithPlacement(dev, pid, ctypes.byref(pl))


def test_profile_index_maps_to_id_and_struct_types() -> None:
    sim = _sim()
    dev = sim.nvmlDeviceGetHandleByIndex(0)
    assert isinstance(dev, N.c_nvmlDevice_t)
    info = sim.nvmlDeviceGetGpuInstanceProfileInfo(dev, N.NVML_GPU_INSTANCE_PROFILE_3_SLICE)
    assert isinstance(info, N.c_nvmlGpuInstanceProfileInfo_v2_t)
    assert (info.id, info.sliceCount, info.memorySizeMB, info.name) == (9, 3, 19968, "MIG 3g.20gb")
    with pytest.raises(N.NVMLError_NotSupported):
        sim.nvmlDeviceGetGpuInstanceProfileInfo(dev, N.NVML_GPU_INSTANCE_PROFILE_6_SLICE)
    with pytest.raises(N.NVMLError_InvalidArgument):
        sim.nvmlDeviceGetGpuInstanceProfileInfo(dev, N.NVML_GPU_INSTANCE_PROFILE_COUNT)
    a30 = _sim("a30-24gb")
    d = a30.nvmlDeviceGetHandleByIndex(0)
    assert a30.nvmlDeviceGetGpuInstanceProfileInfo(d, N.NVML_GPU_INSTANCE_PROFILE_1_SLICE).id == 14
    assert a30.nvmlDeviceGetGpuInstanceProfileInfo(d, N.NVML_GPU_INSTANCE_PROFILE_4_SLICE).id == 0


def test_placements_count_then_fill() -> None:
    sim = _sim()
    dev = sim.nvmlDeviceGetHandleByIndex(0)
    count = ctypes.c_uint(0)
    sim.nvmlDeviceGetGpuInstancePossiblePlacements(dev, 14, None, ctypes.byref(count))
    assert count.value == 3
    small = (N.c_nvmlGpuInstancePlacement_t * 1)()
    one = ctypes.c_uint(1)
    with pytest.raises(N.NVMLError_InsufficientSize):
        sim.nvmlDeviceGetGpuInstancePossiblePlacements(dev, 14, small, ctypes.byref(one))
    arr = (N.c_nvmlGpuInstancePlacement_t * count.value)()
    sim.nvmlDeviceGetGpuInstancePossiblePlacements(dev, 14, arr, ctypes.byref(count))
    assert [(p.start, p.size) for p in arr] == [(0, 2), (2, 2), (4, 2)]


def test_overlap_bad_placement_limits() -> None:
    sim = _sim()
    dev = sim.nvmlDeviceGetHandleByIndex(0)
    _gi(sim, dev, 9, 0, 4)  # 3g at 0
    with pytest.raises(N.NVMLError_InsufficientResources):
        _gi(sim, dev, 14, 2, 2)  # overlaps
    with pytest.raises(N.NVMLError_InvalidArgument):
        _gi(sim, dev, 9, 2, 4)  # 3g cannot start at 2
    _gi(sim, dev, 20, 4, 1)  # 1g+me
    with pytest.raises(N.NVMLError_InsufficientResources):
        _gi(sim, dev, 20, 5, 1)  # only one +me instance
    with pytest.raises(N.NVMLError_InvalidArgument):
        _gi(sim, dev, 77, 0, 1)  # no such profile id


def test_mig_off_instance_calls_not_supported() -> None:
    sim = _sim(mig=False)
    dev = sim.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(N.NVMLError_NotSupported):
        _gi(sim, dev, 19, 0, 1)
    with pytest.raises(N.NVMLError_NotSupported):
        sim.nvmlDeviceGetGpuInstances(dev, 19, None, ctypes.byref(ctypes.c_uint(0)))
    assert sim.nvmlDeviceGetMaxMigDeviceCount(dev) == 0


def test_mig_mode_pending_while_busy() -> None:
    sim = _sim(mig=False)
    dev = sim.nvmlDeviceGetHandleByIndex(0)
    sim.attach(sim.nvmlDeviceGetUUID(dev), os.getpid(), 10)
    status = sim.nvmlDeviceSetMigMode(dev, N.NVML_DEVICE_MIG_ENABLE)
    assert status == N.NVML_ERROR_IN_USE
    assert sim.nvmlDeviceGetMigMode(dev) == [0, 1]
    sim.detach(os.getpid())
    sim.reset_gpu(0)
    assert sim.nvmlDeviceGetMigMode(dev) == [1, 1]
    assert sim.nvmlDeviceSetMigMode(dev, N.NVML_DEVICE_MIG_DISABLE) == N.NVML_SUCCESS
    assert sim.nvmlDeviceGetMigMode(dev) == [0, 0]


def test_permissions_from_state_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    sim = _sim()
    dev = sim.nvmlDeviceGetHandleByIndex(0)
    sim.set_privileged(False)
    with pytest.raises(N.NVMLError_NoPermission):
        _gi(sim, dev, 19, 0, 1)
    assert sim.nvmlDeviceGetGpuInstanceProfileInfo(dev, 0).id == 19  # not privileged
    sim.set_privileged(True)
    _gi(sim, dev, 19, 0, 1)
    monkeypatch.setenv("MISO_SIM_PRIVILEGED", "0")
    with pytest.raises(N.NVMLError_NoPermission):
        sim.nvmlDeviceSetMigMode(dev, 0)


def test_teardown_order_and_in_use() -> None:
    sim = _sim()
    dev = sim.nvmlDeviceGetHandleByIndex(0)
    gi = _gi(sim, dev, 14, 0, 2)
    cinfo = sim.nvmlGpuInstanceGetComputeInstanceProfileInfo(
        gi, N.NVML_COMPUTE_INSTANCE_PROFILE_2_SLICE, N.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
    )
    ci = sim.nvmlGpuInstanceCreateComputeInstance(gi, cinfo.id)
    with pytest.raises(N.NVMLError_InUse):
        sim.nvmlGpuInstanceDestroy(gi)  # compute instance first
    mig = sim.nvmlDeviceGetMigDeviceHandleByIndex(dev, 0)
    assert sim.nvmlDeviceIsMigDeviceHandle(mig).value == 1
    assert isinstance(sim.nvmlDeviceIsMigDeviceHandle(dev), ctypes.c_uint)
    uuid = sim.nvmlDeviceGetUUID(mig)
    assert uuid.startswith("MIG-")
    sim.attach(uuid, os.getpid(), 100)
    with pytest.raises(N.NVMLError_InUse):
        sim.nvmlComputeInstanceDestroy(ci)
    procs = sim.nvmlDeviceGetComputeRunningProcesses(mig)
    assert [(p.pid, p.usedGpuMemory, p.gpuInstanceId) for p in procs] == [
        (os.getpid(), 100 * 1024 * 1024, sim.nvmlGpuInstanceGetInfo(gi).id)
    ]
    sim.detach(os.getpid())
    sim.nvmlComputeInstanceDestroy(ci)
    sim.nvmlGpuInstanceDestroy(gi)
    with pytest.raises(N.NVMLError_InvalidArgument):
        sim.nvmlGpuInstanceGetInfo(gi)  # a stale handle
    with pytest.raises(N.NVMLError_NotFound):
        sim.nvmlDeviceGetMigDeviceHandleByIndex(dev, 0)
    # Re-created at the same place: same GPU instance id, a new MIG device UUID.
    gi2 = _gi(sim, dev, 14, 0, 2)
    sim.nvmlGpuInstanceCreateComputeInstance(gi2, cinfo.id)
    assert sim.nvmlGpuInstanceGetInfo(gi2).id == sim.nvmlGpuInstanceGetInfo(gi2).id
    assert sim.nvmlDeviceGetUUID(sim.nvmlDeviceGetMigDeviceHandleByIndex(dev, 0)) != uuid


def test_gpu_lost_and_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    sim = _sim()
    dev = sim.nvmlDeviceGetHandleByIndex(0)
    sim.inject_fault("nvmlDeviceGetMigMode", 2, "UNKNOWN")
    sim.nvmlDeviceGetMigMode(dev)
    with pytest.raises(N.NVMLError_Unknown):
        sim.nvmlDeviceGetMigMode(dev)
    sim.nvmlDeviceGetMigMode(dev)  # the third call works again
    sim.set_lost(0)
    with pytest.raises(N.NVMLError_GpuIsLost):
        sim.nvmlDeviceGetName(dev)
    monkeypatch.setenv("MISO_SIM_FAULTS", "nvmlDeviceGetCount:*:DRIVER_NOT_LOADED")
    other = _sim()
    with pytest.raises(N.NVMLError_DriverNotLoaded):
        other.nvmlDeviceGetCount()
    with pytest.raises(ValueError):
        simnvml.parse_faults("nvmlX:zero:UNKNOWN")


def test_uninitialized() -> None:
    sim = SimNvml(N, state=new_state("a100-40gb"))
    with pytest.raises(N.NVMLError_Uninitialized):
        sim.nvmlDeviceGetCount()


def test_state_file_shared_between_processes(tmp_path) -> None:
    path = tmp_path / "sim" / "a100-40gb.json"
    a = SimNvml(N, state_path=path, state=new_state("a100-40gb"))
    a.nvmlInit()
    dev = a.nvmlDeviceGetHandleByIndex(0)
    a.nvmlDeviceSetMigMode(dev, 1)
    gi = _gi(a, dev, 9, 4, 4)
    a.nvmlGpuInstanceCreateComputeInstance(gi, 2)
    state = json.loads(path.read_text())
    assert set(state) >= {"version", "gpus", "processes", "privileged", "faults", "extensions"}
    mig_uuid = state["gpus"][0]["instances"][0]["cis"][0]["uuid"]
    # Another process (a job) sees the same GPU and registers itself.
    code = (
        "import sys; from miso_cli.gpu.sim import simnvml;"
        f"print(simnvml.lookup_device(sys.argv[1], '{mig_uuid}')['profile']);"
        f"simnvml.attach_process(sys.argv[1], '{mig_uuid}', {os.getpid()}, 321)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "3g.20gb"
    b = SimNvml(N, state_path=path)
    b.nvmlInit()
    mig = b.nvmlDeviceGetHandleByUUID(mig_uuid)
    assert [p.pid for p in b.nvmlDeviceGetComputeRunningProcesses(mig)] == [os.getpid()]
    info = simnvml.lookup_device(path, state["gpus"][0]["uuid"])
    assert (info["kind"], info["slices"], info["memory_mb"]) == ("gpu", 7, 40960)
    simnvml.detach_process(path, os.getpid())
    assert b.nvmlDeviceGetComputeRunningProcesses(mig) == []


def test_dead_processes_are_dropped(tmp_path) -> None:
    path = tmp_path / "s.json"
    sim = SimNvml(N, state_path=path, state=new_state("a100-40gb"))
    sim.nvmlInit()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    uuid = sim.nvmlDeviceGetUUID(sim.nvmlDeviceGetHandleByIndex(0))
    simnvml.attach_process(path, uuid, child.pid, 5)
    assert json.loads(path.read_text())["processes"] != []
    assert simnvml.SimNvml(N, state_path=path).snapshot()["processes"] == []  # dropped on read
    assert json.loads(path.read_text())["processes"] == []


def test_spec_parsing(tmp_path) -> None:
    assert simnvml.parse_spec("sim:h100-80gbx8") == ("h100-80gb", 8)
    assert simnvml.parse_spec("sim:a100-40gb") == ("a100-40gb", 1)
    assert simnvml.state_path_for(tmp_path, "sim:h200-141gbx2").name == "h200-141gbx2.json"
    for bad in ("sim:", "sim:v100", "sim:a100-40gbx0", "a100"):
        with pytest.raises(simnvml.SimSpecError):
            simnvml.parse_spec(bad)


# ------------------------------------------------------------ MISO_SIM_LATENCY
def test_latency_delays_each_mutating_call_through_the_injected_sleep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MISO_SIM_LATENCY", "0.25")
    slept: list[float] = []
    sim = _sim(mig=False, sleep=slept.append)
    assert sim.latency == 0.25
    dev = sim.nvmlDeviceGetHandleByIndex(0)
    sim.nvmlDeviceGetMigMode(dev)
    assert slept == []  # reads are not delayed
    sim.nvmlDeviceSetMigMode(dev, 1)
    gi = _gi(sim, dev, 9, 4, 4)
    ci = sim.nvmlGpuInstanceCreateComputeInstance(gi, 2)
    sim.nvmlComputeInstanceDestroy(ci)
    sim.nvmlGpuInstanceDestroy(gi)
    assert slept == [0.25] * 5
    assert set(simnvml.MUTATING_CALLS) >= {
        "nvmlDeviceSetMigMode",
        "nvmlDeviceCreateGpuInstanceWithPlacement",
        "nvmlGpuInstanceCreateComputeInstance",
        "nvmlComputeInstanceDestroy",
        "nvmlGpuInstanceDestroy",
    }


def test_latency_defaults_to_zero_and_an_argument_overrides_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MISO_SIM_LATENCY", raising=False)
    slept: list[float] = []
    sim = _sim(sleep=slept.append)
    dev = sim.nvmlDeviceGetHandleByIndex(0)
    _gi(sim, dev, 0, 0, 8)
    assert (sim.latency, slept) == (0.0, [])
    monkeypatch.setenv("MISO_SIM_LATENCY", "")
    assert _sim().latency == 0.0
    monkeypatch.setenv("MISO_SIM_LATENCY", "9")
    assert _sim(latency=0.0).latency == 0.0


@pytest.mark.parametrize("bad", ["abc", "-1", "nan", "inf", "1e9", "0.5s"])
def test_bad_latency_is_a_usage_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    from miso_cli.errors import ExitCode, UsageError

    monkeypatch.setenv("MISO_SIM_LATENCY", bad)
    with pytest.raises(UsageError) as info:
        _sim()
    assert "MISO_SIM_LATENCY" in info.value.message and repr(bad) in info.value.message
    assert info.value.exit_code == ExitCode.USAGE
    with pytest.raises(UsageError) as info2:
        nvml_mod.open_driver("sim:a100-40gb", None)
    assert "MISO_SIM_LATENCY" in info2.value.message
    assert "delete" not in (info2.value.hint or "")


# ------------------------------------------------- issue 13: real-driver behaviour
def test_placements_are_answered_with_mig_off() -> None:
    sim = _sim(mig=False)
    dev = sim.nvmlDeviceGetHandleByIndex(0)
    count = ctypes.c_uint(0)
    sim.nvmlDeviceGetGpuInstancePossiblePlacements(dev, 9, None, ctypes.byref(count))
    arr = (N.c_nvmlGpuInstancePlacement_t * count.value)()
    sim.nvmlDeviceGetGpuInstancePossiblePlacements(dev, 9, arr, ctypes.byref(count))
    assert [(p.start, p.size) for p in arr] == [(0, 4), (4, 4)]
    with pytest.raises(N.NVMLError_NotSupported):  # creating still needs MIG on
        _gi(sim, dev, 9, 0, 4)


def test_set_mig_mode_follows_the_architecture() -> None:
    for key, held_status, held_mode in (
        ("a100-40gb", N.NVML_ERROR_IN_USE, [0, 1]),  # pending until a reset
        ("a30-24gb", N.NVML_ERROR_IN_USE, [0, 1]),
        ("h100-80gb", N.NVML_SUCCESS, [1, 1]),  # daemons do not block Hopper
        ("b200", N.NVML_SUCCESS, [1, 1]),
    ):
        sim = _sim(key, mig=False)
        sim.add_holder("nvidia-persistenced")
        dev = sim.nvmlDeviceGetHandleByIndex(0)
        assert sim.nvmlDeviceSetMigMode(dev, 1) == held_status, key
        assert sim.nvmlDeviceGetMigMode(dev) == held_mode, key
    sim = _sim("h200-141gb", mig=False)
    dev = sim.nvmlDeviceGetHandleByIndex(0)
    sim.attach(sim.snapshot()["gpus"][0]["uuid"], os.getpid(), 1)
    assert sim.nvmlDeviceSetMigMode(dev, 1) == N.NVML_ERROR_IN_USE
    assert sim.nvmlDeviceGetMigMode(dev) == [0, 0]  # refused, not pending


def test_mig_handle_holder_blocks_destroy_without_a_listed_process() -> None:
    sim = _sim()
    dev = sim.nvmlDeviceGetHandleByIndex(0)
    gi = _gi(sim, dev, 14, 0, 2)
    ci = sim.nvmlGpuInstanceCreateComputeInstance(gi, 1)
    sim.add_holder("nv-hostengine", mig=True, pid=4242)
    mig = sim.nvmlDeviceGetMigDeviceHandleByIndex(dev, 0)
    assert sim.nvmlDeviceGetComputeRunningProcesses(mig) == []
    with pytest.raises(N.NVMLError_InUse):
        sim.nvmlComputeInstanceDestroy(ci)
    assert [h["name"] for h in sim.holders(0)] == ["nv-hostengine"]
    sim.remove_holder("nv-hostengine")
    sim.nvmlComputeInstanceDestroy(ci)
    sim.nvmlGpuInstanceDestroy(gi)
    assert simnvml.parse_holders("nvidia_drm, nv-hostengine:1@mig") == [
        {"name": "nvidia_drm", "gpu": None, "mig": False, "pid": None},
        {"name": "nv-hostengine", "gpu": 1, "mig": True, "pid": None},
    ]


def test_attributes_and_pci_info_without_privilege() -> None:
    sim = _sim("a100-80gb")
    dev = sim.nvmlDeviceGetHandleByIndex(0)
    gi = _gi(sim, dev, 15, 2, 2)  # 1g.20gb: the memory of a 2g.20gb
    sim.nvmlGpuInstanceCreateComputeInstance(gi, 0)
    sim.set_privileged(False)
    mig = sim.nvmlDeviceGetMigDeviceHandleByIndex(dev, 0)
    attrs = sim.nvmlDeviceGetAttributes_v2(mig)
    assert (attrs.gpuInstanceSliceCount, attrs.computeInstanceSliceCount, attrs.memorySizeMB) == (
        1,
        1,
        19968,
    )
    assert sim.nvmlDeviceGetPciInfo(dev).pciDeviceId == 0x20B210DE


def test_new_models_through_the_nvml_calls() -> None:
    for key, full_index, full_id, slots in (("b200", 4, 0, 8), ("rtx-pro-6000", 3, 0, 12)):
        sim = _sim(key)
        dev = sim.nvmlDeviceGetHandleByIndex(0)
        info = sim.nvmlDeviceGetGpuInstanceProfileInfo(dev, full_index)
        assert info.id == full_id
        gi = _gi(sim, dev, full_id, 0, slots)
        sim.nvmlGpuInstanceCreateComputeInstance(gi, full_index if key == "b200" else 3)
    rtx = _sim("rtx-pro-6000")
    dev = rtx.nvmlDeviceGetHandleByIndex(0)
    gfx = rtx.nvmlDeviceGetGpuInstanceProfileInfo(dev, N.NVML_GPU_INSTANCE_PROFILE_1_SLICE_GFX)
    assert (gfx.id, gfx.name) == (47, "MIG 1g.24gb+gfx")
    _gi(rtx, dev, 47, 3, 3)
    with pytest.raises(N.NVMLError_InvalidArgument):
        _gi(rtx, dev, 14, 1, 3)  # not on the 12-unit grid's placements


def test_bad_holders_in_the_environment_or_the_state_file(tmp_path, monkeypatch) -> None:
    from miso_cli.errors import UsageError

    monkeypatch.setenv("MISO_SIM_HOLDERS", "nv-hostengine:x")
    with pytest.raises(UsageError) as info:
        nvml_mod.open_driver("sim:a100-40gb", tmp_path)
    assert "MISO_SIM_HOLDERS" in info.value.message and "delete" not in (info.value.hint or "")
    monkeypatch.delenv("MISO_SIM_HOLDERS")
    path = tmp_path / "state.json"
    state = new_state("a100-40gb")
    state["holders"] = ["nvidia-persistenced"]
    path.write_text(json.dumps(state))
    with pytest.raises(simnvml.SimStateError) as bad:
        SimNvml(N, state_path=path).nvmlInit()
    assert "holders[0]" in bad.value.message
