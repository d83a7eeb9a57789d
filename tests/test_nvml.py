"""The driver boundary: error translation, lazy init, unprivileged reads, re-acquired handles."""

from __future__ import annotations

import json
import os

import pytest

from miso_cli.errors import NoGpu, PermissionDenied, UsageError
from miso_cli.gpu import nvml as nvml_mod
from miso_cli.gpu.nvml import Driver, NvmlCallFailed, open_driver
from miso_cli.gpu.profiles import model
from miso_cli.gpu.sim.simnvml import SimNvml, new_state

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


# ------------------------------------------------ issue 13: what real drivers do
def test_hopper_switches_mig_mode_without_a_reset_and_says_so() -> None:
    # Gap 1: every model reset like an A100, and miso's words followed.
    for key, needs_reset in (
        ("a100-40gb", True),
        ("a30-24gb", True),
        ("h100-80gb", False),
        ("h200-141gb", False),
        ("b200", False),
    ):
        drv, _ = _drv(mig=False, key=key)
        assert drv.gpu(0).mig_mode_needs_reset is needs_reset, key
    # Idle but for a daemon: an A100 stays pending (IN_USE), an H100 switches.
    a100, asim = _drv(mig=False)
    asim.add_holder("nvidia-persistenced")
    change = a100.set_mig_mode(0, True)
    assert (change.current, change.pending, change.needs_reset, change.in_use) == (
        False,
        True,
        True,
        True,
    )
    assert "reset" in change.message(0, True) and "nvidia-persistenced" in change.message(0, True)
    h100, hsim = _drv(mig=False, key="h100-80gb")
    hsim.add_holder("nvidia-persistenced")
    change = h100.set_mig_mode(0, True)
    assert change.current and change.pending and change.resetless and not change.needs_reset
    assert change.message(0, True) == ""
    # A CUDA process refuses the switch on Hopper, and nothing is left pending or to reset.
    busy, bsim = _drv(mig=False, key="h200-141gb")
    bsim.attach(busy.gpu(0).uuid, os.getpid(), 1)
    change = busy.set_mig_mode(0, True)
    assert (change.current, change.pending, change.needs_reset, change.in_use) == (
        False,
        False,
        False,
        True,
    )
    text = change.message(0, True)
    assert "without a reset" in text and "nvidia-smi -r" not in text
    assert not busy.gpu(0).mig_pending


def test_non_cuda_holder_makes_destroy_in_use_with_no_process_listed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Gap 2: DCGM holding MIG device handles; nothing in the process list.
    drv, _sim = _drv()
    gm = drv.gpu_model(0)
    made = drv.create_instance(0, gm.profile("3g.20gb"), gm.profile("3g.20gb").placements[0])
    monkeypatch.setenv("MISO_SIM_HOLDERS", "nv-hostengine@mig,nvidia_drm")
    drv2 = Driver(SimNvml(N, state=_sim.snapshot()), simulated=True)
    assert drv2.processes(0) == []
    with pytest.raises(NvmlCallFailed) as info:
        drv2.destroy_instance(0, made.gi_id)
    assert info.value.nvml_error == "IN_USE"
    names = [h.name for h in drv2.likely_holders(0)]
    assert names == ["nv-hostengine", "nvidia_drm"]
    assert all(h.why for h in drv2.likely_holders(0))
    monkeypatch.setenv("MISO_SIM_HOLDERS", "nv-hostengine@gpu")
    with pytest.raises(UsageError) as bad:
        SimNvml(N, state=new_state("a100-40gb"))
    assert "MISO_SIM_HOLDERS" in bad.value.message


def test_scan_holders_names_daemons_and_the_drm_module() -> None:
    from miso_cli.gpu.nvml import scan_holders

    procs = [
        (1, "python"),
        (2, "/usr/bin/nvidia-persistenced"),
        (3, "nv-hostengine"),
        (4, "nvsm-core"),
    ]
    modules = "nvidia_drm 126976 4 - Live 0x0\nnvidia 5 0 - Live 0x0\n"
    found = scan_holders(procs, modules)
    assert [(h.name, h.pid) for h in found] == [
        ("nvidia-persistenced", 2),
        ("nv-hostengine", 3),
        ("nvsm-core", 4),
        ("nvidia_drm", None),
    ]
    assert scan_holders([(9, "bash")], "") == []


