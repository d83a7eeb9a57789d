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
from miso_cli.gpu.sim.simnvml import MUTATING_CALLS, SimNvml, new_state

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


# ------------------------------------------------------------ apply as a transaction

PAIRS = [
    ("4g.20gb+2g.10gb+1g.5gb", "3g.20gb+3g.20gb"),
    ("7g.40gb", "2g.10gb+2g.10gb+3g.20gb"),
    ("3g.20gb+2g.10gb+1g.5gb+1g.5gb", "4g.20gb+1g.5gb+1g.5gb+1g.5gb"),
    ("1g.5gb+1g.5gb+1g.5gb+1g.5gb+1g.5gb+1g.5gb+1g.5gb", "7g.40gb"),
    ("4g.20gb+3g.20gb", "3g.20gb+2g.10gb+1g.5gb+1g.5gb"),
]
MUTATING = MUTATING_CALLS  # the simulated driver's own list of calls that change a GPU


def _by_name(name: str):
    want = sorted(name.split("+"))
    return next(lay for lay in LAYOUTS if sorted(lay.name.split("+")) == want)


class _Killed(BaseException):
    """Stands for kill -9: nothing after it runs (no rollback, no cleanup)."""


class _Interrupting:
    """The simulated NVML, with a kill or a signal at the ``at``-th mutating call."""

    def __init__(self, sim: SimNvml, at: int, action: str) -> None:
        self._sim, self._at, self._action, self.n = sim, at, action, 0

    def __getattr__(self, name: str):
        attr = getattr(self._sim, name)
        if name not in MUTATING:
            return attr

        def call(*args, **kwargs):
            self.n += 1
            if self.n == self._at and self._action == "kill":
                raise _Killed
            out = attr(*args, **kwargs)
            if self.n == self._at and self._action in ("SIGINT", "SIGTERM"):
                os.kill(os.getpid(), getattr(__import__("signal"), self._action))
            return out

        return call


def _count_mutating(a, b) -> int:
    drv, sim = _driver()
    apply_layout(drv, 0, a)
    sim.trace = []
    apply_layout(drv, 0, b)
    return sum(1 for fn in sim.trace if fn in MUTATING)


@pytest.mark.parametrize("old,new", PAIRS)
def test_kill_at_every_mutating_call_is_recovered_to_old_or_new(old, new, tmp_path) -> None:
    from miso_cli.gpu.apply import recover_unfinished, state_problems

    a, b = _by_name(old), _by_name(new)
    total = _count_mutating(a, b)
    intent = tmp_path / "gpu.apply.json"
    seen = set()
    for at in range(1, total + 1):
        drv, sim = _driver()
        apply_layout(drv, 0, a)
        proxy = _Interrupting(sim, at, "kill")
        killed = Driver(proxy, simulated=True)
        with pytest.raises(_Killed):
            apply_layout(killed, 0, b, intent=intent)
        assert intent.exists()  # the intent was on disk before the GPU changed
        msg = recover_unfinished(drv, 0, intent)
        assert msg and "interrupted" in msg
        assert not intent.exists()
        ok_old, ok_new = not state_problems(drv, 0, a), not state_problems(drv, 0, b)
        assert ok_old or ok_new, (at, msg, drv.current_layout(0).name)
        seen.add("old" if ok_old else "new")
        assert recover_unfinished(drv, 0, intent) is None  # nothing left to do
    assert "old" in seen


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("old,new", PAIRS[:2])
def test_a_signal_mid_apply_waits_until_the_layout_is_whole(old, new, sig, tmp_path) -> None:
    import signal as signal_mod

    from miso_cli.gpu.apply import state_problems

    a, b = _by_name(old), _by_name(new)
    total = _count_mutating(a, b)
    intent = tmp_path / "gpu.apply.json"
    got: list[int] = []
    previous = signal_mod.signal(
        signal_mod.SIGTERM, lambda s, f: (_ for _ in ()).throw(KeyboardInterrupt)
    )
    try:
        for at in range(1, total + 1):
            drv, sim = _driver()
            apply_layout(drv, 0, a)
            with pytest.raises(KeyboardInterrupt):
                apply_layout(
                    Driver(_Interrupting(sim, at, sig), simulated=True), 0, b, intent=intent
                )
            got.append(at)
            assert state_problems(drv, 0, b) == [], at  # finished, then the signal
            assert not intent.exists()
    finally:
        signal_mod.signal(signal_mod.SIGTERM, previous)
    assert got == list(range(1, total + 1))


def test_rollback_repairs_a_gpu_instance_left_without_compute_instance() -> None:
    """Issue item 7: the GPU-instance destroy fails after its compute instance went."""
    from miso_cli.gpu.apply import state_problems

    a, b = _by_name("4g.20gb+2g.10gb+1g.5gb"), _by_name("3g.20gb+3g.20gb")
    drv, sim = _driver()
    apply_layout(drv, 0, a)
    sim.inject_fault("nvmlGpuInstanceDestroy", 1, "UNKNOWN")
    with pytest.raises(RolledBack):
        apply_layout(drv, 0, b)
    assert state_problems(drv, 0, a) == []
    assert all(m.ci_id is not None and m.uuid for m in drv.instances(0))


