"""``miso export`` against what real clusters do: the GPU Operator, the device plugin, slurmd.

Each rule cites the code it mirrors (see docs/export.md for the sources).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from miso_cli.errors import BadInput, UsageError
from miso_cli.export import handoff as ex
from miso_cli.gpu.profiles import MODELS
from tests.conftest import parse_envelope
from tests.test_export import PLAN, QUEUE

ME_PLAN: dict[str, Any] = {
    "gpus": [
        {
            "index": 0,
            "model": "a100-40gb",
            "layout": ["1g.5gb+me@0", "1g.5gb@1", "2g.10gb@2", "3g.20gb@4"],
            "assignment": [
                {"job": "video", "profile": "1g.5gb+me"},
                {"job": "small", "profile": "1g.5gb"},
            ],
        },
        {"index": 1, "model": "a100-40gb", "mode": "full", "assignment": []},
    ],
}
ME_QUEUE = """\
version = 1
[[job]]
name = "video"
command = ["python", "-c", "pass"]
[[job]]
name = "small"
command = ["python", "-c", "print(1)"]
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _k8s(cli, *args: str) -> tuple[int, dict[str, Any], str]:
    code, out, err = cli("export", "-f", "k8s", "--json", *args)
    env = parse_envelope(out)
    return code, env, err


def _configmap(data: dict[str, Any]) -> dict[str, Any]:
    cm = yaml.safe_load(data["files"]["mig-config.yaml"])
    return yaml.safe_load(cm["data"]["config.yaml"])


# -- Kubernetes ----------------------------------------------------------------------


def test_me_slices_get_the_device_plugins_resource_name(cli, tmp_path: Path) -> None:
    assert ex.k8s_resource("1g.10gb+me") == "nvidia.com/mig-1g.10gb.me"
    assert ex.k8s_resource("3g.20gb") == "nvidia.com/mig-3g.20gb"
    assert ex.k8s_resource(None) == "nvidia.com/gpu"
    plan = _write(tmp_path, "plan.json", json.dumps(ME_PLAN))
    queue = _write(tmp_path, "q.toml", ME_QUEUE)
    code, env, _ = _k8s(cli, "--plan", str(plan), "--queue", str(queue), "--image", "img")
    assert code == 0, env
    jobs = {j["job"]: j for j in env["data"]["jobs"]}
    assert jobs["video"]["resource"] == "nvidia.com/mig-1g.5gb.me"
    doc = yaml.safe_load(env["data"]["files"][jobs["video"]["file"]])
    (limit,) = doc["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limit == "nvidia.com/mig-1g.5gb.me" and "+" not in limit
    # The mig-parted config keeps mig-parted's own spelling of the profile.
    configs = _configmap(env["data"])["mig-configs"]
    assert any("1g.5gb+me" in (e.get("mig-devices") or {}) for es in configs.values() for e in es)


def test_configmap_keeps_the_operators_standard_entries(cli, tmp_path: Path) -> None:
    plan = _write(tmp_path, "plan.json", json.dumps(PLAN))
    code, env, _ = _k8s(cli, "--plan", str(plan))
    assert code == 0
    configs = _configmap(env["data"])["mig-configs"]
    # The operator labels MIG nodes nvidia.com/mig.config=all-disabled: it must be there.
    assert configs["all-disabled"] == [{"devices": "all", "mig-enabled": False}]
    assert configs["all-enabled"] == [{"devices": "all", "mig-enabled": True, "mig-devices": {}}]
    assert env["data"]["node_config"] in configs


def test_cluster_configmap_filters_entries_by_pci_device_id(cli, tmp_path: Path) -> None:
    plan = _write(tmp_path, "plan.json", json.dumps(PLAN))
    code, env, _ = _k8s(cli, "--plan", str(plan))
    assert code == 0
    configs = _configmap(env["data"])["mig-configs"]
    ids = ex.device_ids("a100-40gb")
    assert ids[0] == "0x20B010DE" and "0x20F110DE" in ids  # A100-SXM4 and PCIe boards
    for name in env["data"]["configs"]:
        if name.startswith("miso-"):
            assert all(e["device-filter"] == ids for e in configs[name])
    # A node-local mig-parted file needs no filter.
    code, out, _ = cli("export", "-f", "mig-parted", "--plan", str(plan))
    assert code == 0 and "device-filter" not in out
    assert ex.device_ids(None) == [] and ex.device_ids("h100-80gb")[0] == "0x233010DE"


def test_merge_with_an_existing_configmap(cli, tmp_path: Path) -> None:
    existing = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "default-mig-parted-config", "namespace": "gpu-operator"},
        "data": {
            "config.yaml": (
                "version: v1\nmig-configs:\n"
                "  all-disabled:\n    - devices: all\n      mig-enabled: false\n"
                "  all-balanced:\n"
                '    - device-filter: ["0x20B010DE", "0x20B110DE"]\n'
                "      devices: all\n      mig-enabled: true\n"
                '      mig-devices: {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}\n'
                "  custom: &c\n    - devices: [0]\n      mig-enabled: false\n"
            )
        },
    }
    plan = _write(tmp_path, "plan.json", json.dumps(PLAN))
    for fname, text in (
        ("cm.yaml", yaml.safe_dump(existing)),
        ("cm.json", json.dumps(existing)),
    ):
        cm = _write(tmp_path, fname, text)
        code, env, _ = _k8s(cli, "--plan", str(plan), "--merge-configmap", str(cm))
        assert code == 0, env
        configs = _configmap(env["data"])["mig-configs"]
        assert configs["all-balanced"][0]["device-filter"] == ["0x20B010DE", "0x20B110DE"]
        assert configs["custom"] == [{"devices": [0], "mig-enabled": False}]
        assert "all-enabled" in configs and env["data"]["node_config"] in configs
    # A name already there with other contents is refused, never overwritten.
    code, env, _ = _k8s(
        cli, "--plan", str(plan), "--merge-configmap", str(cm), "--config-name", "custom"
    )
    assert code == 2 and "custom" in env["errors"][0]["message"]
    bad = _write(tmp_path, "bad.yaml", "version: v1\nmig-configs:\n  x:\n    - devices: all\n")
    code, env, _ = _k8s(cli, "--plan", str(plan), "--merge-configmap", str(bad))
    assert code == 3 and "mig-enabled" in env["errors"][0]["message"]