def test_unknown_gpu_gets_placements_with_mig_off_from_the_driver() -> None:
    # Gap 3: the driver answers placements with MIG off; miso asks it (no table needed).
    drv, sim = _drv(mig=False, key="h100-94gb")
    sim.set_identity(0, name="NVIDIA GH200 480GB", pci_device_id=0x234210DE)
    info = drv.gpu(0)
    assert info.model_key is None and info.pci_device_id == 0x234210DE
    gm = drv.gpu_model(0)
    table = model("h100-94gb")
    assert {(p.profile_id, p.placements) for p in gm.profiles} == {
        (p.profile_id, p.placements) for p in table.profiles
    }


def test_gpu_instance_ids_are_not_positional_and_uuids_are_fresh() -> None:
    # Gap 4: ids drawn per GPU (seeded), never the slot-tree number; new UUID per re-create.
    state = new_state("a100-40gb", 2)
    for g in state["gpus"]:
        g["mig_current"] = g["mig_pending"] = True
    drv = Driver(SimNvml(N, state=state), simulated=True)
    gm = drv.gpu_model(0)
    tree = {("3g.20gb", 4): 2, ("3g.20gb", 0): 1, ("1g.5gb", 0): 7, ("7g.40gb", 0): 0}
    ids: dict[int, list[int]] = {0: [], 1: []}
    for gpu in (0, 1):
        for (name, start), positional in tree.items():
            p = gm.profile(name)
            made = drv.create_instance(gpu, p, next(pl for pl in p.placements if pl.start == start))
            assert made.gi_id != positional
            ids[gpu].append(made.gi_id)
            drv.destroy_instance(gpu, made.gi_id)
    assert ids[0] != ids[1]
    # Deterministic: the same state gives the same ids.
    again = Driver(SimNvml(N, state=json.loads(json.dumps(state))), simulated=True)
    assert again.lib.snapshot()["gpus"][0]["seed"] == state["gpus"][0]["seed"]
    p = gm.profile("2g.10gb")
    first = drv.create_instance(0, p, p.placements[0])
    drv.destroy_instance(0, first.gi_id)
    second = drv.create_instance(0, p, p.placements[0])
    assert first.uuid != second.uuid


def test_unprivileged_reads_name_profiles_by_slice_count() -> None:
    # Gap 5: 1g.20gb was named 2g.20gb and 4g.40gb 3g.40gb; drifting memory named nothing.
    drv, sim = _drv(key="a100-80gb")
    gm = drv.gpu_model(0)
    drv.create_instance(0, gm.profile("4g.40gb"), gm.profile("4g.40gb").placements[0])
    drv.create_instance(0, gm.profile("1g.20gb"), gm.profile("1g.20gb").placements[2])
    sim.set_privileged(False)
    assert sorted(m.profile or "" for m in drv.instances(0)) == ["1g.20gb", "4g.40gb"]
    old, osim = _drv()
    ogm = old.gpu_model(0)
    old.create_instance(0, ogm.profile("3g.20gb"), ogm.profile("3g.20gb").placements[0])
    osim.set_mig_memory(0, 9, 20224)  # R450-era drivers: 20224 MiB for a 19968 profile
    osim.set_privileged(False)
    assert [m.profile for m in old.instances(0)] == ["3g.20gb"]
    assert old.instances(0)[0].memory_mb == 20224


def test_profile_by_memory_alone_refuses_to_guess() -> None:
    from miso_cli.gpu.nvml import profile_of_mig_device

    gm = model("a100-80gb")
    assert profile_of_mig_device(gm, 19968) is None  # 1g.20gb or 2g.20gb: cannot tell
    assert profile_of_mig_device(gm, 9728).name == "1g.10gb"
    assert profile_of_mig_device(gm, 80640).name == "7g.80gb"