def test_check_looks_below_profile_names(cli, state_dir) -> None:
    """A GPU instance without compute instance or MIG device is not a match."""
    a = ["4g.20gb@0", "2g.10gb@4", "1g.5gb@6"]
    code, _, err = cli("apply", "--gpu", "sim:a100-40gb", *a)
    assert code == 0, err
    faults = {"MISO_SIM_FAULTS": "nvmlGpuInstanceDestroy:*:UNKNOWN"}
    code, _, err = cli("apply", "--gpu", "sim:a100-40gb", "3g.20gb", "3g.20gb", env=faults)
    assert code == 10 and "no compute instance" in err, err  # INCONSISTENT, and says why
    code, out, err = cli("apply", "--gpu", "sim:a100-40gb", "--check", "--json", *a)
    assert code == 6, err
    assert "no compute instance" in err
    code, _, err = cli("apply", "--gpu", "sim:a100-40gb", *a)  # repairs it
    assert code == 0, err
    code, _, err = cli("apply", "--gpu", "sim:a100-40gb", "--check", *a)
    assert code == 0, err


def test_in_use_without_a_process_is_retried_then_busy(monkeypatch) -> None:
    from miso_cli.gpu import apply as core

    a, b = _by_name("4g.20gb+2g.10gb+1g.5gb"), _by_name("3g.20gb+3g.20gb")
    drv, sim = _driver()
    apply_layout(drv, 0, a)
    pauses: list[float] = []
    sim.inject_fault("nvmlComputeInstanceDestroy", 1, "IN_USE")
    rep = apply_layout(drv, 0, b, sleep=pauses.append)
    assert rep.matches and pauses == [core.BUSY_BACKOFF.first_s]

    drv, sim = _driver()
    apply_layout(drv, 0, a)
    sim.inject_fault("nvmlComputeInstanceDestroy", "*", "IN_USE")  # held by an agent
    monkeypatch.setattr(core, "likely_holders", lambda: ["nv-hostengine (pid 7, DCGM)"])
    pauses.clear()
    with pytest.raises(GpuBusy, match="nv-hostengine") as info:
        apply_layout(drv, 0, b, sleep=pauses.append)
    assert len(pauses) == core.BUSY_BACKOFF.tries - 1  # bounded
    assert info.value.details["rolled_back"] is True
    sim.clear_faults()
    assert core.state_problems(drv, 0, a) == []


def test_likely_holders_are_found_by_name() -> None:
    from miso_cli.gpu.apply import likely_holders

    found = likely_holders(lambda: [("python", 1), ("nvidia-persistenced", 42), ("nvsm", 5)])
    assert any("nvidia-persistenced (pid 42" in f for f in found)
    assert any(f.startswith("nvsm (pid 5") for f in found)
    assert not any(f.startswith("python") for f in found)


def test_the_next_command_recovers_an_interrupted_apply_and_says_so(cli, state_dir) -> None:
    from miso_cli.gpu.apply import write_intent
    from miso_cli.gpu.nvml import open_driver
    from miso_cli.runtime.locks import gpu_lock

    a, b = _by_name("4g.20gb+2g.10gb+1g.5gb"), _by_name("3g.20gb+3g.20gb")
    code, _, err = cli("apply", "--gpu", "sim:a100-40gb", *[s.key for s in a.slices])
    assert code == 0, err
    drv = open_driver("sim:a100-40gb", state_dir)
    lock = gpu_lock(drv, 0, "test")
    # A killed apply: intent written, first instance destroyed, then nothing.
    write_intent(lock.intent_path, 0, drv.gpu(0).uuid, a, b)
    drv.destroy_instance(0, drv.instances(0)[0].gi_id)
    code, _, err = cli("apply", "--gpu", "sim:a100-40gb", "--check", *[s.key for s in a.slices])
    assert code == 6 and "unfinished" in err  # --check changes nothing, but says so
    code, out, err = cli("apply", "--gpu", "sim:a100-40gb", "--json", "7g.40gb")
    assert code == 0, err
    assert "interrupted" in err and "rolled back to" in err
    assert not lock.intent_path.exists()
    assert open_driver("sim:a100-40gb", state_dir).current_layout(0).name == "7g.40gb"


@pytest.mark.parametrize(
    ("key", "args", "reset_said"),
    [
        ("h100-80gb", ["--mig", "on"], False),
        ("h100-80gb", ["-i", "0", "4g.40gb"], False),
        ("a100-40gb", ["--mig", "on"], True),
        ("a100-40gb", ["-i", "0", "4g.20gb"], True),
    ],
)
def test_a_busy_gpu_refusing_mig_mode_is_told_in_its_models_terms(
    cli, tmp_path, key: str, args: list[str], reset_said: bool
) -> None:
    """A CUDA process on the GPU: an A100 waits for a reset; a Hopper refuses outright and
    needs no reset, so miso must not tell the user to reset it."""
    import json

    from miso_cli.gpu.sim.simnvml import attach_process
    from tests.conftest import parse_envelope

    sd = tmp_path / "state"
    code, out, _ = cli("status", "--gpu", f"sim:{key}", "--state-dir", str(sd), "--json")
    assert code == 0
    path = sd / "sim" / f"{key}.json"
    uuid = json.loads(path.read_text())["gpus"][0]["uuid"]
    attach_process(path, uuid, os.getpid(), 100)
    code, out, err = cli("apply", "--gpu", f"sim:{key}", "--state-dir", str(sd), *args, "--json")
    assert code == 6, err
    error = parse_envelope(out)["errors"][0]
    text = error["message"] + " " + error.get("hint", "")
    assert ("nvidia-smi -r" in text) is reset_said, text