@pytest.mark.parametrize(
    "name, needle",
    [
        ("all-disabled", "GPU Operator"),
        ("all-balanced", "GPU Operator"),
        ("miso-mig-disabled", "another layout"),  # GPU 2 of PLAN is whole: that config exists
        ("Bad_Name", "label value"),
    ],
)
def test_config_name_collisions_are_refused(cli, tmp_path: Path, name: str, needle: str) -> None:
    plan = _write(tmp_path, "plan.json", json.dumps(PLAN))
    for fmt in ("mig-parted", "k8s", "slurm"):
        code, out, err = cli("export", "-f", fmt, "--plan", str(plan), "--config-name", name)
        assert code == 2, (fmt, out, err)
        assert needle in err and "Traceback" not in err


def test_steps_set_the_mixed_strategy_and_the_configmap(cli, tmp_path: Path) -> None:
    plan = _write(tmp_path, "plan.json", json.dumps(PLAN))
    code, env, _ = _k8s(cli, "--plan", str(plan), "--node", "gpu-1")
    assert code == 0
    data = env["data"]
    patch = data["clusterpolicy_patch"]
    assert patch["spec"]["mig"] == {"strategy": "mixed"}
    assert patch["spec"]["migManager"]["config"]["name"] == data["configmap"]["name"]
    steps = data["files"]["STEPS.txt"]
    (line,) = [ln for ln in steps.splitlines() if "kubectl patch clusterpolicies" in ln]
    assert json.loads(re.search(r"-p '(.+)'$", line).group(1)) == patch
    assert "--set mig.strategy=mixed" in steps
    assert f"--set migManager.config.name={data['configmap']['name']}" in steps
    assert f"nvidia.com/mig.config={data['node_config']}" in steps


