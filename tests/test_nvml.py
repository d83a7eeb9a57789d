"""The driver boundary: error translation, lazy init, unprivileged reads, re-acquired handles."""

from __future__ import annotations

import os

import pytest

from miso_cli.errors import NoGpu, PermissionDenied, UsageError
from miso_cli.gpu import nvml as nvml_mod
from miso_cli.gpu.nvml import Driver, NvmlCallFailed, open_driver
from miso_cli.gpu.profiles import model
from miso_cli.gpu.simnvml import SimNvml, new_state

N = nvml_mod.pynvml


def _drv(mig: bool = True, key: str = "a100-40gb") -> tuple[Driver, SimNvml]:
    state = new_state(key)
    state["gpus"][0]["mig_current"] = state["gpus"][0]["mig_pending"] = mig
    sim = SimNvml(N, state=state)
    return Driver(sim, simulated=True), sim


def test_no_driver_suggests_the_simulated_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise N.NVMLError(N.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(N, "nvmlInit", boom)
    drv = open_driver(None, None)
    assert not drv.is_simulated
    with pytest.raises(NoGpu) as info:
        drv.device_count()
    assert "sim:a100-40gb" in (info.value.hint or "")


def test_driver_not_loaded_from_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MISO_SIM_FAULTS", "nvmlInit:1:DRIVER_NOT_LOADED")
    drv, _ = _drv()
    with pytest.raises(NoGpu):
        drv.device_count()


def test_lazy_init_and_close() -> None:
    drv, sim = _drv()
    assert "nvmlInit" not in sim.calls
    assert drv.device_count() == 1
    assert drv.device_count() == 1
    assert sim.calls["nvmlInit"] == 1
    drv.close()
    assert sim.calls["nvmlShutdown"] == 1


def test_no_permission_and_unprivileged_reads() -> None:
    drv, sim = _drv()
    gm = drv.gpu_model(0)
    drv.create_instance(0, gm.profile("3g.20gb"), gm.profile("3g.20gb").placements[1])
    sim.set_privileged(False)
    with pytest.raises(PermissionDenied) as info:
        drv.create_instance(0, gm.profile("1g.5gb"), gm.profile("1g.5gb").placements[0])
    assert "MIG changes need root" in info.value.message
    insts = drv.instances(0)  # falls back to the MIG devices a user may see
    assert len(insts) == 1 and insts[0].slice is None and insts[0].profile == "3g.20gb"
    assert insts[0].uuid and insts[0].uuid.startswith("MIG-")
    with pytest.raises(PermissionDenied):
        drv.current_layout(0)
    fresh, fsim = _drv()
    fsim.set_privileged(False)
    assert (
        fresh.gpu_model(0).profile("3g.20gb").placements
        == model("a100-40gb").profile("3g.20gb").placements
    )


def test_gpu_lost_and_not_mig_capable() -> None:
    drv, sim = _drv()
    drv.gpu(0)
    sim.set_lost(0)
    with pytest.raises(NoGpu) as info:
        drv.gpu(0)
    assert "lost" in info.value.message
    drv2, sim2 = _drv()
    sim2.inject_fault("nvmlDeviceGetMigMode", "*", "NOT_SUPPORTED")
    info2 = drv2.gpu(0)
    assert not info2.mig_capable
    with pytest.raises(NoGpu):
        drv2.gpu_model(0)
    assert drv2.instances(0) == []


def test_mode_change_reacquires_handle_by_uuid() -> None:
    drv, sim = _drv(mig=False)
    change = drv.set_mig_mode(0, True)
    assert change.current and not change.needs_reset
    assert sim.calls.get("nvmlDeviceGetHandleByUUID") == 1
    busy, bsim = _drv(mig=False)
    bsim.attach(busy.gpu(0).uuid, os.getpid(), 1)
    change = busy.set_mig_mode(0, True)
    assert change.pending and not change.current and change.in_use and change.needs_reset


def test_create_instance_cleans_up_when_the_compute_instance_fails() -> None:
    drv, sim = _drv()
    gm = drv.gpu_model(0)
    sim.inject_fault("nvmlGpuInstanceCreateComputeInstance", 1, "INSUFFICIENT_RESOURCES")
    with pytest.raises(NvmlCallFailed) as info:
        drv.create_instance(0, gm.profile("2g.10gb"), gm.profile("2g.10gb").placements[0])
    assert info.value.nvml_error == "INSUFFICIENT_RESOURCES"
    assert drv.instances(0) == []


def test_processes_per_mig_device() -> None:
    drv, sim = _drv()
    gm = drv.gpu_model(0)
    made = drv.create_instance(0, gm.profile("4g.20gb"), gm.profile("4g.20gb").placements[0])
    sim.attach(made.uuid, os.getpid(), 123)
    sim.set_privileged(False)  # the per-MIG-device query needs no privilege
    procs = drv.processes(0)
    assert [(p.pid, p.used_memory_mb, p.gi_id, p.ci_id, p.device_uuid) for p in procs] == [
        (os.getpid(), 123, made.gi_id, made.ci_id, made.uuid)
    ]


def test_model_from_driver_matches_table() -> None:
    for key in ("a100-40gb", "a30-24gb", "h200-141gb"):
        drv, _ = _drv(key=key)
        gm = drv.gpu_model(0)
        table = model(key)
        assert gm.key == key
        assert {(p.name, p.profile_id, p.placements, p.memory_mb) for p in gm.profiles} == {
            (p.name, p.profile_id, p.placements, p.memory_mb) for p in table.profiles
        }


def test_open_driver_specs(tmp_path) -> None:
    drv = open_driver("sim:h100-80gbx8", tmp_path)
    assert drv.is_simulated and drv.device_count() == 8
    assert drv.sim_state_path == tmp_path / "sim" / "h100-80gbx8.json"
    assert drv.sim_state_path.exists()
    for bad in ("sim:v100", "cuda"):
        with pytest.raises(UsageError):
            open_driver(bad, tmp_path)
    with pytest.raises(UsageError):
        drv._handle(9)
