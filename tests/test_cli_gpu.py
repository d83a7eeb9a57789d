"""miso status, layouts and apply through Typer's runner: exit codes and parsed JSON."""

from __future__ import annotations

import json
import os

from conftest import parse_envelope

from miso_cli.errors import ExitCode

SIM = ("--gpu", "sim:a100-40gb")


def test_layouts_json_lists_19_with_placements(cli) -> None:
    code, out, _err = cli("layouts", *SIM, "--json")
    assert code == 0
    env = parse_envelope(out)
    layouts = env["data"]["layouts"]
    assert len(layouts) == 19 == env["data"]["count"]
    four_three = [lay for lay in layouts if lay["name"] == "4g.20gb+3g.20gb"]
    assert four_three and four_three[0]["instances"][1]["placement"] == {"start": 4, "size": 4}
    code, out, _ = cli("layouts", *SIM, "--json", "--all")
    assert len(parse_envelope(out)["data"]["layouts"]) > 19
    code, out, _ = cli("layouts", "--model", "a100-40gb", "--include-me", "--json")
    names = {lay["name"] for lay in parse_envelope(out)["data"]["layouts"]}
    assert any("+me" in n for n in names)
    code, out, _ = cli("layouts", "--model", "a100-40gb", "--include-double-memory", "--json")
    assert any("1g.10gb" in lay["name"] for lay in parse_envelope(out)["data"]["layouts"])
    code, out, _ = cli("layouts", "--model", "v100", "--json")
    assert code == ExitCode.USAGE and parse_envelope(out)["errors"][0]["code"] == "USAGE"


def test_status_on_simulated_gpus(cli) -> None:
    code, out, _ = cli("status", "--gpu", "sim:h100-80gbx2", "--json")
    assert code == 0
    data = parse_envelope(out)["data"]
    assert data["simulated"] and len(data["gpus"]) == 2
    g = data["gpus"][0]
    assert g["name"] == "NVIDIA H100 80GB HBM3" and g["mig_capable"] and not g["mig_current"]
    assert g["instances"] == [] and g["processes"] == []
    code, out, _ = cli("status", "--gpu", "sim:h100-80gbx2")
    assert code == 0 and "H100" in out


def test_status_without_driver_says_so(cli, monkeypatch) -> None:
    from miso_cli.gpu import nvml

    def boom() -> None:
        raise nvml.pynvml.NVMLError(nvml.pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(nvml.pynvml, "nvmlInit", boom)
    code, out, err = cli("status", "--json")
    assert code == ExitCode.NO_GPU
    e = parse_envelope(out)["errors"][0]
    assert e["code"] == "NO_GPU" and "sim:a100-40gb" in e["hint"]
    assert "Traceback" not in err


def test_apply_check_dry_run_and_idempotence(cli) -> None:
    code, out, _ = cli("apply", *SIM, "--check", "4g.20gb", "2g.10gb", "1g.5gb", "--json")
    assert code == ExitCode.STATE_DIFFERS
    code, out, _ = cli("apply", *SIM, "--dry-run", "4g.20gb", "2g.10gb", "1g.5gb", "--json")
    assert code == 0
    rep = parse_envelope(out)["data"]["gpus"][0]
    assert rep["steps"][0]["action"] == "enable_mig" and rep["dry_run"]
    code, out, _ = cli("apply", *SIM, "-i", "0", "4g.20gb", "2g.10gb", "1g.5gb", "--json")
    assert code == 0
    rep = parse_envelope(out)["data"]["gpus"][0]
    assert rep["matches"] and rep["changed"]
    code, out, _ = cli("status", *SIM, "--json")
    insts = parse_envelope(out)["data"]["gpus"][0]["instances"]
    assert sorted(i["profile"] for i in insts) == ["1g.5gb", "2g.10gb", "4g.20gb"]
    code, out, _ = cli("apply", *SIM, "4g.20gb", "2g.10gb", "1g.5gb", "--json")
    rep = parse_envelope(out)["data"]["gpus"][0]
    assert code == 0 and rep["steps"] == [] and not rep["changed"]
    code, out, _ = cli("apply", *SIM, "--check", "4g.20gb", "2g.10gb", "1g.5gb", "--json")
    assert code == 0


def test_apply_plan_file_and_bad_input(cli, tmp_path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"gpus": [{"index": 0, "layout": ["3g.20gb@0", "3g.20gb@4"]}]}))
    code, out, _ = cli("apply", *SIM, "--plan", str(plan), "--json")
    assert code == 0
    assert parse_envelope(out)["data"]["gpus"][0]["after"]["name"] == "3g.20gb+3g.20gb"
    plan.write_text('{"gpus": [{"index": 0, "layout": ["4g.20gb", "4g.20gb"]}]}')
    code, out, err = cli("apply", *SIM, "--plan", str(plan), "--json")
    assert code == ExitCode.BAD_INPUT and str(plan) in parse_envelope(out)["errors"][0]["message"]
    code, out, _ = cli("apply", *SIM, "9g.99gb", "--json")
    assert code == ExitCode.BAD_INPUT
    code, out, _ = cli("apply", *SIM, "--json")
    assert code == ExitCode.USAGE
    code, out, _ = cli("apply", *SIM, "-i", "3", "1g.5gb", "--json")
    assert code == ExitCode.USAGE