def test_node_names_are_lowercase(cli, tmp_path: Path) -> None:
    plan = _write(tmp_path, "plan.json", json.dumps(PLAN))
    queue = _write(tmp_path, "q.toml", QUEUE)
    code, env, _ = _k8s(
        cli, "--plan", str(plan), "--queue", str(queue), "--image", "i", "--node", "GPU-Node-1"
    )
    assert code == 0
    assert env["data"]["label"]["node"] == "gpu-node-1"
    assert any("lowercase" in w for w in env["data"]["warnings"])
    doc = yaml.safe_load(env["data"]["files"][env["data"]["jobs"][0]["file"]])
    assert doc["spec"]["template"]["spec"]["nodeSelector"] == {
        "kubernetes.io/hostname": "gpu-node-1"
    }
    code, env, _ = _k8s(cli, "--plan", str(plan), "--node", "gpu_node")
    assert code == 2 and "--node" in env["errors"][0]["message"]


def test_workdir_volume_none_keeps_only_working_dir(cli, tmp_path: Path) -> None:
    plan = _write(tmp_path, "plan.json", json.dumps(PLAN))
    queue = _write(tmp_path, "q.toml", QUEUE)
    code, env, _ = _k8s(
        cli, "--plan", str(plan), "--queue", str(queue), "--image", "i",
        "--workdir-volume", "none",
    )  # fmt: skip
    assert code == 0
    doc = yaml.safe_load(env["data"]["files"][env["data"]["jobs"][0]["file"]])
    pod = doc["spec"]["template"]["spec"]
    assert pod["containers"][0]["workingDir"] == str(tmp_path)
    assert "volumes" not in pod and "volumeMounts" not in pod["containers"][0]


def test_signal_wrapper_turns_sigterm_into_the_checkpoint_signal(tmp_path: Path) -> None:
    """The wrapper of a Job's command, run by a real sh: SIGTERM in, SIGUSR1 to the job."""
    child = (
        "trap 'echo got-usr1; exit 7' USR1; trap 'echo got-term; exit 9' TERM; "
        "echo ready; while :; do sleep 1; done"
    )
    argv = ["/bin/sh", "-c", ex._SIGNAL_WRAPPER, "USR1", "/bin/sh", "-c", child]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"  # the job's traps are set
        os.kill(proc.pid, signal.SIGTERM)  # what the kubelet sends to PID 1
        assert proc.stdout.readline().strip() == "got-usr1"
        assert proc.wait(timeout=60) == 7  # the job's own exit status
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


# -- Slurm ---------------------------------------------------------------------------


def test_detected_names_follow_slurmd() -> None:
    a100 = MODELS["a100-40gb"]
    # gpu_nvml.c: name cut at the first '-', then _<slices>g.<round(MiB/1024)>gb
    assert ex.slurm_detected_name(a100) == "nvidia_a100-sxm4-40gb"
    assert ex.slurm_detected_name(a100, "3g.20gb") == "nvidia_a100_3g.20gb"
    assert ex.slurm_detected_name(a100, "7g.40gb") == "nvidia_a100_7g.39gb"  # 40192 MiB
    assert ex.slurm_detected_name(a100, "1g.5gb+me") == "nvidia_a100_1g.5gb"
    h100 = MODELS["h100-80gb"]
    assert ex.slurm_detected_name(h100, "3g.40gb") == "nvidia_h100_80gb_hbm3_3g.40gb"
    assert ex.slurm_type(a100, "3g.20gb", prefixed=True) == "a100_3g.20gb"
    assert ex.slurm_type(a100, "3g.20gb", prefixed=False) == "3g.20gb"


