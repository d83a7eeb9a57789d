"""The lower bound on mean JCT: below exact optima on tiny cases and below every policy."""

from __future__ import annotations

import functools
import itertools
import random
from fractions import Fraction
from pathlib import Path

import pytest

from miso_cli.planning.bound import BoundJob, job_modes, lower_bound, trace_bound


@functools.cache
def _configs(alive: int) -> list[tuple[int, ...]]:
    """Instance sizes (0 = none) for ``alive`` jobs whose compute slices sum to at most 7."""
    order = (0, 1, 2, 3, 4, 7)
    out = []
    for combo in itertools.product(order, repeat=alive):
        if sum(combo) > 7:
            continue
        # Speeds grow with size, so a job that could take the next size up should.
        grow = [order[order.index(c) + 1] - c for c in combo if c != 7]
        if any(sum(combo) + g <= 7 for g in grow):
            continue
        out.append(combo)
    return out


def _optimum(jobs: list[tuple[int, Fraction, dict[int, Fraction]]]) -> Fraction:
    """Least sum of (completion - release) over schedules on one GPU, in unit time slots.

    Each slot every job that has arrived runs on an instance of some size (or not
    at all), the sizes summing to at most 7 compute slices (placements ignored,
    which only adds schedules); restarts are free; a job finishing inside a
    slot completes there. Exact by search over every choice in every slot.
    """
    n = len(jobs)

    @functools.cache
    def best(t: int, rem: tuple[Fraction, ...]) -> Fraction:
        alive = [k for k in range(n) if rem[k] > 0 and jobs[k][0] <= t]
        if not alive:
            if all(r == 0 for r in rem):
                return Fraction(0)
            nxt = min(jobs[k][0] for k in range(n) if rem[k] > 0)
            return best(nxt, rem)
        out: Fraction | None = None
        for sizes in _configs(len(alive)):
            left = list(rem)
            done = Fraction(0)
            for k, c in zip(alive, sizes, strict=True):
                if not c:
                    continue
                speed = jobs[k][2][c]
                if left[k] <= speed:
                    done += t + left[k] / speed - jobs[k][0]
                    left[k] = Fraction(0)
                else:
                    left[k] -= speed
            if tuple(left) == rem:
                continue  # idling while jobs wait never helps
            total = done + best(t + 1, tuple(left))
            if out is None or total < out:
                out = total
        assert out is not None
        return out

    return best(0, tuple(w for _, w, _ in jobs))


def _random_jobs(rng: random.Random, n: int) -> list[tuple[int, Fraction, dict[int, Fraction]]]:
    jobs = []
    for _ in range(n):
        s4 = Fraction(rng.choice([5, 6, 7, 8]), 10)
        s3 = s4 * Fraction(rng.choice([7, 8, 9, 10]), 10)
        s2 = s3 * Fraction(rng.choice([5, 6, 7]), 10)
        s1 = s2 * Fraction(rng.choice([5, 6]), 10)
        speeds = {7: Fraction(1), 4: s4, 3: s3, 2: s2, 1: s1}
        jobs.append((rng.randint(0, 1), Fraction(rng.choice([1, 2, 3]), 2), speeds))
    return jobs


@pytest.mark.parametrize("seed", range(12))
def test_bound_is_below_the_exact_optimum_on_one_gpu(seed: int) -> None:
    rng = random.Random(seed)
    jobs = _random_jobs(rng, 3 if seed % 6 == 0 else 2)
    exact = _optimum(jobs) / len(jobs)
    bound = lower_bound(
        [
            BoundJob(f"j{k}", float(r), float(w), tuple((c / 7, float(v)) for c, v in s.items()))
            for k, (r, w, s) in enumerate(jobs)
        ],
        1,
        intervals=40,
    )
    assert bound.mean_jct_s <= float(exact) + 1e-7
    # Not vacuous: at least each job's own run time.
    assert bound.mean_jct_s >= bound.trivial_mean_jct_s - 1e-9


def test_capacity_binds_when_jobs_pile_up() -> None:
    """Ten compute-bound jobs arriving at once on one GPU: the bound sees the queue."""
    jobs = [BoundJob(f"j{k}", 0.0, 100.0, ((1.0, 1.0),)) for k in range(10)]
    bound = lower_bound(jobs, 1, intervals=200)
    # Serial on one GPU: completions 100, 200, ..., 1000 (mean 550) is optimal here.
    assert bound.trivial_mean_jct_s == pytest.approx(100.0)
    assert 450.0 <= bound.mean_jct_s <= 550.0 + 1e-6
    # Two GPUs halve the queue.
    assert lower_bound(jobs, 2, intervals=200).mean_jct_s < bound.mean_jct_s


def test_a_job_slowed_by_sharing_counts_its_time_running() -> None:
    """Two jobs of two whole-GPU seconds on one GPU, that share it (4g + 3g, at 0.9 and
    0.8 of their speed) or run one after the other: the busy-time rows (a job runs in one
    mode at a time, so its time running fits before its completion) see that sharing
    slows each one. The mean-busy-time rows alone gave 2.13 s here; exact: 2.35 s."""
    speeds = {7: Fraction(1), 4: Fraction(9, 10), 3: Fraction(4, 5), 2: Fraction(1, 2)}
    speeds[1] = Fraction(1, 4)
    jobs = [(0, Fraction(2), speeds), (0, Fraction(2), speeds)]
    exact = float(_optimum(jobs)) / 2
    modes = tuple((c / 7, float(v)) for c, v in speeds.items())
    bound = lower_bound([BoundJob(f"j{k}", 0.0, 2.0, modes) for k in range(2)], 1, intervals=40)
    assert 2.2 <= bound.mean_jct_s <= exact + 1e-7


