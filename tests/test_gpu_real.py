"""Read-only checks against a real NVIDIA driver (marker ``gpu``; MISO_REAL_GPU=1 to run).

Nothing here changes the GPU: it reads profiles, placements, instances and
processes, and checks them against what miso assumes.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture
def drv():
    from miso_cli.errors import NoGpu
    from miso_cli.gpu.nvml import open_driver

    d = open_driver(None, None)
    try:
        if d.device_count() == 0:
            pytest.skip("no GPU")
    except NoGpu as exc:
        pytest.skip(f"no driver: {exc.message}")
    yield d
    d.close()


def test_gpus_answer(drv) -> None:
    for i in range(drv.device_count()):
        info = drv.gpu(i)
        assert info.uuid and info.uuid.startswith("GPU-")
        # In a container with MIG on the parent refuses its memory: then it says why.
        assert (info.memory_total_mb or 0) > 0 or "memory_total_mb" in info.missing
        assert info.mig_mode_needs_reset is not None or info.model_key is None
    assert drv.driver_version()


def test_capture_agrees_with_the_simulated_tables(drv) -> None:
    """The raw capture (Driver.capture) of this machine against miso's tables."""
    from test_real_capture import compare_capture

    doc = drv.capture()
    assert doc["gpus"] and all(g["gi_profiles"] for g in doc["gpus"])
    problems, checked = compare_capture(doc)
    if not checked:
        pytest.skip("no GPU of a tabulated model")
    assert not problems, "\n".join(problems)


def test_profiles_and_placements_are_consistent(drv) -> None:
    from miso_cli.gpu.layouts import enumerate_layouts
    from miso_cli.gpu.profiles import MODELS

    checked = 0
    for i in range(drv.device_count()):
        if not drv.gpu(i).mig_capable:
            continue
        gm = drv.gpu_model(i)
        checked += 1
        assert len({p.profile_id for p in gm.profiles}) == len(gm.profiles)
        for p in gm.profiles:
            assert p.placements
            assert all(pl.start + pl.size <= gm.memory_slots for pl in p.placements)
        assert enumerate_layouts(gm)
        known = MODELS.get(gm.key)
        if known is not None:  # the table must agree with the driver on ids and placements
            for p in gm.profiles:
                if p.variant in ("standard", "me", "double_memory"):
                    t = known.profile(p.profile_id)
                    assert (t.slices, t.placements) == (p.slices, p.placements)
    if not checked:
        pytest.skip("no MIG-capable GPU")


def test_instances_and_processes_read(drv) -> None:
    from miso_cli.errors import PermissionDenied

    for i in range(drv.device_count()):
        info = drv.gpu(i)
        if not (info.mig_capable and info.mig_current):
            continue
        for m in drv.instances(i):
            assert m.gi_id >= 0
            assert m.uuid is None or m.uuid.startswith("MIG-")
        try:
            drv.current_layout(i)
        except PermissionDenied:
            pass
        for p in drv.processes(i):
            assert p.pid > 0