@pytest.mark.parametrize(
    ("name", "pci", "key"),
    [
        ("NVIDIA H100 PCIe", 0x233110DE, "h100-80gb"),
        ("NVIDIA A100 80GB PCIe", 0x20B510DE, "a100-80gb"),
        ("NVIDIA H200 NVL", 0x233B10DE, "h200-141gb"),
        ("NVIDIA H800", 0x232410DE, "h100-80gb"),
        ("A100-SXM4-40GB", None, "a100-40gb"),  # pre-R470: no "NVIDIA " prefix
        ("NVIDIA H20", 0x232910DE, None),
    ],
)
def test_gpus_outside_the_table_are_known_by_pci_id_or_name(name, pci, key) -> None:
    # Gap 6.
    src = {
        "h100-80gb": "h100-80gb",
        "a100-80gb": "a100-80gb",
        "h200-141gb": "h200-141gb",
        "a100-40gb": "a100-40gb",
        None: "h100-94gb",
    }[key]
    drv, sim = _drv(mig=False, key=src)
    if pci is None:
        sim.set_identity(0, name=name)
        sim.inject_fault("nvmlDeviceGetPciInfo", "*", "NOT_SUPPORTED")
    else:
        sim.set_identity(0, name=name, pci_device_id=pci)
    info = drv.gpu(0)
    assert info.model_key == key
    if pci is None:
        assert info.missing == {"pci_device_id": "NOT_SUPPORTED"}


def test_gpu_without_a_table_read_without_root_infers_placements() -> None:
    # Gap 6: no table and no root used to be PermissionDenied.
    for src in ("h100-94gb", "a30-24gb", "b200"):
        drv, sim = _drv(key=src)
        sim.set_identity(0, name="NVIDIA Future GPU", pci_device_id=0x999910DE)
        sim.set_privileged(False)
        gm = drv.gpu_model(0)
        table = model(src)
        for p in table.profiles:
            got = gm.profile(p.profile_id)
            assert set(got.placements) <= set(p.placements), (src, p.name)
            if p.variant == "standard":
                assert got.placements == p.placements, (src, p.name)


def test_library_mismatch_does_not_escape(monkeypatch: pytest.MonkeyPatch) -> None:
    # Gap 7: pynvml raises NVMLLibraryMismatchError (not an NVMLError) without the _v3 call.
    drv, sim = _drv(mig=False)
    sim.attach(drv.gpu(0).uuid, os.getpid(), 7)

    def mismatch(handle):
        raise N.NVMLLibraryMismatchError("Unversioned function called")

    monkeypatch.setattr(sim, "nvmlDeviceGetComputeRunningProcesses", mismatch)
    assert [p.pid for p in drv.processes(0)] == [os.getpid()]
    monkeypatch.setattr(sim, "nvmlDeviceGetComputeRunningProcesses_v2", mismatch)
    with pytest.raises(NvmlCallFailed) as info:
        drv.processes(0)
    assert info.value.nvml_error == "FUNCTION_NOT_FOUND"


def test_old_binding_without_the_v3_process_struct() -> None:
    # Gap 7: nvidia-ml-py 12.535.108 has no c_nvmlProcessInfo_v3_t; the simulation crashed.
    import types

    old = types.SimpleNamespace(
        **{k: getattr(N, k) for k in dir(N) if k != "c_nvmlProcessInfo_v3_t"}
    )
    state = new_state("a100-40gb")
    sim = SimNvml(old, state=state)
    drv = Driver(sim, simulated=True)
    sim.attach(drv.gpu(0).uuid, os.getpid(), 5)
    assert [(p.pid, p.used_memory_mb) for p in drv.processes(0)] == [(os.getpid(), 5)]


def test_legacy_mig_device_names() -> None:
    # Gap 7: R450-era drivers name MIG devices MIG-GPU-<uuid>/<gi>/<ci>.
    from miso_cli.gpu.nvml import parse_mig_uuid

    drv, sim = _drv()
    gm = drv.gpu_model(0)
    sim.set_legacy_mig_uuids(0)
    made = drv.create_instance(0, gm.profile("2g.10gb"), gm.profile("2g.10gb").placements[0])
    gpu_uuid = drv.gpu(0).uuid
    assert made.uuid == f"MIG-{gpu_uuid}/{made.gi_id}/{made.ci_id}"
    assert parse_mig_uuid(made.uuid) == (gpu_uuid, made.gi_id, made.ci_id)
    assert parse_mig_uuid("MIG-4d49534f-7369-6d75-6c61-746564475055") is None
    sim.attach(made.uuid, os.getpid(), 9)
    assert [(p.pid, p.device_uuid) for p in drv.processes(0)] == [(os.getpid(), made.uuid)]