def test_apply_rolls_back_with_exit_9(cli, monkeypatch) -> None:
    code, _, _ = cli("apply", *SIM, "4g.20gb", "2g.10gb", "1g.5gb")
    assert code == 0
    monkeypatch.setenv("MISO_SIM_FAULTS", "nvmlDeviceCreateGpuInstanceWithPlacement:1:UNKNOWN")
    code, out, err = cli("apply", *SIM, "3g.20gb", "3g.20gb", "--json")
    assert code == ExitCode.ROLLED_BACK
    assert parse_envelope(out)["errors"][0]["code"] == "ROLLED_BACK"
    monkeypatch.delenv("MISO_SIM_FAULTS")
    code, out, _ = cli("apply", *SIM, "--check", "4g.20gb", "2g.10gb", "1g.5gb")
    assert code == 0


def test_apply_busy_and_permission(cli, state_dir) -> None:
    from miso_cli.gpu.sim import simnvml

    cli("apply", *SIM, "4g.20gb", "2g.10gb", "1g.5gb")
    path = simnvml.state_path_for(state_dir, "sim:a100-40gb")
    state = json.loads(path.read_text())
    two_g = next(i for i in state["gpus"][0]["instances"] if i["size"] == 2)
    simnvml.attach_process(path, two_g["cis"][0]["uuid"], os.getpid(), 64)
    code, out, _ = cli("apply", *SIM, "4g.20gb", "3g.20gb", "--json")
    assert code == ExitCode.GPU_BUSY
    assert os.getpid() in parse_envelope(out)["errors"][0]["details"]["pids"]
    simnvml.detach_process(path, os.getpid())
    code, out, _ = cli(
        "apply", *SIM, "4g.20gb", "3g.20gb", "--json", env={"MISO_SIM_PRIVILEGED": "0"}
    )
    assert code == ExitCode.PERMISSION
    assert "root" in parse_envelope(out)["errors"][0]["message"]


def test_apply_mig_mode_only_and_pending(cli, state_dir) -> None:
    from miso_cli.gpu.sim import simnvml

    code, out, _ = cli("apply", *SIM, "--mig", "on", "--json")
    assert code == 0 and parse_envelope(out)["data"]["mig_current"]
    code, out, _ = cli("apply", *SIM, "--mig", "off", "--json")
    assert code == 0 and not parse_envelope(out)["data"]["mig_current"]
    path = simnvml.state_path_for(state_dir, "sim:a100-40gb")
    with simnvml.edit_state(path) as st:
        st["gpus"][0]["reset_required_for_mode"] = True
    code, out, _ = cli("apply", *SIM, "7g.40gb", "--json")
    env = parse_envelope(out)
    assert code == ExitCode.STATE_DIFFERS and env["data"]["gpus"][0]["pending_reset"]
    assert "reset" in env["errors"][0]["message"]


def test_new_models_in_status_and_layouts(cli) -> None:
    code, out, _ = cli("layouts", "--gpu", "sim:rtx-pro-6000", "--json")
    assert code == 0
    names = {lay["name"] for lay in parse_envelope(out)["data"]["layouts"]}
    assert names == {
        "4g.96gb",
        "2g.48gb+2g.48gb",
        "2g.48gb+1g.24gb+1g.24gb",
        "1g.24gb+1g.24gb+1g.24gb+1g.24gb",
    }
    code, out, _ = cli("status", "--gpu", "sim:b200x2", "--json")
    assert code == 0
    gpus = parse_envelope(out)["data"]["gpus"]
    assert [g["name"] for g in gpus] == ["NVIDIA B200", "NVIDIA B200"]
    code, out, _ = cli("apply", "--gpu", "sim:b200", "-i", "0", "4g.90gb", "3g.90gb", "--json")
    assert code == 0, out
