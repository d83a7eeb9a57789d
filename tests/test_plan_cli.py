"""``miso plan`` through the CLI: the plan format that ``miso apply`` reads."""

from __future__ import annotations

from pathlib import Path

from miso_cli.gpu.layouts import Layout, Slice
from tests.conftest import ROOT, parse_envelope

QUEUE = str(ROOT / "examples" / "quickstart.toml")


def test_missing_profiles_ask_for_consent(cli) -> None:
    code, out, err = cli("plan", QUEUE, "--gpu", "sim:a100-40gb", "--json")
    assert code == 2
    env = parse_envelope(out)
    assert "no fresh profile" in env["errors"][0]["message"]
    assert "miso profile" in env["errors"][0]["hint"]


def test_plan_after_profiling_prints_the_plan_format(cli) -> None:
    code, out, _ = cli("plan", QUEUE, "--gpu", "sim:a100-40gb", "--profile", "--json")
    assert code == 0, out
    data = parse_envelope(out)["data"]
    assert data["objective"] == "jct" and data["policy"] == "miso+"
    (gpu,) = data["gpus"]
    assert gpu["index"] == 0 and gpu["model"] == "a100-40gb" and gpu["mode"] == "mig"
    slices = [
        Slice(i["placement"]["start"], i["placement"]["size"], i["profile"], i["slices"])
        for i in gpu["layout"]["instances"]
    ]
    layout = Layout.of(slices)
    assert layout.to_json() == gpu["layout"]
    placed = {a["job"] for a in gpu["assignment"]}
    assert placed | set(data["waiting"]) == {"cnn-small", "bert", "mlp", "cnn-large"}
    for a in gpu["assignment"]:
        assert any(s.profile == a["profile"] and s.start == a["placement"]["start"] for s in slices)
        assert a["predicted_relative_step_time"] >= 0.9
    pred = data["predicted"]
    assert pred["mean_jct_s"] > 0 and pred["nopart_mean_jct_s"] > 0
    # Another objective on the same queue.
    code, out, _ = cli(
        "plan", QUEUE, "--gpu", "sim:a100-40gb", "--profile", "--objective", "miso", "--json"
    )
    assert code == 0
    assert parse_envelope(out)["data"]["objective"] == "miso"


def test_bad_inputs(cli, tmp_path: Path) -> None:
    bad = tmp_path / "q.toml"
    bad.write_text("version = 1\n[[job]]\nname = 3\n")
    assert cli("plan", str(bad), "--gpu", "sim:a100-40gb")[0] == 3
    assert cli("plan", QUEUE, "--gpu", "sim:a100-40gb", "--objective", "fast")[0] == 2
