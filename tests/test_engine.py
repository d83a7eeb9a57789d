"""What both drivers decide the same way: events, queue order, arrivals, never a failed plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from miso_cli.errors import BadInput
from miso_cli.gpu.profiles import MODELS
from miso_cli.policy import registry
from miso_cli.policy.core import (
    EVENT_KINDS,
    ClusterView,
    Event,
    GpuView,
    JobView,
    SlicePrediction,
)
from miso_cli.policy.miso import MisoPlus
from miso_cli.spec.queue import parse_queue

A100 = MODELS["a100-40gb"]
GIB = 1024.0
REL = {7: 1.0, 4: 1.3, 3: 1.45, 2: 2.2, 1: 4.0}
PRED = SlicePrediction(dict(REL), {g: 0.1 for g in REL})
POLICIES = {
    "nopart": {},
    "layout": {"layout": ["3g.20gb", "2g.10gb", "2g.10gb"]},
    "static": {},
    "mps": {},
    "miso": {},
    "oracle": {},
    "miso+": {},
}


def test_four_crowded_jobs_after_profiling_are_planned_not_a_plan_error() -> None:
    """16, 9, 8 and 4 GiB fit one MPS group but no MIG layout one instance each."""
    mem = {"a": 16 * GIB, "b": 9 * GIB, "c": 8 * GIB, "d": 4 * GIB}
    pol = MisoPlus()
    fresh = {  # long enough for profiling to pay (issue-12: a length must be known)
        n: JobView(n, 0.0, memory_mb=m, seq=i, total_steps=5000, step_time_7g_s=1.0)
        for i, (n, m) in enumerate(mem.items())
    }
    (profile,) = pol.decide(Event("arrival", job="a"), ClusterView(0.0, [GpuView(0, A100)], fresh))
    # Only a group that can afterwards run side by side is profiled together.
    assert profile.profile_s and list(profile.assignment) == ["a", "b", "c"]
    # Even if a driver put all four under MPS, the plan after it places what fits.
    running = {
        n: JobView(
            n,
            0.0,
            state="running",
            gpu=0,
            memory_mb=m,
            prediction=PRED,
            profiled=True,
            total_steps=100,
            step_time_7g_s=0.1,
            seq=i,
        )
        for i, (n, m) in enumerate(mem.items())
    }
    gpu = GpuView(0, A100, mode="mps", jobs=dict.fromkeys(mem))
    (t,) = pol.decide(Event("profiled", gpu=0), ClusterView(10.0, [gpu], running))
    assert t.mode == "mig" and len(t.assignment) == 3  # the fourth waits


@pytest.mark.parametrize("kind", EVENT_KINDS)
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_places_waiting_jobs_on_every_event_kind(name: str, kind: str) -> None:
    """A resumed run (event 'resume') or a tick with idle GPUs and a queue starts jobs."""
    pol = registry.get(name, **POLICIES[name])
    known = name == "oracle"
    jobs = {
        n: JobView(
            n,
            0.0,
            memory_mb=4 * GIB,
            seq=i,
            prediction=PRED if known else None,
            profiled=known,
            total_steps=100,
            step_time_7g_s=0.1 if known else None,
        )
        for i, n in enumerate(["zeta", "alpha"])
    }
    view = ClusterView(5.0, [GpuView(0, A100), GpuView(1, A100)], jobs)
    targets = pol.decide(Event(kind, job="zeta" if kind == "arrival" else None), view)  # type: ignore[arg-type]
    placed = [j for t in targets for j in t.assignment]
    assert "zeta" in placed, (name, kind, targets)


def test_queue_order_is_file_order_then_priority() -> None:
    jobs = [JobView("zeta", 0.0, seq=0), JobView("alpha", 0.0, seq=1), JobView("mid", 0.0, seq=2)]
    view = ClusterView(0.0, [], {j.name: j for j in jobs})
    assert [j.name for j in view.queue()] == ["zeta", "alpha", "mid"]
    view.jobs["mid"].priority = 1
    assert [j.name for j in view.queue()] == ["mid", "zeta", "alpha"]


def _journal(tmp_path: Path, body: str, now: float = 1000.0):
    from miso_cli.runtime.journal import Journal

    (tmp_path / "t.py").write_text("")
    return Journal.create(
        tmp_path / "state",
        parse_queue("version = 1\n" + body, tmp_path / "q.toml"),
        gpu_spec="sim:a100-40gb",
        policy="nopart",
        policy_options={},
        options={},
        now=now,
    )


JOB = '[[job]]\nname = "{}"\ncommand = ["python", "t.py"]\n'


def test_the_run_queues_jobs_in_file_order(tmp_path: Path) -> None:
    from miso_cli.policy.simple import NoPart
    from miso_cli.runtime.executor import Executor

    journal = _journal(tmp_path, JOB.format("zeta") + JOB.format("alpha"))
    ex = Executor(None, NoPart(), journal, clock=lambda: 1000.0)
    ex._engine = ex._build_engine(resumed=True)  # both in the queue, as a resumed run finds them
    assert [j.name for j in ex.view().queue()] == ["zeta", "alpha"]


def test_arrival_is_an_offset_from_the_start(tmp_path: Path) -> None:
    from miso_cli.policy.simple import NoPart
    from miso_cli.runtime.executor import Executor

    journal = _journal(
        tmp_path, JOB.format("early") + JOB.format("late") + 'arrival = "90s"\n', now=1000.0
    )
    assert journal.jobs["late"].queued_at == 1090.0
    from miso_cli.engine.core import Arrived

    now = [1000.0]
    ex = Executor(None, NoPart(), journal, clock=lambda: now[0])
    ex._schedule_arrivals()
    ex._engine = ex._build_engine(resumed=True)
    assert list(ex.view().jobs) == ["early"]
    assert ex.engine.jobs["late"].arrival_s == 90.0  # the engine's clock starts with the run
    assert ex.arrivals(1089.0) == [] and ex.facts == []
    now[0] = 1090.0
    assert ex.arrivals(1090.0) == ["late"] and ex.facts == [Arrived("late")]


@pytest.mark.parametrize(
    "value, ok",
    [
        ('"90s"', 90.0),
        ("15", 15.0),
        ('"2m"', 120.0),
        ("0", 0.0),
        ('"-1s"', None),
        ('"soon"', None),
        ("true", None),
        ("[1]", None),
        ("1e99", None),
    ],
)
def test_arrival_is_validated_like_other_keys(tmp_path: Path, value: str, ok: float | None) -> None:
    (tmp_path / "t.py").write_text("")
    text = "version = 1\n" + JOB.format("a") + f"arrival = {value}\n"
    if ok is None:
        with pytest.raises(BadInput, match=r"q.toml:5: job #1 arrival"):
            parse_queue(text, tmp_path / "q.toml")
    else:
        assert parse_queue(text, tmp_path / "q.toml").jobs[0].arrival_s == ok


def test_the_rules_both_drivers_apply_to_a_target() -> None:
    from miso_cli.engine.rules import PROFILE_ORDER, Placed, is_reconfiguration, moves
    from miso_cli.gpu.layouts import Layout, place
    from miso_cli.policy.core import GpuTarget

    lay = place(A100, ["4g.20gb", "3g.20gb"])
    four, three = sorted(lay.slices, key=lambda s: -s.slices)
    same = GpuTarget(0, "mig", lay, {"a": four, "b": three})
    assert not is_reconfiguration("mig", lay, same)
    assert is_reconfiguration("full", Layout(()), same)
    assert is_reconfiguration("mig", Layout((four,)), same)
    running = {"a": Placed(0, four), "b": Placed(0, three), "c": Placed(1, None)}
    assert moves(0, "mig", same, running) == {}
    swap = GpuTarget(0, "mig", lay, {"a": three, "c": four})
    assert moves(0, "mig", swap, running) == {"a": "migrate", "b": "requeue", "c": "migrate"}
    # Under MPS a new share is a new CUDA context: a restart; the same share is not.
    mps = {"a": Placed(0, None, 100.0)}
    assert moves(0, "mps", GpuTarget(0, "mps", assignment={"a": None}), mps) == {}
    half = GpuTarget(0, "mps", assignment={"a": None}, mps_share={"a": 50})
    assert moves(0, "mps", half, mps) == {"a": "migrate"}
    # Profiling runs the smallest share first and ends at 100 %.
    assert PROFILE_ORDER == (14, 50, 100)


@pytest.mark.parametrize("name", ["static", "miso", "miso+"])
def test_the_simulators_incremental_view_matches_its_jobs(name: str, tmp_path: Path) -> None:
    """The view is rebuilt only for jobs that can have changed: it must still be right."""
    from miso_cli.sim.simulator import Simulator, load_trace, make_predict
    from miso_cli.spec.catalog import load_catalog

    root = Path(__file__).resolve().parent.parent
    cat = load_catalog(root / "examples" / "catalog.csv")
    trace = load_trace(root / "examples" / "trace.csv", cat)[:14]
    pol = registry.get(name)
    predict = make_predict(None, A100, tmp_path)[0] if name != "static" else None
    sim = Simulator(trace, cat, [A100, A100], pol, predict=predict)
    decide = pol.decide
    looks = []

    def checking(event: Event, view: ClusterView) -> list:
        for job_name, j in sim.jobs.items():
            if j.state == "pending":
                assert job_name not in view.jobs
                continue
            v = view.jobs[job_name]
            assert (v.state, v.gpu, v.slice, v.done_steps, v.prediction, v.profiled) == (
                j.state,
                j.gpu,
                j.slice,
                j.done,
                j.prediction,
                j.profiled,
            ), job_name
        fresh = ClusterView(view.now, view.gpus, view.jobs)  # its queue found from the jobs
        assert [j.name for j in view.queue()] == [j.name for j in fresh.queue()]
        assert view.fingerprint() == fresh.fingerprint()
        # A GPU's view is kept until the GPU changes: it must still be the GPU as it is
        # (the simulator's stops are instant, so no target is pending when a policy looks).
        for g, gv in zip(sim.gpus, view.gpus, strict=True):
            layout = g.layout if g.mode == "mig" else None
            assert (gv.mode, gv.layout if layout else None, gv.jobs, gv.busy, gv.profiling) == (
                g.mode,
                layout,
                g.jobs,
                g.pending is not None,
                g.phase is not None,
            ), g.index
        looks.append(event.kind)
        return decide(event, view)

    pol.decide = checking  # type: ignore[method-assign]
    sim.run()
    assert "finish" in looks and "arrival" in looks


@pytest.mark.parametrize("name", ["nopart", "static", "mps", "miso", "oracle"])
def test_a_policy_that_reads_no_measured_speed_decides_the_same_unmeasured(
    name: str, tmp_path: Path
) -> None:
    """The engine measures jobs' speeds only for a policy that reads them: skipping the
    looks changes no decision of the policies that say they read none."""
    from miso_cli.sim.simulator import load_trace, make_predict, simulate
    from miso_cli.spec.catalog import load_catalog

    root = Path(__file__).resolve().parent.parent
    cat = load_catalog(root / "examples" / "catalog.csv")
    trace = load_trace(root / "examples" / "trace.csv", cat)[:14]
    predict = make_predict(None, A100, tmp_path)[0]
    results = []
    for reads in (False, True):
        pol = registry.get(name)
        assert pol.reads_measured_speed is False
        pol.reads_measured_speed = reads  # type: ignore[misc]
        results.append(simulate(trace, cat, [A100, A100], pol, predict=predict))
    unmeasured, measured = results
    assert unmeasured.targets == measured.targets
    assert unmeasured.summary() == measured.summary()


def test_a_wrong_target_is_refused_before_any_job_is_asked_to_stop(tmp_path: Path) -> None:
    from miso_cli.errors import UsageError
    from miso_cli.gpu.layouts import Layout, place
    from miso_cli.policy.core import GpuTarget
    from miso_cli.policy.simple import NoPart
    from miso_cli.runtime.executor import Executor, GpuState

    lay = place(A100, ["4g.20gb", "3g.20gb"])
    bad = GpuTarget(0, "mig", Layout((lay.slices[0],)), {"a": lay.slices[1]})

    class Wrong(NoPart):
        def decide(self, event, view):  # type: ignore[no-untyped-def]
            return [bad]

    journal = _journal(tmp_path, JOB.format("a"))
    rec = journal.jobs["a"]
    rec.state, rec.gpu, rec.pid = "running", 0, 424242
    ex = Executor(None, Wrong(), journal, clock=lambda: 1000.0)
    ex.gpus = [GpuState(0, "GPU-x", "A100", A100)]
    ex._engine = ex._build_engine(resumed=True)
    stopped: list[list[str]] = []
    ex.stop_jobs = lambda names, reasons, wait: stopped.append(names)  # type: ignore[method-assign]
    with pytest.raises(UsageError, match="assigned to no instance"):
        ex._perform(ex._ask(ex.engine.tick, 0.0, True))
    assert stopped == [] and rec.state == "running"


def test_utilisation_counts_a_shared_gpu_once() -> None:
    from miso_cli.engine.rules import busy_slice_seconds

    spans = [
        (0, 3, 0.0, 10.0),  # a 3g instance for 10 s
        (0, 2, 5.0, 10.0),  # a 2g instance for 5 s
        (1, None, 0.0, 10.0),  # two jobs sharing GPU 1 under MPS, overlapping 5 s
        (1, None, 5.0, 20.0),
        (1, None, 30.0, 30.0),  # an empty span counts nothing
    ]
    assert busy_slice_seconds(spans, {0: 7, 1: 7}) == 3 * 10 + 2 * 5 + 7 * 20


def test_one_whole_gpu_step_time_from_a_step_time_on_an_instance() -> None:
    from miso_cli.engine.rules import step_time_7g_s

    assert step_time_7g_s(2.0, 7, 7, PRED) == 2.0
    assert step_time_7g_s(1.45, 3, 7, PRED) == pytest.approx(1.0)  # by the prediction
    assert step_time_7g_s(7.0, 1, 7, None) == pytest.approx(1.0)  # by compute slices
