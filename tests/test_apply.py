"""apply_layout on the simulated NVML: every A100 layout pair, and a fault at every call."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from miso_cli.errors import GpuBusy, Inconsistent, MisoError, RolledBack
from miso_cli.gpu import nvml as nvml_mod
from miso_cli.gpu.apply import apply_layout, diff, load_plan
from miso_cli.gpu.layouts import enumerate_layouts
from miso_cli.gpu.nvml import Driver
from miso_cli.gpu.profiles import model
from miso_cli.gpu.simnvml import SimNvml, new_state

A100 = model("a100-40gb")
LAYOUTS = enumerate_layouts(A100)


def _driver(key: str = "a100-40gb", mig: bool = True) -> tuple[Driver, SimNvml]:
    state = new_state(key)
    state["gpus"][0]["mig_current"] = state["gpus"][0]["mig_pending"] = mig
    sim = SimNvml(nvml_mod.pynvml, state=state)
    return Driver(sim, simulated=True), sim


def _ids(drv: Driver) -> dict:
    return {m.slice: (m.gi_id, m.uuid) for m in drv.instances(0)}


def test_every_pair_of_a100_layouts() -> None:
    # A deterministic sample of the 19 x 19 pairs (benchmarks/gpu_apply.py runs them all):
    # each layout to itself, and to the layouts 1 and 4 places on either side in the
    # enumeration, so each sampled unordered pair is checked in both directions.
    n = len(LAYOUTS)
    for i, a in enumerate(LAYOUTS):
        drv, _sim = _driver()
        apply_layout(drv, 0, a)
        assert drv.current_layout(0) == a
        for b in (LAYOUTS[(i + d) % n] for d in (0, 1, 4, n - 4, n - 1)):
            before = _ids(drv)
            rep = apply_layout(drv, 0, b)
            assert drv.current_layout(0) == b
            after = _ids(drv)
            common = set(a.slices) & set(b.slices)
            assert set(rep.kept) == common
            for s in common:  # kept instances keep their GPU instance id and MIG device
                assert after[s] == before[s]
            assert all(m.uuid and m.uuid.startswith("MIG-") for m in drv.instances(0))
            apply_layout(drv, 0, a)  # and back
            assert drv.current_layout(0) == a


def test_second_apply_does_nothing() -> None:
    drv, sim = _driver()
    lay = LAYOUTS[5]
    apply_layout(drv, 0, lay)
    sim.calls.clear()
    rep = apply_layout(drv, 0, lay)
    assert rep.steps == [] and not rep.changed
    mutating = {
        "nvmlDeviceCreateGpuInstanceWithPlacement",
        "nvmlGpuInstanceDestroy",
        "nvmlGpuInstanceCreateComputeInstance",
        "nvmlComputeInstanceDestroy",
    }
    assert not mutating & set(sim.calls)


@pytest.mark.parametrize(
    "old,new",
    [
        ("4g.20gb+2g.10gb+1g.5gb", "3g.20gb+3g.20gb"),
        ("7g.40gb", "2g.10gb+2g.10gb+3g.20gb"),
        ("3g.20gb+2g.10gb+1g.5gb+1g.5gb", "4g.20gb+1g.5gb+1g.5gb+1g.5gb"),
    ],
)
def test_fault_at_every_call_leaves_old_or_new(old: str, new: str) -> None:
    by_name = {lay.name: lay for lay in LAYOUTS}
    a = next(v for k, v in by_name.items() if sorted(k.split("+")) == sorted(old.split("+")))
    b = next(v for k, v in by_name.items() if sorted(k.split("+")) == sorted(new.split("+")))
    # Count the calls of a clean apply first.
    drv, sim = _driver()
    apply_layout(drv, 0, a)
    base = dict(sim.calls)
    sim.trace = []
    apply_layout(drv, 0, b)
    trace = sim.trace
    assert len(trace) > 20
    outcomes = {"new": 0, "rolled_back": 0, "failed_before_change": 0}
    for k, fn in enumerate(trace):
        nth = base.get(fn, 0) + trace[: k + 1].count(fn)
        # every call fails once, the two kinds of error alternating from call to call
        for error in (("UNKNOWN", "INSUFFICIENT_RESOURCES")[k % 2],):
            drv, sim = _driver()
            apply_layout(drv, 0, a)
            assert dict(sim.calls) == base
            sim.inject_fault(fn, nth, error)
            try:
                apply_layout(drv, 0, b)
            except RolledBack:
                sim.clear_faults()
                assert drv.current_layout(0) == a, (k, fn)
                outcomes["rolled_back"] += 1
            except Inconsistent as exc:  # pragma: no cover - the failure message says where
                pytest.fail(f"fault {fn}#{nth} ({error}) left the GPU inconsistent: {exc}")
            except MisoError:
                sim.clear_faults()
                assert drv.current_layout(0) == a, (k, fn)
                outcomes["failed_before_change"] += 1
            else:
                sim.clear_faults()
                assert drv.current_layout(0) == b, (k, fn)
                outcomes["new"] += 1
    assert outcomes["rolled_back"] > 0 and outcomes["failed_before_change"] > 0


def test_busy_instance_is_refused_then_forced() -> None:
    drv, sim = _driver()
    a = next(lay for lay in LAYOUTS if lay.name == "4g.20gb+2g.10gb+1g.5gb")
    apply_layout(drv, 0, a)
    two_g = next(m for m in drv.instances(0) if m.slice.profile == "2g.10gb")
    four_g = next(m for m in drv.instances(0) if m.slice.profile == "4g.20gb")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        sim.attach(two_g.uuid, child.pid, 1000)
        sim.attach(four_g.uuid, os.getpid(), 500)  # on a kept instance: never touched
        b = next(lay for lay in LAYOUTS if lay.name == "4g.20gb+3g.20gb")
        with pytest.raises(GpuBusy) as info:
            apply_layout(drv, 0, b)
        assert child.pid in info.value.details["pids"]
        assert drv.current_layout(0) == a
        rep = apply_layout(drv, 0, b, force=True, kill_timeout_s=5)
        assert rep.killed == [child.pid]
        assert drv.current_layout(0) == b
        assert next(m for m in drv.instances(0) if m.slice.profile == "4g.20gb").uuid == four_g.uuid
        assert [p.pid for p in drv.processes(0)] == [os.getpid()]
    finally:
        child.kill()
        child.wait()


def test_dry_run_changes_nothing_and_lists_steps() -> None:
    drv, sim = _driver(mig=False)
    rep = apply_layout(drv, 0, LAYOUTS[0], dry_run=True)
    assert [s.action for s in rep.steps][0] == "enable_mig"
    assert not drv.gpu(0).mig_current
    drv2, _ = _driver()
    apply_layout(drv2, 0, LAYOUTS[3])
    rep = apply_layout(drv2, 0, LAYOUTS[4], dry_run=True)
    assert drv2.current_layout(0) == LAYOUTS[3]
    kept, destroy, create = diff(drv2.instances(0), LAYOUTS[4])
    assert len(rep.steps) == len(destroy) + len(create)


def test_mig_mode_pending_reports_reset() -> None:
    drv, sim = _driver(mig=False)
    sim.set_mode_change_needs_reset(0)
    rep = apply_layout(drv, 0, LAYOUTS[0])
    assert rep.pending_reset and not rep.matches
    assert drv.gpu(0).mig_pending and not drv.gpu(0).mig_current
    sim.reset_gpu(0)
    rep = apply_layout(drv, 0, LAYOUTS[0])
    assert rep.matches and drv.current_layout(0) == LAYOUTS[0]


def test_mig_enable_with_processes_stays_pending() -> None:
    drv, sim = _driver(mig=False)
    sim.attach(drv.gpu(0).uuid, os.getpid(), 100)
    rep = apply_layout(drv, 0, LAYOUTS[0])
    assert rep.pending_reset and rep.mode_change and rep.mode_change.in_use


def test_apply_on_a30_and_h100() -> None:
    for key in ("a30-24gb", "h100-94gb"):
        drv, _ = _driver(key)
        layouts = enumerate_layouts(model(key))
        for lay in layouts:
            apply_layout(drv, 0, lay)
            assert drv.current_layout(0) == lay


def test_load_plan_shapes(tmp_path) -> None:
    import json

    p = tmp_path / "plan.json"
    p.write_text(json.dumps({"gpus": [{"index": 0, "layout": ["3g.20gb@0", "4g.20gb"]}]}))
    assert load_plan(p) == [(0, ["3g.20gb@0", "4g.20gb"])]
    env = {
        "schema_version": 1,
        "command": "plan",
        "status": "ok",
        "data": {"gpus": [{"index": 1, "mode": "mig", "layout": LAYOUTS[0].to_json()}]},
        "errors": [],
    }
    p.write_text(json.dumps(env))
    assert load_plan(p) == [(1, ["7g.40gb@0:8"])]
    from miso_cli.errors import BadInput

    for bad in (
        "{",
        '{"gpus": 3}',
        '{"gpus": [{"index": -1, "layout": []}]}',
        '{"gpus": [{"index": 0, "layout": [3]}]}',
    ):
        p.write_text(bad)
        with pytest.raises(BadInput) as info:
            load_plan(p)
        assert str(p) in info.value.message


def test_pairs_are_fast_enough() -> None:
    drv, sim = _driver()
    sim.calls.clear()
    for lay in LAYOUTS:
        apply_layout(drv, 0, lay)
    assert drv.current_layout(0) == LAYOUTS[-1]
    # A gross regression guard that counts work instead of timing it (timing fails on a
    # loaded host): about 300 NVML calls per apply today, at most 600 allowed.
    assert sum(sim.calls.values()) <= 600 * len(LAYOUTS)
