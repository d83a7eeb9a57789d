"""The use cases in ``miso_cli.commands``, called directly (no CliRunner): their typed results.

The CLI tests pin what a person and a script see; these pin what each use case returns,
so the command modules can stay thin.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from miso_cli.errors import BadInput, ExitCode, UsageError

# -- apply ---------------------------------------------------------------------------


def test_apply_request_is_exactly_one_of_instances_plan_or_mode(tmp_path: Path) -> None:
    from miso_cli.commands.apply import WantedLayout, wanted_layouts

    assert wanted_layouts(["3g.20gb", "4g.20gb"], None, None, 1) == [
        WantedLayout(1, ["3g.20gb", "4g.20gb"], "arguments")
    ]
    assert wanted_layouts(None, None, "off", 0) == []
    with pytest.raises(UsageError, match="exactly one"):
        wanted_layouts(None, None, None, 0)
    with pytest.raises(UsageError, match="exactly one"):
        wanted_layouts(["7g.40gb"], None, "on", 0)
    with pytest.raises(UsageError, match="--mig"):
        wanted_layouts(None, None, "maybe", 0)
    with pytest.raises(UsageError, match="--check and --dry-run"):
        wanted_layouts(["7g.40gb"], None, None, 0, check=True, dry_run=True)
    plan = tmp_path / "plan.json"
    plan.write_text('{"gpus": [{"index": 1, "layout": ["3g.20gb@4", "4g.20gb@0"]}]}')
    (w,) = wanted_layouts(None, plan, None, 0)
    assert (w.gpu_index, w.tokens, w.source) == (1, ["3g.20gb@4", "4g.20gb@0"], f"{plan}: GPU 1")


def test_apply_then_check_on_a_simulated_gpu(tmp_path: Path) -> None:
    from miso_cli.commands.apply import ApplyResult, apply, wanted_layouts

    wanted = wanted_layouts(["3g.20gb", "2g.10gb", "2g.10gb"], None, None, 0)
    done = apply("sim:a100-40gb", tmp_path, wanted)
    assert isinstance(done, ApplyResult)
    assert (done.exit_code, done.errors, done.check, done.dry_run) == (
        ExitCode.OK,
        [],
        False,
        False,
    )
    (gpu,) = done.gpus
    assert gpu["after"]["name"] == "3g.20gb+2g.10gb+2g.10gb"
    assert gpu["steps"]
    assert list(done.to_json()) == ["check", "dry_run", "gpus", "recovered"]

    same = apply("sim:a100-40gb", tmp_path, wanted, check=True)
    assert same.exit_code == ExitCode.OK
    assert same.gpus[0]["matches"] is True and same.gpus[0]["problems"] == []

    other = wanted_layouts(["7g.40gb"], None, None, 0)
    differs = apply("sim:a100-40gb", tmp_path, other, check=True)
    assert differs.exit_code == ExitCode.STATE_DIFFERS
    assert differs.gpus[0]["matches"] is False
    assert [e["code"] for e in differs.errors] == ["STATE_DIFFERS"]

    dry = apply("sim:a100-40gb", tmp_path, other, dry_run=True)
    assert dry.gpus[0]["dry_run"] is True and dry.gpus[0]["steps"]
    assert apply("sim:a100-40gb", tmp_path, other, check=True).exit_code == ExitCode.STATE_DIFFERS


def test_apply_from_a_plan_names_a_missing_gpu(tmp_path: Path) -> None:
    from miso_cli.commands.apply import WantedLayout, apply

    wanted = [WantedLayout(3, ["7g.40gb"], "plan.json: GPU 3")]
    with pytest.raises(BadInput, match=r"plan.json: GPU 3: no such GPU \(this machine has 1\)"):
        apply("sim:a100-40gb", tmp_path, wanted, from_plan=True)


def test_mig_mode_result(tmp_path: Path) -> None:
    from miso_cli.commands.apply import MigModeResult, apply

    # A fresh simulated A100 has MIG off: asking for on with --check changes nothing.
    found = apply("sim:a100-40gb", tmp_path, [], mig=True, check=True)
    assert isinstance(found, MigModeResult)
    assert found.to_json() == {
        "gpu_index": 0,
        "mig_wanted": True,
        "mig_current": False,
        "mig_pending": False,
        "changed": False,
    }
    assert found.exit_code == ExitCode.STATE_DIFFERS
    assert found.errors == [
        {
            "code": "STATE_DIFFERS",
            "message": "GPU 0: MIG mode is off",
            "hint": "stop processes on it, then 'nvidia-smi -r -i 0' as root, or reboot",
        }
    ]
    # Switched on: the driver's answer comes beside the mode.
    on = apply("sim:a100-40gb", tmp_path, [], mig=True)
    data = on.to_json()
    assert list(data)[:5] == ["gpu_index", "mig_wanted", "mig_current", "mig_pending", "changed"]
    assert (data["mig_current"], data["changed"], data["current"]) == (True, True, True)
    assert "needs_reset" in data and on.exit_code == ExitCode.OK and on.errors == []
    again = apply("sim:a100-40gb", tmp_path, [], mig=True)
    assert (again.changed, again.change, again.exit_code) == (False, None, ExitCode.OK)


# -- simulate ------------------------------------------------------------------------

TRACE = "job,arrival_s,workload,duration_7g_s\na,0,toy_a,100\nb,10,toy_a,50\nc,20,toy_b,80\n"
CATALOG = (
    "workload,mig_7g,mig_4g,mig_3g,mig_2g,mig_1g,mps_100,mps_50,mps_14\n"
    "toy_a,100,130,150,220,400,100,120,300\n"
    "toy_b,50,60,70,,,50,60,150\n"
)


def _request(tmp_path: Path, **options: object) -> object:
    from miso_cli.commands.simulate import SimulateRequest

    trace, catalog = tmp_path / "trace.csv", tmp_path / "catalog.csv"
    trace.write_text(TRACE)
    catalog.write_text(CATALOG)
    options.setdefault("gpu", "sim:a100-40gbx2")
    return SimulateRequest(trace=trace, catalog=catalog, **options)  # type: ignore[arg-type]


def test_simulate_report_compares_policies_to_nopart(tmp_path: Path) -> None:
    from miso_cli.commands.simulate import SimulateReport, simulate_trace

    seen: list[tuple[str, str]] = []

    def no_state_dir() -> Path:
        raise AssertionError("no policy here needs the predictor, nor its state dir")

    req = _request(tmp_path, policies=["nopart", " static "], bound=True)
    report = simulate_trace(req, no_state_dir, lambda kind, text: seen.append((kind, text)))  # type: ignore[arg-type]
    assert isinstance(report, SimulateReport)
    assert [r["policy"] for r in report.results] == ["nopart", "static"]
    assert [name for name, _ in report.runs] == ["nopart", "static"]
    assert report.jobs == 3 and len(report.gpus) == 2 and report.predictor is None
    nopart = report.results[0]
    assert nopart["mean_jct_vs_nopart"] == 1.0 and nopart["makespan_vs_nopart"] == 1.0
    for r in report.results:
        assert r["mean_jct_vs_nopart"] == pytest.approx(r["mean_jct_s"] / nopart["mean_jct_s"])
        # no schedule beats the lower bound
        assert r["mean_jct_vs_bound"] >= 1.0 - 1e-9
    assert report.bound is not None and report.bound["mps_model"] == "optimistic"
    assert [k for k, _ in seen] == ["policy", "policy", "bound"]
    data = report.to_json()
    assert data["gpus"] == {"model": "a100-40gb", "count": 2}
    assert data["restart_cost"] == 30.0 and data["results"] is report.results
    assert list(data)[-2:] == ["mps_model", "bound"] and "timeline" not in data


def test_simulate_names_the_predictor_and_writes_the_timeline(tmp_path: Path) -> None:
    from miso_cli.commands.simulate import simulate_trace

    seen: list[str] = []
    page = tmp_path / "timeline.html"
    req = _request(tmp_path, policies=["miso+"], restart_cost="paper", timeline=page)
    report = simulate_trace(req, lambda: tmp_path / "state", lambda kind, text: seen.append(kind))  # type: ignore[arg-type]
    assert seen == ["predictor", "policy", "timeline"]
    assert report.predictor and report.restart_cost == "paper"
    assert page.is_file() and report.to_json()["timeline"] == report.timeline
    assert report.results[0]["mean_jct_vs_nopart"] is None  # no nopart to compare with


@pytest.mark.parametrize(
    "options, message",
    [
        ({"policies": [" ", ""]}, "--policy: name at least one policy"),
        ({"policies": ["nopart", "nopart"]}, "--policy: a policy is named twice"),
        ({"gpu": "nvml"}, "--gpu nvml: simulate needs simulated GPUs"),
        ({"restart_cost": "soon"}, "--restart-cost: 'soon' is neither seconds nor 'paper'"),
        ({"restart_cost": "-1"}, "--restart-cost: must be >= 0 seconds"),
        ({"noise": float("nan")}, "--noise: must be a finite number"),
        ({"max_jobs": 2}, "3 jobs; simulate takes at most 2"),
        ({"mps_model": "magic"}, "--mps-model: 'magic' is not one of"),
        ({"static_layout": ["1g.5gb"] * 7, "policies": ["static"]}, "fits no instance"),
    ],
)
def test_simulate_refuses_bad_requests(tmp_path: Path, options: dict, message: str) -> None:
    from miso_cli.commands.simulate import simulate_trace

    with pytest.raises(UsageError) as info:
        simulate_trace(_request(tmp_path, **options), lambda: tmp_path)  # type: ignore[arg-type]
    assert message in info.value.message


# -- profile -------------------------------------------------------------------------


def test_profile_settings_check_the_options() -> None:
    from miso_cli.commands.profile import profile_settings

    s = profile_settings(mode="solo", levels="100,50%", max_time="2m", speedup=5.0, gpu_index=1)
    assert (s.mode, s.levels, s.max_level_s, s.speedup, s.gpu_index) == (
        "solo",
        (100.0, 50.0),
        120.0,
        5.0,
        1,
    )
    assert profile_settings().resolved_levels() == (100.0, 50.0, 14.0)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"mode": "alone"}, "--mode: 'alone' is not one of colocated, solo"),
        ({"max_time": "soon"}, "--max-time: "),
        ({"max_time": "0"}, "--max-time: must be positive"),
        ({"speedup": 0.0}, "--speedup: must be positive"),
        ({"speedup": float("nan")}, "--speedup: must be positive"),
        ({"speedup": float("inf")}, "--speedup: must be a finite number"),
        ({"levels": "100,abc"}, "--levels: 'abc' is not a number"),
        ({"levels": "100,100"}, "--levels: a level appears twice"),
    ],
)
def test_profile_settings_refuse_bad_options(options: dict, message: str) -> None:
    from miso_cli.commands.profile import profile_settings

    with pytest.raises(UsageError) as info:
        profile_settings(**options)
    assert message in info.value.message


def _report(tmp_path: Path, failed: dict[str, list[str]]) -> object:
    from miso_cli.commands.profile import LayoutReset, ProfileReport

    return ProfileReport(
        gpu={"index": 0, "name": "A100", "model": "a100-40gb", "driver_version": "x"},
        mode="colocated",
        levels=[100.0, 50.0],
        measured=len(failed),
        reused=0,
        profiles=[{"job": job, "failed_levels": lv} for job, lv in failed.items()],
        notes=[],
        layout_reset=LayoutReset(0, "3g.20gb+4g.20gb", "7g.40gb", restored=True),
        generated_at=1.0,
        logs=tmp_path / "profiles" / "work",
    )


def test_profile_report_says_which_jobs_failed(tmp_path: Path) -> None:
    ok = _report(tmp_path, {"a": [], "b": []})
    assert (ok.failed_jobs, ok.exit_code, ok.errors) == ([], ExitCode.OK, [])  # type: ignore[attr-defined]
    data = ok.to_json()  # type: ignore[attr-defined]
    assert list(data) == [
        "gpu", "mode", "levels", "measured", "reused", "profiles", "notes", "layout_reset",
        "generated_at",
    ]  # fmt: skip
    assert data["layout_reset"] == {
        "gpu_index": 0, "previous": "3g.20gb+4g.20gb", "profiled_on": "7g.40gb", "restored": True,
    }  # fmt: skip
    bad = _report(tmp_path, {"a": [], "b": ["50"], "c": ["100", "50"]})
    assert bad.failed_jobs == ["b", "c"] and bad.exit_code == ExitCode.JOBS_FAILED  # type: ignore[attr-defined]
    (err,) = bad.errors  # type: ignore[attr-defined]
    assert err["code"] == "JOBS_FAILED"
    assert err["message"].endswith("at some level: b, c") and err["message"].startswith("2 job(s)")
    assert err["hint"] == f"logs in {tmp_path / 'profiles' / 'work'}/<job>/job.log"


def test_profile_a_failing_job_on_a_simulated_gpu(tmp_path: Path) -> None:
    from miso_cli.commands.profile import ProfileReport, profile, profile_settings
    from miso_cli.spec.queue import JobSpec

    crash = JobSpec(
        name="crash",
        command="echo 'RuntimeError: simulated failure at step 1' >&2; exit 1",
        shell=True,
        cwd=str(tmp_path),
    )
    settings = profile_settings(mode="solo", levels="100", min_steps=2, max_time="8")
    events: list[str] = []
    report = profile(
        "sim:a100-40gb", [crash], tmp_path, settings, sink=lambda e: events.append(e.kind)
    )
    assert isinstance(report, ProfileReport)
    assert (report.measured, report.reused, report.levels) == (1, 0, [100.0])
    assert report.failed_jobs == ["crash"] and report.exit_code == ExitCode.JOBS_FAILED
    assert report.gpu["simulated"] is True and report.layout_reset is None
    assert "level" in events


# -- plan ----------------------------------------------------------------------------


def test_plan_queue_without_profiles_says_how(tmp_path: Path) -> None:
    from miso_cli.commands.plan import plan_queue
    from miso_cli.spec.queue import load_queue

    spec = load_queue(Path(__file__).resolve().parent.parent / "examples" / "quickstart.toml")
    with pytest.raises(UsageError) as info:
        plan_queue(spec, "sim:a100-40gb", tmp_path)
    assert "no fresh profile for 4 job(s)" in info.value.message
    assert "--profile" in (info.value.hint or "")


def test_plan_explains_an_unknown_completion_time() -> None:
    from types import SimpleNamespace

    from miso_cli.commands.plan import short_list, unknown_reason

    assert short_list(list("abcdefg")) == "a, b, c, d, e, ... (7 in all)"
    assert short_list(["a", "b"]) == "a, b"
    spec = SimpleNamespace(jobs=[SimpleNamespace(name="a", steps=None)])
    result = SimpleNamespace(waiting=[], gpus=[])
    assert unknown_reason(spec, result, {}) == "give each job 'steps': a has none"  # type: ignore[arg-type]


# -- status and layouts --------------------------------------------------------------


def test_status_of_simulated_gpus_without_runs(tmp_path: Path) -> None:
    from miso_cli.commands.status import GpuStatus, StatusReport, status

    report = status("sim:a100-40gbx2", tmp_path)
    assert isinstance(report, StatusReport) and isinstance(report.gpus, GpuStatus)
    assert report.runs == [] and report.gpu_error is None
    assert report.gpus.simulated is True and [g["index"] for g in report.gpus.gpus] == [0, 1]
    assert all(g["error"] is None and g["processes"] == [] for g in report.gpus.gpus)
    data = report.to_json()
    assert list(data) == [
        "simulated", "sim_state_path", "driver_version", "nvml_version", "gpus", "runs",
    ]  # fmt: skip


def test_status_without_a_gpu_is_an_error_unless_runs_are_shown(tmp_path: Path) -> None:
    from miso_cli.commands.status import StatusReport, gpu_status

    missing = StatusReport(runs=[{"run_id": "r1"}], gpu_error={"code": "NO_GPU", "message": "x"})
    assert missing.to_json() == {
        "runs": [{"run_id": "r1"}],
        "gpus": [],
        "gpu_error": {"code": "NO_GPU", "message": "x"},
    }

    class LostGpu:  # a driver whose second GPU no longer answers
        is_simulated, sim_state_path = False, None

        def device_count(self) -> int:
            return 1

        def gpu(self, i: int) -> object:
            from miso_cli.errors import MisoError

            raise MisoError("GPU 0 is lost", code="GPU_LOST")

        def driver_version(self) -> str:
            return "550.54"

        def nvml_version(self) -> str:
            return "12.550"

    (row,) = gpu_status(LostGpu()).gpus
    assert row["name"] is None and row["instances"] == [] and row["error"]["code"] == "GPU_LOST"


def test_layouts_of_a_named_model_and_of_a_simulated_gpu(tmp_path: Path) -> None:
    from miso_cli.commands.layouts import LayoutList, list_layouts

    def no_state_dir() -> Path:
        raise AssertionError("a named model needs no GPU, nor a state dir")

    named = list_layouts(None, no_state_dir, model="a100-40gb")
    assert isinstance(named, LayoutList)
    assert (named.source, named.gpu_index, len(named.layouts)) == ("table", None, 19)
    every = list_layouts(None, no_state_dir, model="a100-40gb", all_layouts=True)
    assert len(every.layouts) > 19 and every.maximal_only is False
    sim = list_layouts("sim:a100-40gb", lambda: tmp_path)
    assert (sim.source, sim.gpu_index) == ("simulated", 0)
    assert sim.to_json()["layouts"] == named.to_json()["layouts"]
    assert sim.to_json()["count"] == 19
    with pytest.raises(UsageError, match="--model: unknown GPU model 'nope'"):
        list_layouts(None, no_state_dir, model="nope")


# -- predict and fit -----------------------------------------------------------------


def test_gpu_model_key() -> None:
    from miso_cli.commands.predict import gpu_model_key

    assert gpu_model_key("A100-40GB") == "a100-40gb"
    with pytest.raises(UsageError, match="--gpu-model: unknown GPU model 'zz'"):
        gpu_model_key("zz")


def test_predict_file_scores_against_the_files_own_mig_columns(
    tmp_path: Path, shared_data: Path
) -> None:
    from miso_cli.commands.predict import Predictions, predict_file

    found = predict_file(shared_data / "a100-40gb" / "catalog.csv", None, "a100-40gb", tmp_path)
    assert isinstance(found, Predictions)
    assert found.slices == [7, 4, 3, 2, 1] and found.source == "prior"
    assert len(found.predictions) == 20
    first = found.predictions[0]
    assert first["row"] == 1 and first["mig_7g"] == pytest.approx(1.0)
    assert set(first["source"]) == {f"mig_{g}g" for g in found.slices}
    assert set(found.error_vs_file) <= {"mig_4g", "mig_3g", "mig_2g", "mig_1g"}
    assert all(e["rows"] > 0 and e["mape"] >= 0 for e in found.error_vs_file.values())
    data = found.to_json()
    assert list(data)[:7] == [
        "model", "source", "model_used", "predictor", "selection", "gpu_model", "predictions",
    ]  # fmt: skip
    assert ("error_vs_file" in data) == bool(found.error_vs_file)


def test_fit_model_needs_training_rows(tmp_path: Path) -> None:
    from miso_cli.commands.predict import fit_model

    with pytest.raises(BadInput, match="no training data"):
        fit_model(tmp_path, "a100-40gb")


def test_fit_model_saves_a_model(tmp_path: Path, shared_data: Path) -> None:
    from miso_cli.commands.predict import FitReport, fit_model

    lines = (shared_data / "a100-40gb" / "mps_mig_pairs.csv").read_text().splitlines()[:300]
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("\n".join(lines) + "\n")
    out = tmp_path / "model.joblib"
    fitted = fit_model(tmp_path, "a100-40gb", data=[pairs], estimators=["ridge"], out=out)
    assert isinstance(fitted, FitReport)
    assert out.is_file() and (fitted.observation_rows, fitted.calibration_rows) == (0, 0)
    data = fitted.to_json()
    assert data["rows"] > 0 and data["model"] == str(out)
    assert list(data)[-2:] == ["observation_rows", "calibration_rows"]


# -- runs and report -----------------------------------------------------------------


def test_list_runs_and_report_a_run(tmp_path: Path, state_dir: Path) -> None:
    from miso_cli.commands.report import RunList, RunReport, list_runs, report_run
    from tests.test_operate_submit import make_run

    assert list_runs(state_dir).to_json() == {"runs": []}
    j = make_run(tmp_path, state_dir, "a", "b")
    started = float(j.data["started_at"])
    found = list_runs(state_dir, now=started + 42.0)
    assert isinstance(found, RunList)
    (row,) = found.runs
    assert (row["run_id"], row["policy"], row["gpu_spec"]) == (j.run_id, "nopart", "sim:a100-40gb")
    assert row["elapsed_s"] == pytest.approx(42.0) and row["ended_at"] is None

    page = tmp_path / "run.html"
    rep = report_run(state_dir, j.run_id[:8], html=page, timeline_width=80, now=started + 5.0)
    assert isinstance(rep, RunReport)
    data = rep.to_json()
    assert data["run_id"] == j.run_id and data["status"] == row["status"]
    assert data["html"] == str(page) and page.is_file()
    assert rep.timeline is not None and data["timeline"] == rep.timeline
    plain = report_run(state_dir, now=started + 5.0)
    assert plain.timeline is None and "html" not in plain.data and "timeline" not in plain.data


def test_report_price_and_request(tmp_path: Path) -> None:
    from miso_cli.commands.report import check_report_request, price

    assert price(tmp_path, 2.5) == (2.5, "")
    with pytest.raises(UsageError, match="--price: must be a finite number"):
        price(tmp_path, float("inf"))
    check_report_request("r1", None, tmp_path / "x.html", True)  # a run: anything goes
    with pytest.raises(UsageError, match="give a RUN or --sim, not both"):
        check_report_request("r1", tmp_path, None, False)
    with pytest.raises(UsageError, match="--html/--timeline need a run"):
        check_report_request(None, tmp_path, None, True)


def test_read_simulation(tmp_path: Path) -> None:
    from miso_cli.commands.report import read_simulation

    out = tmp_path / "sim.json"
    out.write_text('progress\n{"command": "simulate", "data": {"results": []}}\n')
    assert read_simulation(out)["data"] == {"results": []}
    for text, message in [
        ("", "empty"),
        ("{nope\n", "not JSON"),
        ('{"command": "plan"}\n', "not the output of 'miso simulate --json'"),
    ]:
        out.write_text(text)
        with pytest.raises(BadInput, match=message):
            read_simulation(out)
    with pytest.raises(BadInput, match="cannot read"):
        read_simulation(tmp_path / "missing.json")


# -- export --------------------------------------------------------------------------


def test_export_the_current_layout(tmp_path: Path) -> None:
    from miso_cli.commands.export import ExportResult, export_layouts

    got = export_layouts("sim:a100-40gb", tmp_path, "mig-parted")
    assert isinstance(got, ExportResult) and got.written == []
    data = got.to_json()
    assert data["format"] == "mig-parted" and data["written"] == []
    assert "mig-parted.yaml" in data["files"] and list(data["files"]) == sorted(data["files"])
    assert got.stream_text() == data["files"]["mig-parted.yaml"]
    assert isinstance(got.warnings, list)

    out = tmp_path / "out"
    written = export_layouts("sim:a100-40gb", tmp_path, "slurm", out=out)
    assert written.written and all(p.is_file() for p in written.written)
    assert written.to_json()["written"] == [str(p) for p in written.written]


def test_export_merges_a_configmap_only_for_k8s(tmp_path: Path) -> None:
    from miso_cli.commands.export import export_layouts

    cm = tmp_path / "cm.yaml"
    cm.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n"
        'data:\n  config.yaml: "version: v1\\nmig-configs:\\n  all-disabled:\\n'
        '    - devices: all\\n      mig-enabled: false\\n"\n'
    )
    with pytest.raises(UsageError, match="--merge-configmap: only for --format k8s"):
        export_layouts("sim:a100-40gb", tmp_path, "slurm", merge_configmap=cm)


# -- calibrate -----------------------------------------------------------------------


def test_calibration_report(tmp_path: Path) -> None:
    from miso_cli.commands.calibrate import CalibrationReport

    rep = CalibrationReport(
        gpu_index=0,
        gpu_model="a100-40gb",
        pairs=tmp_path / "pairs.csv",
        rows=3,
        restored=True,
        original_layout="MIG off",
        jobs={"mlp": {"mps_100": "ok", "mig_1g": "oom"}},
        notes=[],
    )
    assert rep.exit_code == ExitCode.OK
    data = rep.to_json()
    assert data["pairs"] == str(tmp_path / "pairs.csv") and data["fit"] is None
    assert list(data) == [
        "gpu_index", "gpu_model", "pairs", "rows", "restored", "original_layout", "jobs",
        "notes", "fit",
    ]  # fmt: skip
    rep.errors.append({"code": "BAD_INPUT", "message": "too little data"})
    assert rep.exit_code == ExitCode.BAD_INPUT


def test_calibrate_reads_its_queue_before_measuring(tmp_path: Path) -> None:
    from miso_cli.commands.calibrate import calibrate_gpu

    with pytest.raises(BadInput, match="cannot read the queue file"):
        calibrate_gpu("sim:a100-40gb", tmp_path, queue=tmp_path / "missing.toml")


# -- doctor --------------------------------------------------------------------------


def test_doctor_report_on_a_simulated_gpu_and_a_bad_state_dir(tmp_path: Path) -> None:
    from miso_cli.commands.doctor import DoctorReport, doctor

    ready = doctor("sim:a100-40gb", tmp_path)
    assert isinstance(ready, DoctorReport)
    assert ready.ready and ready.exit_code == ExitCode.OK and ready.errors == []
    data = ready.to_json()
    assert data["ready"] is True and [c["name"] for c in data["checks"]][:3] == [
        "python",
        "packages",
        "driver",
    ]
    blocked = doctor("sim:a100-40gb", Path("/etc/passwd"))
    assert not blocked.ready and blocked.to_json()["ready"] is False
    codes = [e["code"] for e in blocked.errors]
    assert "BAD_INPUT" in codes and blocked.exit_code == ExitCode[codes[0]]
    state = next(e for e in blocked.errors if e["code"] == "BAD_INPUT")
    assert state["message"].startswith("state-dir: ") and "hint" in state


def _store_profiles(state_dir: Path, jobs: list, step_s: dict[str, float]) -> None:
    """Fresh co-located profiles for ``jobs`` as ``miso profile`` stores them on sim:a100-40gb."""
    import time

    from miso_cli.gpu.nvml import open_driver
    from miso_cli.spec import profiles_store as store

    drv = open_driver("sim:a100-40gb", state_dir)
    try:
        driver, name = drv.driver_version(), drv.gpu(0).name
    finally:
        drv.close()
    fps = {j.name: store.fingerprint(j) for j in jobs}
    now = time.time()
    for j in jobs:
        base = step_s[j.name]
        store.save(
            state_dir,
            store.StoredProfile(
                fingerprint=fps[j.name],
                job=j.name,
                command=j.command,
                cwd=str(Path(j.cwd).resolve()),
                env=dict(j.env),
                gpu_model="a100-40gb",
                gpu_name=name,
                driver_version=driver,
                mode="colocated",
                co_runners=[fps[o.name] for o in jobs if o.name != j.name],
                levels=[
                    {"level": lv, "status": "ok", "step_time_s": base * f, "steps": 20}
                    for lv, f in ((100.0, 1.0), (50.0, 1.3), (14.0, 3.0))
                ],
                started_at=now,
                finished_at=now,
                simulated=True,
            ),
        )


def test_plan_queue_from_stored_profiles(tmp_path: Path) -> None:
    from miso_cli.commands.plan import QueuePlan, plan_queue, queue_plan_data
    from miso_cli.spec.queue import load_queue

    spec = load_queue(Path(__file__).resolve().parent.parent / "examples" / "quickstart.toml")
    _store_profiles(tmp_path, spec.jobs, {j.name: 0.05 * (k + 1) for k, j in enumerate(spec.jobs)})
    planned = plan_queue(spec, "sim:a100-40gb", tmp_path)
    assert isinstance(planned, QueuePlan) and planned.simulated
    placed = {n for g in planned.result.gpus for n in g.assignment} | set(planned.result.waiting)
    assert placed == {j.name for j in spec.jobs} == set(planned.jobs)
    pr = planned.data["predicted"]
    assert pr["time_base"] == "catalog" and pr["mean_jct_s"] > 0 and pr["unknown_reason"] is None
    assert planned.data["policy"] == "miso+" and planned.data["objective"] == "jct"
    # export's path: the same plan, without the CLI's additions
    data = queue_plan_data(spec, "sim:a100-40gb", tmp_path)
    assert data["gpus"] == planned.data["gpus"] and "time_base" not in data["predicted"]


def test_profile_missing_measures_nothing_when_every_profile_is_fresh(tmp_path: Path) -> None:
    from miso_cli.commands.profile import missing_profile_settings, profile_missing
    from miso_cli.spec.queue import load_queue

    spec = load_queue(Path(__file__).resolve().parent.parent / "examples" / "quickstart.toml")
    _store_profiles(tmp_path, spec.jobs, {j.name: 0.1 for j in spec.jobs})
    events: list[object] = []
    assert profile_missing("sim:a100-40gb", spec.jobs, tmp_path, sink=events.append) is None
    assert events == []
    settings = missing_profile_settings()
    assert (settings.mode, settings.resolved_levels()) == ("colocated", (100.0, 50.0, 14.0))


def test_simulate_in_processes_gives_the_results_of_one(tmp_path: Path) -> None:
    """issue-12: --workers 2 simulates the policies in forked processes; the simulations
    are seeded, so every figure and every decision is the one-process run's."""
    from miso_cli.commands import simulate as sim

    if sim.parallel_workers(2, 3, 3) < 2:
        pytest.skip("this process cannot fork a simulation (a thread runs beside it)")
    policies = ["nopart", "miso+", "static"]
    state = tmp_path / "state"
    one = sim.simulate_trace(_request(tmp_path, policies=policies, workers=1), lambda: state)  # type: ignore[arg-type]
    seen: list[str] = []
    two = sim.simulate_trace(
        _request(tmp_path, policies=policies, workers=2),  # type: ignore[arg-type]
        lambda: state,
        lambda kind, text: seen.append(text),
    )
    assert two.results == one.results
    assert [(n, r.targets) for n, r in two.runs] == [(n, r.targets) for n, r in one.runs]
    assert any("in 2 processes" in text for text in seen)


def test_simulate_workers_default_to_the_cpus_for_large_traces_only() -> None:
    from miso_cli.commands.simulate import PARALLEL_MIN_JOBS, parallel_workers

    assert parallel_workers(None, 6, PARALLEL_MIN_JOBS - 1) == 1
    assert parallel_workers(1, 6, 5000) == 1
    assert parallel_workers(8, 3, 5000) <= 3  # never more processes than policies
    with pytest.raises(UsageError, match="--workers: must be at least 1"):
        parallel_workers(0, 6, 5000)


def _fails_on_one(index: int) -> int:
    if index == 1:
        raise ValueError("simulation 1 failed")
    return index * 10


def test_simulate_in_processes_passes_a_failure_on_and_stops_the_others() -> None:
    import multiprocessing

    from miso_cli.commands import simulate as sim

    if sim.parallel_workers(2, 3, 3) < 2:
        pytest.skip("this process cannot fork a simulation (a thread runs beside it)")
    assert sim._in_processes(lambda i: i * 10, 3, 2) == [0, 10, 20]
    with pytest.raises(ValueError, match="simulation 1 failed"):
        sim._in_processes(_fails_on_one, 3, 2)
    assert multiprocessing.active_children() == []  # none left behind
    assert sim._FORKED is None