def test_parent_queries_refused_in_a_container_become_data() -> None:
    # Gap 8: NO_PERMISSION on the parent's memory with MIG on raised from Driver.gpu().
    drv, sim = _drv()
    sim.set_container(True)
    info = drv.gpu(0)
    assert info.memory_total_mb is None
    assert info.missing == {"memory_total_mb": "NO_PERMISSION"}
    assert info.to_json()["memory_total_mb"] is None
    assert info.to_json()["missing"] == {"memory_total_mb": "NO_PERMISSION"}
    assert drv.gpu_model(0).memory_mb == model("a100-40gb").memory_mb  # the table stands in


_FLOOR_SCENARIO = """
import os, sys, tempfile
from importlib.metadata import version
import pynvml
from miso_cli.gpu.apply import apply_layout
from miso_cli.gpu.layouts import enumerate_layouts
from miso_cli.gpu.nvml import open_driver
from miso_cli.gpu.profiles import model
print(version("nvidia-ml-py"), os.path.dirname(pynvml.__file__))
for spec in ("sim:a100-40gb", "sim:h200-141gb", "sim:rtx-pro-6000"):
    drv = open_driver(spec, tempfile.mkdtemp())
    drv.set_mig_mode(0, True)
    gm = drv.gpu_model(0)
    lay = enumerate_layouts(gm)[-1]
    apply_layout(drv, 0, lay)
    insts = drv.instances(0)
    drv.lib.attach(insts[0].uuid, os.getpid(), 10)
    assert [p.pid for p in drv.processes(0)] == [os.getpid()], spec
    drv.lib.set_privileged(False)
    assert sorted(m.profile for m in drv.instances(0)) == sorted(s.profile for s in lay.slices)
    assert len(gm.profiles) == len(model(spec[4:]).profiles), spec
print("ok")
"""


@pytest.mark.skipif(
    not os.environ.get("MISO_OLD_PYNVML"),
    reason="set MISO_OLD_PYNVML to a folder holding the oldest supported nvidia-ml-py",
)
def test_binding_floor() -> None:
    """The simulated GPU and the driver boundary on the oldest nvidia-ml-py pyproject allows.

    CI installs it apart (pip install --no-deps --target DIR nvidia-ml-py==FLOOR) and
    points MISO_OLD_PYNVML at DIR; 12.535.108, before the fix, crashed here for want
    of c_nvmlProcessInfo_v3_t.
    """
    import re
    import subprocess
    import sys
    from pathlib import Path

    folder = Path(os.environ["MISO_OLD_PYNVML"]).resolve()
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    floor = re.search(r'"nvidia-ml-py>=([0-9.]+)"', text)
    assert floor, "pyproject.toml: no nvidia-ml-py floor"
    env = dict(os.environ, PYTHONPATH=str(folder))
    run = subprocess.run(
        [sys.executable, "-c", _FLOOR_SCENARIO],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got_version, got_dir = run.stdout.splitlines()[0].split()
    assert Path(got_dir).resolve() == folder, "the old binding was not the one imported"
    assert got_version == floor.group(1), f"{folder} holds {got_version}, the floor is {floor[1]}"
    assert run.stdout.splitlines()[-1] == "ok"


def test_pci_ids_agree_with_the_export_sibling_table() -> None:
    # miso_cli/export/handoff.py keeps its own copy of the GPU Operator's device-filter groups.
    from miso_cli.export.handoff import device_ids
    from miso_cli.gpu.profiles import MODELS, PCI_DEVICE_IDS

    for key, gm in MODELS.items():
        mine = {pci for pci, (_what, k) in PCI_DEVICE_IDS.items() if k == key}
        assert gm.pci_device_id in mine, key
        assert {int(x, 16) for x in device_ids(key)} == mine, key