def test_modes_of_a_catalog_workload() -> None:
    from miso_cli.gpu.sim import simmps
    from miso_cli.spec.catalog import Workload

    w = Workload("bert_2", {7: 47.2, 4: 68.6, 3: 75.3, 2: 121.3, 1: None}, {100: 47.2, 14: 119.4})
    mig = job_modes(w, mps_model="pessimistic")
    assert (1.0, 1.0) in mig and len(mig) == 5  # 4 instances that fit + a lone whole GPU
    optimistic = job_modes(w)
    assert (0.14, 47.2 / 119.4) in optimistic
    over = job_modes(w, oversubscribed=True)
    assert set(optimistic) < set(over)
    # Pessimistic MPS mixes stay on or under the MIG trade-off the bound uses.
    hull = simmps.mig_envelope(w)
    for n in range(2, 8):
        step = simmps.colocated_step_times_ms([w] * n, 14, "pessimistic")[0]
        speed = 47.2 / step
        assert simmps.mig_capacity(w, speed) <= 1.0 / n + 1e-9
    assert hull[0] == (0.0, 0.0) and hull[-1] == (1.0, 1.0)


def test_bound_is_below_every_policy_on_a_small_trace() -> None:
    from miso_cli.gpu.profiles import model as gpu_model
    from miso_cli.policy import registry
    from miso_cli.sim.simulator import SimConfig, TraceJob, make_predict, simulate
    from miso_cli.spec.catalog import load_catalog

    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "a100-40gb" / "catalog.csv"
    if not data.exists():
        pytest.skip("shared A100 catalog not present")
    cat = load_catalog(data)
    rng = random.Random(3)
    names = sorted(n for n, w in cat.workloads.items() if w.step_time_ms(7) is not None)
    trace = []
    t = 0.0
    for k in range(8):
        t += rng.expovariate(1 / 40.0)
        trace.append(TraceJob(f"t{k}", round(t, 1), rng.choice(names), rng.randint(120, 900)))
    a100 = gpu_model("a100-40gb")
    predict, _ = make_predict(None, a100, None)
    bound = trace_bound(trace, cat, 2, oversubscribed=True, intervals=60)
    plain = trace_bound(trace, cat, 2, intervals=60)
    pessimistic = trace_bound(trace, cat, 2, mps_model="pessimistic", intervals=60)
    assert bound.mean_jct_s <= plain.mean_jct_s + 1e-6
    for name in ("nopart", "static", "oracle", "miso", "miso+", "mps"):
        got = simulate(
            trace, cat, [a100] * 2, registry.get(name), predict=predict, config=SimConfig()
        )
        mean = got.summary()["mean_jct_s"]
        assert bound.mean_jct_s <= mean + 1e-6, name
        if name in ("nopart", "static", "mps", "oracle"):  # never oversubscribe MPS
            assert plain.mean_jct_s <= mean + 1e-6, name
        if name in ("nopart", "static", "oracle"):  # no MPS: the same under either model
            assert pessimistic.mean_jct_s <= mean + 1e-6, name
        if name != "mps":
            continue  # the others run no MPS outside profiling: the checks above cover them
        got = simulate(
            trace,
            cat,
            [a100] * 2,
            registry.get(name),
            predict=predict,
            config=SimConfig(mps_model="pessimistic"),
        )
        assert pessimistic.mean_jct_s <= got.summary()["mean_jct_s"] + 1e-6, name


def test_simulate_bound_and_mps_model_options(cli, tmp_path: Path) -> None:
    from conftest import parse_envelope

    cat = tmp_path / "catalog.csv"
    cat.write_text(
        "workload,mig_7g,mig_4g,mig_3g,mig_2g,mig_1g,mps_100,mps_50,mps_14\n"
        "small_1,10,11,12,13,14,10,10.5,14\n"
    )
    trace = tmp_path / "trace.csv"
    trace.write_text("job,arrival_s,workload,duration_7g_s\na,0,small_1,100\nb,0,small_1,100\n")
    base = ["simulate", "--trace", str(trace), "--catalog", str(cat), "--gpu", "sim:a100-40gbx1"]
    code, out, _ = cli(
        *base,
        "--policy",
        "nopart,mps",
        "--bound",
        "--mps-model",
        "pessimistic",
        "--json",
        "--state-dir",
        str(tmp_path / "s"),
    )
    assert code == 0
    data = parse_envelope(out)["data"]
    assert data["mps_model"] == "pessimistic"
    low = data["bound"]["mean_jct_s"]
    assert 100.0 <= low
    for r in data["results"]:
        assert r["mean_jct_vs_bound"] >= 1.0 - 1e-9
    code, _, err = cli(*base, "--mps-model", "rosy", "--state-dir", str(tmp_path / "s"))
    assert code != 0 and "--mps-model" in err
