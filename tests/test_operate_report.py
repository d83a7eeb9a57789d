"""``miso report``: the figures, the whole-GPU baseline, the cost, the timelines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from miso_cli.errors import ExitCode
from miso_cli.operate import accounting
from miso_cli.operate.accounting import BaselineJob, schedule_whole_gpus, shared_time
from miso_cli.runtime.journal import Attempt
from tests.conftest import parse_envelope
from tests.test_operate_submit import make_run


def test_whole_gpu_schedule_follows_nopart_order() -> None:
    jobs = [
        BaselineJob("a", 0.0, 10.0),
        BaselineJob("b", 0.0, 4.0),
        BaselineJob("c", 1.0, 6.0, priority=5),  # arrives later, goes first once it is here
        BaselineJob("d", 0.0, None),  # unknown: left out
    ]
    one = schedule_whole_gpus(jobs, 1)
    assert one["jobs"]["a"]["start_s"] == 0 and one["jobs"]["c"]["start_s"] == 10
    assert one["jobs"]["b"]["start_s"] == 16 and one["makespan_s"] == 20
    assert one["mean_jct_s"] == pytest.approx((10 + 15 + 20) / 3)
    two = schedule_whole_gpus(jobs, 2)
    assert two["jobs"]["c"]["start_s"] == 4 and two["makespan_s"] == 10
    late = schedule_whole_gpus([BaselineJob("x", 50.0, 5.0)], 1)
    assert late["makespan_s"] == 55 and late["mean_jct_s"] == 5


def test_shared_time_splits_a_gpu_alike() -> None:
    share, union = shared_time([("a", 0.0, 10.0), ("b", 5.0, 10.0), ("c", 20.0, 30.0)])
    assert share == {"a": 7.5, "b": 2.5, "c": 10.0} and union == 20.0


def _finished_run(tmp_path: Path, state_dir: Path, policy: str = "miso+"):
    """A run on one GPU: a on 3g for 20 s, b whole for 10 s, c under MPS with b for 4 s."""
    j = make_run(tmp_path, state_dir, "a", "b", "c")
    j.data["policy"] = {"name": policy, "options": {}}
    t0 = j.started_at
    j.data["gpus"] = [
        {
            "index": 0,
            "name": "NVIDIA A100-SXM4-40GB",
            "model": "a100-40gb",
            "compute_slices": 7,
            "mode": "mig",
            "mig_enabled": True,
            "instances": [],
        }
    ]
    a, b, c = j.jobs["a"], j.jobs["b"], j.jobs["c"]
    a.attempts = [Attempt(1, 0, "3g.20gb", 3, t0 + 10, t0 + 30, 0, None, "finished")]
    b.attempts = [Attempt(1, 0, None, 7, t0, t0 + 10, 0, None, "finished")]
    c.attempts = [
        Attempt(1, 0, None, 7, t0 + 6, t0 + 10, 0, None, "stopped"),
        Attempt(2, 0, "3g.20gb", 3, t0 + 12, t0 + 20, 0, None, "finished", True),
    ]
    for rec in (a, b, c):
        rec.state, rec.ended_at = "finished", rec.attempts[-1].ended_at
        rec.progress = {"step": 40.0, "total": 40.0, "fraction": 1.0, "step_time_s": 0.5}
    j.status = "finished"
    j.data["ended_at"] = t0 + 30
    j.save()
    events = [
        {"event": "run_started", "time": t0, "gpus": [{"index": 0, "mode": "full"}]},
        {"event": "gpu_mode", "time": t0 + 6, "gpu": 0, "mode": "mps"},
        {"event": "profiling", "time": t0 + 6, "gpu": 0, "jobs": ["b", "c"]},
        {
            "event": "profiled",
            "time": t0 + 10,
            "gpu": 0,
            "jobs": ["c"],
            "prediction": {"a": {"3": 2.0}},
        },
        {
            "event": "layout_changed",
            "time": t0 + 10,
            "gpu": 0,
            "before": "(empty)",
            "layout": "4g.20gb+3g.20gb",
        },
        {"event": "stopping", "time": t0 + 10, "job": "c", "reason": "migrate"},
    ]
    (j.run_dir / "events.jsonl").write_text(
        "".join(json.dumps(e) + "\n" for e in events) + '{"torn'
    )
    j.log_path("a").write_text("\n=== miso: a attempt 1 on GPU 0 3g.20gb@4 (MIG-x) at x ===\n")
    return j


def test_run_report_figures_and_baseline(tmp_path: Path, state_dir: Path) -> None:
    j = _finished_run(tmp_path, state_dir)
    events = accounting.read_events(j.run_dir)
    assert len(events) == 6  # the torn last line is skipped
    rep = accounting.run_report(j.data, events, price=2.0, currency="EUR")
    s = rep["summary"]
    assert s["makespan_s"] == 30 and s["gpu_hours"] == pytest.approx(30 / 3600)
    assert s["reconfigurations"] == 2 and s["migrations"] == 1
    assert s["profiling_s"] == 4 and s["restart_overhead_s"] == 2  # c: ended 10, resumed 12
    # busy: whole/MPS 0-10 (7 slices), a 3 slices x 20 s, c 3 x 8 s
    assert s["slice_utilisation"] == pytest.approx((70 + 60 + 24) / (7 * 30))
    base = {x["name"]: x for x in rep["baseline"]["jobs"]}
    assert base["a"]["whole_gpu_s"] == pytest.approx(10.0)  # 20 s on 3g at predicted 1/2
    assert "predicted" in base["a"]["basis"]
    assert base["b"]["whole_gpu_s"] == pytest.approx(8.0)  # 6 alone + 4 shared with c
    assert base["c"]["whole_gpu_s"] == pytest.approx(2.0 + 8 * 3 / 7)  # MPS half + linear 3g
    assert "linear" in base["c"]["basis"]
    assert rep["baseline"]["estimated"] and "nopart order" in rep["baseline"]["method"]
    bm = rep["baseline"]["makespan_s"]
    assert rep["saved"]["makespan_s"] == pytest.approx(bm - 30)
    assert rep["price"] == {
        "per_gpu_hour": 2.0,
        "currency": "EUR",
        "cost": pytest.approx(2.0 * 30 / 3600),
    }


def test_report_command_text_html_and_json(cli, tmp_path: Path, state_dir: Path) -> None:
    j = _finished_run(tmp_path, state_dir)
    out_html = tmp_path / "t.html"
    code, out, err = cli("report", "--price", "3", "--timeline", "--html", str(out_html))
    assert code == 0, err
    text = " ".join(out.split())
    for words in (
        "makespan 30s",
        "one job per whole GPU (estimated)",
        "GPU-hours saved",
        "at 3 per GPU-hour",
        "a: 10s on a whole GPU",
        "jobs: a=a, b=b, c=c",
    ):
        assert words in text, words
    assert "3g.20gb@4" in out  # the instance named by the log header
    page = out_html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "@media print" in page
    assert "<script" not in page and not re.search(r"(src|href)=\"?https?:", page)
    assert "reconfiguration" in page and "profiling under MPS" in page
    assert page.count("<rect") > 5 and "a attempt 1 on 3g.20gb@4" in page
    code, out, _ = cli("report", j.run_id[:12], "--json")
    data = parse_envelope(out)["data"]
    assert data["run_id"] == j.run_id and data["price"] is None
    assert data["summary"]["makespan_s"] == 30


def test_price_from_the_config(cli, tmp_path: Path, state_dir: Path) -> None:
    _finished_run(tmp_path, state_dir)
    (state_dir / "config.toml").write_text('price_per_gpu_hour = 4.5\ncurrency = "USD"\n')
    code, out, _ = cli("report", "--json")
    assert parse_envelope(out)["data"]["price"]["per_gpu_hour"] == 4.5
    code, out, _ = cli("report", "--price", "1", "--json")  # the option wins
    assert parse_envelope(out)["data"]["price"]["per_gpu_hour"] == 1
    (state_dir / "config.toml").write_text('price_per_gpu_hour = "cheap"\n')
    code, _, err = cli("report")
    assert code == ExitCode.BAD_INPUT and "config.toml" in err


def test_a_nopart_run_is_its_own_baseline(cli, tmp_path: Path, state_dir: Path) -> None:
    _finished_run(tmp_path, state_dir, policy="nopart")
    code, out, _ = cli("report", "--json")
    data = parse_envelope(out)["data"]
    assert data["saved"] is None and "is the baseline" in data["baseline"]["method"]


def test_report_a_running_run(cli, tmp_path: Path, state_dir: Path) -> None:
    j = make_run(tmp_path, state_dir, "a", "b")
    rec = j.jobs["a"]
    rec.state, rec.gpu, rec.attempt = "running", 0, 1
    rec.attempts = [Attempt(1, 0, None, 7, j.started_at)]
    rec.progress = {"step": 10.0, "total": 40.0, "fraction": 0.25}
    j.save()
    code, out, err = cli("report", "--json")
    assert code == 0, err
    base = {x["name"]: x for x in parse_envelope(out)["data"]["baseline"]["jobs"]}
    assert "extrapolated from 25% done" in base["a"]["basis"]
    assert base["b"]["whole_gpu_s"] is None


SIM = {
    "schema_version": 1,
    "command": "simulate",
    "status": "ok",
    "errors": [],
    "data": {
        "trace": "t.csv",
        "gpus": {"model": "a100-40gb", "count": 2},
        "results": [
            {
                "policy": "nopart",
                "mean_jct_s": 100.0,
                "makespan_s": 3600.0,
                "slice_utilisation": 0.5,
                "reconfigurations": 0,
                "migrations": 0,
                "restart_overhead_s": 0.0,
            },
            {
                "policy": "miso+",
                "mean_jct_s": 60.0,
                "makespan_s": 1800.0,
                "slice_utilisation": 0.8,
                "reconfigurations": 9,
                "migrations": 3,
                "restart_overhead_s": 90.0,
            },
        ],
    },
}


def test_report_of_a_simulation(cli, tmp_path: Path) -> None:
    path = tmp_path / "sim.json"
    path.write_text('{"event": "not this line"}\n' + json.dumps(SIM) + "\n")
    code, out, err = cli("report", "--sim", str(path), "--price", "2", "--json")
    assert code == 0, err
    data = parse_envelope(out)["data"]
    rows = {r["policy"]: r for r in data["policies"]}
    assert rows["miso+"]["summary"]["gpu_hours"] == 1.0  # 2 GPUs x 30 min
    assert rows["miso+"]["saved"]["gpu_hours"] == 1.0 and rows["miso+"]["saved"]["cost"] == 2
    assert rows["miso+"]["saved"]["makespan_s"] == 1800 and not data["baseline"]["estimated"]
    code, out, _ = cli("report", "--sim", str(path))
    assert code == 0 and "miso+:" in out and "30m00s" in out
    path.write_text("[1, 2]")
    code, _, err = cli("report", "--sim", str(path))
    assert code == ExitCode.BAD_INPUT and "simulate" in err
    code, _, err = cli("report", "--sim", str(tmp_path / "none.json"))
    assert code == ExitCode.BAD_INPUT and "cannot read" in err


def test_report_without_runs(cli) -> None:
    code, _, err = cli("report")
    assert code == ExitCode.USAGE and "miso run" in err


def test_timeline_of_a_simulation_from_its_targets() -> None:
    from miso_cli.gpu.profiles import model
    from miso_cli.operate.html import render_page
    from miso_cli.operate.timeline import from_sim, render_text

    a100 = model("a100-40gb")
    targets = [
        {
            "time": 0.0,
            "gpu": 0,
            "mode": "mps",
            "layout": None,
            "assignment": {"a": None, "b": None},
            "profile_s": 30,
        },
        {
            "time": 35.0,
            "gpu": 0,
            "mode": "mig",
            "layout": "4g.20gb+3g.20gb",
            "assignment": {"a": "4g.20gb@0", "b": "3g.20gb@4"},
            "profile_s": None,
        },
        {
            "time": 60.0,
            "gpu": 0,
            "mode": "mig",
            "layout": "4g.20gb+2g.10gb+1g.5gb",
            "assignment": {"a": "4g.20gb@0", "c": "2g.10gb@4"},
            "profile_s": None,
        },
    ]
    tl = from_sim(
        "miso+", targets, {"a": 100.0, "b": 60.0, "c": 90.0}, [a100], jobs=["a", "b", "c"]
    )
    bars = [(b.job, b.start_s, b.end_s, b.profile, b.slot, b.outcome) for b in tl.bars]
    assert ("a", 0.0, 35.0, None, None, "stopped") in bars  # profiled under MPS, then moved
    assert ("b", 35.0, 60.0, "3g.20gb", 4, "finished") in bars
    assert ("a", 35.0, 100.0, "4g.20gb", 0, "finished") in bars  # kept its instance at 60
    assert ("c", 60.0, 90.0, "2g.10gb", 4, "finished") in bars
    assert [(p.start_s, p.end_s) for p in tl.phases] == [(0.0, 30.0)]
    assert [m.time_s for m in tl.marks] == [0.0, 35.0, 60.0]
    last = [sp for sp in tl.layouts if sp.start_s == 60.0][0]
    assert sorted((i.profile, i.start) for i in last.instances) == [
        ("1g.5gb", 6),
        ("2g.10gb", 4),
        ("4g.20gb", 0),
    ]
    text = "\n".join(render_text(tl, width=80))
    assert "4g.20gb@0" in text and "jobs: a=a, b=b, c=c" in text
    page = render_page([tl, tl], "miso simulate")
    assert page.count("<svg") == 2 and "break-before: page" in page


def test_simulation_page_has_a_section_per_policy(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from miso_cli.gpu.profiles import model
    from miso_cli.operate.html import write_simulation

    def result(targets: list[dict], finish: dict[str, float]) -> SimpleNamespace:
        jobs = [SimpleNamespace(name=n, finish_s=f) for n, f in finish.items()]
        return SimpleNamespace(targets=targets, jobs=jobs)

    nopart = result(
        [
            {"time": 0.0, "gpu": 0, "mode": "full", "assignment": {"a": None}},
            {"time": 10.0, "gpu": 0, "mode": "full", "assignment": {"b": None}},
        ],
        {"a": 10.0, "b": 20.0},
    )
    split = result(
        [
            {
                "time": 0.0,
                "gpu": 0,
                "mode": "mig",
                "layout": "4g.20gb+3g.20gb",
                "assignment": {"a": "4g.20gb@0", "b": "3g.20gb@4"},
            }
        ],
        {"a": 14.0, "b": 16.0},
    )
    data = dict(SIM["data"], gpus={"model": "a100-40gb", "count": 1})
    out = write_simulation(
        tmp_path / "sim.html",
        [("nopart", nopart), ("miso+", split)],
        [model("a100-40gb")],
        ["a", "b"],
        data,
    )
    page = Path(out).read_text()
    assert page.count("<svg") == 2 and page.count('<section class="policy">') == 2
    assert "miso simulate: nopart" in page and "miso simulate: miso+" in page
    assert "time saved (makespan)" in page and "<script" not in page


def test_simulate_writes_its_timeline(cli, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent / "examples"
    page = tmp_path / "sim.html"
    code, out, err = cli(
        "simulate",
        "--trace",
        str(root / "trace.csv"),
        "--catalog",
        str(root / "catalog.csv"),
        "--gpu",
        "sim:a100-40gbx2",
        "--policy",
        "nopart,static",
        "--timeline",
        str(page),
        "--json",
    )
    assert code == 0, err
    assert parse_envelope(out)["data"]["timeline"] == str(page)
    html = page.read_text()
    assert html.count('<section class="policy">') == 2 and html.count("<svg") == 4
    assert "miso simulate: static" in html and "<script" not in html
    nopart, static = html.split('<section class="policy">')[1:]
    # every trace job is a bar: on a whole GPU under nopart, on an instance under static
    assert nopart.count("attempt 1 on whole GPU") == 40
    assert static.count("attempt 1 on ") >= 40 and "attempt 1 on 3g.20gb@" in static
    assert "is the baseline" not in nopart and "time saved" not in nopart