def _slurmd_match(conf: dict[str, int], detected: list[str]) -> dict[str, str]:
    """gres_gpu.c _normalize_sys_gres_types: longest names and types first, each detected
    device takes the first configured type that is a substring of it with count left."""
    left = dict(conf)
    out = {}
    for name in sorted(detected, key=len, reverse=True):
        for t in sorted(left, key=len, reverse=True):
            if left[t] > 0 and t.lower() in name.lower():
                left[t] -= 1
                out[name + f"#{len(out)}"] = t
                break
        else:
            out[name + f"#{len(out)}"] = "NULL"
    return out


@pytest.mark.parametrize("types", ["bare", "model"])
@pytest.mark.parametrize("model_key", sorted(MODELS))
def test_every_gres_type_is_found_by_slurmd(model_key: str, types: str) -> None:
    """Each configured type matches the devices meant for it, by slurmd's own rule, on a
    node with a partitioned GPU beside a whole one."""
    from miso_cli.gpu.layouts import enumerate_layouts

    model = MODELS[model_key]
    for layout in enumerate_layouts(model, maximal=True, include_me=True)[:6]:
        handoff = ex.parse_plan(
            {
                "gpus": [
                    {"index": 0, "model": model_key, "layout": [
                        f"{s.profile}@{s.start}" for s in layout.slices]},
                    {"index": 1, "model": model_key, "mode": "full"},
                ]
            }
        )  # fmt: skip
        bundle = ex.slurm_bundle(handoff, node="n1", node_config=None, types=types)
        conf = {g.split(":")[1]: int(g.split(":")[2]) for g in bundle.summary["gres"]}
        detected = [ex.slurm_detected_name(model, s.profile) for s in layout.slices]
        detected.append(ex.slurm_detected_name(model))
        matched = _slurmd_match(conf, detected)
        assert "NULL" not in matched.values(), (layout.name, conf, matched)
        for name, t in matched.items():
            device = name.rsplit("#", 1)[0]
            is_whole = device == ex.slurm_detected_name(model)
            assert (t == ex.slurm_type(model, None, prefixed=types == "model")) == is_whole


def test_slurm_model_types_and_cgroup(cli, tmp_path: Path) -> None:
    plan = _write(tmp_path, "plan.json", json.dumps(PLAN))
    code, out, _ = cli(
        "export", "-f", "slurm", "--plan", str(plan), "--slurm-types", "model", "--json"
    )
    assert code == 0
    data = parse_envelope(out)["data"]
    assert "gpu:a100_3g.20gb:2" in data["gres"] and "gpu:a100-sxm4-40gb:1" in data["gres"]
    assert data["detected"]["a100_3g.20gb"] == "nvidia_a100_3g.20gb"
    frag = data["files"]["slurm.conf.fragment"]
    assert "nvidia_a100-sxm4-40gb_" not in frag  # the old, wrong example
    assert "ConstrainDevices=yes" in data["files"]["cgroup.conf.fragment"].splitlines()
    code, out, err = cli("export", "-f", "slurm", "--plan", str(plan), "--slurm-types", "x")
    assert code == 2 and "--slurm-types" in err


def test_slurm_refuses_a_mig_gpu_without_instances(cli, tmp_path: Path) -> None:
    plan = {"gpus": [{"index": 0, "model": "a100-40gb", "layout": []}]}
    p = _write(tmp_path, "plan.json", json.dumps(plan))
    code, out, err = cli("export", "-f", "slurm", "--plan", str(p), "--json")
    assert code == 3
    msg = parse_envelope(out)["errors"][0]["message"]
    assert "GPU 0" in msg and "no MIG devices were found" in msg
    # mig-parted and Kubernetes accept it (an empty MIG GPU is a valid mig-parted entry).
    assert cli("export", "-f", "mig-parted", "--plan", str(p))[0] == 0
    with pytest.raises(BadInput):
        ex.slurm_bundle(ex.parse_plan(plan), node=None, node_config=None)


def test_check_config_name_unit() -> None:
    ex.check_config_name("miso-night")
    for bad in ("all-enabled", "UPPER", "x" * 64):
        with pytest.raises(UsageError):
            ex.check_config_name(bad)
