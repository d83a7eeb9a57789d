"""The static policy's default layout per GPU model, and simulate's check that jobs fit it."""

from __future__ import annotations

from pathlib import Path

from conftest import ROOT, parse_envelope

from miso_cli.gpu.profiles import MODELS
from miso_cli.policy.baselines import Static
from miso_cli.policy.core import GpuView


def test_default_static_layout_follows_the_gpu_model() -> None:
    pol = Static()
    assert pol.layout_for(GpuView(0, MODELS["a100-40gb"])).name == "3g.20gb+2g.10gb+2g.10gb"
    assert pol.layout_for(GpuView(1, MODELS["h100-80gb"])).name == "3g.40gb+2g.20gb+2g.20gb"
    assert pol.layout_for(GpuView(2, MODELS["a30-24gb"])).name == "2g.12gb+1g.6gb+1g.6gb"
    given = Static(["4g.20gb", "3g.20gb"])
    assert given.layout_for(GpuView(0, MODELS["a100-40gb"])).name == "4g.20gb+3g.20gb"


def test_simulate_refuses_a_trace_job_that_fits_no_instance(cli, tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("job,arrival_s,workload,duration_7g_s\n0,0,toy-mlp_32,60\n7,5,toy-gpt_16,60\n")
    args = ["simulate", "--trace", str(trace), "--catalog", str(ROOT / "examples" / "catalog.csv")]
    code, out, _ = cli(*args, "--gpu", "sim:a30-24gb", "--policy", "static", "--json")
    assert code == 2
    err = parse_envelope(out)["errors"][0]
    assert err["code"] == "USAGE" and "trace job 7 (toy-gpt_16)" in err["message"]
    # the same trace on an A100, whose 3g fits it, simulates
    code, out, _ = cli(*args, "--gpu", "sim:a100-40gb", "--policy", "static", "--json")
    assert code == 0, out
