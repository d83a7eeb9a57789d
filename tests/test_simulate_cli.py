"""``miso simulate`` through the CLI: exit codes and the JSON contract."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import parse_envelope

TRACE = "job,arrival_s,workload,duration_7g_s\na,0,toy_a,100\nb,10,toy_a,50\nc,20,toy_b,80\n"
CATALOG = (
    "workload,mig_7g,mig_4g,mig_3g,mig_2g,mig_1g,mps_100,mps_50,mps_14\n"
    "toy_a,100,130,150,220,400,100,120,300\n"
    "toy_b,50,60,70,,,50,60,150\n"
)


def _files(tmp_path: Path, trace: str = TRACE) -> tuple[str, str]:
    t = tmp_path / "trace.csv"
    c = tmp_path / "catalog.csv"
    t.write_text(trace)
    c.write_text(CATALOG)
    return str(t), str(c)


def test_json_results_per_policy(cli, tmp_path: Path) -> None:
    t, c = _files(tmp_path)
    code, out, _ = cli(
        "simulate",
        "--trace",
        t,
        "--catalog",
        c,
        "--gpu",
        "sim:a100-40gbx2",
        "--policy",
        "nopart,static,mps,oracle",
        "--json",
    )
    assert code == 0
    env = parse_envelope(out)
    results = env["data"]["results"]
    assert [r["policy"] for r in results] == ["nopart", "static", "mps", "oracle"]
    for r in results:
        for key in ("mean_jct_s", "p95_jct_s", "mean_queue_s", "makespan_s"):
            assert r[key] >= 0
        assert isinstance(r["reconfigurations"], int) and isinstance(r["migrations"], int)
    assert results[0]["mean_jct_vs_nopart"] == 1.0


def test_human_table_and_seed_determinism(cli, tmp_path: Path) -> None:
    t, c = _files(tmp_path)
    args = (
        "simulate",
        "--trace",
        t,
        "--catalog",
        c,
        "--gpu",
        "sim:a100-40gb",
        "--policy",
        "nopart,miso,miso+",
        "--seed",
        "5",
    )
    code, out, _ = cli(*args)
    assert code == 0 and "miso+" in out and "nopart" in out
    one = parse_envelope(cli(*args, "--json")[1])["data"]["results"]
    two = parse_envelope(cli(*args, "--json")[1])["data"]["results"]
    assert one == two


def test_bad_trace_is_bad_input_naming_the_line(cli, tmp_path: Path) -> None:
    t, c = _files(tmp_path, "job,arrival_s,workload,duration_7g_s\na,0,nope,10\n")
    code, out, err = cli("simulate", "--trace", t, "--catalog", c, "--json", "--policy", "nopart")
    assert code == 3
    env = parse_envelope(out)
    assert env["status"] == "error" and env["errors"][0]["code"] == "BAD_INPUT"
    assert "trace.csv:2" in env["errors"][0]["message"]
    assert "Traceback" not in err


def test_usage_errors(cli, tmp_path: Path) -> None:
    t, c = _files(tmp_path)
    base = ("simulate", "--trace", t, "--catalog", c)
    assert cli(*base, "--policy", "nosuch")[0] == 2
    assert cli(*base, "--gpu", "nvml")[0] == 2
    assert cli(*base, "--gpu", "sim:z100")[0] == 2
    assert cli(*base, "--restart-cost", "soon")[0] == 2
    assert cli(*base, "--policy", "nopart,nopart")[0] == 2


def test_paper_restart_costs_accepted(cli, tmp_path: Path) -> None:
    t, c = _files(tmp_path)
    code, out, _ = cli(
        "simulate",
        "--trace",
        t,
        "--catalog",
        c,
        "--policy",
        "oracle",
        "--restart-cost",
        "paper",
        "--json",
    )
    assert code == 0
    assert parse_envelope(out)["data"]["restart_cost"] == "paper"
